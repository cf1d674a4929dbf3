"""Sphinx configuration of the pyro_vae site.

Built by ``python3 -m sphinx -W --keep-going -b html docs docs/_build/html`` (repository root).

Offline by construction: no intersphinx, no notebook execution (the tutorials in
``docs/tutorials/`` are committed with their outputs; ``tests/test_tutorials.py`` executes them),
no theme or script fetched at build time. The API pages are generated on every build
(``docs/_ext/api_pages.py`` walks the packages, so a new module gets its page without an edit
here); the CLI page renders the argparse parser (``docs/_ext/cli_help.py``).
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

import pyro_vae  # noqa: E402

project = "pyro_vae"
author = "the pyro_vae developers"
release = version = pyro_vae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    # napoleon, not numpydoc: it ships with Sphinx (no extra package) and renders our numpydoc
    # sections without numpydoc's extra validation warnings, which -W would turn into failures
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    # myst-nb: the .md pages as myst-parser reads them (it builds on it) and the tutorial notebooks
    "myst_nb",
    "api_pages",
    "cli_help",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
# figures/ holds the result tables (.md) that the results pages include; not pages of their own
exclude_patterns = ["_build", "_ext", "figures", "api/README.md", "**/.ipynb_checkpoints"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
autosummary_generate = False
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# Attributes as fields of their class: a dataclass field is then described once (by autodoc)
napoleon_use_ivar = True

# design.md and compiled.md are pages as they are: headings become anchors, fenced code stays code
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "dollarmath"]
# the notebooks are shown as committed, outputs and all; executing them is CI's separate step
nb_execution_mode = "off"
suppress_warnings = [
    "myst.header",
    # a notebook cell's shell escape continued on a second line (!{CLI} ... \) is beyond Pygments'
    # IPython lexer; Sphinx then shows the cell highlighted in relaxed mode, nothing lost
    "misc.highlighting_failure",
    # a numpydoc type is prose ("iterable of (role, name, site)"); Sphinx links each word, and a
    # word that names attributes of two classes (name, epoch) is no error in the docstring
    "ref.python",
]

# math: a local MathJax where the system has one (Debian's libjs-mathjax), so the pages show
# their formulas offline; else Sphinx's default, which the reader's browser fetches (the build
# itself fetches nothing)
LOCAL_MATHJAX = Path("/usr/share/javascript/mathjax/MathJax.js")
if LOCAL_MATHJAX.is_file():
    mathjax_path = f"{LOCAL_MATHJAX.as_uri()}?config=TeX-AMS-MML_HTMLorMML"
    # that MathJax is version 2: myst-nb marks a notebook's text "ignore" and its math "math"
    # in version 3's terms; the same two classes in version 2's
    mathjax2_config = {
        "tex2jax": {
            "processClass": "math|tex2jax_process|mathjax_process",
            "ignoreClass": "tex2jax_ignore|mathjax_ignore",
        }
    }

html_theme = "alabaster"
html_title = f"pyro_vae {release}"
html_static_path = []
# wide enough for 100-column help text and the Layout block of design.md without a scroll bar,
# and narrow enough that a 1280-pixel window keeps the sidebar beside the text (alabaster moves
# it below the page in any window narrower than page_width)
html_theme_options = {"page_width": "1240px", "body_max_width": "none"}


def tutorials_without_notebooks(app, docname, source):
    """Before the first notebook is in ``docs/tutorials/``, the tutorials page says so instead of
    globbing nothing (an empty glob is a warning, which ``-W`` makes an error)."""
    if docname == "tutorials" and not any((HERE / "tutorials").glob("*.ipynb")):
        start, end = source[0].index("```{toctree}"), source[0].rindex("```") + 3
        source[0] = source[0][:start] + "No tutorial notebook is committed yet." + source[0][end:]


def setup(app):
    """Hooks of this site's own (the page generators are extensions in ``_ext/``)."""
    app.connect("source-read", tutorials_without_notebooks)
