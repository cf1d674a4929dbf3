"""The VampPrior (pyro_vae.models.vamp) and the mixture prior it is an instance of.

Closed form used (tests/pairs.py, ``MixturePrior``): with a fixed mixture-of-Gaussians prior
p(z) = (1/K) sum_k N(m_k, diag S_k) and a linear-Gaussian decoder x | z ~ N(W z + b, s^2 I),
p(x) = (1/K) sum_k N(x; W m_k + b, W diag(S_k) W^T + s^2 I) (Bishop PRML eq. 2.115 per
component). The VampVAE's prior is checked against the mixture of its encoder's Gaussians at
its pseudo-inputs, computed here by hand (Tomczak & Welling 2018, eq. 9). The generic tools run
on both through the catalogue sweeps (tests/test_contract.py, test_ais.py, test_compiled.py,
test_pair_doctor.py, test_calibration.py).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import requires_cuda
from pairs import case
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from pyro_vae.infer import ais_evidence, bdmc, log_evidence, simulate_data
from pyro_vae.infer.pair.params import collect_params
from pyro_vae.infer.training.compiled_step import CompiledSVIStep
from pyro_vae.infer.training.svi import SVIStep
from pyro_vae.models import VampVAE

D, M, K = 16, 3, 4


def make_vamp(**kwargs):
    torch.manual_seed(0)
    return VampVAE(D, M, (8,), **{"pseudo_inputs": K, **kwargs})


# --- the closed form of a mixture prior ------------------------------------------------------
# 4.0: two-sided normal quantile for a family-wise 0.1% level over the 6 points of each test
# (Bonferroni, Phi^-1(1 - 0.001 / 12) = 3.8); the estimators' bias in log (Jensen, about
# stderr^2 / 2) is negligible beside it at these standard errors
Z_FAMILY = 4.0
# a bound tight enough to fail: dropping log(1/K) moves log p(x) by log 3 = 1.1 nats, more
# than Z_FAMILY standard errors once every standard error is below 0.25
MAX_STDERR = 0.25


def assert_matches_the_closed_form(result, exact):
    assert result.stderr.max() < MAX_STDERR, result.stderr
    error = (result.log_px - exact).abs()
    assert (error < Z_FAMILY * result.stderr).all(), (error, result.stderr)


def test_importance_sampling_matches_the_mixture_priors_closed_form(float64):
    pair = case("mixture-prior").make()
    result = log_evidence(pair.model, pair.guide, pair.x, num_samples=4000)
    assert_matches_the_closed_form(result, pair.owner.exact_log_px(pair.x))


@pytest.mark.slow  # 3 s: 32 chains x 20 steps x 5 leapfrog steps, each a traced model pass
def test_ais_matches_the_mixture_priors_closed_form(float64):
    # the posterior has up to 3 modes and the guide is one poor Gaussian: AIS's weights stay
    # unbiased, their spread is what the standard error measures
    pair = case("mixture-prior").make()
    settings = dict(num_chains=32, num_steps=20, num_leapfrog=5, progress=False)
    result = ais_evidence(pair.model, pair.guide, pair.x, **settings)
    assert_matches_the_closed_form(result, pair.owner.exact_log_px(pair.x))


# --- the VampVAE's prior -----------------------------------------------------------------------
def hand_vamp_log_prob(vamp, z):
    """log (1/K) sum_k N(z; mu(u_k), diag sigma(u_k)^2), u = hardtanh(w) for Bernoulli data."""
    u = F.hardtanh(vamp.pseudo_inputs.weight, 0.0, 1.0)
    loc, scale = vamp.encoder(u)  # (K, M)
    per_component = torch.distributions.Normal(loc, scale).log_prob(z[..., None, :]).sum(-1)
    return per_component.logsumexp(-1) - math.log(K)


def test_the_prior_is_the_mixture_of_the_encoders_gaussians_at_the_pseudo_inputs():
    vamp = make_vamp()
    x = torch.bernoulli(torch.rand(5, D))
    for shape in [(5, M), (7, 5, M)]:  # one draw per point; S particles (an outer plate)
        z = 2 * torch.randn(shape)
        prior = vamp.prior(x)
        assert prior.batch_shape == (5,) and prior.event_shape == (M,)
        torch.testing.assert_close(prior.log_prob(z), hand_vamp_log_prob(vamp, z))
    # started as the paper does: narrow noise around a constant, inside the data's [0, 1]
    u = vamp.pseudo_inputs()
    assert u.shape == (K, D) and 0.0 <= u.min() and u.max() <= 1.0
    assert (u - 0.05).abs().max() < 0.06  # 6 sd of N(0.05, 0.01^2): never reached by chance
    # Gaussian data are unbounded: the pseudo-inputs are the free parameters themselves
    gaussian = make_vamp(likelihood="gaussian")
    assert gaussian.pseudo_inputs() is gaussian.pseudo_inputs.weight


def test_the_pseudo_inputs_and_encoder_learn_from_the_models_log_prior():
    vamp = make_vamp()
    x = torch.bernoulli(torch.rand(5, D))
    guide_trace = poutine.trace(vamp.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vamp.model, trace=guide_trace)).get_trace(x)
    z = guide_trace.nodes["z"]["value"].detach()  # no path through the guide's draw
    model_trace.nodes["z"]["fn"].log_prob(z).sum().backward()
    for name, p in [("pseudo_inputs", vamp.pseudo_inputs.weight)] + list(
        vamp.encoder.named_parameters()
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the model registers them, so the trainer optimizes them
    names = set(collect_params(vamp.model, vamp.guide, x))
    assert "pseudo_inputs$$$weight" in names
    assert {f"encoder$$${n}" for n, _ in vamp.encoder.named_parameters()} <= names


def shifted_vamp():
    """A VampVAE whose every q(z|u_k) is N(3, 0.1^2): far from N(0, I)."""
    vamp = make_vamp()
    last = [m for m in vamp.encoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([3.0] * M + [math.log(0.1)] * M))
    return vamp


def assert_drawn_from_the_shifted_prior(z):
    # 4 standard errors of a mean of n draws of sd 0.1 (normal quantile, family-wise over the
    # M dimensions below 1e-4); draws of N(0, I) miss by 3
    assert (z.mean(0) - 3.0).abs().max() < 4 * 0.1 / math.sqrt(len(z)), z.mean(0)


def test_sample_draws_from_the_vamp_prior():
    vamp = shifted_vamp()
    z = vamp.sample_prior(400)
    assert z.shape == (400, M)
    assert_drawn_from_the_shifted_prior(z)
    torch.manual_seed(1)
    images = vamp.sample(6)
    torch.manual_seed(1)
    torch.testing.assert_close(images, vamp.decode(vamp.vamp_prior(6).sample()))


def test_bdmc_and_sbc_simulate_from_the_vamp_prior():
    """simulate_data (BDMC's and SBC's start) runs the model, so its latents are VampPrior
    draws; BDMC then runs on them (per-datapoint, finite)."""
    vamp = shifted_vamp()
    simulated = simulate_data(vamp.model, torch.zeros(200, D))
    assert_drawn_from_the_shifted_prior(simulated.latents["z"])
    few = simulate_data(vamp.model, torch.zeros(3, D))
    result = bdmc(vamp.model, vamp.guide, few, num_chains=2, num_steps=3, progress=False)
    assert result.lower.shape == result.upper.shape == (3,)
    assert torch.isfinite(result.lower).all() and torch.isfinite(result.upper).all()


def test_config_round_trip_rebuilds_the_same_model():
    vamp = make_vamp()
    assert vamp.config["pseudo_inputs"] == K and VampVAE(D).config["pseudo_inputs"] == 50
    torch.manual_seed(0)
    rebuilt = VampVAE(**vamp.config)
    assert rebuilt.config == vamp.config
    for (name, a), (_, b) in zip(
        vamp.state_dict().items(), rebuilt.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pseudo_inputs": 0}, "pseudo_inputs must be a positive integer, got 0"),
        ({"pseudo_inputs": -1}, "pseudo_inputs must be a positive integer, got -1"),
        ({"pseudo_inputs": True}, "pseudo_inputs must be a positive integer, got True"),
        ({"pseudo_inputs": 2.5}, "pseudo_inputs must be a positive integer, got 2.5"),
        ({"flows": 1}, "flows must be 0 for VampVAE"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        VampVAE(D, M, (8,), **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.slow  # capturing the step's graph (not compiling it) takes 8 s on a loaded machine
def test_the_compiled_step_matches_the_eager_one(float64):
    """The mixture's log-sum-exp and the pseudo-inputs' hardtanh in one captured graph (not
    compiled by inductor: the capture is what differs from the other pairs)."""

    def steps(step_cls, **options):
        with pyro.get_param_store().scope():
            vamp = make_vamp()
            x = torch.bernoulli(torch.full((8, D), 0.4))
            svi = step_cls(vamp.model, vamp.guide, lr=0.01, **options)
            torch.manual_seed(1)
            losses = [svi.step(x[rows], num_data=8) for rows in (slice(0, 4), slice(4, 8))]
            return losses, {n: p.detach().clone() for n, p in svi.params.items()}, svi

    eager = steps(SVIStep)
    fast = steps(CompiledSVIStep, compile_fn=lambda graph, inputs, device: graph)
    assert fast[2].fallback_reason is None and "pseudo_inputs$$$weight" in fast[1]
    # float64 round-off, as tests/test_compiled.py's RTOL, ATOL
    torch.testing.assert_close(fast[:2], eager[:2], rtol=1e-9, atol=1e-12)


def test_the_mixture_support_has_a_bijection():
    """torch's MixtureSameFamily support has none (NUTS fails on it); ours is the components'."""
    vamp = make_vamp()
    support = vamp.prior(torch.zeros(2, D)).support
    assert torch.distributions.biject_to(support)(torch.zeros(2, M)).shape == (2, M)
    plain = dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(2)), dist.Normal(torch.zeros(2), 1.0)
    )
    with pytest.raises(NotImplementedError):
        torch.distributions.biject_to(plain.support)


@requires_cuda
def test_on_cuda_the_prior_and_its_draws_stay_on_the_device():
    vamp = make_vamp().cuda()
    x = torch.bernoulli(torch.rand(5, D)).cuda()
    prior = vamp.prior(x)
    z = torch.randn(5, M, device="cuda")
    assert prior.log_prob(z).device.type == "cuda"
    torch.testing.assert_close(prior.log_prob(z), hand_vamp_log_prob(vamp, z))
    assert vamp.sample_prior(4).device.type == "cuda" and vamp.sample(4).device.type == "cuda"
