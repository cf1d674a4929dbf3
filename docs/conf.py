"""Sphinx configuration of the pyro_vae site.

Built by ``python3 -m sphinx -W --keep-going -b html docs docs/_build/html`` (repository root).

Offline by construction: no intersphinx, no notebook execution, no theme or script fetched at build
time. The API pages are generated on every build (``docs/_ext/api_pages.py`` walks the packages,
so a new module gets its page without an edit here); the CLI page renders the argparse parser
(``docs/_ext/cli_help.py``).
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
    "myst_parser",
    "api_pages",
    "cli_help",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# figures/ holds the result tables (.md) that the results pages include; not pages of their own
exclude_patterns = ["_build", "_ext", "figures", "api/README.md"]

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
myst_enable_extensions = ["colon_fence"]
suppress_warnings = [
    "myst.header",
    # a numpydoc type is prose ("iterable of (role, name, site)"); Sphinx links each word, and a
    # word that names attributes of two classes (name, epoch) is no error in the docstring
    "ref.python",
]

html_theme = "alabaster"
html_title = f"pyro_vae {release}"
html_static_path = []
# wide enough for 100-column help text and the Layout block of design.md without a scroll bar
html_theme_options = {"page_width": "1320px", "body_max_width": "none"}
