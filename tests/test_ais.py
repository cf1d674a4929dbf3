"""Tests for annealed importance sampling (pyro_vae.infer.evidence.ais), its HMC transition,
bidirectional Monte Carlo (pyro_vae.infer.evidence.bdmc) and both with a discrete latent
enumerated (pyro_vae.infer.evidence.enumerated).

Closed forms used, in float64 with the seed 0 of tests/conftest.py:

- the factor-analysis pair of tests/pairs.py, z ~ N(0, I_K), x | z ~ N(W z, diag(psi)):
  p(x) = N(0, W W^T + diag(psi)) and p(z | x) = N(S W^T Psi^-1 x, S) with
  S = (I + W^T Psi^-1 W)^-1 (Bishop PRML eq. 12.66-12.68 with Psi for sigma^2 I);
- the mixtures of tests/pairs.py: log p(x) = logsumexp_y [log p(y) + log p(x | y)], with
  p(x | y) Gaussian (GaussianMixture: no continuous latent; MixtureWithLatent: z integrated);
- with the exact posterior as the guide every f_t is that posterior, so every increment of every
  chain's log weight is (b_t - b_{t-1}) log p(x): each chain's weight is log p(x) to rounding;
- the Gaussian f_b between two Gaussians has precision (1 - b) / s_q^2 + b / s_p^2.

Statistical checks compare errors with standard errors (tolerances stated next to each).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pairs import CATALOGUE, FactorAnalysis, GaussianMixture, MixtureWithLatent

from pyro_vae.infer.evidence.ais import AISSettings, ais_evidence, schedule
from pyro_vae.infer.evidence.bdmc import bdmc, simulate_data
from pyro_vae.infer.evidence.enumerated import discrete_site, enumerated_ais, enumerated_bdmc
from pyro_vae.infer.evidence.hmc import ChainState, hmc_transition
from pyro_vae.infer.evidence.importance import log_evidence
from pyro_vae.infer.pair.particles import bind_pair
from pyro_vae.infer.pair.potential import LatentSpace

FAST = dict(num_chains=8, num_steps=100, num_leapfrog=5, progress=False)


# --- every pair of the catalogue ----------------------------------------------------------
@pytest.mark.parametrize("case", CATALOGUE, ids=str)
def test_ais_runs_on_every_pair_or_refuses_as_documented(case, float64):
    pair = case.make()
    guide = case.exact_guide(pair) if case.exact_guide else pair.guide
    settings = dict(num_chains=3, num_steps=4, num_leapfrog=2, progress=False)
    if case.refusal:
        with pytest.raises(case.refusal[0], match=case.refusal[1]):
            ais_evidence(pair.model, guide, pair.x, *pair.args, **settings)
        return
    if not case.continuous or case.enumerated:
        with pytest.raises(ValueError, match="is discrete: annealed importance sampling"):
            ais_evidence(pair.model, guide, pair.x, *pair.args, **settings)
        return
    result = ais_evidence(pair.model, guide, pair.x, *pair.args, **settings)
    n = pair.x.shape[0]
    assert result.log_px.shape == result.stderr.shape == result.accept_rate.shape == (n,)
    assert result.log_weights.shape == (n, 3) and torch.isfinite(result.log_px).all()
    if case.exact_guide and case.exact_log_px:
        # every chain's weight is log p(x): only rounding (float64, ~100 terms) separates them
        exact = case.exact_log_px(pair)
        assert torch.allclose(result.log_weights, exact[:, None].expand(n, 3), atol=1e-9)


def test_every_chain_weight_is_exact_with_the_exact_posterior_of_factor_analysis(float64):
    fa = FactorAnalysis()
    x = fa.sample(12)
    result = ais_evidence(fa.model, fa.exact_guide, x, num_chains=4, num_steps=20, progress=False)
    # the 19 HMC moves are accepted (an exact-guide path is flat), and every weight is exact
    assert torch.allclose(result.log_weights, fa.log_px(x)[:, None].expand(12, 4), atol=1e-9)


# --- a poor guide ----------------------------------------------------------------------------
@pytest.mark.slow
def test_with_a_poor_guide_ais_is_within_its_errors_and_improves_with_steps(float64):
    fa = FactorAnalysis()
    x = fa.sample(30)
    exact = fa.log_px(x)
    errors = {}
    for steps in (10, 200):
        result = ais_evidence(fa.model, fa.guide, x, **{**FAST, "num_steps": steps})
        errors[steps] = (result.log_px - exact).abs().mean()
    error = result.log_px - exact
    # at T = 200 the mean error over 30 points lies within 4 standard errors of the mean
    # (delta-method errors per point, combined as sqrt(sum se^2) / n)
    se_of_mean = result.stderr.pow(2).sum().sqrt() / len(x)
    assert error.mean().abs() < 4 * se_of_mean + 0.05, (error.mean(), se_of_mean)
    assert errors[200] < 0.5 * errors[10], errors


def test_at_equal_compute_ais_beats_importance_sampling_where_khat_is_high(float64):
    fa = FactorAnalysis()
    x = fa.sample(30)
    exact = fa.log_px(x)
    settings = {**FAST, "num_steps": 100}
    ais = ais_evidence(fa.model, fa.guide, x, **settings)
    # equal compute: one IS sample per model evaluation of AIS (chains x steps x leapfrog)
    budget = settings["num_chains"] * settings["num_steps"] * settings["num_leapfrog"]
    importance = log_evidence(fa.model, fa.guide, x, num_samples=budget)
    high = importance.khat > 0.7
    assert high.sum() >= 10  # the shifted prior is a poor proposal for most points
    is_error = (importance.log_px - exact)[high].abs().mean()
    ais_error = (ais.log_px - exact)[high].abs().mean()
    assert ais_error < 0.5 * is_error, (ais_error, is_error)


@pytest.mark.slow
def test_the_vectorized_estimator_agrees_with_a_loop_over_datapoints(float64):
    fa = FactorAnalysis()
    x, fast = fa.sample(4), {**FAST, "num_steps": 50}
    together = ais_evidence(fa.model, fa.guide, x, **fast)
    one_by_one = torch.cat(
        [ais_evidence(fa.model, fa.guide, x[i : i + 1], **fast).log_px for i in range(len(x))]
    )
    chunked = ais_evidence(fa.model, fa.guide, x, chunk_size=3, **fast)
    # independent runs: their difference per point within 4 combined standard errors
    for other in (one_by_one, chunked.log_px):
        se = (2 * together.stderr.pow(2)).sqrt()
        assert ((together.log_px - other).abs() < 4 * se + 0.05).all()


# --- a discrete latent, enumerated ------------------------------------------------------------
def test_enumerating_the_component_of_a_mixture_gives_its_exact_evidence(float64):
    mixture, x = GaussianMixture(), torch.linspace(-4.0, 5.0, 7)
    result = enumerated_ais(mixture.model, mixture.guide, x, num_chains=8, num_steps=3,
                            progress=False)  # fmt: skip
    # y fixed, nothing is left to move: each weight is log p(x, y) and their logsumexp is
    # log p(x) to float64 rounding; the guide's q(y|x) (not the posterior) plays no part
    assert torch.allclose(result.log_px, mixture.exact_log_px(x).detach(), atol=1e-12)
    assert (result.stderr == 0).all() and result.log_weights.shape == (7, 8)


@pytest.mark.slow
def test_enumerated_ais_of_a_mixture_with_a_latent_is_within_its_errors(float64):
    mixture, x = MixtureWithLatent(), torch.linspace(-5.0, 4.0, 12)
    settings = {**FAST, "num_chains": 32, "num_steps": 30}
    result = enumerated_ais(mixture.model, mixture.guide, x, **settings)
    z = (result.log_px - mixture.exact_log_px(x)) / result.stderr
    # the mean error within 4 standard errors of the mean (delta-method errors, independent
    # points), and every point within 5: a standard error from 32 chains is itself uncertain
    # by ~1 / sqrt(2 x 31) = 13%, and AIS's errors are skewed low (Jensen)
    assert z.sum().abs() / math.sqrt(len(x)) < 4, z
    assert (z.abs() < 5).all(), z


@pytest.mark.slow
def test_enumerated_bdmc_brackets_the_mixture_on_average(float64):
    mixture = MixtureWithLatent()
    simulated = simulate_data(mixture.model, torch.zeros(30))
    assert set(simulated.latents) == {"y", "z"}
    result = enumerated_bdmc(mixture.model, mixture.guide, simulated, **{**FAST, "num_steps": 30})
    exact = mixture.exact_log_px(simulated.x)
    # lower <= exact <= upper on average over 30 points, within 4 standard errors of the mean
    lower_se = result.lower_stderr.pow(2).sum().sqrt() / 30
    upper_se = result.upper_stderr.pow(2).sum().sqrt() / 30
    assert (result.lower - exact).mean() < 4 * lower_se, (result.lower - exact).mean()
    assert (result.upper - exact).mean() > -4 * upper_se, (result.upper - exact).mean()


def test_a_continuous_pair_is_passed_to_plain_ais_and_two_discrete_sites_refused():
    fa = FactorAnalysis()
    assert discrete_site(fa.guide, fa.sample(3)) is None

    def two_labels(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("c", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="guide sites 'y', 'c' are discrete"):
        discrete_site(two_labels, torch.zeros(4))


# --- the HMC transition ----------------------------------------------------------------------
def test_hmc_leaves_the_annealed_gaussian_invariant(float64):
    # model z ~ N(0, 1), x ~ N(z, 1): p(z | x) = N(x / 2, 1/2); guide q = N(-1, 2^2)
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.full_like(x, -1.0), 2.0))

    x, beta, chains = torch.tensor([0.0, 3.0]), 0.6, 4000
    precision = (1 - beta) / 4.0 + beta / 0.5
    mean = ((1 - beta) * -1.0 / 4.0 + beta * (x / 2) / 0.5) / precision
    space, _ = LatentSpace.draw(bind_pair(model, guide, x), chains)
    u = (mean + torch.randn(chains, 2) / precision**0.5).unsqueeze(-1)  # exact draws of f_b
    state = ChainState.at(space, u)
    scale = torch.ones(2, 1)
    for _ in range(10):
        state, accept = hmc_transition(space, state, beta, torch.full((chains, 2), 0.8), scale, 3)
    z = state.u.squeeze(-1)
    assert 0.3 < accept.mean() < 1.0  # the moves do move
    # mean within 4 standard errors sd / sqrt(chains); variance within 4 SE sd^2 sqrt(2/chains)
    var = 1 / precision
    assert ((z.mean(0) - mean).abs() < 4 * math.sqrt(var / chains)).all()
    assert ((z.var(0) - var).abs() < 4 * var * math.sqrt(2 / chains)).all()


# --- bidirectional Monte Carlo ----------------------------------------------------------------
@pytest.mark.slow
def test_bdmc_brackets_the_exact_evidence_and_its_gap_shrinks(float64):
    fa = FactorAnalysis()
    simulated = simulate_data(fa.model, torch.zeros(30, 8))
    exact = fa.log_px(simulated.x)
    gaps = {}
    for steps in (10, 200):
        result = bdmc(fa.model, fa.guide, simulated, **{**FAST, "num_steps": steps})
        gaps[steps] = result.gap.mean()
    # lower <= exact <= upper on average over 30 points, within 4 standard errors of the mean
    lower_se = result.lower_stderr.pow(2).sum().sqrt() / 30
    upper_se = result.upper_stderr.pow(2).sum().sqrt() / 30
    assert (result.lower - exact).mean() < 4 * lower_se + 0.02
    assert (result.upper - exact).mean() > -4 * upper_se - 0.02
    assert gaps[200] < 0.3 * gaps[10], gaps


def test_bdmc_with_the_exact_guide_closes_the_sandwich(float64):
    fa = FactorAnalysis()
    simulated = simulate_data(fa.model, torch.zeros(5, 8))
    result = bdmc(fa.model, fa.exact_guide, simulated, num_chains=2, num_steps=5, progress=False)
    exact = fa.log_px(simulated.x)
    assert torch.allclose(result.lower, exact, atol=1e-9)
    assert torch.allclose(result.upper, exact, atol=1e-9)


def test_simulating_needs_one_observed_site():
    def two_observed(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            pyro.sample("y", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="exactly one observed site"):
        simulate_data(two_observed, torch.zeros(3))


# --- settings --------------------------------------------------------------------------------
def test_schedules_run_from_zero_to_one_and_increase():
    for kind in ("sigmoid", "linear"):
        b = schedule(50, kind, dtype=torch.float64)
        assert b[0] == 0 and b[-1] == 1 and (b.diff() > 0).all()
    sigmoid = schedule(50, "sigmoid", dtype=torch.float64)
    assert sigmoid.diff()[0] < sigmoid.diff()[25]  # denser near the ends


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(num_chains=0), "num_chains must be a positive int"),
        (dict(num_steps=2.5), "num_steps must be a positive int"),
        (dict(schedule="cosine"), "schedule must be one of"),
        (dict(step_size=2.0), "step_size <= step_size_bounds"),
        (dict(target_accept=1.0), "target_accept must lie in"),
        (dict(num_pilot_chains=0), "needs num_pilot_chains >= 1"),
    ],
)
def test_bad_settings_are_refused_in_one_line(bad, match):
    with pytest.raises(ValueError, match=match):
        AISSettings(**bad)


def test_a_model_latent_the_guide_does_not_sample_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + w, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'w'"):
        ais_evidence(model, guide, torch.zeros(3), num_chains=2, num_steps=2, progress=False)


# --- memory ------------------------------------------------------------------------------------
def test_chains_are_refused_exactly_when_their_lower_bound_exceeds_free_memory(monkeypatch):
    import pyro_vae.infer.evidence.memory as memory

    x = torch.zeros(3, 4, dtype=torch.float64)
    need = 10 * 2 * (8 * 5 + 2 * 4) * 8  # chains x points x (8 D + 2 x's size) x 8 bytes
    monkeypatch.setattr(memory, "available_bytes", lambda device: need)
    memory.check_chains_fit("AIS", 10, 2, 5, 4, x)  # fits exactly: no false alarm
    monkeypatch.setattr(memory, "available_bytes", lambda device: need - 1)
    with pytest.raises(ValueError, match=r"^AIS needs at least 0.0 GiB \(10 chains x 2 points"):
        memory.check_chains_fit("AIS", 10, 2, 5, 4, x)
    assert memory.available_bytes("cpu") > 0  # /proc/meminfo or sysconf on this machine


# --- compiled --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["factor-analysis", "log-normal"])  # + a support transform
@pytest.mark.slow
def test_the_compiled_transition_draws_what_the_eager_one_draws(name, float64):
    from pairs import case

    if name == "factor-analysis":
        fa = FactorAnalysis()
        model, guide, x, args = fa.model, fa.guide, fa.sample(5), ()
    else:
        pair = case(name).make()
        model, guide, x, args = pair.model, pair.guide, pair.x, pair.args
    results = []
    for compile in (False, True):
        pyro.set_rng_seed(0)
        settings = dict(num_chains=3, num_steps=6, num_leapfrog=2, progress=False)
        results.append(ais_evidence(model, guide, x, *args, compile=compile, **settings))
    eager, compiled = results
    # the same draws for one RNG state; inductor may reorder float64 sums: 1e-9 nats
    assert torch.allclose(eager.log_weights, compiled.log_weights, rtol=0, atol=1e-9)
    assert torch.equal(eager.step_size, compiled.step_size)
