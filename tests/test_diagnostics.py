"""Posterior diagnostics against closed forms: pPCA's exact posterior, Gaussian KLs, NUTS.

Tolerances are stated next to each assertion; Monte Carlo checks use a stated number of
standard errors (SE).
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pairs import GlobalAndLocal, LogNormalLatent, ParamPPCA
from PIL import Image

from pyro_vae.diagnostics import arviz_io
from pyro_vae.diagnostics.latent import (
    active_units,
    amortization_gap,
    gaussian_kl_to_posterior,
    kl_per_dimension,
    latent_kl,
)
from pyro_vae.diagnostics.posterior import guide_draws, nuts_reference
from pyro_vae.infer.evidence.importance import log_evidence
from pyro_vae.infer.pair.sites import GlobalLatentError
from pyro_vae.models.ppca import PPCA
from pyro_vae.models.vae import VAE


# ------------------------------------------------------------------------------------------
# model/guide pairs
# ------------------------------------------------------------------------------------------
def _fit_ppca(num=200, data_dim=5, latent_dim=2, seed=0):
    """PPCA fitted (closed-form MLE) to synthetic data; its posterior covariance is diagonal."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(data_dim, latent_dim, generator=gen)
    z = torch.randn(num, latent_dim, generator=gen)
    x = z @ W.T + 0.5 * torch.randn(num, data_dim, generator=gen) + 1.0
    return PPCA.fit(x, latent_dim), x


def _param_ppca_pair(ppca):
    """pPCA with W, b, sigma as pyro.params, and its exact guide (tests/pairs.py)."""
    pair = ParamPPCA(ppca)
    return pair.model, pair.guide


def _global_latent_pair():
    """A model/guide with a global latent "w" outside the data plate (tests/pairs.py)."""
    pair = GlobalAndLocal()
    return pair.model, pair.guide


def _snapshot():
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store.keys()}


def _assert_params_untouched(before):
    store = pyro.get_param_store()
    assert set(store.keys()) == set(before)
    for name, value in before.items():
        assert torch.equal(store[name].detach(), value), f"param {name!r} changed"
    for name, param in store.named_parameters():
        assert param.grad is None, f"param {name!r} got a .grad"


# ------------------------------------------------------------------------------------------
# guide draws and NUTS
# ------------------------------------------------------------------------------------------
def test_guide_draws_match_exact_posterior(float64):
    ppca, x = _fit_ppca()
    xs = x[:4]
    draws = guide_draws(ppca.guide, xs, num_chains=4, num_draws=500)
    assert set(draws) == {"z"} and draws["z"].shape == (4, 500, 4, 2), draws["z"].shape
    z = draws["z"].reshape(2000, 4, 2)
    post = ppca.posterior(xs)
    n = z.shape[0]
    mean_se = post.stddev / math.sqrt(n)
    mean_err = ((z.mean(0) - post.mean) / mean_se).abs().max()
    # 8 means: P(|N(0,1)| > 4) = 6e-5 each, a false alarm once in ~2000 seeds
    assert mean_err < 4, f"guide-draw mean off by {mean_err:.2f} SE (tolerance 4 SE)"
    zc = z - z.mean(0)
    cov = torch.einsum("snm,snk->nmk", zc, zc) / (n - 1)
    sig = post.covariance_matrix
    var = sig.diagonal(dim1=-2, dim2=-1)
    cov_se = ((var[..., :, None] * var[..., None, :] + sig**2) / n).sqrt()
    cov_err = ((cov - sig) / cov_se).abs().max()
    # normal-theory SE of a sample covariance, Var(S_ij) = (s_ii s_jj + s_ij^2) / n; 12 entries,
    # P(|N(0,1)| > 5) = 6e-7 each: 5 rather than 4 SE since a sample variance's tail is
    # heavier than the normal approximation
    assert cov_err < 5, f"guide-draw covariance off by {cov_err:.2f} SE (tolerance 5 SE)"


def test_global_latent_is_refused():
    model, guide = _global_latent_pair()
    x = torch.randn(6)
    with pytest.raises(GlobalLatentError, match="outside the data plate"):
        guide_draws(guide, x, num_chains=1, num_draws=3)
    with pytest.raises(GlobalLatentError, match="outside the data plate"):
        amortization_gap(model, guide, x, num_steps=2, num_samples=2)
    with pytest.raises(GlobalLatentError, match="outside the data plate"):
        nuts_reference(model, x, num_chains=1, num_warmup=2, num_samples=2)


@pytest.mark.slow
def test_nuts_reference_matches_exact_posterior_and_leaves_params(float64):
    ppca, x = _fit_ppca(num=100, data_dim=5, latent_dim=2)
    xs = x[:3]
    model, guide = _param_ppca_pair(ppca)
    guide(xs)  # register the params
    before = _snapshot()
    draws = nuts_reference(model, xs, num_chains=2, num_warmup=200, num_samples=200, seed=1)
    _assert_params_untouched(before)
    z = draws["z"]
    assert z.shape == (2, 200, 3, 2), z.shape
    post = ppca.posterior(xs)
    ess = torch.tensor(arviz_io.summary(arviz_io.to_inference_data(draws))["ess_bulk"].values)
    ess = ess.reshape(3, 2)
    # below ~50 draws the MC SE is itself too noisy to judge by (measured: 358-614 here)
    assert (ess > 50).all(), f"NUTS ESS too small to judge: {ess}"
    err = ((z.mean((0, 1)) - post.mean) / (post.stddev / ess.sqrt())).abs().max()
    # 6 means: P(|N(0,1)| > 4) = 6e-5 each (measured: 1.5 SE)
    assert err < 4, f"NUTS mean off by {err:.2f} MC SE (tolerance 4 SE at the bulk ESS)"
    sd_ratio = z.std((0, 1)) / post.stddev
    # a sd from ESS draws has relative SE ~ 1/sqrt(2 ESS): 0.1 at the ESS floor of 50, 0.04 at
    # the measured ESS >= 358, so 25% is >= 2.5 SE at the floor (measured: at most 9.5%)
    assert ((sd_ratio - 1).abs() < 0.25).all(), f"NUTS sd / exact sd = {sd_ratio} (tol 25%)"


# ------------------------------------------------------------------------------------------
# ArviZ export
# ------------------------------------------------------------------------------------------
def test_to_inference_data_keeps_shapes_names_and_summary_columns(float64):
    ppca, x = _fit_ppca()
    draws = guide_draws(ppca.guide, x[:4], num_chains=3, num_draws=50)
    idata = arviz_io.to_inference_data(draws, datapoint_index=[10, 11, 12, 13])
    post = idata.posterior
    assert dict(post["z"].sizes) == {"chain": 3, "draw": 50, "datapoint": 4, "z_dim": 2}
    assert list(post["datapoint"].values) == [10, 11, 12, 13]
    assert list(post["z_dim"].values) == [0, 1]
    np.testing.assert_array_equal(post["z"].values, draws["z"].numpy())
    named = arviz_io.to_inference_data(draws, latent_names=["pc1", "pc2"])
    assert list(named.posterior["z_dim"].values) == ["pc1", "pc2"]

    table = arviz_io.summary(idata)  # unrounded
    for column in ("mean", "sd", "hdi_3%", "hdi_97%", "ess_bulk", "r_hat"):
        assert column in table.columns, f"summary lacks {column!r}: {list(table.columns)}"
    assert len(table) == 8, f"expected 4 datapoints x 2 dims = 8 rows, got {len(table)}"
    expected = draws["z"].mean((0, 1)).reshape(-1).numpy()
    # the same float64 mean of 150 draws, summed in another order: round-off only
    np.testing.assert_allclose(table["mean"].values, expected, rtol=1e-12, atol=1e-12)
    assert (table["hdi_3%"] < table["mean"]).all() and (table["mean"] < table["hdi_97%"]).all()


def test_to_inference_data_rejects_bad_input():
    with pytest.raises(ValueError, match="common N"):
        arviz_io.to_inference_data({"z": torch.zeros(2, 3, 4, 2), "u": torch.zeros(2, 3, 5)})
    with pytest.raises(ValueError, match="latent names"):
        arviz_io.to_inference_data({"z": torch.zeros(2, 3, 4, 2)}, latent_names=["a"])
    with pytest.raises(ValueError, match="datapoint_index"):
        arviz_io.to_inference_data({"z": torch.zeros(2, 3, 4, 2)}, datapoint_index=[1])


def _drawn_pixels(path, rgb):
    """Pixels of a PNG within 10 levels per channel of the colour ``rgb`` (anti-aliasing)."""
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    return int((np.abs(px - np.array(rgb)).max(-1) <= 10).sum())


def test_forest_and_pair_plots_draw_both_posteriors_without_pyplot(tmp_path, float64):
    ppca, x = _fit_ppca()
    xs = x[:2]
    guide = arviz_io.to_inference_data(guide_draws(ppca.guide, xs, num_chains=2, num_draws=100))
    other = arviz_io.to_inference_data(guide_draws(ppca.guide, xs, num_chains=2, num_draws=100))
    idatas = {"guide": guide, "NUTS": other}
    sentinel = plt.figure()
    try:
        for save, name in ((arviz_io.save_forest, "forest.png"), (arviz_io.save_pair, "pair.png")):
            path = save(idatas, tmp_path / "figs" / name)
            assert path == tmp_path / "figs" / name and path.exists()
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"
            # both posteriors are drawn, in matplotlib's C0 blue and C1 orange; an empty figure
            # has none of either, the drawn ones at least ~800 each (measured)
            for colour in ((31, 119, 180), (255, 127, 14)):
                drawn = _drawn_pixels(path, colour)
                assert drawn > 200, f"{name}: {drawn} pixels of colour {colour}"
            assert plt.get_fignums() == [sentinel.number], f"pyplot figures {plt.get_fignums()}"
    finally:
        plt.close(sentinel)
    with pytest.raises(ValueError, match="at least 2 scalar"):
        arviz_io.save_pair(idatas, tmp_path / "bad.png", coords={"z_dim": [0]})
    with pytest.raises(ValueError, match="empty"):
        arviz_io.save_forest({}, tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------
# Gaussian KL to the exact posterior
# ------------------------------------------------------------------------------------------
def test_gaussian_kl_of_exact_guide_is_zero(float64):
    ppca, x = _fit_ppca()
    kl = gaussian_kl_to_posterior(ppca.guide, x[:20], ppca.posterior(x[:20]))
    # KL of a distribution to itself: float64 round-off of O(1) terms
    assert kl.shape == (20,) and kl.abs().max() < 1e-10, f"KL of the exact guide: {kl}"


@pytest.mark.parametrize("family", ["mvn", "diagonal"], ids=["shifted-scaled-mvn", "diagonal"])
def test_gaussian_kl_matches_closed_form(family, float64):
    ppca, x = _fit_ppca(latent_dim=3)
    xs = x[:5]
    post = ppca.posterior(xs)
    shift = torch.linspace(-1.0, 1.0, 15).reshape(5, 3)
    c, scale = 1.7, torch.tensor([0.2, 0.5, 1.3])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            if family == "mvn":
                q = dist.MultivariateNormal(post.mean + shift, scale_tril=c * post.scale_tril)
            else:
                q = dist.Normal(post.mean + shift, scale.expand(5, 3)).to_event(1)
            pyro.sample("z", q)

    kl = gaussian_kl_to_posterior(guide, xs, post).numpy()
    sig = post.covariance_matrix[0].numpy()  # the same for every datapoint
    prec = np.linalg.inv(sig)
    maha = np.einsum("ni,ij,nj->n", shift.numpy(), prec, shift.numpy())
    if family == "mvn":  # q = N(m + d, c^2 S): KL = (M c^2 + d'S^-1 d - M - 2 M log c) / 2
        expected = 0.5 * (3 * c**2 + maha - 3 - 6 * math.log(c))
    else:
        s2 = scale.numpy() ** 2
        logdet = np.linalg.slogdet(sig)[1]
        expected = 0.5 * (np.sum(np.diag(prec) * s2) + maha - 3 + logdet - np.log(s2).sum())
    np.testing.assert_allclose(kl, expected, rtol=1e-10)  # two float64 closed forms: round-off


def test_gaussian_kl_rejects_non_gaussian_guide(float64):
    ppca, x = _fit_ppca()

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Laplace(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    with pytest.raises(ValueError, match="Gaussian guide"):
        gaussian_kl_to_posterior(guide, x[:3], ppca.posterior(x[:3]))


# ------------------------------------------------------------------------------------------
# active units and KL per dimension
# ------------------------------------------------------------------------------------------
def _three_active_guide(closed_form_mean: bool):
    """Six latent dims; only dims 0-2 have a mean that varies with x."""
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -0.5], [0.3, 0.0, 1.0]])

    def locs(x):
        active = x[:, :3] @ mix
        return torch.cat([active, torch.full((x.shape[0], 3), 0.5)], dim=-1)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(locs(x), 0.5)
            if not closed_form_mean:  # a TransformedDistribution has no .mean: Monte Carlo
                base = dist.TransformedDistribution(base, [dist.transforms.AffineTransform(0, 1)])
            pyro.sample("z", base.to_event(1))

    return guide, locs


