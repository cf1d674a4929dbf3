"""The pair doctor (pyro_vae/infer/pair/doctor.py): every mistake is one line naming the site.

Each mistake of a tiny pair written here (a guide site under another name, a guide latent the
model lacks, a data plate wider than x in the pair or in the model alone, a guide that forgets
its data plate or names it otherwise, an observed value of another shape than its
distribution, integer data, Bernoulli data equal to 2, a NaN batch) is refused in the same one
line by ``check_pair``, ``train`` (before any step), ``SVIStep.step``, ``log_evidence`` and two
diagnostics; the opt-out for a model latent drawn from its prior works; a global latent is
trained and refused by the per-datapoint tools; every pair of the test catalogue and every
shipped model passes the doctor.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pairs import CATALOGUE, GaussianMixture, GlobalMean
from pyro import poutine
from pyro.infer import config_enumerate

from pyro_vae.diagnostics.latent import kl_per_dimension, latent_kl
from pyro_vae.diagnostics.posterior import nuts_reference
from pyro_vae.infer import (
    FROM_PRIOR,
    GlobalLatentError,
    SVIStep,
    check_pair,
    log_evidence,
    train,
)
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


def guide_outside_plate(x):
    """``guide`` without its data plate: z has the right shape, but a minibatch would scale the
    model's term of z and not the guide's (it used to train a wrong objective without a word)."""
    c = pyro.param("c", torch.tensor(0.1))
    pyro.sample("z", dist.Normal(c * x, 1.0))


def guide_in_plate(name):
    """``guide`` with its data plate called ``name``."""

    def guide(x):
        c = pyro.param("c", torch.tensor(0.1))
        with pyro.plate(name, x.shape[0]):
            pyro.sample("z", dist.Normal(c * x, 1.0))

    return guide


def batch_model(x):
    """``model`` with its data plate called "batch", as the guide's of ``guide_in_plate``."""
    w = pyro.param("w", torch.tensor(0.5))
    with pyro.plate("batch", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)


def model_wider_than_guide(x):
    """``model`` with a data plate of N + 3 under a right guide: replayed, the model's plate
    takes the guide's 5 indices and silently subsamples 5 of 8 (a NUTS run of the model alone
    met Pyro's many-line "Shape mismatch ... Trace Shapes:" dump instead)."""
    w = pyro.param("w", torch.tensor(0.5))
    with pyro.plate("data", x.shape[0] + 3):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)


def three_feature_model(x):
    """A likelihood over 3 features for data of 4 (torch's broadcasting error, in many lines)."""
    w = pyro.param("w", torch.tensor(0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        loc = w * z.unsqueeze(-1).expand(-1, 3)
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def sum_guide(x):
    c = pyro.param("c", torch.tensor(0.1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(c * x.sum(-1), 1.0))


ENCODER, DECODER = torch.nn.Linear(4, 2), torch.nn.Linear(1, 4)  # a user's networks


def net_model(x):
    """z ~ N(0, 1), x | z ~ Bernoulli(logits=DECODER(z)), four 0/1 features."""
    pyro.module("decoder", DECODER)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Bernoulli(logits=DECODER(z.unsqueeze(-1))).to_event(1), obs=x)


def net_guide(x):
    """q(z|x) = N(ENCODER(x)): mat1 and mat2 must have the same dtype."""
    pyro.module("encoder", ENCODER)
    with pyro.plate("data", x.shape[0]):
        loc, log_scale = ENCODER(x).unbind(-1)
        pyro.sample("z", dist.Normal(loc, log_scale.exp()))


def casting_guide(x):
    """``net_guide`` that casts x itself: only the model's Bernoulli meets the integers."""
    net_guide(x.float())


X_INT = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0], [1, 1, 1, 1]])

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
    "guide-outside-data-plate": (
        model,
        guide_outside_plate,
        X,
        r"^guide latent site 'z' lies outside the data plate 'data', while the model's 'z' lies "
        r"inside it \(a minibatch would scale one term and not the other\): sample it inside "
        r"`with pyro.plate\('data', x.shape\[0\]\):`$",
    ),
    "guide-plate-named-batch": (
        model,
        guide_in_plate("batch"),
        X,
        r"^guide latent site 'z' is in plate 'batch', not in the data plate 'data', while the "
        r"model's 'z' lies inside it .*: name the guide's plate 'data', as the model's$",
    ),
    "data-plate-named-batch": (
        batch_model,
        guide_in_plate("batch"),
        X,
        r"^observed site 'x' of the model is in plate 'batch' of size 5, not in the data plate "
        r"'data': name that plate 'data', or pass data_plate='batch'$",
    ),
    "model-plate-wider": (
        model_wider_than_guide,
        guide,
        X,
        r"^model site 'z': the data plate 'data' has size 8 but x holds 5 datapoints \(the "
        r"guide's plate has 5\); the plate must range over the first dimension of x",
    ),
    "observed-shape": (
        three_feature_model,
        sum_guide,
        torch.zeros(5, 4),
        r"^observed site 'x' has a value of shape \(5, 4\) but its distribution Normal has shape "
        r"\(5, 3\) \(batch \(5,\), event \(3,\)\); give the distribution the shape of the data",
    ),
    "int64-data": (
        net_model,
        net_guide,
        X_INT,
        r"^x is int64 but the pair's parameters are float32, and the pair fails on it: pass "
        r"x\.float\(\)$",
    ),
    "int64-observed": (
        net_model,
        casting_guide,
        X_INT,
        r"^observed site 'x': Bernoulli cannot score its int64 values \(result type Float can't "
        r"be cast to the desired output type Long\); pass floating-point data, e.g. x.float\(\)$",
    ),
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


