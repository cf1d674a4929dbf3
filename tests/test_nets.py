"""Shapes, leading batch dims and argument checks of the encoder/decoder building blocks."""

import pytest
import torch
from torch import nn

from pyro_vae.nets import ACTIVATIONS, MLP, Decoder, GaussianEncoder

LEADING = [(5,), (3, 5)]
LEADING_IDS = ["N", "SxN"]
ARCH_CASES = [("mlp", 784, None), ("conv", 784, (28, 28)), ("conv", 64, None)]
ARCH_IDS = ["mlp", "conv28x28", "conv8x8"]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("lead", LEADING, ids=LEADING_IDS)
def test_mlp_shapes_and_layers(activation, lead):
    net = MLP(7, (6, 5), 3, activation=activation)
    out = net(torch.randn(*lead, 7))
    assert out.shape == (*lead, 3), out.shape
    kinds = [type(m) for m in net]
    expected = [nn.Linear, ACTIVATIONS[activation]] * 2 + [nn.Linear]
    assert kinds == expected, kinds


def test_mlp_without_hidden_is_affine():
    net = MLP(4, (), 2)
    x = torch.randn(3, 4)
    layer = net[0]
    assert len(net) == 1, len(net)
    assert torch.allclose(net(x), x @ layer.weight.T + layer.bias, atol=1e-6)


@pytest.mark.parametrize("arch,data_dim,image_shape", ARCH_CASES, ids=ARCH_IDS)
@pytest.mark.parametrize("lead", LEADING, ids=LEADING_IDS)
def test_encoder_shapes(arch, data_dim, image_shape, lead):
    enc = GaussianEncoder(data_dim, 4, (16,), arch=arch, image_shape=image_shape)
    loc, scale = enc(torch.rand(*lead, data_dim))
    assert loc.shape == scale.shape == (*lead, 4), (loc.shape, scale.shape)
    assert (scale > 0).all(), scale.min()


@pytest.mark.parametrize("arch,data_dim,image_shape", ARCH_CASES, ids=ARCH_IDS)
@pytest.mark.parametrize("lead", LEADING, ids=LEADING_IDS)
@pytest.mark.parametrize("per_pixel", [1, 2], ids=["D", "2D"])
def test_decoder_shapes(arch, data_dim, image_shape, lead, per_pixel):
    shape = image_shape or ((8, 8) if data_dim == 64 else None)
    dec = Decoder(4, per_pixel * data_dim, (16,), arch=arch, image_shape=shape)
    out = dec(torch.randn(*lead, 4))
    assert out.shape == (*lead, per_pixel * data_dim), out.shape


@pytest.mark.parametrize("arch,data_dim,image_shape", ARCH_CASES, ids=ARCH_IDS)
def test_leading_dims_equal_separate_calls(arch, data_dim, image_shape):
    """A (S, N, .) input gives exactly what S separate (N, .) calls give (reshape in and out)."""
    shape = image_shape or ((8, 8) if data_dim == 64 else None)
    enc = GaussianEncoder(data_dim, 3, (8,), arch=arch, image_shape=shape)
    dec = Decoder(3, data_dim, (8,), arch=arch, image_shape=shape)
    x, z = torch.rand(2, 4, data_dim), torch.randn(2, 4, 3)
    loc, scale = enc(x)
    out = dec(z)
    for s in range(2):
        loc_s, scale_s = enc(x[s])
        err = max((loc[s] - loc_s).abs().max(), (scale[s] - scale_s).abs().max())
        assert err < 1e-6, f"encoder differs by {err} for particle {s}"
        err = (out[s] - dec(z[s])).abs().max()
        assert err < 1e-6, f"decoder differs by {err} for particle {s}"


def test_encoder_scale_is_exp_of_second_half():
    """One output layer of size 2M: first M numbers are mu, last M are log sigma."""
    enc = GaussianEncoder(6, 2, (), activation="tanh")
    x = torch.randn(3, 6)
    raw = enc.net(x)
    loc, scale = enc(x)
    assert torch.allclose(loc, raw[:, :2]) and torch.allclose(scale, raw[:, 2:].exp())


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: MLP(4, (3,), 2, activation="swish"), "activation"),
        (lambda: MLP(4, (0,), 2), "hidden"),
        (lambda: MLP(4, (3.5,), 2), "hidden"),
        (lambda: MLP(4, "400", 2), "hidden"),
        (lambda: MLP(0, (3,), 2), "in_features"),
        (lambda: GaussianEncoder(10, 0, (3,)), "latent_dim"),
        (lambda: GaussianEncoder(10, 2, (3,), arch="rnn"), "arch"),
        (lambda: GaussianEncoder(10, 2, (3,), arch="conv"), "image_shape"),
        (lambda: GaussianEncoder(36, 2, (3,), arch="conv"), "divisible by 4"),
        (lambda: Decoder(2, 784, (3,), arch="conv"), "image_shape"),
        (lambda: Decoder(2, 700, (3,), arch="conv", image_shape=(28, 28)), "multiple"),
    ],
    ids=[
        "activation",
        "hidden0",
        "hidden-float",
        "hidden-str",
        "in0",
        "latent0",
        "arch",
        "conv-nonsquare",
        "conv-36",
        "conv-dec-noshape",
        "conv-dec-out",
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
