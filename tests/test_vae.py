"""The VAE model/guide pair: trace structure, ELBO vs a hand computation, gradients,
particle vectorization, likelihood densities, config round trip, helpers, errors."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO

from pyro_vae.models.likelihoods import (
    BernoulliLikelihood,
    GaussianLikelihood,
    IndependentBernoulli,
    Likelihood,
    get_likelihood,
)
from pyro_vae.models.vae import VAE

N, D, M = 5, 64, 3
VARIANTS = [("bernoulli", "mlp"), ("gaussian", "mlp"), ("bernoulli", "conv"), ("gaussian", "conv")]
VARIANT_IDS = ["bernoulli-mlp", "gaussian-mlp", "bernoulli-conv", "gaussian-conv"]


def small_vae(likelihood="bernoulli", arch="mlp", **kwargs):
    return VAE(D, latent_dim=M, hidden=(16,), likelihood=likelihood, arch=arch, **kwargs)


def batch(likelihood="bernoulli"):
    x = torch.rand(N, D)
    return torch.bernoulli(x) if likelihood == "bernoulli" else x


def traces(vae, x, model=None, guide=None):
    """Guide trace and the model trace replayed on the guide's z."""
    guide_tr = poutine.trace(guide or vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(model or vae.model, trace=guide_tr)).get_trace(x)
    return guide_tr, model_tr


class LaplaceLikelihood(Likelihood):
    """A user-defined likelihood: the decoder emits a location and a log-scale per pixel."""

    def num_params(self, data_dim):
        return 2 * data_dim

    def forward(self, params):
        loc, log_scale = params.chunk(2, dim=-1)
        return dist.Laplace(loc, log_scale.exp()).to_event(1)


@pytest.mark.parametrize("likelihood,arch", VARIANTS, ids=VARIANT_IDS)
def test_trace_structure(likelihood, arch):
    vae, x = small_vae(likelihood, arch), batch(likelihood)
    guide_tr, model_tr = traces(vae, x)
    qz, pz, px = guide_tr.nodes["z"], model_tr.nodes["z"], model_tr.nodes["x"]
    for site in (qz, pz, px):
        plates = [f.name for f in site["cond_indep_stack"]]
        assert plates == ["data"], f"{site['name']} plates {plates}"
        assert site["fn"].event_dim == 1, f"{site['name']} event_dim {site['fn'].event_dim}"
        assert site["fn"].batch_shape == (N,), f"{site['name']} batch {site['fn'].batch_shape}"
    assert not qz["is_observed"] and qz["value"].shape == (N, M), qz["value"].shape
    assert qz["fn"].has_rsample, "guide z must be reparameterized"
    assert px["is_observed"] and px["value"] is x


