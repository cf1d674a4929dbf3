"""The README: its example runs and says what it claims, it holds the commands CI and the docs
build use, it fits on a few screens and its links lead somewhere.

The examples that moved to the site's pages run in tests/test_docs_examples.py.
"""

import re

import pyro
import pytest
from common import ROOT, run_example

from pyro_vae.cli_parser import DOCS_BUILD

README = ROOT / "README.md"


@pytest.mark.slow
def test_own_pair_example_matches_the_exact_ppca_evidence():
    pyro.set_rng_seed(0)
    ns = run_example("README.md", "PPCA(")
    z = (ns["estimate"].log_px - ns["exact"]) / ns["estimate"].stderr
    # 10 datapoints: |z| < 4 for each (family-wise false alarm < 0.1%)
    assert z.abs().max() < 4, z


def test_readme_holds_the_ci_command_and_the_docs_build():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.startswith("python3 -m pip install") and "pytest" in ci, ci
    lines = README.read_text().splitlines()
    assert ci in lines, "README's test command differs from .ci/run's"
    assert DOCS_BUILD in lines


def test_readme_fits_and_its_links_lead_to_files():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    targets = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", text)
    assert "docs/results.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing
