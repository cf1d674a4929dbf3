"""The site convention (pyro_vae.infer.pair: sites, layout) and the Pyro behaviour it relies on."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pairs import DeterministicSites, GaussianMixture
from pyro import poutine

from pyro_vae.infer.evidence.importance import log_evidence
from pyro_vae.infer.pair.pyro_adapter import is_deterministic
from pyro_vae.infer.pair.sites import (
    GlobalLatentError,
    check_data,
    check_data_plate,
    counts,
    data_scale,
    latent_sites,
    sample_sites,
)

# deterministic sites inside and outside the data plate, a plate with a subsample size
PAIR = DeterministicSites()
model, guide = PAIR.model, PAIR.guide


def test_pyro_marks_deterministic_sites_as_the_adapter_expects():
    """Pins Pyro's private encoding of pyro.deterministic that pyro_adapter reads."""
    trace = poutine.trace(model).get_trace(torch.zeros(3))
    flags = {n: is_deterministic(s) for n, s in trace.nodes.items() if s["type"] == "sample"}
    assert flags == {"shift": True, "data": False, "z": False, "z_shifted": True, "x": False}
    assert trace.nodes["z_shifted"]["is_observed"], "deterministic sites are observed ones"


def test_only_real_sample_sites_count():
    trace = poutine.trace(model).get_trace(torch.zeros(3))
    assert [name for name, _ in sample_sites(trace)] == ["z", "x"]
    assert not counts(trace.nodes["data"]), "a plate's subsample-index site does not count"
    assert list(latent_sites(trace, role="model")) == ["z"]


def test_deterministic_sites_outside_the_plate_do_not_stop_the_evidence(float64):
    x = torch.randn(4)
    result = log_evidence(model, guide, x, num_samples=20)
    assert result.log_px.shape == (4,) and torch.isfinite(result.log_px).all()


def test_data_scale_is_total_over_batch_inside_the_plate_only():
    trace = poutine.trace(model).get_trace(torch.zeros(4))
    assert data_scale(trace.nodes["z"], "data", num_data=100) == 25.0  # 100 / 4
    assert data_scale(trace.nodes["shift"], "data", num_data=100) == 1.0
    assert data_scale(trace.nodes["z"], "data", num_data=None) == 1.0


def _sites(fn, x):
    return [("model", n, s) for n, s in sample_sites(poutine.trace(fn).get_trace(x))]


def test_one_message_per_mistake():
    def global_latent(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    def no_plate(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)

    def sequential(x):
        for i in pyro.plate("data", x.shape[0]):
            pyro.sample(f"x_{i}", dist.Normal(0.0, 1.0), obs=x[i])

    x = torch.zeros(3)
    with pytest.raises(GlobalLatentError, match="^latent site 'w' of the model lies outside"):
        check_data_plate(_sites(global_latent, x))
    with pytest.raises(GlobalLatentError, match="no site at all is inside a plate named 'data'"):
        check_data_plate(_sites(no_plate, x))
    with pytest.raises(ValueError, match="must be vectorized"):
        check_data_plate(_sites(sequential, x))
    with pytest.raises(ValueError, match="has size 3 but x holds 5 datapoints"):
        check_data_plate(_sites(model, x), num_data=5)


@pytest.mark.parametrize(
    "x, match",
    [
        ([1.0, 2.0], "must be a tensor of shape"),
        (torch.zeros(0, 3), "N >= 1"),
        (torch.tensor([1.0, float("nan")]), "holds 1 NaN or inf"),
    ],
    ids=["list", "empty", "nan"],
)
def test_check_data_names_the_argument(x, match):
    with pytest.raises(ValueError, match=f"^batch {match}|^batch .*{match}"):
        check_data(x, "batch")


def test_without_enumeration_samples_a_site_marked_for_enumeration():
    from pyro_vae.infer.pair.sites import without_enumeration

    def guide():
        with pyro.plate("data", 3):
            pyro.sample(
                "y", dist.Categorical(logits=torch.zeros(4)), infer={"enumerate": "parallel"}
            )

    enumerated = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace()
    assert enumerated.nodes["y"]["value"].shape == (4, 1)  # all 4 values at once
    sampled = poutine.trace(poutine.enum(without_enumeration(guide), first_available_dim=-2))
    assert sampled.get_trace().nodes["y"]["value"].shape == (3,)  # one draw per datapoint


def test_max_plate_nesting_is_read_from_the_pair():
    from pyro_vae.infer.pair.layout import max_plate_nesting

    pair = GaussianMixture()
    assert max_plate_nesting(pair.model, pair.guide, torch.zeros(3)) == 1

    def nested(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    assert max_plate_nesting(nested, lambda x: None, torch.zeros(3, 2)) == 2
