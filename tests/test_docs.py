"""The documentation site builds offline with warnings as errors, and the pointers to it."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae import __version__
from pyro_vae.__main__ import docs_lines
from pyro_vae.__main__ import main as python_m_pyro_vae
from pyro_vae.cli import main
from pyro_vae.cli_parser import DOCS_BUILD, DOCS_POINTER

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import api_pages  # noqa: E402  (the page generator of docs/conf.py: which names get pages)

INSTALL_HINT = 'the docs need sphinx and myst-parser: python3 -m pip install -e ".[docs]"'


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built by the README's command into a temporary folder; no sphinx: a failure."""
    for package in ("sphinx", "myst_parser"):
        if importlib.util.find_spec(package) is None:
            pytest.fail(f"{package} is not installed; {INSTALL_HINT}")
    out = tmp_path_factory.mktemp("html")
    command = DOCS_BUILD.split()[:-2] + ["docs", str(out)]
    command[0] = sys.executable
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
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


def test_help_ends_with_the_docs_pointer(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert one_line(capsys.readouterr().out).endswith(one_line(DOCS_POINTER))