@pytest.mark.parametrize("closed_form_mean", [True, False], ids=["dist-mean", "monte-carlo-mean"])
def test_active_units_counts_the_varying_dimensions(closed_form_mean):
    x = torch.randn(100, 4)
    guide, locs = _three_active_guide(closed_form_mean)
    num_active, cov = active_units(guide, x)
    assert num_active == 3, f"expected 3 active units, got {num_active} (cov {cov})"
    assert cov.shape == (6,)
    expected = locs(x).var(0, unbiased=False)
    if closed_form_mean:  # the same float32 computation: round-off (eps 1.2e-7)
        torch.testing.assert_close(cov, expected, rtol=1e-6, atol=1e-12)
    else:
        # MC mean of 1000 draws of scale 0.5: variance 0.25 / 1000 each; their variance over
        # 100 datapoints is that times chi2_99 / 100, whose 99.99% quantile is 1.6, so 5x is
        # safe and still 8x below the activity threshold 0.01
        assert cov[3:].max() < 5 * 0.25 / 1000, f"inactive dims: MC-noise cov {cov[3:]}"


def _standard_normal_model(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 4), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(x, 1.0).to_event(1), obs=x)


def test_kl_per_dimension_matches_closed_form(float64):
    x = torch.randn(30, 4)
    loc, scale = 0.8 * x, torch.tensor([0.3, 0.7, 1.0, 1.6]).expand(30, 4)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    kl = kl_per_dimension(_standard_normal_model, guide, x)
    expected = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).mean(0)
    torch.testing.assert_close(kl, expected, rtol=1e-12, atol=1e-12)  # float64 round-off
    assert kl[2] < kl[0], f"unit scale should cost less KL than scale 0.3: {kl}"


def test_latent_kl_estimates_the_closed_form_kl(float64):
    x = torch.randn(30, 4)
    loc, scale = 0.8 * x, torch.tensor([0.3, 0.7, 1.0, 1.6]).expand(30, 4)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    kl = latent_kl(_standard_normal_model, guide, x, num_samples=20000)
    expected = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).sum(-1)
    assert kl.shape == (30,)
    # sd of log q - log p is at most 3.03 here (measured), so a 20000-draw mean has a standard
    # error of at most 0.021 nats: 0.11 is over 5 standard errors
    assert (kl - expected).abs().max() < 0.11, (kl - expected).abs().max()


def test_latent_kl_serves_a_guide_that_does_not_factorize(float64):
    ppca, x = _fit_ppca()
    xs = x[:5]
    kl = latent_kl(ppca.model, ppca.guide, xs, num_samples=20000)
    with torch.no_grad():
        post = ppca.posterior(xs)
    m = post.mean.shape[-1]
    # KL(N(m, S) || N(0, I)) = (tr S + m'm - M - log det S) / 2
    cov = post.covariance_matrix.expand(5, m, m)
    expected = 0.5 * (
        cov.diagonal(dim1=-2, dim2=-1).sum(-1) + post.mean.pow(2).sum(-1) - m - cov.logdet()
    )
    # a Gaussian guide's log q - log p has sd of a few nats at most; 20000 draws: 0.1 > 5 SE
    assert (kl - expected).abs().max() < 0.1, (kl, expected)


def test_kl_per_dimension_rejects_a_full_covariance_guide(float64):
    ppca, x = _fit_ppca()
    with pytest.raises(ValueError, match="factorized"):
        kl_per_dimension(ppca.model, ppca.guide, x[:5])


# ------------------------------------------------------------------------------------------
# amortization gap
# ------------------------------------------------------------------------------------------
def _mc_stderr(model, guide, x, num_samples):
    """Standard error of a ``num_samples``-draw ELBO estimate: sd(log w) / sqrt(L), (N,)."""
    log_w = log_evidence(model, guide, x, num_samples=4000, return_log_weights=True).log_weights
    return log_w.std(-1) / math.sqrt(num_samples)


def test_amortization_gap_is_zero_for_the_exact_ppca_guide(float64):
    ppca, x = _fit_ppca()
    xs = x[:10]
    model, guide = _param_ppca_pair(ppca)
    guide(xs)
    before = _snapshot()
    result = amortization_gap(model, guide, xs, num_steps=200, num_samples=500)
    _assert_params_untouched(before)
    gap = result["amortization_gap"]
    assert gap.shape == (10,)
    # the exact guide's ELBO is log p(x) with zero variance (Bishop PRML eq. 12.43); default
    # float64 tolerances of assert_close (rtol 1e-7): round-off
    torch.testing.assert_close(result["elbo_amortized"], ppca.log_marginal(xs))
    se = _mc_stderr(model, result["local_guide"], xs, 500)
    # 3 MC SE of the fitted guide's ELBO, plus 1e-3 nats for the optimizer not reaching the
    # exact posterior (measured: |gap| <= 1.5e-5 nats, 1.8 SE)
    tol = 3 * se + 1e-3
    assert (gap.abs() < tol).all(), f"gap {gap} exceeds 3 SE + 1e-3 nats ({tol})"
    assert result["mean_amortization_gap"] == pytest.approx(gap.mean().item())


