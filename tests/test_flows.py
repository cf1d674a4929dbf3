"""Inverse autoregressive flow guides (pyro_vae.models.flows and VAE(flows=K)).

Closed forms used: the change of variables log q(z_K) = log N(z0; mu, sigma) - log |det J| with
J = dz_K/dz0 computed by autograd (Kingma et al. 2016, eq. 5); the identity flow, whose density
is the Gaussian guide's; and pPCA's exact log p(x) and posterior (Tipping & Bishop 1999), whose
best mean-field Gaussian guide misses log p(x) by a known KL that an IAF guide can close.
Statistical and exactness tests run in float64 (the ``float64`` fixture) with seed 0.
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from pyro_vae.infer import log_evidence, train
from pyro_vae.models import PPCA, VAE
from pyro_vae.models.flows import IAFlow

N, M, C = 4, 3, 5


def _randomize(flow, std=0.3):
    """Random weights in every step, so that no step is the identity (std 0.3 keeps the
    log-scales inside Pyro's clip [-5, 3] and z of order 1-10, where float64 round-off stays
    ~1e-15; with std 0.5 scales up to e^3 per step amplify it to ~1e-9)."""
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, std)
    return flow


def _inputs(n=N, m=M, c=C):
    return torch.randn(n, m), 0.5 + torch.rand(n, m), torch.randn(n, c)


def _count_net_calls(flow):
    """calls[k]: how often step k's autoregressive net has run (one pass over a batch each)."""
    calls = [0] * len(flow.steps)
    for k, step in enumerate(flow.steps):
        step.nn.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
    return calls


# --- the density against closed forms ------------------------------------------------------------
def test_log_q_is_the_base_density_minus_the_log_jacobian_determinant(float64):
    """log q(z) of a draw = log N(z0; mu, sigma) - log |det dz_K/dz0|, J by autograd, for a flow
    of three steps with random weights; and the uncached (sequential inverse) score agrees."""
    flow = _randomize(IAFlow(M, C, num_flows=3, hidden=(8,)))
    loc, scale, context = _inputs()
    pyro.set_rng_seed(1)
    z = flow.distribution(loc, scale, context).rsample()
    log_q = flow.distribution(loc, scale, context).log_prob(z)  # another instance: no cache
    pyro.set_rng_seed(1)  # the same standard-normal draw: z0 = mu + sigma * eps
    z0 = dist.Normal(loc, scale).rsample()
    # 1e-12: float64 round-off; measured exactly 0 (the same operations in the same order)
    assert torch.allclose(flow(z0, context), z, rtol=0, atol=1e-12)
    log_det = torch.stack(
        [
            torch.linalg.slogdet(
                torch.autograd.functional.jacobian(
                    lambda v, n=n: flow(v, context[n : n + 1]), z0[n : n + 1]
                ).reshape(M, M)  # (1, M, 1, M): one datapoint's dz_K/dz0
            ).logabsdet
            for n in range(N)
        ]
    )
    expected = dist.Normal(loc, scale).to_event(1).log_prob(z0) - log_det
    assert log_det.abs().max() > 0.1, f"the flow should not preserve volume: {log_det}"
    # 1e-10: float64 round-off of the sequential inverse and a 3x3 determinant (measured
    # <= 3e-15 over 30 seeds), with a wide margin
    assert torch.allclose(log_q, expected, rtol=0, atol=1e-10), (log_q - expected).abs().max()


def test_a_drawn_value_is_scored_from_the_cache(float64):
    """Scoring the value just drawn runs no autoregressive net (the transforms cache z_{k-1}
    and log s_k); scoring any other value inverts each step with M sequential passes."""
    flow = _randomize(IAFlow(M, C, num_flows=2))
    calls = _count_net_calls(flow)
    q = flow.distribution(*_inputs())
    z = q.rsample()
    assert calls == [1, 1], calls  # one forward pass per step to draw
    cached = q.log_prob(z)
    assert calls == [1, 1], f"scoring a draw ran the nets: {calls}"
    fresh = q.log_prob(z.clone())  # equal values, not the cached tensor
    assert calls == [1 + M, 1 + M], calls
    # 1e-10: float64 round-off of the sequential inverse (measured <= 5e-14 over 30 seeds)
    assert torch.allclose(cached, fresh, rtol=0, atol=1e-10)


