"""Tests for pyro_vae.infer.evidence.psis: Pareto k-hat of importance weights.

Reference: ArviZ's ``psislw`` (same Zhang & Stephens estimator, same tail size and prior), on
light- and heavy-tailed weights; a generalized Pareto sample of known shape k; and the
conventions documented in the module (-inf for constant weights, +inf for too few tail
weights, nan for non-finite rows). Seeds are explicit; tolerances are stated per test.
"""

import math

import arviz
import numpy as np
import pytest
import torch
from pyro.ops.stats import fit_generalized_pareto

from pyro_vae.infer.evidence.psis import _fit_gpd_shape, pareto_khat, psis_tail_size

ARVIZ_TOL = 1e-6  # same algorithm in float64; observed differences are ~1e-12


def _log_weights(kind, rows, samples, seed=0):
    """(rows, samples) float64 log importance weights of a known tail type."""
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(4, rows, samples, generator=gen, dtype=torch.float64)
    if kind == "normal-target-t-proposal":  # proposal heavier than target: bounded weights
        z = normal[0] / (normal[1:].pow(2).sum(0) / 3.0).sqrt()  # z ~ Student-t(3)
        log_q = torch.distributions.StudentT(3.0).log_prob(z)
        return torch.distributions.Normal(0.0, 1.0).log_prob(z) - log_q
    if kind == "wide-target-normal-proposal":  # N(0, 4^2) target, N(0, 1) proposal
        # log N(z | 0, 16) - log N(z | 0, 1) = (15/32) z^2 + const: P(w > t) ~ t^(-16/15),
        # a Pareto tail with k = 15/16
        return 15.0 / 32.0 * normal[0].pow(2)
    if kind == "lognormal-sigma-3":  # log w ~ N(0, 3^2): heavy at any practical L
        return 3.0 * normal[0]
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, light",
    [
        ("normal-target-t-proposal", True),
        ("wide-target-normal-proposal", False),
        ("lognormal-sigma-3", False),
    ],
    ids=["light-t-proposal", "heavy-wide-target", "heavy-lognormal"],
)
def test_khat_matches_arviz_psislw(kind, light):
    log_w = _log_weights(kind, rows=4, samples=5000)
    ours = pareto_khat(log_w)
    _, theirs = arviz.psislw(log_w.numpy().copy())
    diff = np.abs(ours.numpy() - theirs).max()
    assert diff < ARVIZ_TOL, f"{kind}: ours {ours.tolist()} vs arviz {theirs.tolist()}"
    if light:
        assert ours.max().item() < 0.5, f"light tail should give k-hat < 0.5: {ours}"
    else:
        assert ours.min().item() > 0.7, f"heavy tail should give k-hat > 0.7: {ours}"


def test_khat_matches_arviz_when_the_threshold_is_tied():
    """Ties at the threshold are not exceedances (ArviZ keeps x > cutoff only)."""
    log_w = _log_weights("lognormal-sigma-3", rows=1, samples=1000, seed=3)
    top = log_w.sort(-1, descending=True).values[0]
    log_w[0, log_w[0] <= top[199]] = top[199]  # the threshold (201st largest) and below tie
    ours = pareto_khat(log_w)
    _, theirs = arviz.psislw(log_w.numpy().copy())
    assert abs(ours.item() - theirs.item()) < ARVIZ_TOL, (ours, theirs)


@pytest.mark.parametrize("k", [0.2, 0.8], ids=["k=0.2", "k=0.8"])
def test_khat_recovers_the_shape_of_generalized_pareto_weights(k):
    """w ~ GPD(k, 1) = (U^-k - 1) / k: the mean k-hat over 20 rows of L=10000 lies within 0.1
    of k (one row's k-hat has standard deviation ~ (1 + k) / sqrt(300) < 0.11)."""
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(20, 10000, generator=gen, dtype=torch.float64)
    log_w = torch.log((u.pow(-k) - 1.0) / k)
    khat = pareto_khat(log_w)
    assert abs(khat.mean().item() - k) < 0.1, f"mean k-hat {khat.mean().item():.3f}, k={k}"