def test_amortization_gap_of_a_poor_guide_is_its_kl_to_the_posterior(float64):
    """The mean-field family holds p(z|x) (diagonal for the MLE W), so gap = KL(q || p(z|x))."""
    ppca, x = _fit_ppca()
    xs = x[:8]
    post = ppca.posterior(xs)
    off_diag = post.covariance_matrix[0] - torch.diag(post.variance[0])
    # zero in exact arithmetic: float64 round-off of O(1) entries
    assert off_diag.abs().max() < 1e-12, "premise: the pPCA MLE posterior is diagonal"

    def poor_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(ppca.posterior(x).mean + 1.0, 0.3).to_event(1))

    result = amortization_gap(ppca.model, poor_guide, xs, num_steps=300, num_samples=2000)
    gap = result["amortization_gap"]
    kl = gaussian_kl_to_posterior(poor_guide, xs, post)
    se = (
        _mc_stderr(ppca.model, poor_guide, xs, 2000) ** 2
        + _mc_stderr(ppca.model, result["local_guide"], xs, 2000) ** 2
    ).sqrt()
    # KL(q || p(z|x)) = 27.9 nats here: 1 nat only checks the sign and scale
    assert (gap > 1.0).all(), f"gap of the poor guide should be clearly > 0: {gap}"
    err = (gap - kl).abs()
    # 4 MC SE of the two ELBO estimates, plus 1% of the KL for the local fit's optimization
    # error (measured: at most 1.8 SE)
    assert (err < 4 * se + 0.01 * kl).all(), f"gap {gap} vs KL {kl} (tol 4 SE + 1%, SE {se})"


def test_amortization_gap_uses_the_unconstrained_space_for_positive_latents(float64):
    """log z ~ N(0,1), x ~ N(log z, 0.5^2): p(z|x) is log-normal, q = exact posterior -> gap 0."""
    x = torch.linspace(-2.0, 2.0, 6)
    pair = LogNormalLatent()  # tests/pairs.py
    model, guide_shifted_by, post_var = pair.model, pair.guide_shifted_by, pair.post_var

    exact = amortization_gap(model, guide_shifted_by(0.0), x, num_steps=200, num_samples=500)
    se = _mc_stderr(model, exact["local_guide"], x, 500)
    gap = exact["amortization_gap"]
    # 3 MC SE plus 0.01 nats for the optimizer not reaching the exact posterior
    assert (gap.abs() < 3 * se + 0.01).all(), f"gap {gap} (tol 3 SE + 0.01, SE {se})"

    poor = guide_shifted_by(1.0)
    shifted = amortization_gap(model, poor, x, num_steps=300, num_samples=2000)
    kl = 0.5 / post_var  # KL(N(m + 1, v) || N(m, v)) in log z, invariant under exp
    gap = shifted["amortization_gap"]
    se = (
        _mc_stderr(model, poor, x, 2000) ** 2
        + _mc_stderr(model, shifted["local_guide"], x, 2000) ** 2
    ).sqrt()
    tol = 4 * se + 0.01 * kl  # 4 MC SE, plus 1% of the KL for the optimization error
    assert ((gap - kl).abs() < tol).all(), f"gap {gap} vs KL {kl:.3f} (tol 4 SE + 1%: {tol})"


# ------------------------------------------------------------------------------------------
# the VAE: shapes and closed forms from its encoder
# ------------------------------------------------------------------------------------------
def test_vae_diagnostics_run_with_correct_shapes():
    vae = VAE(data_dim=12, latent_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((8, 12), 0.5))
    draws = guide_draws(vae.guide, x, num_chains=2, num_draws=10)
    assert draws["z"].shape == (2, 10, 8, 3), draws["z"].shape
    idata = arviz_io.to_inference_data(draws)
    assert dict(idata.posterior["z"].sizes) == {"chain": 2, "draw": 10, "datapoint": 8, "z_dim": 3}
    with torch.no_grad():
        loc, scale = vae.encode(x)
    kl = kl_per_dimension(vae.model, vae.guide, x)
    expected = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).mean(0)
    # float32 (default dtype), computed two ways: round-off of ~100 eps (1.2e-7)
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-6)
    num_active, cov = active_units(vae.guide, x)
    torch.testing.assert_close(cov, loc.var(0, unbiased=False), rtol=1e-5, atol=1e-7)
    # 0.01: the default activity threshold (Burda et al. 2015)
    assert num_active == int((loc.var(0, unbiased=False) > 0.01).sum()), (num_active, cov)