def test_steps_alternate_their_autoregressive_order(float64):
    """Each step's Jacobian is triangular, lower and upper in turn: the steps do not all share
    one ordering, so the composed Jacobian is dense."""
    # tanh: a ReLU net can have exactly-zero derivatives where a unit is off
    flow = _randomize(IAFlow(M, C, num_flows=2, hidden=(8,), activation="tanh"))
    z0, context = torch.randn(1, M), torch.randn(1, C)
    jacobians = [
        torch.autograd.functional.jacobian(lambda v, s=step: s.condition(context)(v), z0).reshape(
            M, M
        )
        for step in flow.steps
    ]
    upper, lower = torch.ones(M, M).triu(1).bool(), torch.ones(M, M).tril(-1).bool()
    # exactly 0: masked weights never connect an entry to a later one in the step's order
    assert (jacobians[0][upper] == 0).all() and (jacobians[0][lower] != 0).all(), jacobians[0]
    assert (jacobians[1][lower] == 0).all() and (jacobians[1][upper] != 0).all(), jacobians[1]
    full = torch.autograd.functional.jacobian(lambda v: flow(v, context), z0).reshape(M, M)
    assert (full != 0).all(), full


def test_a_fresh_flow_is_exactly_the_gaussian(float64):
    """At its identity initialisation the flow draws the Gaussian's z and gives its log q bit
    for bit, alone and inside VAE(flows=2) (against N(mu, sigma) of the VAE's own encoder)."""
    flow = IAFlow(M, C, num_flows=3)
    loc, scale, context = _inputs()
    pyro.set_rng_seed(1)
    q = flow.distribution(loc, scale, context)
    z = q.rsample()
    pyro.set_rng_seed(1)
    gaussian = dist.Normal(loc, scale).to_event(1)
    z_gauss = gaussian.rsample()
    # torch.equal: bit-identical, no tolerance (1 * z + 0 and a log-det of 0 are exact)
    assert torch.equal(z, z_gauss) and torch.equal(q.log_prob(z), gaussian.log_prob(z))
    assert torch.equal(q.log_prob(z.clone()), gaussian.log_prob(z))  # also the inverse path

    vae, x = VAE(16, latent_dim=M, hidden=(8,), flows=2), torch.rand(N, 16)
    site = poutine.trace(vae.guide).get_trace(x).nodes["z"]
    base = dist.Normal(*vae.encode(x)).to_event(1)
    assert torch.equal(site["fn"].log_prob(site["value"]), base.log_prob(site["value"]))


# --- pPCA: a user's own flow guide reaches the exact evidence ------------------------------------
class FlowGuide(nn.Module):
    """A guide written by a user: a linear encoder (mu, log sigma, h)(x) and one IAF step."""

    def __init__(self, data_dim, latent_dim, context_dim=4):
        super().__init__()
        self.sizes = (latent_dim, latent_dim, context_dim)
        self.net = nn.Linear(data_dim, sum(self.sizes))
        self.flow = IAFlow(latent_dim, context_dim, num_flows=1, hidden=(20,))

    def forward(self, x):
        pyro.module("flow_guide", self)
        loc, log_scale, context = self.net(x).split(self.sizes, dim=-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.flow.distribution(loc, log_scale.exp(), context))


