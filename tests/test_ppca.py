"""pPCA against closed forms: dense Gaussians, scikit-learn, brute-force conditioning, Pyro traces.

Every statistical check runs in float64 (the ``float64`` fixture); tolerances are stated per test.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from pyro_vae.models.ppca import PPCA, CollapsedPPCA


def _random_ppca(D=6, M=2, seed=1):
    """A PPCA with generic (non-MLE) parameters, in the current default dtype."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, M, generator=g, dtype=torch.float64).to(torch.get_default_dtype())
    b = torch.randn(D, generator=g, dtype=torch.float64).to(W)
    return PPCA(W, b, torch.tensor(0.3).to(W))


def _digits():
    return torch.tensor(load_digits().data / 16.0, dtype=torch.float64)  # (1797, 64) in [0, 1]


def _dense_cov(ppca):
    return ppca.W @ ppca.W.T + ppca.sigma2 * torch.eye(ppca.data_dim)


def _elbo_per_datapoint(ppca, x, particles=None):
    """log p(x, z) - log q(z | x) per datapoint, z ~ guide: trace the guide, replay the model."""

    def run(fn):
        if particles is None:
            return fn(x)
        with pyro.plate("particles", particles, dim=-2):
            return fn(x)

    guide_tr = poutine.trace(lambda x_: run(ppca.guide)).get_trace(x)
    model_tr = poutine.trace(poutine.replay(lambda x_: run(ppca.model), trace=guide_tr)).get_trace(
        x
    )
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    log_p = model_tr.nodes["z"]["log_prob"] + model_tr.nodes["x"]["log_prob"]
    return log_p - guide_tr.nodes["z"]["log_prob"], guide_tr.nodes["z"]["value"]


# ---------------------------------------------------------------------------------- log_marginal
def test_log_marginal_matches_dense_gaussian(float64):
    """The low-rank log p(x) == a dense MultivariateNormal(b, W W^T + s2 I) built here.

    1e-10 nats: float64 round-off of two Cholesky factorizations at D = 7 is ~1e-14.
    """
    ppca = _random_ppca(D=7, M=3)
    x = torch.randn(50, 7) * 2
    dense = dist.MultivariateNormal(ppca.b, _dense_cov(ppca)).log_prob(x)
    ours = ppca.log_marginal(x)
    assert ours.shape == (50,)
    err = (ours - dense).abs().max().item()
    assert err < 1e-10, f"max |ours - dense| = {err:.3g}"
    marginal = ppca.marginal()
    assert marginal.event_shape == (7,) and marginal.batch_shape == ()
    assert (marginal.covariance_matrix - _dense_cov(ppca)).abs().max() < 1e-12


@pytest.mark.parametrize("M", [2, 5, 20], ids=lambda m: f"M={m}")
def test_fit_ddof1_matches_sklearn(float64, M):
    """PPCA.fit(x, M, ddof=1) == sklearn PCA(M) (N-1 covariance): score_samples within 1e-9
    nats, noise_variance_ within 1e-12, W W^T == components^T diag(var - s2) components (1e-10)."""
    x = _digits()
    pca = PCA(M, svd_solver="full").fit(x.numpy())
    ppca = PPCA.fit(x, M, ddof=1)
    ours, theirs = ppca.log_marginal(x), torch.from_numpy(pca.score_samples(x.numpy()))
    err = (ours - theirs).abs().max().item()
    assert err < 1e-9, f"max |ours - sklearn score_samples| = {err:.3g} nats"
    assert abs(ppca.sigma2.item() - pca.noise_variance_) < 1e-12, (ppca.sigma2, pca.noise_variance_)
    comp = torch.from_numpy(pca.components_)
    wwt = comp.T @ torch.diag(torch.from_numpy(pca.explained_variance_) - ppca.sigma2) @ comp
    err_w = (ppca.W @ ppca.W.T - wwt).abs().max().item()
    assert err_w < 1e-10, f"max |W W^T - sklearn| = {err_w:.3g}"


