"""Tests for pyro_vae.infer.evidence: importance-sampled log p(x) per datapoint.

Every estimator is checked once against every pair of the catalogue (tests/pairs.py) that has
an exact log p(x) and an exact guide, and against every pair the site convention refuses.
Other closed forms used: pPCA's exact log p(x) (Tipping & Bishop 1999) and the linear-Gaussian
pair with a nested feature plate, z_nd ~ N(0, 1), x_nd | z_nd ~ N(z_nd, s^2), so
p(x_nd) = N(0, 1 + s^2) and p(z_nd | x_nd) is N(x_nd / (1 + s^2), s^2 / (1 + s^2)). All
statistical tests run in float64 with the seed 0 set by tests/conftest.py; each states the
tolerance it uses.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import requires_cuda
from pairs import (
    CATALOGUE,
    GaussianMixture,
    GlobalMean,
    GlobalObservation,
    NestedPlate,
    Plateless,
    make_ppca,
)
from pyro import poutine

from pyro_vae.infer.evidence import weights
from pyro_vae.infer.evidence.dataset import dataset_nll
from pyro_vae.infer.evidence.importance import (
    elbo_per_datapoint,
    iwae_bound,
    iwae_from_log_weights,
    log_evidence,
)
from pyro_vae.infer.evidence.psis import pareto_khat
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.objectives.kl_control import KLControlledELBO
from pyro_vae.infer.pair.sites import GlobalLatentError
from pyro_vae.models.ppca import PPCA, CollapsedPPCA
from pyro_vae.models.vae import VAE

# two-sided normal quantile for a family-wise 1% level over 20 datapoints (Bonferroni):
# Phi^-1(1 - 0.01 / 40) = 3.48
BONFERRONI_Z = 3.5
KHAT_RELIABLE = 0.7  # PSIS threshold (Vehtari et al. 2024): above it, error bars fail

# the linear-Gaussian pair with a nested feature plate (tests/pairs.py, noise s = 0.5)
_NESTED = NestedPlate(noise=0.5)
lg_model, lg_guide, lg_exact = _NESTED.model, _NESTED.guide, _NESTED.exact_log_px


# ------------------------------------------------------------------------------------------
# guides of pPCA written only here
# ------------------------------------------------------------------------------------------
def prior_guide(x, latent_dim=2):
    """A deliberately poor guide for pPCA: q(z | x) = p(z) = N(0, I)."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.new_zeros(latent_dim), 1.0).to_event(1))


def scaled_posterior_guide(ppca, factor):
    """Exact posterior mean, covariance multiplied by ``factor`` (overdispersed if > 1)."""

    def guide(x):
        post = ppca.posterior(x)
        with pyro.plate("data", x.shape[0]):
            q = dist.MultivariateNormal(
                post.mean, covariance_matrix=factor * post.covariance_matrix
            )
            pyro.sample("z", q)

    return guide


@pytest.fixture
def ppca_data(float64):
    ppca = make_ppca()
    return ppca, ppca.sample(20)


# ------------------------------------------------------------------------------------------
# exact guides: zero spread
# ------------------------------------------------------------------------------------------
# Every estimator of the evidence, written once: with the exact posterior as guide every log
# weight log p(x, z) - log q(z | x) equals log p(x), so each must return log p(x) exactly.
ESTIMATORS = {
    "log_evidence": lambda m, g, x: log_evidence(m, g, x, num_samples=50).log_px,
    "log_evidence-chunked": lambda m, g, x: (
        log_evidence(m, g, x, num_samples=50, chunk_size=7).log_px
    ),
    "iwae_bound-k1": lambda m, g, x: iwae_bound(m, g, x, 1, num_estimates=3),
    "iwae_bound-k10": lambda m, g, x: iwae_bound(m, g, x, 10, num_estimates=3),
    "iwae_bound-k-over-chunk": lambda m, g, x: iwae_bound(m, g, x, 10, chunk_size=3),
    "elbo_per_datapoint": lambda m, g, x: elbo_per_datapoint(m, g, x, num_samples=7, chunk_size=3),
    "dataset_nll": lambda m, g, x: (
        dataset_nll(m, g, x, num_samples=20, batch_size=7, progress=False).log_px
    ),
    "iwae_from_log_weights": lambda m, g, x: iwae_from_log_weights(
        log_evidence(m, g, x, num_samples=40, return_log_weights=True).log_weights, 10
    ),
    # the training objectives, per datapoint: the negated loss of a batch of one
    "IWAEObjective-k5": lambda m, g, x: _per_datapoint_loss(IWAEObjective(5), m, g, x),
    "KLControlledELBO": lambda m, g, x: _per_datapoint_loss(KLControlledELBO(), m, g, x),
}


# the estimators that need a reparameterized guide, and what they say of one that is not
NEEDS_RSAMPLE = {"IWAEObjective-k5", "KLControlledELBO"}
NOT_REPARAMETERIZED = (ValueError, "reparameterized")
# a training ELBO: the trainer accepts sites outside the data plate (docs/design.md), so it
# scores the pairs the per-datapoint tools refuse
ACCEPTS_GLOBAL_SITES = {"KLControlledELBO"}

EXACT = [c for c in CATALOGUE if c.exact_log_px is not None and c.exact_guide is not None]
REFUSED = [c for c in CATALOGUE if c.refusal is not None]


def _per_datapoint_loss(objective, model, guide, x):
    return torch.stack([-objective(model, guide, x[n : n + 1]) for n in range(x.shape[0])])


@pytest.mark.parametrize("case", EXACT, ids=str)
@pytest.mark.parametrize("estimator", list(ESTIMATORS), ids=list(ESTIMATORS))
def test_every_estimator_is_exact_with_the_exact_guide(estimator, case, float64):
    pair = case.make()
    guide = case.exact_guide(pair)
    if estimator in NEEDS_RSAMPLE and not case.reparameterized:
        error, match = NOT_REPARAMETERIZED
        with pytest.raises(error, match=match):
            ESTIMATORS[estimator](pair.model, guide, pair.x)
        return
    value = ESTIMATORS[estimator](pair.model, guide, pair.x)
    exact = case.exact_log_px(pair)
    err = (value - exact).abs().max().item()
    assert value.shape == exact.shape, f"{case}: shape {tuple(value.shape)}"
    # 1e-8: float64 round-off of a Cholesky solve in D = 5, summed over a few sites
    assert err < 1e-8, f"{case}: max |estimate - log p(x)| = {err:.3g}"


@pytest.mark.parametrize("case", REFUSED, ids=str)
@pytest.mark.parametrize("estimator", list(ESTIMATORS), ids=list(ESTIMATORS))
def test_every_estimator_refuses_what_the_convention_refuses(estimator, case, float64):
    pair = case.make()
    if estimator in ACCEPTS_GLOBAL_SITES:
        value = ESTIMATORS[estimator](pair.model, pair.guide, pair.x)
        assert torch.isfinite(value).all(), f"{case}: {value}"
        return
    error, match = case.refusal
    with pytest.raises(error, match=match):
        ESTIMATORS[estimator](pair.model, pair.guide, pair.x)


def test_exact_guide_has_zero_spread_full_ess_and_no_tail(ppca_data):
    ppca, x = ppca_data
    result = log_evidence(ppca.model, ppca.guide, x, num_samples=500)
    assert result.log_px.shape == (20,) and result.num_samples == 500
    # 1e-8: float64 round-off, as above; constant weights have zero variance
    assert result.stderr.max().item() < 1e-8, f"stderr {result.stderr.max().item():.3g}"
    assert torch.allclose(result.ess, torch.full_like(result.ess, 500.0), rtol=1e-8), result.ess
    # documented convention: constant weights have no tail, k-hat = -inf
    assert torch.isneginf(result.khat).all(), f"k-hat {result.khat}"
    assert result.log_weights is None


def test_exact_guide_with_a_mask(float64):
    x = torch.randn(6, 4)
    keep = torch.tensor([True, False, True, True])
    result = log_evidence(lg_model, lg_guide, x, keep, num_samples=64)
    err = (result.log_px - lg_exact(x, keep)).abs().max().item()
    assert err < 1e-10, f"max error {err:.3g}"  # 1e-10: elementwise float64 round-off


def test_site_scale_is_respected(float64):
    """Scaling every site by c multiplies each log weight, hence the exact answer, by c."""
    x = torch.randn(5, 3)
    scaled_model, scaled_guide = poutine.scale(lg_model, 2.5), poutine.scale(lg_guide, 2.5)
    result = log_evidence(scaled_model, scaled_guide, x, num_samples=16)
    err = (result.log_px - 2.5 * lg_exact(x)).abs().max().item()
    assert err < 1e-10, f"max error {err:.3g}"  # 1e-10: elementwise float64 round-off


