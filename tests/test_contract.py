"""Every generic tool on every model/guide pair of the catalogue (tests/pairs.py).

The contract: a tool either returns per-datapoint results for the N datapoints of ``x`` (finite,
with N where the data dimension belongs), or refuses the pair with the one error the site
convention prescribes for it (docs/design.md). Nothing in between: no silently wrong shape.
The refusals expected here follow from each pair's catalogued facts (:func:`expected_refusal`).
"""

import math

import pytest
import torch
from pairs import CATALOGUE, NO_LATENT
from pyro import poutine

from pyro_vae.diagnostics import arviz_io
from pyro_vae.diagnostics.latent import active_units, amortization_gap, kl_per_dimension
from pyro_vae.diagnostics.posterior import guide_draws, nuts_reference
from pyro_vae.infer import (
    dataset_nll,
    elbo_per_datapoint,
    iwae_bound,
    log_evidence,
    train,
)
from pyro_vae.infer.pair.layout import is_fully_reparameterized
from pyro_vae.infer.pair.params import collect_params
from pyro_vae.infer.pair.sites import sample_sites


@pytest.mark.parametrize("case", CATALOGUE, ids=str)
def test_the_catalogue_states_what_the_library_reads_off_each_pair(case):
    """The facts the expected refusals below follow from are true of the pairs."""
    pair = case.make()
    trace = poutine.trace(pair.guide).get_trace(pair.x, *pair.args)
    latents = {n: s for n, s in sample_sites(trace) if not s["is_observed"]}
    assert bool(latents) == case.latent, f"{case}: guide latents {list(latents)}"
    assert bool(collect_params(pair.model, pair.guide, pair.x, *pair.args)) == case.trainable
    if not case.latent:
        return
    found = is_fully_reparameterized(pair.model, pair.guide, pair.x, *pair.args)
    assert found == case.reparameterized, f"{case}: fully reparameterized {found}"
    enumerated = any(s["infer"].get("enumerate") for s in latents.values())
    assert enumerated == case.enumerated, f"{case}: enumerated {enumerated}"
    assert case.site in latents, f"{case}: site {case.site!r} not in {list(latents)}"
    model_trace = poutine.trace(poutine.replay(pair.model, trace=trace)).get_trace(
        pair.x, *pair.args
    )
    for who, fn, fact in (
        ("guide", latents[case.site]["fn"], case.guide_factorized),
        ("prior", model_trace.nodes[case.site]["fn"], case.prior_factorized),
    ):
        while isinstance(fn, torch.distributions.Independent):
            fn = fn.base_dist
        assert (fn.event_shape == ()) == fact, f"{case}: {who} {type(fn).__name__}"
    model_latents = [s for _, s in sample_sites(model_trace) if not s["is_observed"]]
    continuous = any(not s["fn"].support.is_discrete for s in model_latents)
    assert continuous == case.continuous, f"{case}: continuous latents {continuous}"


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
    "active_units": lambda m, g, x, *a, site="z": [
        active_units(g, x, *a, site=site)[1].reshape(1, -1).expand(x.shape[0], -1)
    ],
    "kl_per_dimension": lambda m, g, x, *a, site="z": [
        kl_per_dimension(m, g, x, *a, site=site).reshape(1, -1).expand(x.shape[0], -1)
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
        torch.as_tensor(values.values).transpose(0, 2)
        for values in arviz_io.to_inference_data(_draws(m, g, x, *a)).posterior.data_vars.values()
    ],
}

PER_DATAPOINT = set(TOOLS) - {
    "train",
    "train-enum",
}  # tools whose first output dimension is the datapoint
# tools that look at the guide's latent sites (and refuse a guide that samples none)
OF_THE_LATENTS = {
    "guide_draws",
    "active_units",
    "kl_per_dimension",
    "amortization_gap",
    "nuts_reference",
    "arviz",
}


# the tools that read one latent site by name (the case's ``site``)
BY_SITE = {"active_units", "kl_per_dimension"}


def expected_refusal(case, tool):
    """The one error the convention prescribes for ``tool`` on ``case``, or None."""
    if tool in ("train", "train-enum"):
        # the trainer accepts global sites; it refuses only a pair with nothing to train
        return None if case.trainable else (ValueError, "no trainable parameter")
    if tool == "nuts_reference" and case.refusal is not None:
        # NUTS runs the model alone, and checks all of its sites before looking for latents
        return case.refusal
    if tool in OF_THE_LATENTS and not case.latent:
        # checked first: a tool that only runs the guide cannot see the model's global sites
        return NO_LATENT
    if case.refusal is not None:
        return case.refusal
    if tool == "active_units" and not case.continuous and case.enumerated:
        # the catalogue's enumerated discrete sites are Categorical: E_q[y|x] has no meaning
        return (ValueError, "has no mean")
    if tool == "kl_per_dimension" and not (case.guide_factorized and case.prior_factorized):
        # a full-covariance or flow guide, or a correlated prior, has no per-dimension KL
        return (ValueError, "factorized")
    return None


# what the library gets wrong today, each reported: the test shows it until it is fixed
KNOWN_BUGS: dict = {}


def _param(case, tool):
    bug = KNOWN_BUGS.get((case.name, tool))
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(case, tool, marks=marks, id=f"{case}-{tool}")


CASES = [_param(case, tool) for case in CATALOGUE for tool in TOOLS]


@pytest.mark.parametrize("case, tool", CASES)
def test_every_tool_on_every_pair(case, tool):
    pair = case.make()
    site = {"site": case.site} if tool in BY_SITE else {}
    refusal = expected_refusal(case, tool)
    if refusal is not None:
        error, match = refusal
        with pytest.raises(error, match=match):
            TOOLS[tool](pair.model, pair.guide, pair.x, *pair.args, **site)
        return
    n = pair.x.shape[0]
    outputs = TOOLS[tool](pair.model, pair.guide, pair.x, *pair.args, **site)
    if tool == "nuts_reference" and not case.continuous:
        # NUTS sums discrete latents out and draws the continuous ones (docs/design.md): none
        assert outputs == [], f"nuts_reference drew {len(outputs)} sites of {case}"
        return
    assert outputs, f"{tool} returned nothing"
    for out in outputs:
        assert torch.isfinite(out).all(), f"{tool} on {case}: {out}"
        if tool in PER_DATAPOINT:
            assert out.shape[0] == n, f"{tool} on {case}: shape {tuple(out.shape)}, N = {n}"
    if tool in ("train", "train-enum"):
        (losses,) = outputs
        assert losses.shape == (2,) and all(math.isfinite(v) for v in losses.tolist())