def test_ddof_rescales_covariance(float64):
    """ddof=1 divides by N-1: sigma2 and W W^T grow by exactly N/(N-1) (relative 1e-12)."""
    x = _digits()[:300]
    n = x.shape[0]
    p0, p1 = PPCA.fit(x, 4), PPCA.fit(x, 4, ddof=1)
    ratio = (p1.sigma2 / p0.sigma2).item()
    assert abs(ratio - n / (n - 1)) < 1e-12, f"sigma2 ratio {ratio}, expected {n / (n - 1)}"
    wwt_ratio = (p1.W @ p1.W.T).trace() / (p0.W @ p0.W.T).trace()
    assert abs(wwt_ratio.item() - n / (n - 1)) < 1e-12, f"tr(W W^T) ratio {wwt_ratio.item()}"


def test_mle_log_likelihood_closed_form(float64):
    """At the MLE, tr(C^-1 S) = D, so the mean log-lik is
    -1/2 (D ln 2 pi + sum_{i<=M} ln l_i + (D - M) ln s2 + D) (PRML eq. 12.44); 1e-9 nats."""
    x, M = _digits(), 5
    N, D = x.shape
    ppca = PPCA.fit(x, M)
    evals = torch.linalg.eigvalsh(torch.cov(x.T, correction=0)).flip(0)
    expected = -0.5 * (
        D * math.log(2 * math.pi) + evals[:M].log().sum() + (D - M) * ppca.sigma2.log() + D
    )
    got = ppca.log_marginal(x).mean()
    assert abs(got - expected).item() < 1e-9, f"mean log-lik {got.item()} vs {expected.item()}"


def test_mle_is_a_maximum(float64):
    """The gradient of the mean log-lik at the MLE vanishes (< 1e-7 per entry), and perturbing
    W, b or sigma2 (either sign) lowers it by more than 1e-9 nats."""
    x, M = _digits()[:800], 5
    mle = PPCA.fit(x, M)
    W, b, s2 = (t.clone().requires_grad_() for t in (mle.W, mle.b, mle.sigma2))
    best = PPCA(W, b, s2).log_marginal(x).mean()
    grads = torch.autograd.grad(best, (W, b, s2))
    worst_grad = max(g.abs().max().item() for g in grads)
    assert worst_grad < 1e-7, f"max |grad| at the MLE = {worst_grad:.3g}"
    g = torch.Generator().manual_seed(3)
    dW = torch.randn(mle.W.shape, generator=g, dtype=torch.float64) * 0.01
    db = torch.randn(mle.b.shape, generator=g, dtype=torch.float64) * 0.01
    for sign in (1.0, -1.0):
        for name, p in {
            "W": PPCA(mle.W + sign * dW, mle.b, mle.sigma2),
            "b": PPCA(mle.W, mle.b + sign * db, mle.sigma2),
            "sigma2": PPCA(mle.W, mle.b, mle.sigma2 * (1 + sign * 0.05)),
        }.items():
            drop = (best - p.log_marginal(x).mean()).item()
            assert drop > 1e-9, f"perturbing {name} ({sign:+}) changed the log-lik by {-drop:.3g}"


# ---------------------------------------------------------------------------------- posterior
def test_posterior_matches_brute_force_conditioning(float64):
    """p(z | x) from the joint N([z; x]) by Schur complement: mean, covariance within 1e-10."""
    ppca = _random_ppca(D=6, M=3)
    x = torch.randn(9, 6)
    C = _dense_cov(ppca)
    # joint: z ~ N(0, I), x | z ~ N(W z + b, s2 I)  =>  Cov(z, x) = W^T, Cov(x) = C
    gain = torch.linalg.solve(C, ppca.W).T  # W^T C^-1, (M, D)
    mean = (x - ppca.b) @ gain.T
    cov = torch.eye(3) - gain @ ppca.W
    post = ppca.posterior(x)
    assert post.batch_shape == (9,) and post.event_shape == (3,)
    err_m = (post.mean - mean).abs().max().item()
    err_c = (post.covariance_matrix - cov).abs().max().item()
    assert err_m < 1e-10, f"posterior mean error {err_m:.3g}"
    assert err_c < 1e-10, f"posterior covariance error {err_c:.3g}"