def test_iwae_from_log_weights_averages_disjoint_groups(float64):
    log_w = torch.tensor([[0.0, math.log(3.0), math.log(5.0), math.log(7.0), 99.0]])
    # k = 2: groups (1, 3) and (5, 7), the fifth weight left over
    expected = (math.log(2.0) + math.log(6.0)) / 2
    assert iwae_from_log_weights(log_w, 2).item() == pytest.approx(expected, rel=1e-12)
    assert iwae_from_log_weights(log_w, 1).item() == pytest.approx(log_w.mean().item())
    with pytest.raises(ValueError, match="k must be an int in"):
        iwae_from_log_weights(log_w, 6)


def test_a_one_dimensional_x_is_refused_by_the_data_plate_check(float64):
    def model(x):  # a pair that cannot tell a (D,) vector from N scalar datapoints
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[:3])

    with pytest.raises(ValueError, match="data plate 'data' has size 3 but x holds 5"):
        log_evidence(model, lambda x: None, torch.zeros(5), num_samples=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_inf_in_x_is_named_as_bad_data(bad, float64):
    ppca = make_ppca()
    x = ppca.sample(4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="^x holds 1 NaN or inf values"):
        log_evidence(ppca.model, ppca.guide, x, num_samples=2)
    with pytest.raises(ValueError, match="^data holds 1 NaN or inf values"):
        dataset_nll(ppca.model, ppca.guide, x, num_samples=2, progress=False)


# ------------------------------------------------------------------------------------------
# a poor guide: statistically right, with honest error bars
# ------------------------------------------------------------------------------------------
def test_prior_guide_within_standard_errors_where_khat_says_reliable(ppca_data):
    """|z| = |log p_hat - log p| / se < 3.5 (Bonferroni, 1% family-wise, N=20) for every
    datapoint whose k-hat < 0.7; an outlying datapoint the prior barely covers may miss,
    but then k-hat must flag it (with seed 0, one of the 20 has k-hat ~ 5, ESS ~ 6)."""
    ppca, x = ppca_data
    result = log_evidence(ppca.model, prior_guide, x, num_samples=2000)
    z = (result.log_px - ppca.log_marginal(x)) / result.stderr
    reliable = result.khat < KHAT_RELIABLE
    assert reliable.sum().item() >= 15, f"too few reliable datapoints: k-hat {result.khat}"
    assert z[reliable].abs().max().item() < BONFERRONI_Z, f"z {z}, k-hat {result.khat}"
    assert (result.khat[z.abs() >= BONFERRONI_Z] >= KHAT_RELIABLE).all(), (z, result.khat)
    assert (result.ess >= 1).all() and (result.ess < 2000).all(), result.ess


def test_stderr_shrinks_like_one_over_sqrt_L(ppca_data):
    """se(L) / se(16 L) = 4: the median ratio over datapoints with k-hat < 0.7 (at 16 L)
    within 15%, i.e. in [3.4, 4.6]."""
    ppca, x = ppca_data
    small = log_evidence(ppca.model, prior_guide, x, num_samples=500)
    large = log_evidence(ppca.model, prior_guide, x, num_samples=8000)
    reliable = large.khat < KHAT_RELIABLE
    ratio = (small.stderr / large.stderr)[reliable].median().item()
    assert 3.4 < ratio < 4.6, f"median se ratio for L=500 vs 8000: {ratio:.3f}"


def test_iwae_bound_rises_with_k_and_stays_below_exact(ppca_data):
    """Burda et al. 2015, Thm 1: L_1 <= L_10 <= L_100 <= log p(x) (datapoint average)."""
    ppca, x = ppca_data
    exact = ppca.log_marginal(x).mean().item()
    bounds = [
        iwae_bound(ppca.model, prior_guide, x, k, num_estimates=20).mean().item()
        for k in (1, 10, 100)
    ]
    assert bounds[0] < bounds[1] < bounds[2] < exact, f"L_1, L_10, L_100 = {bounds}, exact {exact}"


def test_elbo_of_prior_guide_matches_closed_form(ppca_data):
    """With q = p(z): ELBO = -D/2 log(2 pi s2) - (|x - b|^2 + tr W^T W) / (2 s2); 5 se."""
    ppca, x = ppca_data
    D, s2 = ppca.data_dim, ppca.sigma2
    closed = -0.5 * D * torch.log(2 * math.pi * s2) - (
        (x - ppca.b).pow(2).sum(-1) + ppca.W.pow(2).sum()
    ) / (2 * s2)
    L = 4000
    elbo = elbo_per_datapoint(ppca.model, prior_guide, x, num_samples=L)
    spread = log_evidence(ppca.model, prior_guide, x, num_samples=L, return_log_weights=True)
    se = spread.log_weights.std(-1) / math.sqrt(L)
    z = (elbo - closed) / se
    assert z.abs().max().item() < 5, f"z-scores {z}"


def test_unguided_latent_uses_prior_as_proposal(ppca_data):
    """A model latent missing from the guide, marked so, is drawn from the prior: p/q = 1."""
    ppca, x = ppca_data
    model = poutine.infer_config(ppca.model, lambda msg: {"from_prior": True})  # the opt-out
    result = log_evidence(model, lambda x: None, x, num_samples=2000)
    z = (result.log_px - ppca.log_marginal(x)) / result.stderr
    reliable = result.khat < KHAT_RELIABLE
    assert reliable.sum().item() >= 15, f"k-hat {result.khat}"
    assert z[reliable].abs().max().item() < BONFERRONI_Z, f"z {z}, k-hat {result.khat}"


# ------------------------------------------------------------------------------------------
# k-hat: the reliability diagnostic
# ------------------------------------------------------------------------------------------
def test_khat_flags_a_bad_guide_in_high_dimension(float64):
    """D=20, M=5, sigma2=0.05: the prior is a terrible proposal (median k-hat > 0.7),
    a 1.5x overdispersed posterior a good one (bounded weights, every k-hat < 0.5)."""
    ppca = make_ppca(data_dim=20, latent_dim=5, sigma2=0.05, scale=2.0)
    x = ppca.sample(20)
    bad = log_evidence(ppca.model, prior_guide_m(5), x, num_samples=2000).khat
    good = log_evidence(ppca.model, scaled_posterior_guide(ppca, 1.5), x, num_samples=2000).khat
    assert bad.median().item() > 0.7, f"prior guide k-hat {bad}"
    assert good.max().item() < 0.5, f"overdispersed posterior guide k-hat {good}"


def prior_guide_m(latent_dim):
    return lambda x: prior_guide(x, latent_dim)


# ------------------------------------------------------------------------------------------
# chunking: exact bookkeeping, statistically equal answers
# ------------------------------------------------------------------------------------------
def test_chunked_statistics_equal_those_of_all_weights(ppca_data):
    """Running logsumexp / variance / top-k over chunks of 7 equal direct formulas (1e-10)."""
    ppca, x = ppca_data
    L = 200
    result = log_evidence(
        ppca.model, prior_guide, x, num_samples=L, chunk_size=7, return_log_weights=True
    )
    lw = result.log_weights
    assert lw.shape == (20, L)
    w = torch.exp(lw - lw.max(-1, keepdim=True).values)
    checks = {
        "log_px": (result.log_px, lw.logsumexp(-1) - math.log(L)),
        "ess": (result.ess, w.sum(-1) ** 2 / w.pow(2).sum(-1)),
        "stderr": (result.stderr, w.std(-1) / math.sqrt(L) / w.mean(-1)),
        "khat": (result.khat, pareto_khat(lw)),
    }
    for name, (streamed, direct) in checks.items():
        err = (streamed - direct).abs().max().item()
        assert err < 1e-10, f"{name}: streamed vs direct differ by {err:.3g}"


def test_chunked_and_unchunked_runs_agree_statistically(ppca_data):
    """Different draws, so equal within 3.5 combined standard errors (Bonferroni, N=20)
    wherever both k-hats are below 0.7."""
    ppca, x = ppca_data
    one = log_evidence(ppca.model, prior_guide, x, num_samples=2000)
    many = log_evidence(ppca.model, prior_guide, x, num_samples=2000, chunk_size=150)
    z = (one.log_px - many.log_px) / (one.stderr.pow(2) + many.stderr.pow(2)).sqrt()
    reliable = (one.khat < KHAT_RELIABLE) & (many.khat < KHAT_RELIABLE)
    assert reliable.sum().item() >= 15, f"k-hat {one.khat}, {many.khat}"
    assert z[reliable].abs().max().item() < BONFERRONI_Z, f"z-scores {z}"


def test_default_chunk_size_follows_element_budget(ppca_data, monkeypatch):
    """chunk = CPU_ELEMENT_BUDGET // (N * D): budget 1000, N=20, D=5 -> 10 particles a pass."""
    ppca, x = ppca_data
    calls = []

    def counting_guide(x):
        calls.append(1)
        ppca.guide(x)

    assert weights.default_chunk_size(100, 784, "cpu") == 3 * 2**20 // 78400  # 40
    assert weights.default_chunk_size(100, 784, "cuda") == 2**26 // 78400  # 855
    assert weights.default_chunk_size(10**6, 784, "cpu") == 1
    monkeypatch.setattr(weights, "CPU_ELEMENT_BUDGET", 1000)
    log_evidence(ppca.model, counting_guide, x, num_samples=35)
    # one tracing pass to find the plates, then ceil(35 / 10) = 4 chunks
    assert len(calls) == 5, f"guide called {len(calls)} times"


# ------------------------------------------------------------------------------------------
# the site convention: clear errors
# ------------------------------------------------------------------------------------------
_GLOBAL_LATENT = GlobalMean()
global_latent_model = _GLOBAL_LATENT.model
global_obs_model = GlobalObservation().model
plateless_model = Plateless().model


def global_latent_guide(x):
    pyro.sample("w", dist.Normal(0.0, 1.0))


def test_global_latent_is_refused_with_site_and_plate_named():
    x = torch.randn(4)
    with pytest.raises(GlobalLatentError, match=r"latent site 'w'.*data plate 'data'"):
        log_evidence(global_latent_model, global_latent_guide, x, num_samples=10)
    # a global latent the guide does not sample (drawn from the prior) is refused too
    with pytest.raises(GlobalLatentError, match="'w'"):
        log_evidence(global_latent_model, lambda x: None, x, num_samples=10)


def test_global_observed_site_is_refused():
    x = torch.randn(4)
    with pytest.raises(GlobalLatentError, match=r"observed site 'total'"):
        log_evidence(global_obs_model, lambda x: None, x, num_samples=10)


def test_missing_data_plate_is_a_clear_error():
    x = torch.randn(3, 2)
    assert issubclass(GlobalLatentError, ValueError)
    with pytest.raises(GlobalLatentError, match="no site at all is inside a plate named 'data'"):
        log_evidence(plateless_model, lambda x: None, x, num_samples=10)
    named_otherwise = (
        "observed site 'x' of the model is in plate 'data' of size 3, not in the data plate 'batch'"
    )
    with pytest.raises(ValueError, match=named_otherwise):
        log_evidence(lg_model, lg_guide, x, num_samples=10, data_plate="batch")


@pytest.mark.parametrize(
    "kwargs", [{"num_samples": 0}, {"num_samples": 2.5}, {"chunk_size": 0}], ids=str
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="positive int"):
        log_evidence(lg_model, lg_guide, torch.randn(3, 2), **kwargs)


def test_bad_iwae_arguments_name_the_argument():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="k must be a positive int"):
        iwae_bound(lg_model, lg_guide, x, 0)
    with pytest.raises(ValueError, match="num_estimates must be a positive int"):
        iwae_bound(lg_model, lg_guide, x, 5, num_estimates=0)