@pytest.mark.parametrize(
    "bad_model, match",
    [
        (  # alone, the model fails at z: Pyro's "Shape mismatch" and its Trace Shapes dump
            model_wider_than_guide,
            r"^the model's data plate 'data' has size 8 but x holds 5 datapoints; the plate must "
            r"range over the first dimension of x",
        ),
        (
            batch_model,
            r"^observed site 'x' of the model is in plate 'batch' of size 5, not in the data "
            r"plate 'data'",
        ),
    ],
    ids=["model-plate-wider", "data-plate-named-batch"],
)
def test_nuts_names_the_model_alone_s_plate_mistakes(bad_model, match):
    with pytest.raises(ValueError, match=match) as err:
        nuts_reference(bad_model, X, num_chains=1, num_warmup=2, num_samples=2)
    assert len(str(err.value).splitlines()) == 1, str(err.value)


def _parameters() -> dict[str, torch.Tensor]:
    """The values a step would change: the pairs' params, registered first as the pairs make
    them (so a pair that refuses finds them in the store), and the user's networks."""
    pyro.param("w", torch.tensor(0.5))
    pyro.param("c", torch.tensor(0.1))
    store = {name: p.detach().clone() for name, p in pyro.get_param_store().items()}
    nets = {"encoder": ENCODER, "decoder": DECODER}
    for net_name, net in nets.items():
        store.update({f"{net_name}.{n}": p.detach().clone() for n, p in net.named_parameters()})
    return store


def _changed(before: dict) -> list[str]:
    after = _parameters()
    return [name for name, value in before.items() if not torch.equal(after[name], value)]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_train_refuses_a_mistake_before_any_step(mistake):
    bad_model, bad_guide, x, match = MISTAKES[mistake]
    before = _parameters()
    with pytest.raises(ValueError, match=match):
        train(bad_model, bad_guide, x, epochs=2, batch_size=5, progress=False)
    assert not _changed(before)


def test_the_parameter_check_sees_a_step():
    """The power of the test above: one epoch of the right pairs changes every parameter."""
    before = _parameters()
    train(model, guide, X, epochs=1, batch_size=2, progress=False)
    train(net_model, net_guide, X_INT.float(), epochs=1, batch_size=2, progress=False)
    assert set(_changed(before)) == set(before)


def test_integer_data_that_the_pair_takes_pass_everywhere():
    """The dtype rule is "the pair fails on x", not "x is not floating": no false alarm on a
    pair that casts the data itself."""

    def casting_model(x):
        net_model(x.float())

    check_pair(casting_model, casting_guide, X_INT)
    assert math.isfinite(SVIStep(casting_model, casting_guide).step(X_INT))
    assert torch.isfinite(
        log_evidence(casting_model, casting_guide, X_INT, num_samples=2).log_px
    ).all()


def test_data_of_another_float_dtype_is_named_with_the_cast():
    with pytest.raises(ValueError) as err:
        check_pair(net_model, net_guide, X_INT.double())
    assert str(err.value) == (
        "x is float64 but the pair's parameters are float32, and the pair fails on it: pass "
        "x.float()"
    )
    assert "same dtype" in str(err.value.__cause__)  # torch's own words stay in the traceback


def test_a_global_latent_is_trained_and_refused_by_the_per_datapoint_tools():
    """As documented (docs/design.md): minibatch scaling keeps a global site's ELBO term right,
    but log p(x_n) is not defined for it."""
    pair = GlobalMean()
    check_pair(pair.model, pair.guide, X)
    history = train(pair.model, pair.guide, X, epochs=1, batch_size=2, progress=False).history
    assert math.isfinite(history[0]["train_loss"])
    with pytest.raises(GlobalLatentError, match="^latent site 'w' of the guide lies outside"):
        log_evidence(pair.model, pair.guide, X, num_samples=2)


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