# ---------------------------------------------------------------------------------- model/guide
def test_exact_guide_elbo_equals_log_marginal_for_every_seed(float64):
    """log p(x, z) - log q(z|x) == log p(x) per datapoint for every z: error and the spread
    across 5 seeds both < 1e-8 nats."""
    ppca = PPCA.fit(_digits()[:400], 5)
    x = _digits()[400:420]
    exact = ppca.log_marginal(x)
    elbos, zs = [], []
    for seed in range(5):
        pyro.set_rng_seed(seed)
        elbo, z = _elbo_per_datapoint(ppca, x)
        elbos.append(elbo)
        zs.append(z)
    elbos = torch.stack(elbos)  # (seeds, N)
    assert elbos.shape == (5, 20)
    assert (zs[0] - zs[1]).abs().max() > 0.01, "different seeds must draw different z"
    err = (elbos - exact).abs().max().item()
    spread = elbos.std(0).max().item()
    assert err < 1e-8, f"max |ELBO - log p(x)| = {err:.3g}"
    assert spread < 1e-8, f"ELBO std across seeds = {spread:.3g}"


def test_model_and_guide_vectorize_over_particles(float64):
    """Under pyro.plate("particles", S, dim=-2) z is (S, N, M) and every particle's ELBO equals
    log p(x) (1e-8); Trace_ELBO(vectorize_particles=True) loss == -sum log p(x) (1e-8 relative)."""
    ppca = _random_ppca(D=8, M=3)
    x = torch.randn(11, 8)
    elbo, z = _elbo_per_datapoint(ppca, x, particles=7)
    assert z.shape == (7, 11, 3), f"z shape {tuple(z.shape)}"
    assert elbo.shape == (7, 11), f"ELBO shape {tuple(elbo.shape)}"
    err = (elbo - ppca.log_marginal(x)).abs().max().item()
    assert err < 1e-8, f"max |ELBO - log p(x)| over particles = {err:.3g}"
    loss_fn = pyro.infer.Trace_ELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    loss = loss_fn.loss(ppca.model, ppca.guide, x)
    expected = -ppca.log_marginal(x).sum().item()
    assert abs(loss - expected) < 1e-8 * abs(expected), f"loss {loss} vs -sum log p(x) {expected}"


def test_sample_moments(float64):
    """200,000 draws: mean within 5 standard errors of b, covariance within 5 standard errors
    (sqrt((C_ii C_jj + C_ij^2) / n)) of W W^T + s2 I, entrywise."""
    ppca, n = _random_ppca(D=5, M=2), 200_000
    xs = ppca.sample(n)
    assert xs.shape == (n, 5)
    C = _dense_cov(ppca)
    d = C.diagonal()
    mean_z = ((xs.mean(0) - ppca.b) / (d / n).sqrt()).abs().max().item()
    cov_se = ((torch.outer(d, d) + C**2) / n).sqrt()
    cov_z = ((torch.cov(xs.T) - C) / cov_se).abs().max().item()
    assert mean_z < 5, f"mean off by {mean_z:.2f} standard errors"
    assert cov_z < 5, f"covariance off by {cov_z:.2f} standard errors"


