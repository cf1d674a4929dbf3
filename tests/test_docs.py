"""The documentation site builds offline with warnings as errors, and the pointers to it."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from pyro_vae import __version__
from pyro_vae.__main__ import docs_lines
from pyro_vae.__main__ import main as python_m_pyro_vae
from pyro_vae.cli import main
from pyro_vae.cli_parser import DOCS_BUILD, DOCS_POINTER

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
# a machine without the docs extra (a GPU box with torch alone) skips the site, not the suite
pytest.importorskip("sphinx.pycode", reason='the docs need sphinx: pip install -e ".[docs]"')
import api_pages  # noqa: E402  (the page generator of docs/conf.py: which names get pages)

# one worker runs every site test (under --dist loadgroup): the other would sit waiting on the
# build's lock instead of taking other tests
pytestmark = pytest.mark.xdist_group("docs_site")

INSTALL_HINT = 'the docs need sphinx and myst-nb: python3 -m pip install -e ".[docs]"'


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The site built by the README's command into a temporary folder, once per test run (the
    pytest-xdist workers of a run share it: the first builds, the others wait on its lock and
    read it); no sphinx: a failure."""
    for package in ("sphinx", "myst_nb"):
        if importlib.util.find_spec(package) is None:
            pytest.fail(f"{package} is not installed; {INSTALL_HINT}")
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_TESTRUNUID"):
        root = root.parent  # this run's folder, above each worker's own
    out, log = root / "site-html", root / "site-build.log"
    with FileLock(str(root / "site.lock")):
        if not log.exists():
            command = DOCS_BUILD.split()[:-2] + ["docs", str(out)]
            command[0] = sys.executable
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            output = done.stdout[-3000:] + done.stderr[-3000:]
            log.write_text(f"{done.returncode}\n{output}")
    returncode, output = log.read_text().split("\n", 1)
    assert returncode == "0", output
    return out


@pytest.mark.slow
def test_every_public_name_has_its_rendered_description(site):
    html = "".join(page.read_text() for page in (site / "api").glob("*.html"))
    missing = []
    modules = api_pages.public_modules()
    for name in modules:
        module = importlib.import_module(name)
        for member in api_pages.public_names(module):
            home = api_pages.home(member, getattr(module, member), module, modules)
            if f'id="{home}.{member}"' not in html:
                missing.append(f"{name}.{member}")
    assert {"pyro_vae.infer", "pyro_vae.models", "pyro_vae.diagnostics.posterior"} <= set(modules)
    assert not missing, missing


@pytest.mark.slow
def test_cli_page_shows_every_command_help_from_the_parser(site):
    page = (site / "cli.html").read_text()
    for command in ("train", "evaluate", "certify", "diagnose"):
        assert f"usage: pyro-vae {command}" in page, command
    assert "--epochs EPOCHS" in page


def test_python_m_pyro_vae_prints_the_version_and_where_the_docs_are(capsys):
    python_m_pyro_vae()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"pyro_vae {__version__}" and DOCS_POINTER in out
    assert str(ROOT) in out[2]  # this checkout: built here, or the command to build it there


def test_docs_lines_say_built_or_not_or_absent(tmp_path):
    assert "no docs/ folder" in docs_lines(tmp_path)[2]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "conf.py").write_text("")
    assert docs_lines(tmp_path)[2] == f"Not built yet here: cd {tmp_path} && {DOCS_BUILD}"
    index = tmp_path / "docs" / "_build" / "html" / "index.html"
    index.parent.mkdir(parents=True)
    index.write_text("")
    assert docs_lines(tmp_path)[2] == f"Built here: {index}"
    assert not any("Tutorials" in line for line in docs_lines(tmp_path))
    (tmp_path / "docs" / "tutorials").mkdir()
    assert f"Tutorials (notebooks to open in Jupyter): {tmp_path / 'docs' / 'tutorials'}" in (
        docs_lines(tmp_path)
    )


def test_help_ends_with_the_docs_pointer(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert one_line(capsys.readouterr().out).endswith(one_line(DOCS_POINTER))


@pytest.mark.slow
def test_every_image_of_every_page_is_in_the_site(site):
    pages = [p for p in site.rglob("*.html") if "_modules" not in p.parts]
    missing = []
    for page in pages:
        for src in re.findall(r'<img [^>]*src="([^"]+)"', page.read_text()):
            if not src.startswith("data:") and not (page.parent / src).is_file():
                missing.append(f"{page.relative_to(site)}: {src}")
    assert (site / "results" / "evidence.html").is_file()
    assert not missing, missing


@pytest.mark.slow
def test_tutorials_page_lists_every_committed_notebook(site):
    page = (site / "tutorials.html").read_text()
    notebooks = sorted((ROOT / "docs" / "tutorials").glob("*.ipynb"))
    for notebook in notebooks:
        assert f'href="tutorials/{notebook.stem}.html"' in page, notebook.name
        assert (site / "tutorials" / f"{notebook.stem}.html").is_file(), notebook.name
    if not notebooks:
        assert "No tutorial notebook is committed yet." in page