def test_model_without_latents_collapsed_ppca(float64):
    """CollapsedPPCA has no latent sites (empty guide): every weight is p(x), zero spread."""
    collapsed = CollapsedPPCA(5, 2)
    x = torch.randn(8, 5)
    collapsed.model(x)  # creates the params
    result = log_evidence(collapsed.model, collapsed.guide, x, num_samples=30)
    exact = collapsed.to_ppca().log_marginal(x)
    err = (result.log_px - exact).abs().max().item()
    assert err < 1e-10 and result.stderr.max().item() < 1e-10, (err, result.stderr)


# ------------------------------------------------------------------------------------------
# dataset-level NLL
# ------------------------------------------------------------------------------------------
def test_dataset_nll_matches_exact_ppca_nll(ppca_data, capsys):
    ppca, x = ppca_data
    result = dataset_nll(ppca.model, ppca.guide, x, num_samples=20, batch_size=7, progress=False)
    exact = ppca.log_marginal(x)
    assert abs(result.nll + exact.mean().item()) < 1e-8, f"nll {result.nll}, exact {-exact.mean()}"
    expected_se = exact.std().item() / math.sqrt(20)
    assert abs(result.stderr - expected_se) < 1e-8, f"stderr {result.stderr} vs {expected_se}"
    assert result.log_px.shape == result.mc_stderr.shape == result.khat.shape == (20,)
    assert result.nll_mc_stderr < 1e-8, result.nll_mc_stderr
    assert capsys.readouterr().err == "", "progress=False must not print a bar"