def test_vectorized_fit_equals_pyro_fit_generalized_pareto_row_by_row():
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(30, 213, generator=gen, dtype=torch.float64).pow(-0.6) - 1.0) / 0.6
    x = x * torch.rand(30, 1, generator=gen, dtype=torch.float64)  # different scales
    x = x.sort(-1).values
    batched = _fit_gpd_shape(x)
    looped = torch.tensor([fit_generalized_pareto(row)[0] for row in x], dtype=torch.float64)
    assert (batched - looped).abs().max().item() < 1e-10, (batched - looped).abs().max()


def test_tail_only_input_gives_the_same_khat_as_all_weights():
    L = 3000
    log_w = _log_weights("lognormal-sigma-3", rows=5, samples=L)
    log_w = log_w[:, torch.randperm(L, generator=torch.Generator().manual_seed(0))]
    tail = log_w.topk(psis_tail_size(L) + 10, dim=-1).values.flip(-1)  # any order, extra rows
    assert torch.equal(pareto_khat(tail, num_samples=L), pareto_khat(log_w))


def test_khat_is_invariant_to_a_constant_per_row():
    log_w = _log_weights("wide-target-normal-proposal", rows=3, samples=2000)
    shifted = log_w + torch.tensor([[-1000.0], [0.0], [700.0]], dtype=torch.float64)
    diff = (pareto_khat(shifted) - pareto_khat(log_w)).abs().max().item()
    assert diff < 1e-9, f"k-hat changed by {diff:.3g} under a shift of the log weights"


def test_conventions_for_degenerate_rows():
    rows = torch.randn(6, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    rows[0] = -3.0  # constant weights: no tail at all -> -inf
    rows[1] = 5.0 + 1e-12 * rows[1]  # constant up to round-off -> -inf too
    rows[2, 7] = math.nan  # nan weight -> nan
    rows[3, 0] = math.inf  # infinite weight -> nan
    rows[4] = -math.inf  # all weights zero -> nan
    rows[5, :97] = -math.inf  # only 3 positive weights: too few to fit -> +inf (as ArviZ)
    khat = pareto_khat(rows)
    assert torch.isneginf(khat[:2]).all(), khat
    assert torch.isnan(khat[2:5]).all(), khat
    assert torch.isposinf(khat[5]), khat
    # L < 21: the tail has fewer than 5 weights, nothing to fit (ArviZ returns inf too)
    assert torch.isposinf(pareto_khat(torch.randn(20))), pareto_khat(torch.randn(20))


def test_shapes_dtype_and_tail_size():
    assert [psis_tail_size(L) for L in (10, 100, 1000, 5000)] == [2, 20, 95, 213]
    log_w = torch.randn(2, 3, 500)
    khat = pareto_khat(log_w)
    assert khat.shape == (2, 3) and khat.dtype == torch.float32, (khat.shape, khat.dtype)
    assert pareto_khat(log_w[0, 0]).shape == ()


@pytest.mark.parametrize(
    "log_w, num_samples, message",
    [
        (torch.tensor(1.0), None, "at least one dimension"),
        (torch.randn(3, 50), 40, "smaller than"),
        (torch.randn(3, 50), 5000, "needs the 214 largest"),
    ],
    ids=["scalar", "fewer-samples-than-given", "tail-too-short"],
)
def test_bad_input_raises_value_error(log_w, num_samples, message):
    with pytest.raises(ValueError, match=message):
        pareto_khat(log_w, num_samples=num_samples)


def test_light_tailed_weights_give_a_small_khat():
    """Proposal N(0, 1) for the target N(0, 0.8^2): bounded weights, so k-hat < 0.5 (PSIS)."""
    z = torch.randn(20000, dtype=torch.float64)
    log_w = torch.distributions.Normal(0.0, 0.8).log_prob(z) - torch.distributions.Normal(
        0.0, 1.0
    ).log_prob(z)
    light = pareto_khat(log_w)
    assert light < 0.5, f"light-tailed weights gave k-hat {light:.3f} (expected < 0.5)"
