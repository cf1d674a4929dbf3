"""Every generic tool on every model/guide pair we ship and on pairs written only here.

The contract: a tool either returns per-datapoint results for the N datapoints of ``x`` (finite,
with N where the data dimension belongs), or refuses the pair with the one error the site
convention prescribes for it (docs/design.md). Nothing in between: no silently wrong shape.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import LinearGaussian

from pyro_vae.diagnostics import arviz_io
from pyro_vae.diagnostics.latent import active_units, amortization_gap, kl_per_dimension
from pyro_vae.diagnostics.posterior import guide_draws, nuts_reference
from pyro_vae.infer import (
    GlobalLatentError,
    dataset_nll,
    elbo_per_datapoint,
    iwae_bound,
    log_evidence,
    train,
)
from pyro_vae.models import CVAE, M2, PPCA, VAE, CollapsedPPCA

N = 6  # datapoints in every x below


# --- pairs written only here ---------------------------------------------------------------------
class PositiveFeatures:
    """Data plate at dim -2, feature plate at -1, a positive latent and a deterministic site."""

    def model(self, x):
        rate = pyro.param("rate", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
            z = pyro.sample("z", dist.LogNormal(0.0, 1.0))
            pyro.deterministic("mean", rate * z)
            pyro.sample("x", dist.Normal(rate * z, 1.0), obs=x)

    def guide(self, x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
            pyro.sample("z", dist.LogNormal(loc + 0.1 * x, 0.5))


class GlobalMean:
    """A global latent w shared by all datapoints: trainable, but no per-datapoint evidence."""

    def model(self, x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    def guide(self, x):
        m = pyro.param("m", torch.tensor(0.0))
        pyro.sample("w", dist.Normal(m, 0.1))


def _pairs():
    """name -> (model, guide, x, *args); fresh per test (modules and param store are per test).

    ``args`` (labels) go to the pair after ``x``: as extra columns of the data for ``train``
    and ``dataset_nll``, as ``*args`` for every other tool.
    """
    torch.manual_seed(0)
    ppca = PPCA(torch.randn(5, 2), torch.zeros(5), torch.tensor(0.5))
    collapsed = CollapsedPPCA(5, 2)
    vaes = {
        "vae-bernoulli": (VAE(16, latent_dim=3, hidden=(8,)), torch.bernoulli(torch.rand(N, 16))),
        "vae-gaussian": (VAE(16, 3, (8,), likelihood="gaussian"), torch.rand(N, 16)),
        "vae-conv": (VAE(784, 3, (8,), arch="conv"), torch.bernoulli(torch.rand(N, 784))),
        "vae-iaf": (VAE(16, 3, (8,), flows=2), torch.bernoulli(torch.rand(N, 16))),
    }
    pairs = {
        "ppca-exact": (ppca.model, ppca.guide, ppca.sample(N)),
        "collapsed-ppca": (collapsed.model, collapsed.guide, torch.randn(N, 5)),
        **{name: (vae.model, vae.guide, x) for name, (vae, x) in vaes.items()},
    }
    linear, positive, global_mean = LinearGaussian(a=0.5, c=0.1), PositiveFeatures(), GlobalMean()
    pairs["linear-gaussian"] = (linear.model, linear.guide, torch.randn(N))
    pairs["positive-features"] = (positive.model, positive.guide, torch.rand(N, 3))
    pairs["global-latent"] = (global_mean.model, global_mean.guide, torch.randn(N))
    cvae, m2 = CVAE(16, 10, 3, (8,)), M2(16, 10, 3, (8,))
    x, y = torch.bernoulli(torch.rand(N, 16)), torch.tensor([0, 1, 2, 9, 9, 3])
    pairs["cvae"] = (cvae.model, cvae.guide, x, y)
    pairs["m2-labelled"] = (m2.model, m2.guide, x, y)  # y observed
    pairs["m2-unlabelled"] = (m2.model, m2.guide, x)  # y latent, marked for enumeration
    return pairs


# --- the tools, each reduced to "the per-datapoint tensor(s) it returns" --------------------------
def _draws(model, guide, x, *args):
    return guide_draws(guide, x, *args, num_chains=2, num_draws=3)


TOOLS = {
    "train": lambda m, g, x, *a: [
        torch.tensor(
            [
                r["train_loss"]
                for r in train(m, g, (x, *a), epochs=2, batch_size=4, progress=False).history
            ]
        )  # fmt: skip
    ],
    "train-enum": lambda m, g, x, *a: [
        torch.tensor(
            [
                r["train_loss"]
                for r in train(
                    m, g, (x, *a), epochs=2, batch_size=4, loss="enum", progress=False
                ).history
            ]
        )  # fmt: skip
    ],
    "log_evidence": lambda m, g, x, *a: [log_evidence(m, g, x, *a, num_samples=8).log_px],
    "iwae_bound": lambda m, g, x, *a: [iwae_bound(m, g, x, 4, *a, num_estimates=2)],
    "elbo_per_datapoint": lambda m, g, x, *a: [elbo_per_datapoint(m, g, x, *a, num_samples=3)],
    "dataset_nll": lambda m, g, x, *a: [
        dataset_nll(m, g, (x, *a), num_samples=8, batch_size=4, progress=False).log_px
    ],
    "guide_draws": lambda m, g, x, *a: [v.transpose(0, 2) for v in _draws(m, g, x, *a).values()],
    "active_units": lambda m, g, x, *a: [active_units(g, x, *a)[1].reshape(1, -1).expand(N, -1)],
    "kl_per_dimension": lambda m, g, x, *a: [
        kl_per_dimension(m, g, x, *a).reshape(1, -1).expand(N, -1)
    ],
    "amortization_gap": lambda m, g, x, *a: [
        amortization_gap(m, g, x, *a, num_steps=3, num_samples=3)["amortization_gap"]
    ],
    "nuts_reference": lambda m, g, x, *a: [
        v.transpose(0, 2)
        for v in nuts_reference(
            m, x, *a, num_chains=1, num_warmup=3, num_samples=3
        ).values()  # fmt: skip
    ],
    "arviz": lambda m, g, x, *a: [
        torch.as_tensor(
            arviz_io.to_inference_data(_draws(m, g, x, *a)).posterior["z"].values
        ).transpose(0, 2)
    ],
}

PER_DATAPOINT = set(TOOLS) - {
    "train",
    "train-enum",
}  # tools whose first output dimension is the datapoint

# The refusals the convention prescribes; every other (pair, tool) must simply work.
NO_LATENT = (ValueError, "has no latent")
GLOBAL = (GlobalLatentError, "lies outside the data plate")
REFUSALS = {
    ("ppca-exact", "train"): (ValueError, "no trainable parameter"),
    ("ppca-exact", "train-enum"): (ValueError, "no trainable parameter"),
    # a full-covariance or flow guide has no per-dimension KL
    ("ppca-exact", "kl_per_dimension"): (ValueError, "factorized"),
    ("vae-iaf", "kl_per_dimension"): (ValueError, "factorized"),
    **{
        ("collapsed-ppca", t): NO_LATENT
        for t in (
            "guide_draws",
            "active_units",
            "kl_per_dimension",
            "amortization_gap",
            "nuts_reference",
            "arviz",
        )
    },  # fmt: skip
    **{("global-latent", t): GLOBAL for t in PER_DATAPOINT},
}

CASES = [(p, t) for p in _pairs() for t in TOOLS]


@pytest.mark.parametrize("pair, tool", CASES, ids=[f"{p}-{t}" for p, t in CASES])
def test_every_tool_on_every_pair(pair, tool):
    model, guide, x, *args = _pairs()[pair]
    pyro.set_rng_seed(0)
    if (pair, tool) in REFUSALS:
        error, match = REFUSALS[(pair, tool)]
        with pytest.raises(error, match=match):
            TOOLS[tool](model, guide, x, *args)
        return
    outputs = TOOLS[tool](model, guide, x, *args)
    assert outputs, f"{tool} returned nothing"
    for out in outputs:
        assert torch.isfinite(out).all(), f"{tool} on {pair}: {out}"
        if tool in PER_DATAPOINT:
            assert out.shape[0] == N, f"{tool} on {pair}: shape {tuple(out.shape)}, N = {N}"
    if tool in ("train", "train-enum"):
        (losses,) = outputs
        assert losses.shape == (2,) and all(math.isfinite(v) for v in losses.tolist())