# ---------------------------------------------------------------------------------- bad input
def _bad_inputs():
    good = torch.rand(10, 6, dtype=torch.float64)
    nan, inf = good.clone(), good.clone()
    nan[3, 2], inf[0, 0] = float("nan"), float("inf")
    return {
        "nan": (lambda p: p.log_marginal(nan), "NaN or inf"),
        "inf-fit": (lambda p: PPCA.fit(inf, 2), "NaN or inf"),
        "1-d": (lambda p: p.log_marginal(good[0]), "must be 2-D"),
        "3-d": (lambda p: PPCA.fit(good[None], 2), "must be 2-D"),
        "latent-dim-0": (lambda p: PPCA.fit(good, 0), "latent_dim"),
        "latent-dim-D": (lambda p: PPCA.fit(good, 6), "latent_dim"),
        "one-datapoint": (lambda p: PPCA.fit(good[:1], 2), "at least 2 datapoints"),
        "too-few-datapoints": (lambda p: PPCA.fit(good[:3], 2), r"needs more than latent_dim \+ 1"),
        "wrong-D": (lambda p: p.posterior(good[:, :5]), "data_dim=6"),
        "float32-x": (lambda p: p.log_marginal(good.float()), "torch.float32"),
        "float32-model": (lambda p: p.model(good.float()), "torch.float32"),
        "meta-device": (lambda p: p.guide(good.to("meta")), "meta"),
        "integer-x": (lambda p: PPCA.fit(good.long(), 2), "floating-point"),
        "collapsed-latent-dim": (lambda p: CollapsedPPCA(6, 6), "latent_dim"),
        "negative-sigma2": (lambda p: PPCA(p.W, p.b, -1.0), "sigma2 must be positive"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_raises_clear_error(case):
    ppca = PPCA.fit(torch.rand(30, 6, dtype=torch.float64), 2)
    call, match = _bad_inputs()[case]
    with pytest.raises(ValueError, match=match):
        call(ppca)


# ---------------------------------------------------------------------------------- collapsed
def test_collapsed_log_prob_is_the_marginal(float64):
    """The collapsed model's "x" site scores log N(x | b, W W^T + s2 I) per datapoint (1e-10)."""
    x = _digits()[:50]
    collapsed = CollapsedPPCA(64, 3, seed=2)
    tr = poutine.trace(collapsed.model).get_trace(x)
    tr.compute_log_prob()
    W, b, sigma = (pyro.param(k).detach() for k in ("W", "b", "sigma"))
    assert sigma.item() == 1.0 and b.abs().max().item() == 0.0, "start: b = 0, sigma = 1"
    reference = dist.LowRankMultivariateNormal(b, W, sigma**2 * torch.ones(64)).log_prob(x)
    err = (tr.nodes["x"]["log_prob"] - reference).abs().max().item()
    assert tr.nodes["x"]["log_prob"].shape == (50,)
    assert err < 1e-10, f"max |collapsed log_prob - LowRankMVN| = {err:.3g}"


def test_collapsed_to_ppca_needs_params():
    with pytest.raises(ValueError, match="no params yet"):
        CollapsedPPCA(5, 2).to_ppca()


def test_collapsed_svi_reaches_the_mle(float64):
    """SVI (project trainer, full-batch Adam, 150 epochs, random start) on digits, M = 5: the
    learned mean log-lik is within 0.5% (relative) of the closed-form MLE's, and not above it
    by more than 1e-6 nats (the MLE is the maximum)."""
    from pyro_vae.infer.training.loop import train

    x, M = _digits(), 5
    target = PPCA.fit(x, M).log_marginal(x).mean().item()
    collapsed = CollapsedPPCA(64, M, seed=0)
    result = train(
        collapsed.model,
        collapsed.guide,
        x,
        epochs=150,
        batch_size=x.shape[0],
        lr=0.05,
        seed=0,
        progress=False,
        device="cpu",
    )
    learned = collapsed.to_ppca().log_marginal(x).mean().item()
    start_loss = result.history[0]["train_loss"]
    assert start_loss > -target + 10, f"start -loglik {start_loss:.3f} should be far from the MLE"
    rel = abs(learned - target) / abs(target)
    assert rel < 5e-3, f"SVI mean log-lik {learned:.4f} vs MLE {target:.4f} (rel. gap {rel:.2%})"
    assert learned < target + 1e-6, f"SVI {learned:.6f} exceeds the MLE {target:.6f}"
    final = -result.history[-1]["train_loss"]
    assert abs(final - learned) < 0.05 * abs(target), f"history {final:.3f} vs {learned:.3f}"
