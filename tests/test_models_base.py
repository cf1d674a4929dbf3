"""The shared base of the latent-Gaussian models (pyro_vae.models.base, pyro_vae.models.labelled).

What VAE, CVAE and M2 share is written once; here: that they share it, that a seed still gives
the weights of the networks built one by one in the documented order (so checkpoints and seeded
runs made before the base existed are reproduced), that the submodule and param-store names are
the ones checkpoints hold. That no model module imports a private name from another is rule 6
of tests/test_layering.py, which checks every module of the package.
"""

import pyro
import pytest
import torch
from pyro import poutine

import pyro_vae.models
from pyro_vae.models import CVAE, M2, VAE, GaussianLikelihood, IAFlow
from pyro_vae.models.base import LatentGaussianModel, check_model_args, check_tensor
from pyro_vae.models.conditional import check_labels, concat, one_hot
from pyro_vae.models.labelled import LabelledLatentModel
from pyro_vae.nets import MLP, Decoder, GaussianEncoder

D, C, M, H = 16, 3, 2, (8, 6)


def test_the_models_share_the_bases():
    assert issubclass(VAE, LatentGaussianModel) and not issubclass(VAE, LabelledLatentModel)
    assert issubclass(CVAE, LabelledLatentModel) and issubclass(M2, LabelledLatentModel)
    assert issubclass(LabelledLatentModel, LatentGaussianModel)
    # the label helpers are one set of functions, importable from their old home
    labelled = pyro_vae.models.labelled
    assert (check_labels, concat, one_hot) == (
        labelled.check_labels,
        labelled.concat,
        labelled.one_hot,
    )


def assert_same_state(model, nets):
    """``model``'s state equals the nets', key for key, in the same order, bit for bit."""
    expected = {f"{name}.{k}": v for name, net in nets for k, v in net.state_dict().items()}
    actual = model.state_dict()
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("flows", [0, 2])
def test_vae_weights_are_the_nets_built_in_order(flows):
    """encoder, decoder, (likelihood), flow: the RNG draws and the submodule order."""
    torch.manual_seed(3)
    vae = VAE(D, M, H, "gaussian", "tanh", image_shape=(4, 4), flows=flows)
    torch.manual_seed(3)
    net = dict(activation="tanh", arch="mlp", image_shape=(4, 4))
    context = H[-1] if flows else 0
    encoder = GaussianEncoder(D, M, H, context_dim=context, **net)
    decoder = Decoder(M, GaussianLikelihood(D).num_params(D), tuple(reversed(H)), **net)
    nets = [("encoder", encoder), ("decoder", decoder), ("likelihood", GaussianLikelihood(D))]
    if flows:
        nets.append(("flow", IAFlow(M, context, flows, activation="tanh")))
    assert_same_state(vae, nets)


@pytest.mark.parametrize("cls", [CVAE, M2])
def test_labelled_weights_are_the_nets_built_in_order(cls):
    """(likelihood), encoder, decoder, then M2's classifier (M2 with PyTorch's start: its
    default small start redraws the hidden layers afterwards, tests/test_m2.py)."""
    torch.manual_seed(3)
    model = cls(D, C, M, H, "gaussian", "elu", **({"init": "torch"} if cls is M2 else {}))
    torch.manual_seed(3)
    nets = [
        ("likelihood", GaussianLikelihood(D)),
        ("encoder", GaussianEncoder(D + C, M, H, "elu")),
        ("decoder", Decoder(M + C, GaussianLikelihood(D).num_params(D), tuple(reversed(H)), "elu")),
    ]
    if cls is M2:
        nets.append(("classifier", MLP(D, H, C, "elu")))
    assert_same_state(model, nets)


@pytest.mark.parametrize(
    "make, args, names",
    [
        (lambda: VAE(D, M, H), (), {"encoder", "decoder"}),
        (lambda: VAE(D, M, H, "gaussian", flows=1), (), {"encoder", "decoder", "likelihood"}),
        (lambda: CVAE(D, C, M, H, "gaussian"), (0,), {"encoder", "decoder", "likelihood"}),
        (lambda: M2(D, C, M, H), (0,), {"encoder", "decoder", "classifier"}),
    ],
)
def test_param_store_names_are_the_checkpoints(make, args, names):
    """The Pyro modules registered by a model/guide pass: the names checkpoints hold (and
    "likelihood" only when the likelihood has parameters)."""
    model = make()
    x = torch.rand(4, D)
    extra = tuple(torch.full((4,), a, dtype=torch.long) for a in args)
    trace = poutine.trace(model.guide).get_trace(x, *extra)
    poutine.trace(poutine.replay(model.model, trace=trace)).get_trace(x, *extra)
    if isinstance(model, VAE) and model.flow is not None:
        names = names | {"flow"}
    assert {k.split("$$$")[0] for k in pyro.get_param_store().keys()} == names


@pytest.mark.parametrize("make", [lambda: VAE(D, M, H), lambda: CVAE(D, C, M, H)])
def test_config_rebuilds_the_same_architecture(make):
    model = make()
    torch.manual_seed(5)
    rebuilt = type(model)(**model.config)
    torch.manual_seed(5)
    again = type(model)(**model.config)
    assert rebuilt.config == model.config
    assert_same_state(rebuilt, list(again.named_children()))


def test_config_copies_a_likelihood_instance():
    likelihood = GaussianLikelihood(D)
    model = M2(D, C, M, H, likelihood)
    assert model.likelihood is likelihood
    assert model.config["likelihood"] is not likelihood
    assert list(model.config) == [
        "data_dim",
        "num_classes",
        "latent_dim",
        "hidden",
        "likelihood",
        "activation",
        "image_shape",
        "init",
    ]


def test_the_checks_are_the_models_checks():
    assert check_model_args(D, M, 8, "bernoulli", "relu", "mlp", None, 0) == (D, M, (8,), None, 0)
    with pytest.raises(ValueError, match=r"^flows must be a non-negative integer"):
        check_model_args(D, M, 8, "bernoulli", "relu", "mlp", None, -1)
    weight = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^x must have the dtype of the VAE's parameters"):
        check_tensor("x", torch.zeros(2, D), D, weight, False, "encoder")
    # one message for every model
    x = torch.zeros(2, D, dtype=torch.float64)
    for call in (VAE(D, M, H).guide, lambda x: CVAE(D, C, M, H).code(x, torch.zeros(2).long())):
        with pytest.raises(ValueError, match=r"^x must have the dtype of the VAE's parameters"):
            call(x)


def test_the_prior_hook_is_the_standard_normal_and_sample_prior_draws_from_it():
    model, x = VAE(D, M, H), torch.rand(5, D)
    prior = model.prior(x)
    assert prior.batch_shape == (5,) and prior.event_shape == (M,)
    z = torch.randn(7, 5, M)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), expected)
    # the same draws as torch.randn, so seeded figures made before the hook are unchanged
    torch.manual_seed(2)
    draws = model.sample_prior(4)
    torch.manual_seed(2)
    assert torch.equal(draws, torch.randn(4, M))


def test_extend_config_adds_arguments_and_refuses_a_base_one():
    model = VAE(D, M, H)
    with pytest.raises(ValueError, match=r"config entries \['latent_dim'\] are already set"):
        model.extend_config(latent_dim=3)
    model.extend_config(extra=1)
    assert list(model.config)[-1] == "extra"
