"""Tests for pyro_vae.infer.objectives.iwae: the importance-weighted bound as a training objective.

Closed forms and references: with k = 1 the bound is the single-sample ELBO of the same draw;
it is Pyro's RenyiELBO(alpha=0) of the same draw, value and gradients (Pyro sums over the
batch where we average). With the exact posterior as guide it equals log p(x)
(tests/test_evidence.py, with every estimator).
Tolerance: float64 round-off (1e-12).
"""

import pyro
import pytest
import torch
from pairs import BernoulliLatent, GlobalMean, LinearGaussian
from pyro.infer import RenyiELBO

from pyro_vae.infer.objectives.elbo import FastTraceELBO
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.objectives.registry import make_objective
from pyro_vae.infer.pair.sites import GlobalLatentError


@pytest.fixture
def pair(float64):
    return LinearGaussian(a=0.8, c=0.3)


def _leaves():
    return [pyro.param(name).unconstrained() for name in ("a", "c", "s")]


def test_one_particle_is_the_single_sample_elbo(pair):
    x = torch.randn(9)
    pyro.set_rng_seed(4)
    elbo = FastTraceELBO()(pair.model, pair.guide, x)
    pyro.set_rng_seed(4)
    iwae = IWAEObjective(1)(pair.model, pair.guide, x)
    assert abs(iwae.item() - elbo.item()) < 1e-12


def test_one_datapoint_agrees_with_pyro_renyi_elbo_alpha_0(pair):
    x, k = torch.tensor([1.7]), 7
    ours = IWAEObjective(k)
    renyi = RenyiELBO(alpha=0, num_particles=k, max_plate_nesting=1, vectorize_particles=True)
    pyro.set_rng_seed(11)
    loss = ours(pair.model, pair.guide, x)
    ours_grads = torch.autograd.grad(loss, _leaves())
    pyro.set_rng_seed(11)
    pyro_loss = renyi.loss_and_grads(pair.model, pair.guide, x)
    assert abs(loss.item() - pyro_loss) < 1e-12
    for mine, leaf in zip(ours_grads, _leaves(), strict=True):
        assert abs(mine.item() - leaf.grad.item()) < 1e-12


def test_a_batch_agrees_with_pyro_renyi_summed_over_datapoints(pair):
    """For a data plate shared by every site, RenyiELBO sums the per-datapoint bounds over
    the batch; ours is their mean (nats per datapoint)."""
    x, k = torch.randn(5), 6
    renyi = RenyiELBO(alpha=0, num_particles=k, max_plate_nesting=1, vectorize_particles=True)
    pyro.set_rng_seed(2)
    pyro_loss = renyi.loss(pair.model, pair.guide, x)
    pyro.set_rng_seed(2)
    loss = IWAEObjective(k)(pair.model, pair.guide, x)
    assert abs(pyro_loss - 5 * loss.item()) < 1e-12


def test_the_layout_check_does_not_change_the_draws(pair):
    """The first call traces the pair to find its layout; that trace runs in a forked RNG, so
    a fresh and a reused objective give the same loss at one seed."""
    x = torch.randn(4)
    objective = IWAEObjective(3)
    pyro.set_rng_seed(0)
    first = objective(pair.model, pair.guide, x).item()
    pyro.set_rng_seed(0)
    assert objective(pair.model, pair.guide, x).item() == first


def test_make_objective_builds_it_by_name(pair):
    objective = make_objective("iwae", pair.model, pair.guide, torch.randn(3))
    assert isinstance(objective, IWAEObjective) and objective.num_particles == 5


@pytest.mark.parametrize("k", [0, -2, 2.5, True, "5"])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k >= 1"):
        IWAEObjective(k)


def test_a_global_latent_is_refused():
    pair = GlobalMean(scale=1.0)
    with pytest.raises(GlobalLatentError, match="'w'"):
        IWAEObjective(3)(pair.model, pair.guide, torch.randn(4))


def test_a_guide_that_is_not_reparameterized_is_refused():
    pair = BernoulliLatent()
    with pytest.raises(ValueError, match="reparameterized"):
        IWAEObjective(3)(pair.model, pair.guide, torch.randn(4))