@pytest.mark.slow
def test_flow_guide_reaches_the_exact_ppca_evidence(float64):
    """pPCA with a strongly correlated posterior, where the best mean-field Gaussian guide
    misses log p(x) by KL = 0.5 (sum_i log Lambda_ii - log det Lambda) ~ 0.98 nats (Lambda the
    posterior precision): a one-step IAF guide fitted by ``train`` gets within 0.05 nats, and
    ``log_evidence`` agrees with the exact mean log p(x) within 3.5 standard errors."""
    D, M_ = 5, 2
    w = torch.randn(D)
    W = torch.stack([w, w + 0.3 * torch.randn(D)], 1)  # nearly parallel columns
    ppca = PPCA(W, torch.randn(D), torch.tensor(0.5))
    precision = torch.eye(M_) + W.T @ W / ppca.sigma2
    mean_field_gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()
    assert mean_field_gap > 0.5, mean_field_gap  # the flow has something to fix
    x = ppca.sample(200)
    guide = FlowGuide(D, M_)
    # full batch, 1000 Adam steps, the last 300 at a tenth of the rate to settle the noise
    train(
        ppca.model,
        guide,
        x,
        epochs=1000,
        batch_size=x.shape[0],
        lr=0.03,
        lr_schedule=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.1 ** (e >= 700)),
        seed=0,
        device="cpu",
        progress=False,
    )
    exact = ppca.log_marginal(x)
    result = log_evidence(ppca.model, guide, x, num_samples=1000, return_log_weights=True)
    # one draw serves both: the ELBO is the mean log weight
    elbo = result.log_weights.mean().item()
    elbo_se = (result.log_weights.var(1).mean() / result.log_weights.numel()).sqrt().item()
    gap = exact.mean().item() - elbo
    # 0.05 nats: 4x the largest gap measured over seeds 0-7 (0.0013-0.012), and under a tenth
    # of the mean-field gap of this pPCA, so a diagonal Gaussian guide could not pass;
    # -5 standard errors: the ELBO is a lower bound up to Monte Carlo error
    assert -5 * elbo_se < gap < 0.05, f"ELBO gap {gap:.4f} (mean-field {mean_field_gap:.3f})"
    mean_se = result.stderr.pow(2).sum().sqrt().item() / x.shape[0]
    z = (result.log_px.mean().item() - exact.mean().item()) / mean_se
    # 3.5: two-sided normal quantile at 0.05%; measured |z| <= 2.5 over seeds 0-7
    assert abs(z) < 3.5, f"log_evidence off by {z:.2f} standard errors"


# --- VAE(flows=K) --------------------------------------------------------------------------------
def test_vae_flow_guide_vectorizes_over_particles(float64):
    """Under pyro.plate("particles", S, dim=-2): z is (S, N, M), log q is (S, N) and equals the
    log q of each particle scored on its own (by the sequential inverse)."""
    S = 7
    vae, x = VAE(16, latent_dim=M, hidden=(8,), flows=2), torch.rand(N, 16)
    _randomize(vae.flow)
    with pyro.plate("particles", S, dim=-2):
        site = poutine.trace(vae.guide).get_trace(x).nodes["z"]
    z, log_q = site["value"], site["fn"].log_prob(site["value"])
    assert z.shape == (S, N, M) and log_q.shape == (S, N), (z.shape, log_q.shape)
    loc, scale, context = vae.encoder(x, return_context=True)
    one_by_one = torch.stack([vae.flow.distribution(loc, scale, context).log_prob(v) for v in z])
    # 1e-10: float64 round-off of the sequential inverse (measured <= 1e-13 over 30 seeds)
    assert torch.allclose(log_q, one_by_one, rtol=0, atol=1e-10)


def test_vae_flow_guide_with_log_evidence(float64):
    """log_evidence on VAE(flows=2): finite per-datapoint results, each draw scored from the
    cache (every autoregressive net runs once per guide call, never M times)."""
    vae, x = VAE(16, latent_dim=M, hidden=(8,), flows=2), torch.bernoulli(torch.rand(N, 16))
    _randomize(vae.flow)
    calls, guide_calls = _count_net_calls(vae.flow), [0]

    def guide(x):
        guide_calls[0] += 1
        vae.guide(x)

    result = log_evidence(vae.model, guide, x, num_samples=50, chunk_size=20)
    assert result.log_px.shape == (N,) and torch.isfinite(result.log_px).all(), result.log_px
    assert torch.isfinite(result.stderr).all() and (result.ess >= 1).all(), result
    assert calls == [guide_calls[0]] * 2, (calls, guide_calls)