def test_dataset_nll_accepts_objects_with_x_and_batch_transform(float64, capsys):
    class Holder:  # duck-types pyro_vae.data.ImageData
        x = torch.randn(9, 3)

        @staticmethod
        def batch_transform(xb):
            return 2.0 * xb

    result = dataset_nll(lg_model, lg_guide, Holder(), num_samples=4, batch_size=4)
    exact = lg_exact(2.0 * Holder.x)
    assert (result.log_px - exact).abs().max().item() < 1e-10, result.log_px - exact
    assert "log p(x)" in capsys.readouterr().err, "progress=True shows a tqdm bar"


# ------------------------------------------------------------------------------------------
# the VAE (784-D images), float32
# ------------------------------------------------------------------------------------------
def test_vae_on_binary_images_gives_finite_per_datapoint_results():
    vae = VAE(784, latent_dim=20, hidden=(400,))
    x = torch.bernoulli(torch.full((16, 784), 0.3))
    result = log_evidence(vae.model, vae.guide, x, num_samples=50)
    for name in ("log_px", "stderr", "ess", "khat"):
        value = getattr(result, name)
        assert value.shape == (16,), f"{name} shape {value.shape}"
        assert torch.isfinite(value).all(), f"{name} = {value}"
    elbo = elbo_per_datapoint(vae.model, vae.guide, x, num_samples=50)
    gap = (result.log_px - elbo).min().item()
    assert gap > 0, f"log p_hat - ELBO should be >= 0 (Jensen), min {gap:.3g}"


