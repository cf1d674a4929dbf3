"""The pair doctor (pyro_vae/infer/pair/doctor.py): every mistake is one line naming the site.

Each mistake of a tiny pair written here (a guide site under another name, a guide latent the
model lacks, a data plate wider than x, Bernoulli data equal to 2, a NaN batch) is refused in
the same one line by ``check_pair``, ``train``, ``SVIStep.step``, ``log_evidence`` and a
diagnostic; the opt-out for a model latent drawn from its prior works; every pair of the test
catalogue and every shipped model passes the doctor.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pairs import CATALOGUE, GaussianMixture
from pyro import poutine
from pyro.infer import config_enumerate

from pyro_vae.diagnostics.latent import kl_per_dimension, latent_kl
from pyro_vae.diagnostics.posterior import nuts_reference
from pyro_vae.infer import FROM_PRIOR, SVIStep, check_pair, log_evidence, train
from pyro_vae.models import CVAE, M2, VAE

X = torch.tensor([0.5, -1.0, 1.5, 0.2, -0.3])  # N = 5 datapoints
X_NAN = torch.tensor([0.5, -1.0, math.nan, 0.2, -0.3])
X_BINARY_WITH_2 = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0])


def model(x):
    """z ~ N(0, 1), x | z ~ N(w z, 1)."""
    w = pyro.param("w", torch.tensor(0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)


def guide_sampling(*names, loc=None):
    """A guide N(c x, 1) (or N(loc, 0.1)) for each of the latent sites ``names``."""

    def guide(x):
        c = pyro.param("c", torch.tensor(0.1))
        q = dist.Normal(c * x, 1.0) if loc is None else dist.Normal(loc, 0.1)
        with pyro.plate("data", x.shape[0]):
            for name in names:
                pyro.sample(name, q)

    return guide


guide = guide_sampling("z")


def wide_model(x):
    """The data plate 3 wider than x (it used to give a wrong log p(x) without a word)."""
    w = pyro.param("w", torch.tensor(0.5))
    with pyro.plate("data", x.shape[0] + 3):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)


def wide_guide(x):
    c = pyro.param("c", torch.tensor(0.1))
    with pyro.plate("data", x.shape[0] + 3):
        pyro.sample("z", dist.Normal(c, 1.0))


def bernoulli_model(x):
    """z ~ N(0, 1), x | z ~ Bernoulli(sigmoid(w z)), with Pyro's own Bernoulli."""
    w = pyro.param("w", torch.tensor(0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Bernoulli(logits=w * z), obs=x)


MISTAKES = {
    "renamed-guide-site": (
        model,
        guide_sampling("zz"),
        X,
        r"^model latent site 'z' is not sampled by the guide \(it samples 'zz'\); rename the "
        r"guide's site to 'z', or mark the model site infer=\{'from_prior': True\}",
    ),
    "extra-guide-site": (
        model,
        guide_sampling("z", "zz"),
        X,
        r"^guide latent site 'zz' is not a latent site of the model \(whose latent sites are "
        r"'z'\)",
    ),
    "wide-data-plate": (
        wide_model,
        wide_guide,
        X,
        r"site 'z': the data plate 'data' has size 8 but x holds 5 datapoints",
    ),
    "bernoulli-data-2": (
        bernoulli_model,
        guide,
        X_BINARY_WITH_2,
        r"^observed site 'x' has values outside the support of Bernoulli \(boolean, or grey "
        r"levels in \[0, 1\]\): 1 of 5, e\.g\. 2; are the data scaled to \[0, 1\]\?$",
    ),
    "nan-batch": (model, guide, X_NAN, r"holds 1 NaN or inf values$"),
}

TOOLS = {
    "check_pair": lambda m, g, x: check_pair(m, g, x),
    "train": lambda m, g, x: train(m, g, x, epochs=1, batch_size=5, progress=False),
    "SVIStep.step": lambda m, g, x: SVIStep(m, g).step(x),
    "log_evidence": lambda m, g, x: log_evidence(m, g, x, num_samples=4),
    "latent_kl": lambda m, g, x: latent_kl(m, g, x, num_samples=2),
    "kl_per_dimension": lambda m, g, x: kl_per_dimension(m, g, x, site="z"),
}


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_mistake_is_one_line_naming_the_site_from_every_tool(mistake, tool):
    bad_model, bad_guide, x, match = MISTAKES[mistake]
    with pytest.raises(ValueError, match=match) as err:
        TOOLS[tool](bad_model, bad_guide, x)
    assert len(str(err.value).splitlines()) == 1, str(err.value)


def test_a_subsampling_data_plate_is_refused_by_the_per_datapoint_tools():
    def subsampling(x):
        with pyro.plate("data", x.shape[0] + 3, subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def subsampling_guide(x):
        with pyro.plate("data", x.shape[0] + 3, subsample_size=x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.7))

    check_pair(subsampling, subsampling_guide, X)  # a trainer's minibatch of 5 out of 8
    match = (
        r"^guide site 'z': the data plate 'data' subsamples 5 of 8 datapoints, which scales "
        r"every log-density by 8/5; a per-datapoint tool"
    )
    with pytest.raises(ValueError, match=match):  # it used to return log p(x) times 8/5
        log_evidence(subsampling, subsampling_guide, X, num_samples=4)


@pytest.mark.parametrize("mistake", ["wide-data-plate", "bernoulli-data-2", "nan-batch"])
def test_nuts_checks_the_model_alone(mistake):
    bad_model, _, x, match = MISTAKES[mistake]
    with pytest.raises(ValueError, match=match.replace("site 'z'", "model site 'z'")):
        nuts_reference(bad_model, x, num_chains=1, num_warmup=2, num_samples=2)


def test_a_nan_batch_after_the_first_step_is_one_line_too():
    svi = SVIStep(model, guide)
    assert math.isfinite(svi.step(X))
    with pytest.raises(ValueError, match="^x holds 1 NaN or inf values$") as err:
        svi.step(X_NAN)  # the encoder's NaN location: torch's constraint error, many lines
    assert err.value.__suppress_context__  # which the traceback does not show
    with pyro.validation_enabled(False), pytest.raises(ValueError, match="^x holds 1 NaN"):
        svi.step(X_NAN)  # unchecked: the loss turns NaN; the data are named, not the training


def test_a_guide_that_samples_an_observed_site_is_refused():
    with pytest.raises(ValueError, match="^guide latent site 'x' is observed in the model"):
        check_pair(model, guide_sampling("z", "x"), X)


def test_a_proposed_latent_outside_the_model_support_is_refused():
    def log_normal_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    match = (
        r"^model latent site 'z' gets values from the guide outside the support of LogNormal "
        r"\(GreaterThan\(lower_bound=0\.0\)\): 5 of 5, e\.g\. -[23]\.\d+; give the guide's "
        r"site a distribution with the model's support$"
    )
    with pytest.raises(ValueError, match=match):
        check_pair(log_normal_model, guide_sampling("z", loc=-3.0), X)


def test_grey_levels_pass_a_bernoulli_likelihood_and_values_outside_0_1_do_not():
    check_pair(bernoulli_model, guide, torch.tensor([0.0, 0.3, 1.0, 0.5, 0.9]))
    vae = VAE(4, latent_dim=2, hidden=(3,))
    grey = torch.full((5, 4), 0.5)
    check_pair(vae.model, vae.guide, grey)
    grey[3, 1] = 255.0  # unscaled pixels: a finite log p(x) with no meaning, before the doctor
    match = r"^observed site 'x' has values outside the support of IndependentBernoulli .* 1 of 20"
    with pytest.raises(ValueError, match=match):
        log_evidence(vae.model, vae.guide, grey, num_samples=2)


def test_masked_out_observations_are_not_checked():
    def masked_model(x, keep):
        with pyro.plate("data", x.shape[0]), poutine.mask(mask=keep):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Bernoulli(logits=z), obs=x)

    def masked_guide(x, keep):
        guide(x)

    x = torch.tensor([0.0, 1.0, 7.0, 1.0, 0.0])  # a missing value, masked out
    check_pair(masked_model, masked_guide, x, x <= 1)
    with pytest.raises(ValueError, match="observed site 'x' .*: 1 of 5, e.g. 7;"):
        check_pair(masked_model, masked_guide, x, torch.ones(5, dtype=torch.bool))