def test_vae_flow_parameters_are_registered_and_trained():
    """The guide registers the flow: a short ``train`` run moves its output layers off zero."""
    vae, x = VAE(16, latent_dim=M, hidden=(8,), flows=2), torch.bernoulli(torch.rand(8, 16))
    train(vae.model, vae.guide, x, epochs=2, batch_size=4, lr=1e-2, progress=False, device="cpu")
    store = dict(pyro.get_param_store().named_parameters())
    flow_params = {n for n in store if n.startswith("flow$$$")}
    assert flow_params == {f"flow$$${n}" for n, _ in vae.flow.named_parameters()}, flow_params
    for step in vae.flow.steps:
        assert step.nn.layers[-1].weight.abs().sum() > 0, "the flow was not trained"


def test_vae_flows_config_round_trip():
    vae = VAE(16, latent_dim=M, hidden=(8,), flows=2)
    assert vae.config["flows"] == 2 and VAE(16, M, (8,)).config["flows"] == 0
    clone = VAE(**vae.config)
    clone.load_state_dict(vae.state_dict())
    x = torch.rand(N, 16)
    # exactly equal: the same weights and operations
    assert torch.equal(clone.reconstruct(x), vae.reconstruct(x))


def test_flows_zero_builds_the_gaussian_vae_with_the_same_draws():
    """flows=0 builds exactly the networks of the Gaussian VAE: the layers of a plain MLP
    encoder (16 -> 8 -> 2M) and decoder (M -> 8 -> 16), in that order, from the same RNG
    draws, and leaves the RNG where those four layers leave it."""
    pyro.set_rng_seed(3)
    vae = VAE(16, latent_dim=M, hidden=(8,), flows=0)
    after_vae = torch.rand(1)
    pyro.set_rng_seed(3)
    layers = [nn.Linear(16, 8), nn.Linear(8, 2 * M), nn.Linear(M, 8), nn.Linear(8, 16)]
    after_layers = torch.rand(1)
    assert vae.flow is None and torch.equal(after_vae, after_layers)
    ours = [
        m for net in (vae.encoder, vae.decoder) for m in net.modules() if isinstance(m, nn.Linear)
    ]
    for mine, plain in zip(ours, layers, strict=True):
        assert torch.equal(mine.weight, plain.weight) and torch.equal(mine.bias, plain.bias)


# --- bad arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize("flows", [-1, 1.5, "2", True, None])
def test_bad_flows_value_is_a_clear_error(flows):
    with pytest.raises(ValueError, match="^flows must be a non-negative integer"):
        VAE(16, latent_dim=M, hidden=(8,), flows=flows)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_flows=0), "^num_flows must be a positive integer"),
        (dict(context_dim=0), "^context_dim must be a positive integer"),
        (dict(hidden=(2,)), "^hidden must be a non-empty sequence of integers >= latent_dim"),
        (dict(hidden=()), "^hidden must be a non-empty sequence of integers >= latent_dim"),
        (dict(activation="nope"), "^unknown activation"),
    ],
)
def test_bad_flow_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IAFlow(**{**dict(latent_dim=M, context_dim=C, num_flows=1), **kwargs})


def test_bad_distribution_inputs_are_clear_errors():
    flow = IAFlow(M, C, num_flows=1)
    loc, scale, context = _inputs()
    with pytest.raises(ValueError, match=r"^loc must have shape \(\.\.\., N, 3\)"):
        flow.distribution(loc[:, :2], scale, context)
    with pytest.raises(ValueError, match="^loc and scale must have one shape"):
        flow.distribution(loc, scale[:2], context)
    with pytest.raises(ValueError, match=r"^context must have shape \(\.\.\., N, 5\)"):
        flow.distribution(loc, scale, context[:, :2])
    with pytest.raises(ValueError, match="does not broadcast to the batch shape"):
        flow.distribution(loc, scale, context[:3])