# ------------------------------------------------------------------------------------------
# devices
# ------------------------------------------------------------------------------------------
@requires_cuda
def test_cpu_and_cuda_agree(float64):
    cpu = make_ppca()
    x = cpu.sample(20)
    gpu = PPCA(cpu.W.cuda(), cpu.b.cuda(), cpu.sigma2.cuda())
    exact = cpu.log_marginal(x)
    on_gpu = log_evidence(gpu.model, gpu.guide, x.cuda(), num_samples=100)
    assert on_gpu.log_px.device.type == "cuda"
    assert (on_gpu.log_px.cpu() - exact).abs().max().item() < 1e-8
    a = log_evidence(cpu.model, prior_guide, x, num_samples=2000)
    b = log_evidence(gpu.model, prior_guide, x.cuda(), num_samples=2000)
    z = (a.log_px - b.log_px.cpu()) / (a.stderr.pow(2) + b.stderr.cpu().pow(2)).sqrt()
    reliable = (a.khat < KHAT_RELIABLE) & (b.khat.cpu() < KHAT_RELIABLE)
    assert z[reliable].abs().max().item() < BONFERRONI_Z, f"z-scores {z}"


# --- discrete latents: a site enumerated in training is sampled here -----------------------------


def test_an_enumerated_site_is_sampled_and_exact_with_the_exact_guide(float64):
    # q(y|x) = p(y|x): every log weight log p(x, y) - log q(y|x) equals log p(x) whatever y is
    # drawn; the tolerance is float64 round-off of a logsumexp over 3 terms
    pair = GaussianMixture(exact=True)
    x = torch.linspace(-4.0, 5.0, 7)
    result = log_evidence(pair.model, pair.guide, x, num_samples=50, return_log_weights=True)
    torch.testing.assert_close(result.log_px, pair.exact_log_px(x), rtol=0, atol=1e-12)
    assert result.log_weights.std(1).max() < 1e-12


def test_an_enumerated_site_under_a_poor_guide_within_standard_errors(float64):
    # y drawn from a poor q(y|x); each of the 7 estimates of log p(x), and each ELBO (the mean
    # log weight), within BONFERRONI_Z standard errors of its closed form (family-wise level
    # below 1% for 14 comparisons)
    pair = GaussianMixture()
    x = torch.linspace(-4.0, 5.0, 7)
    result = log_evidence(pair.model, pair.guide, x, num_samples=4000, return_log_weights=True)
    z = (result.log_px - pair.exact_log_px(x)) / result.stderr
    assert z.abs().max() < BONFERRONI_Z, z
    log_w = result.log_weights
    z_elbo = (log_w.mean(1) - pair.exact_elbo(x)) / (log_w.std(1) / math.sqrt(log_w.shape[1]))
    assert z_elbo.abs().max() < BONFERRONI_Z, z_elbo
