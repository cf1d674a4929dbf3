"""DReG (pyro_vae.infer.objectives.dreg) and STL (pyro_vae.infer.objectives.stl): the guide
gradients that keep only the path derivative.

What is pinned, and the source of each tolerance:

- values: DReG's loss is the IWAE's of the same draw, STL's the single-sample ELBO's (the
  same draws, the same sums: float64 round-off, 1e-12);
- the model gradient of DReG equals the IWAE's at the same draw (round-off); with k = 1 its
  guide gradient equals STL's (Tucker et al. 2018, sec. 4: DReG with one particle is STL);
- unbiased: DReG's guide gradient against the IWAE's, paired over the same draws, within 4
  standard errors of zero (a two-sided normal quantile of level 6e-5 per parameter); and the
  same test rejects the "IWAE-STL" estimator (the path term weighted by w~ instead of w~^2,
  biased for the IWAE bound: Tucker et al. 2018, sec. 3), so it has the power to fail;
- zero variance at the exact posterior: with q = p(z|x), log p(x, z) - log q(z|x) = log p(x)
  for every z, so the path derivative is zero for every draw (Roeder et al. 2017, sec. 3):
  measured <= 5e-16 in float64; 1e-10 leaves a margin of 10^5 for the linear algebra of other
  platforms, while the plain estimators' guide gradients there are O(0.1) (checked too);
- the compiled step takes both with no fallback (inductor here, for DReG; the captured step of
  each steps as the eager one does: tests/test_compiled.py).

Both train the conjugate Gaussian pair to its analytic posterior in the sweep of every loss
(tests/test_objectives.py); the SNR against k: experiments/bench_dreg.py.
"""

import math
import warnings
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from pairs import ConjugateGaussian, LinearGaussian, make_ppca

from pyro_vae.infer import FROM_PRIOR, DReGObjective, IWAEObjective, STLObjective
from pyro_vae.infer.compile.capture import CompileFallbackWarning
from pyro_vae.infer.objectives.elbo import FastTraceELBO
from pyro_vae.infer.pair.particles import (
    detach_draws,
    guide_log_prob,
    model_log_prob,
    trace_guide,
    trace_model,
)
from pyro_vae.infer.training.compiled_step import CompiledSVIStep
from pyro_vae.models.vae import VAE

ROUND_OFF = 1e-12  # float64, sums of a few O(1) terms
EXACT_TOL = 1e-10  # see the module docstring


def _loss_and_grads(objective, pair, x, seed, names):
    """The loss at one seeded draw and its gradient in the named (unconstrained) parameters."""
    pyro.set_rng_seed(seed)
    loss = objective(pair.model, pair.guide, x)
    leaves = [pyro.param(name).unconstrained() for name in names]
    return loss.detach(), torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, leaves)])


class IWAEWithSTL(IWAEObjective):
    """The IWAE bound with STL's gradient inside: sum_i w~_i (path of log w_i). Biased for the
    IWAE bound (Tucker et al. 2018, sec. 3): what the unbiasedness test must reject. Built from
    the particle pipeline's public parts."""

    def per_datapoint(self, pair):
        k = self.num_particles
        guide = trace_guide(pair, k)
        log_w = model_log_prob(pair, k, trace_model(pair, k, guide), guide) - guide_log_prob(
            pair, k, guide
        )
        score = guide_log_prob(pair, k, trace_guide(pair, k, at=detach_draws(guide)))
        return torch.logsumexp(log_w + (score - score.detach()), dim=0) - math.log(k)


# --- values and the model gradient --------------------------------------------------------------
def test_values_are_the_iwae_bound_and_the_elbo(float64):
    pair, x = LinearGaussian(a=0.8, c=0.3), torch.randn(5)
    pyro.set_rng_seed(3)
    iwae = IWAEObjective(4)
    expected = iwae(pair.model, pair.guide, x)
    pyro.set_rng_seed(3)
    dreg = DReGObjective(4)
    assert abs(dreg(pair.model, pair.guide, x).item() - expected.item()) < ROUND_OFF
    assert abs(dreg.neg_elbo.item() - iwae.neg_elbo.item()) < ROUND_OFF
    pyro.set_rng_seed(3)
    elbo = FastTraceELBO()(pair.model, pair.guide, x)
    pyro.set_rng_seed(3)
    assert abs(STLObjective()(pair.model, pair.guide, x).item() - elbo.item()) < ROUND_OFF
    with torch.no_grad():  # a value only: the same numbers, no replay
        pyro.set_rng_seed(3)
        assert abs(dreg(pair.model, pair.guide, x).item() - expected.item()) < ROUND_OFF
        pyro.set_rng_seed(3)
        assert abs(STLObjective()(pair.model, pair.guide, x).item() - elbo.item()) < ROUND_OFF


def test_dreg_with_one_particle_is_stl(float64):
    pair, x = LinearGaussian(a=0.8, c=0.3), torch.randn(5)
    for seed in range(3):
        _, dreg = _loss_and_grads(DReGObjective(1), pair, x, seed, "acs")
        _, stl = _loss_and_grads(STLObjective(1), pair, x, seed, "acs")
        torch.testing.assert_close(dreg, stl, rtol=0, atol=ROUND_OFF)