@pytest.mark.parametrize("likelihood,arch", VARIANTS, ids=VARIANT_IDS)
def test_elbo_matches_hand_computation(likelihood, arch, float64):
    """Trace_ELBO on replayed traces equals log p(x|z) + log N(z; 0, I) - log q(z|x) by hand."""
    vae, x = small_vae(likelihood, arch), batch(likelihood)
    guide_tr, model_tr = traces(vae, x)
    z = guide_tr.nodes["z"]["value"]
    loc, scale = vae.encode(x)
    out = vae.decoder(z)
    if likelihood == "bernoulli":
        log_px = -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
    else:
        s = vae.likelihood.log_scale.exp()
        log_px = (-0.5 * ((x - out) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_qz = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected = (log_px + log_pz - log_qz).sum()
    got = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    assert torch.allclose(got, expected, rtol=1e-10), (got.item(), expected.item())


@pytest.mark.parametrize("likelihood,arch", VARIANTS, ids=VARIANT_IDS)
def test_loss_finite_and_gradients_reach_every_parameter(likelihood, arch):
    vae, x = small_vae(likelihood, arch), batch(likelihood)
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss), loss
    loss.backward()
    nets = {"encoder": vae.encoder, "decoder": vae.decoder, "likelihood": vae.likelihood}
    names = [f"{k}.{n}" for k, net in nets.items() for n, _ in net.named_parameters()]
    if likelihood == "gaussian":
        assert "likelihood.log_scale" in names, names
    for k, net in nets.items():
        for n, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {k}.{n}"


@pytest.mark.parametrize("likelihood,registered", [("bernoulli", False), ("gaussian", True)])
def test_modules_registered_with_pyro(likelihood, registered):
    vae, x = small_vae(likelihood), batch(likelihood)
    Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    prefixes = {name.split("$$$")[0] for name in pyro.get_param_store().keys()}
    expected = {"encoder", "decoder"} | ({"likelihood"} if registered else set())
    assert prefixes == expected, prefixes


@pytest.mark.parametrize("likelihood,arch", VARIANTS, ids=VARIANT_IDS)
def test_vectorized_particles(likelihood, arch):
    S = 4
    vae, x = small_vae(likelihood, arch), batch(likelihood)

    def particles(fn):
        def wrapped(x):
            with pyro.plate("particles", S, dim=-2):
                return fn(x)

        return wrapped

    guide_tr, model_tr = traces(vae, x, particles(vae.model), particles(vae.guide))
    for tr, sites in ((guide_tr, ["z"]), (model_tr, ["z", "x"])):
        tr.compute_log_prob()
        for name in sites:
            shape = tr.nodes[name]["log_prob"].shape
            assert shape == (S, N), f"{name}: log_prob shape {shape}"
    assert guide_tr.nodes["z"]["value"].shape == (S, N, M)
    elbo = Trace_ELBO(num_particles=S, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss), loss


def test_bernoulli_log_prob_is_negative_bce(float64):
    logits = torch.randn(2, N, D) * 3
    for x in (torch.bernoulli(torch.rand(N, D)), torch.rand(N, D)):  # binary and grey-scale
        got = BernoulliLikelihood()(logits).log_prob(x)
        expected = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        assert got.shape == (2, N) and torch.allclose(got, expected, atol=1e-6), (
            (got - expected).abs().max()
        )
    assert torch.allclose(BernoulliLikelihood().mean(logits), torch.sigmoid(logits))


def test_gaussian_log_prob_closed_form(float64):
    lik = GaussianLikelihood(D, init_scale=0.3)
    with torch.no_grad():
        lik.log_scale.add_(0.1 * torch.randn(D))
    mu, x = torch.randn(2, N, D), torch.randn(N, D)
    s = lik.log_scale.exp()
    expected = (-((x - mu) ** 2) / (2 * s**2) - torch.log(s * math.sqrt(2 * math.pi))).sum(-1)
    got = lik(mu).log_prob(x)
    assert got.shape == (2, N) and torch.allclose(got, expected, atol=1e-10), (
        (got - expected).abs().max()
    )
    assert torch.allclose(lik.mean(mu), mu)
    init = GaussianLikelihood(D, init_scale=0.3).log_scale.exp()
    assert torch.allclose(init, torch.full((D,), 0.3)), init[:3]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(likelihood="bernoulli"),
        dict(likelihood="gaussian", arch="conv"),
        dict(likelihood="bernoulli", image_shape=(8, 8), activation="elu"),
        dict(likelihood=LaplaceLikelihood()),
    ],
    ids=["bernoulli", "gaussian-conv", "image-shape-elu", "user-likelihood"],
)
def test_config_round_trip(kwargs):
    vae = small_vae(**kwargs)
    clone = VAE(**vae.config)
    shapes = {k: v.shape for k, v in vae.state_dict().items()}
    clone_shapes = {k: v.shape for k, v in clone.state_dict().items()}
    assert shapes == clone_shapes, (shapes, clone_shapes)
    clone.load_state_dict(vae.state_dict())
    x = batch()
    err = (clone.reconstruct(x) - vae.reconstruct(x)).abs().max()
    assert err == 0, f"reconstructions differ by {err} after load_state_dict"
    assert clone.likelihood is not vae.likelihood


def test_config_keeps_likelihood_name():
    config = small_vae("gaussian").config
    assert config["likelihood"] == "gaussian" and config["hidden"] == (16,), config


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_helpers(likelihood):
    vae, x = small_vae(likelihood), batch(likelihood)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (N, M) and (scale > 0).all()
    z = torch.randn(2, N, M)
    mean = vae.decode(z)
    assert mean.shape == (2, N, D), mean.shape
    expected = vae.decoder(z)
    if likelihood == "bernoulli":
        expected = torch.sigmoid(expected)
        assert ((mean >= 0) & (mean <= 1)).all()
    assert torch.allclose(mean, expected), (mean - expected).abs().max()
    rec = vae.reconstruct(x)
    assert rec.shape == (N, D) and not rec.requires_grad
    assert torch.allclose(rec, vae.decode(loc)), (rec - vae.decode(loc)).abs().max()
    samples = vae.sample(7)
    assert samples.shape == (7, D) and not samples.requires_grad, samples.shape
    if likelihood == "bernoulli":
        assert samples.min() >= 0 and samples.max() <= 1, (samples.min(), samples.max())
    torch.manual_seed(1)
    a = vae.sample(3)
    torch.manual_seed(1)
    assert torch.equal(a, vae.sample(3)), "sample(n) must follow the torch RNG"


