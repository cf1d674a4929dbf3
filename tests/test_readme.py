"""The README's Python examples run as written and say what they claim."""

import re
from pathlib import Path

import pyro
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def examples():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run(source):
    namespace = {}
    exec(compile(source, "README.md", "exec"), namespace)
    return namespace


@pytest.mark.slow
def test_vae_example_gives_per_datapoint_evidence():
    pyro.set_rng_seed(0)
    result = run(examples()[0])["result"]
    for field in (result.log_px, result.stderr, result.ess, result.khat):
        assert field.shape == (100,)
    assert (result.log_px < 0).all() and (result.ess >= 1).all()


@pytest.mark.slow
def test_own_pair_example_matches_the_exact_ppca_evidence():
    pyro.set_rng_seed(0)
    ns = run(examples()[1])
    z = (ns["estimate"].log_px - ns["exact"]) / ns["estimate"].stderr
    # 10 datapoints: |z| < 4 for each (family-wise false alarm < 0.1%)
    assert z.abs().max() < 4, z
