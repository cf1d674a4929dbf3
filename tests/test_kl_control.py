"""Tests for pyro_vae.infer.objectives.kl_control: KL annealing and free bits, against hand
computations.

Each loss is recomputed here from the same draw (same seed) with plain torch.distributions:
reconstruction log p(x|z), per-dimension log q and log p, then the formula of the docstring.
Tolerances: float64 round-off of sums over a few dozen terms (1e-12).
"""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from pairs import BernoulliLatent, LinearGaussian, SparseLoadings
from pyro import poutine

from pyro_vae.infer.objectives.elbo import FastTraceELBO
from pyro_vae.infer.objectives.kl_control import KLAnnealing, KLControlledELBO
from pyro_vae.infer.training.loop import train

N, D = 6, 2
# the likelihood sees dimension 0 of z only: dimensions 1 and 2 matter to the KL alone
# (tests/pairs.py); ``guide`` factorizes over the 3 dimensions, ``full_cov_guide`` does not
PAIR = SparseLoadings()
W, M = PAIR.W, PAIR.M
model, guide, full_cov_guide, _guide_params = (
    PAIR.model, PAIR.guide, PAIR.full_cov_guide, PAIR.guide_params
)  # fmt: skip


@pytest.fixture
def x(float64):
    return torch.randn(N, D, generator=torch.Generator().manual_seed(1))


def _terms(guide_fn, x, seed):
    """Reconstruction per datapoint and per-dimension (or per-site) KL of the draw at ``seed``."""
    pyro.set_rng_seed(seed)
    guide_trace = poutine.trace(guide_fn).get_trace(x)
    z = guide_trace.nodes["z"]["value"]
    recon = dist.Normal(z @ W.T, 1.0).log_prob(x).sum(-1).mean()
    log_p = dist.Normal(0.0, 1.0).log_prob(z)  # (N, M)
    q = guide_trace.nodes["z"]["fn"]
    if isinstance(q, dist.MultivariateNormal):
        return recon, (q.log_prob(z) - log_p.sum(-1)).mean()
    log_q = q.base_dist.log_prob(z)
    return recon, (log_q - log_p).mean(0)  # (M,)


def _loss(objective, guide_fn, x, seed, **kwargs):
    pyro.set_rng_seed(seed)
    return objective(model, guide_fn, x, **kwargs)