def test_sample_is_decode_of_standard_normal():
    vae = small_vae()
    torch.manual_seed(3)
    z = torch.randn(4, M)
    torch.manual_seed(3)
    assert torch.allclose(vae.sample(4), vae.decode(z))


def test_user_likelihood_plugs_in():
    lik = LaplaceLikelihood()
    vae, x = small_vae(likelihood=lik, arch="conv"), torch.randn(N, D)
    assert vae.decoder(torch.randn(N, M)).shape == (N, 2 * D)
    guide_tr, model_tr = traces(vae, x)
    out = vae.decoder(guide_tr.nodes["z"]["value"])
    loc, scale = out[..., :D], out[..., D:].exp()
    expected = (-(x - loc).abs() / scale - torch.log(2 * scale)).sum(-1)
    got = model_tr.nodes["x"]["fn"].log_prob(x)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert vae.decode(torch.zeros(1, M)).shape == (1, D)  # default mean from the distribution
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss), loss


def test_float64(float64):
    vae, x = small_vae("gaussian"), batch("gaussian")
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert loss.dtype == torch.float64 and vae.sample(2).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(latent_dim=0), "latent_dim"),
        (dict(latent_dim=2.5), "latent_dim"),
        (dict(data_dim=-1), "data_dim"),
        (dict(hidden=(0,)), "hidden"),
        (dict(hidden="400"), "hidden"),
        (dict(likelihood="poisson"), "likelihood"),
        (dict(arch="rnn"), "arch"),
        (dict(activation="swish"), "activation"),
        (dict(image_shape=(7, 7)), "image_shape"),
        (dict(arch="conv", image_shape=(4, 16), data_dim=63), "image_shape"),
    ],
    ids=[
        "latent0",
        "latent-float",
        "data-neg",
        "hidden0",
        "hidden-str",
        "likelihood",
        "arch",
        "activation",
        "image-shape",
        "conv-shape",
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(data_dim=D, latent_dim=M, hidden=(16,)) | kwargs
    with pytest.raises(ValueError, match=match):
        VAE(**args)
    with pytest.raises(ValueError, match="n must be"):
        small_vae().sample(0)


def test_get_likelihood():
    assert isinstance(get_likelihood("bernoulli", D), BernoulliLikelihood)
    lik = get_likelihood("gaussian", D)
    assert isinstance(lik, GaussianLikelihood) and lik.log_scale.shape == (D,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    vae, x = small_vae("gaussian", "conv"), batch("gaussian")
    rec_cpu = vae.reconstruct(x)
    guide_tr, model_tr = traces(vae, x)
    elbo_cpu = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    pyro.clear_param_store()
    vae.cuda()
    xc = x.cuda()
    err = (vae.reconstruct(xc).cpu() - rec_cpu).abs().max()
    assert err < 1e-4, f"reconstruction CPU vs CUDA differs by {err}"
    z = guide_tr.nodes["z"]["value"].cuda()
    cond = poutine.condition(vae.model, data={"z": z})
    gtr = poutine.trace(poutine.condition(vae.guide, data={"z": z})).get_trace(xc)
    mtr = poutine.trace(cond).get_trace(xc)
    elbo_cuda = (mtr.log_prob_sum() - gtr.log_prob_sum()).cpu()
    assert torch.allclose(elbo_cuda, elbo_cpu.detach(), rtol=1e-4), (elbo_cuda, elbo_cpu)
    assert vae.sample(2).device.type == "cuda"


def test_independent_bernoulli_matches_pyro_bernoulli_to_event():
    logits = torch.randn(3, 5, 7)
    x = torch.bernoulli(torch.full((5, 7), 0.5))
    ours, theirs = IndependentBernoulli(logits), dist.Bernoulli(logits=logits).to_event(1)
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x), rtol=1e-6, atol=1e-6)
    assert ours.batch_shape == theirs.batch_shape == (3, 5) and ours.event_shape == (7,)
    expanded = IndependentBernoulli(logits[0]).expand([4, 5])
    assert expanded.batch_shape == (4, 5) and expanded.log_prob(x).shape == (4, 5)
    assert ours.sample((2,)).shape == (2, 3, 5, 7)
    torch.testing.assert_close(ours.mean, torch.sigmoid(logits))