def prior_model(x):
    """``model`` with z drawn from its prior on purpose, marked for the doctor."""
    w = pyro.param("w", torch.tensor(0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0), infer={FROM_PRIOR: True})
        pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)


def empty_guide(x):
    pass


def test_the_opt_out_draws_a_marked_site_from_its_prior_in_every_tool():
    check_pair(prior_model, empty_guide, X)
    # the same mark from outside, on a model that cannot be edited
    check_pair(poutine.infer_config(model, lambda msg: {FROM_PRIOR: True}), empty_guide, X)
    # the prior as proposal: log p(x) = log N(x; 0, 1 + w^2) within 5 standard errors
    result = log_evidence(prior_model, empty_guide, X, num_samples=400)
    exact = dist.Normal(0.0, math.sqrt(1 + 0.5**2)).log_prob(X)
    assert ((result.log_px - exact).abs() < 5 * result.stderr + 1e-6).all(), result.log_px
    assert math.isfinite(SVIStep(prior_model, empty_guide).step(X))
    history = train(prior_model, empty_guide, X, epochs=1, batch_size=5, progress=False).history
    assert math.isfinite(history[0]["train_loss"])


def test_a_latent_enumerated_in_the_model_needs_no_guide_site():
    mixture = GaussianMixture()
    check_pair(config_enumerate(mixture.model), empty_guide, torch.linspace(-1.0, 1.0, 4))


def test_asking_changes_no_draw():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    check_pair(model, guide, X)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("case", CATALOGUE, ids=str)
def test_every_catalogued_pair_passes(case):
    """Ours (VAE, conv, IAF flows, CVAE, M2, pPCA) and those written in tests/pairs.py, with
    their exact guides; the pairs that per-datapoint tools refuse are refused for their global
    sites, which the trainer accepts, so they pass the doctor too."""
    pair = case.make()
    check_pair(pair.model, pair.guide, pair.x, *pair.args)
    if case.exact_guide is not None:
        check_pair(pair.model, case.exact_guide(pair), pair.x, *pair.args)


@pytest.mark.parametrize("cls", [CVAE, M2], ids=lambda c: c.__name__)
def test_shipped_models_pass_on_grey_levels(cls):
    x, y = torch.rand(6, 16), torch.tensor([0, 1, 2, 9, 9, 3])
    pair = cls(16, 10, 3, (8,))
    check_pair(pair.model, pair.guide, x, y)
    if cls is M2:
        check_pair(pair.model, pair.guide, x)  # y latent, enumerated in the guide
    vae = VAE(16, 3, (8,), flows=2)
    check_pair(vae.model, vae.guide, x)