def test_plain_settings_are_exactly_the_elbo(x):
    fast = _loss(FastTraceELBO(), guide, x, seed=3)
    controlled = KLControlledELBO()
    loss = _loss(controlled, guide, x, seed=3)
    # the same draw, summed in another order: round-off only
    assert abs(loss.item() - fast.item()) < 1e-12
    assert abs(controlled.neg_elbo.item() - fast.item()) < 1e-12
    leaves = [pyro.param(name).unconstrained() for name in ("m", "s")]
    grads = [torch.autograd.grad(v, leaves) for v in (fast, loss)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_annealed_loss_weights_the_kl_by_beta(x):
    objective = KLControlledELBO(annealing=KLAnnealing(epochs=4, start=0.2))
    objective.set_progress(1.0)  # beta = 0.2 + 0.8 * 1/4 = 0.4
    assert objective.beta == pytest.approx(0.4, abs=1e-15)
    loss = _loss(objective, guide, x, seed=5)
    recon, kl = _terms(guide, x, seed=5)
    assert abs(loss.item() - (-recon + 0.4 * kl.sum()).item()) < 1e-12
    assert abs(objective.neg_elbo.item() - (kl.sum() - recon).item()) < 1e-12


def test_free_bits_clamp_each_dimension(x):
    recon, kl = _terms(guide, x, seed=7)
    lam = kl.median().item()  # one dimension below, one above, one at the threshold
    loss = _loss(KLControlledELBO(free_bits=lam), guide, x, seed=7)
    expected = -recon + kl.clamp(min=lam).sum()
    assert abs(loss.item() - expected.item()) < 1e-12
    # minibatch scaling: the per-datapoint value does not depend on the data-set size
    scaled = _loss(KLControlledELBO(free_bits=lam), guide, x, seed=7, num_data=10 * N)
    assert abs(scaled.item() - expected.item()) < 1e-12


def test_a_dimension_below_lambda_gets_no_gradient_from_its_kl(x):
    m, _ = _guide_params()
    # lambda far above any KL here: the clamp holds every dimension; only the likelihood,
    # which reads dimension 0 alone, moves m
    grad = torch.autograd.grad(_loss(KLControlledELBO(free_bits=50.0), guide, x, seed=2), m)[0]
    assert grad[0] != 0
    assert torch.equal(grad[1:], torch.zeros(2))
    grad = torch.autograd.grad(_loss(KLControlledELBO(free_bits=0.0), guide, x, seed=2), m)[0]
    assert (grad[1:] != 0).all()


def test_a_site_that_does_not_factorize_is_one_group(x):
    recon, kl_site = _terms(full_cov_guide, x, seed=4)
    for lam in (0.0, kl_site.item() / M + 0.5):  # the group's threshold is M * lambda
        loss = _loss(KLControlledELBO(free_bits=lam), full_cov_guide, x, seed=4)
        expected = -recon + torch.clamp(kl_site, min=M * lam)
        assert abs(loss.item() - expected.item()) < 1e-12, f"lambda {lam}"


def test_schedule_linear_and_cyclical():
    linear = KLAnnealing(epochs=10, start=0.1)
    assert [linear(t) for t in (0, 5, 10, 50)] == pytest.approx([0.1, 0.55, 1.0, 1.0])
    cyclical = KLAnnealing(epochs=2, cycles=3)  # rise 2 epochs, hold 2, three times
    assert [cyclical(t) for t in (0, 1, 2, 3, 4, 5, 11.9, 12, 13)] == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "annealing epochs"),
        (dict(epochs=-1), "annealing epochs"),
        (dict(epochs=3, start=1.0), "start"),
        (dict(epochs=3, cycles=0), "cycles"),
    ],
)
def test_bad_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KLAnnealing(**kwargs)


@pytest.mark.parametrize("free_bits", [-0.1, float("nan"), float("inf"), "1"])
def test_bad_free_bits_are_refused(free_bits):
    with pytest.raises(ValueError, match="free_bits"):
        KLControlledELBO(free_bits=free_bits)


def test_a_guide_that_is_not_reparameterized_is_refused():
    pair = BernoulliLatent()
    with pytest.raises(ValueError, match="reparameterized"):
        KLControlledELBO(free_bits=1.0)(pair.model, pair.guide, torch.randn(4))


def _annealed_run(out_dir, epochs, resume=False):
    pyro.clear_param_store()
    pair = LinearGaussian(a=0.5)
    data = torch.randn(48, generator=torch.Generator().manual_seed(0)) * 1.2
    loss = KLControlledELBO(annealing=KLAnnealing(epochs=3, start=0.1), free_bits=0.05)
    result = train(
        pair.model, pair.guide, data, epochs=epochs, batch_size=10, lr=0.05, loss=loss,
        seed=0, out_dir=out_dir, resume=resume, progress=False,
    )  # fmt: skip
    return dict(pyro.get_param_store().items()), result


def test_resumed_annealed_run_is_bit_identical(tmp_path):
    full_params, full = _annealed_run(tmp_path / "full", epochs=5)
    _annealed_run(tmp_path / "split", epochs=2)
    split_params, resumed = _annealed_run(tmp_path / "split", epochs=5, resume=True)
    for name, value in full_params.items():
        assert torch.equal(value, split_params[name]), f"{name} differs after resuming"
    keep = ("epoch", "train_loss", "train_objective", "kl_weight", "val_loss")
    assert [{k: r[k] for k in keep} for r in full.history] == [
        {k: r[k] for k in keep} for r in resumed.history
    ]
    # the schedule ran: beta rose to 1, and the objective differs from -ELBO while it rose
    weights = [r["kl_weight"] for r in json.loads((tmp_path / "split/history.json").read_text())]
    assert weights[0] < weights[1] < weights[2] < weights[3] == weights[4] == 1.0
    assert full.history[0]["train_objective"] != full.history[0]["train_loss"]