def test_a_latent_drawn_from_the_prior_keeps_its_draw_in_the_replay(float64):
    # the replays at detached draws must see the same value of a model latent the guide does
    # not sample (marked FROM_PRIOR), else DReG's model gradient would not be the IWAE's
    def model(x):
        a = pyro.param("a", torch.tensor(0.7))
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.Normal(0.0, 1.0), infer={FROM_PRIOR: True})
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(a * z + 0.3 * u, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(pyro.param("c", torch.tensor(0.2)) * x, 1.0))

    pair, x = SimpleNamespace(model=model, guide=guide), torch.randn(4)
    for seed in range(3):
        iwae = _loss_and_grads(IWAEObjective(3), pair, x, seed, "a")
        dreg = _loss_and_grads(DReGObjective(3), pair, x, seed, "a")
        torch.testing.assert_close(dreg, iwae, rtol=0, atol=ROUND_OFF)


# --- unbiased for the IWAE bound's gradient -----------------------------------------------------
def _gradients(objective, pair, x, draws):
    """Gradients in (a, c, s) at the seeded draws 0..draws-1: shape (draws, 3)."""
    return torch.stack([_loss_and_grads(objective, pair, x, s, "acs")[1] for s in range(draws)])


def _standard_errors(difference):
    """The mean of paired differences (draws, P) in standard errors of that mean, per column."""
    return difference.mean(0) / (difference.std(0) / math.sqrt(difference.shape[0]))


@pytest.mark.slow  # 3 x 200 gradients
def test_dreg_guide_gradient_is_unbiased_and_its_model_gradient_is_iwaes(float64):
    # a guide far from the posterior (c = 0.3, s = 1 against 0.49 and 0.78): weights uneven
    pair, k, draws = LinearGaussian(a=0.8, c=0.3), 5, 200
    x = 2.0 * torch.randn(3, generator=torch.Generator().manual_seed(5))
    iwae = _gradients(IWAEObjective(k), pair, x, draws)
    dreg = _gradients(DReGObjective(k), pair, x, draws)
    z = _standard_errors(dreg[:, 1:] - iwae[:, 1:])  # c, s: the guide's parameters
    assert z.abs().max() < 4, f"DReG - IWAE guide gradient: {z.tolist()} standard errors"
    assert (dreg[:, 0] - iwae[:, 0]).abs().max() < ROUND_OFF  # a: the model's, the same
    # power: the same test rejects a biased estimator (measured: 17 and 24 standard errors
    # over 400 draws)
    z_biased = _standard_errors(_gradients(IWAEWithSTL(k), pair, x, draws)[:, 1:] - iwae[:, 1:])
    assert z_biased.abs().max() > 4, z_biased


# --- zero variance at the exact posterior --------------------------------------------------------
def _conjugate():
    """The conjugate Gaussian pair with its guide's parameters at the exact posterior."""
    pair = ConjugateGaussian(noise=1.0)
    optimum = pair.optimum()
    return ConjugateGaussian(noise=1.0, init=tuple(optimum[n] for n in "abc")), "abc", (8,)


class ExactPPCAGuide:
    """pPCA (tests/pairs.py's make_ppca) with a guide q(z|x) = N(A x + m, L L^T) whose
    parameters start at the exact posterior (PRML eq. 12.42): A = M^-1 W^T, m = -A b,
    L L^T = sigma^2 M^-1."""

    def __init__(self):
        self.ppca = make_ppca()
        W, b, s2 = self.ppca.W, self.ppca.b, self.ppca.sigma2
        M = W.T @ W + s2 * torch.eye(W.shape[1])
        self.A = torch.linalg.solve(M, W.T)
        self.m, self.L = -self.A @ b, torch.linalg.cholesky(s2 * torch.linalg.inv(M))
        self.model = self.ppca.model

    def guide(self, x):
        A, m = pyro.param("A", self.A), pyro.param("m", self.m)
        L = pyro.param("L", self.L, constraint=dist.constraints.lower_cholesky)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(x @ A.T + m, scale_tril=L))


def _ppca():
    torch.manual_seed(0)
    return ExactPPCAGuide(), "AmL", (6, 5)


EXACT = {"conjugate-gaussian": _conjugate, "ppca": _ppca}


@pytest.mark.parametrize("exact", list(EXACT))
def test_path_gradients_vanish_at_the_exact_posterior(exact, float64):
    pair, names, shape = EXACT[exact]()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    for objective in (STLObjective(), DReGObjective(5)):
        for seed in range(3):
            _, grads = _loss_and_grads(objective, pair, x, seed, names)
            assert grads.abs().max() < EXACT_TOL, (objective, grads.abs().max())
    # the plain estimators' guide gradients do not vanish there: the test can fail
    for objective in (FastTraceELBO(), IWAEObjective(5)):
        _, grads = _loss_and_grads(objective, pair, x, 0, names)
        assert grads.abs().max() > 1e-3, (objective, grads.abs().max())


# --- the compiled step takes them ----------------------------------------------------------------
# (the captured step against the eager one, step by step, DReG, STL and DReG with IAF, each
# without a fallback: tests/test_compiled.py). Inductor once, for the family: DReG's replay at
# detached draws is STL's with k particles (DReG with k = 1 is STL, pinned above), so one
# inductor compile of it checks the operations both hand to inductor.
@pytest.mark.slow  # inductor compiles the step graph (tens of seconds)
def test_the_compiled_step_builds_without_a_fallback():
    vae = VAE(12, latent_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((10, 12), 0.4))
    svi = CompiledSVIStep(vae.model, vae.guide, "iwae-dreg", lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        svi.setup(x)
        losses = [svi.step(x, num_data=10) for _ in range(2)]
    assert svi.fallback_reason is None and all(math.isfinite(v) for v in losses), losses
