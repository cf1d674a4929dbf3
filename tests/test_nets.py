"""Shapes, leading batch dims and argument checks of the encoder/decoder building blocks."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from pyro_vae.nets import (
    ACTIVATIONS,
    MLP,
    Decoder,
    GaussianEncoder,
    check_hidden,
    check_image_shape,
)

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
    # atol 1e-6: float32 round-off of 4-term dot products of O(1) terms (4 * 1.2e-7 * ~2);
    # measured exactly 0 over 30 seeds
    assert torch.allclose(net(x), x @ layer.weight.T + layer.bias, atol=1e-6)


@pytest.mark.parametrize("arch,data_dim,image_shape", ARCH_CASES, ids=ARCH_IDS)
@pytest.mark.parametrize("lead", LEADING, ids=LEADING_IDS)
def test_encoder_shapes(arch, data_dim, image_shape, lead):
    enc = GaussianEncoder(data_dim, 4, (16,), arch=arch, image_shape=image_shape)
    loc, scale = enc(torch.rand(*lead, data_dim))
    assert loc.shape == scale.shape == (*lead, 4), (loc.shape, scale.shape)
    assert (scale > 0).all(), scale.min()  # > 0: the support of a scale


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
        # 1e-6: float32 round-off if the batched kernels sum in another order (O(1) outputs of
        # sums of up to 784 terms would allow ~1e-5; measured exactly 0 over 30 seeds)
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
    # exact: the same numbers split, and exp of the same numbers
    assert torch.equal(loc, raw[:, :2]) and torch.equal(scale, raw[:, 2:].exp())


@pytest.mark.parametrize("arch, data_dim", [("mlp", 6), ("conv", 64)])
def test_encoder_context_is_the_last_block_of_the_output_layer(arch, data_dim):
    """context_dim = C: one output layer of size 2M + C, split into mu, log sigma and h(x);
    C = 0 gives an empty context and the plain (loc, scale) pair."""
    enc = GaussianEncoder(data_dim, 2, (5,), arch=arch, context_dim=3)
    x = torch.randn(2, 4, data_dim)
    raw = enc.net(x)
    loc, scale, context = enc(x, return_context=True)
    assert raw.shape == (2, 4, 7) and context.shape == (2, 4, 3), (raw.shape, context.shape)
    # exact: the same numbers split
    assert torch.equal(context, raw[..., 4:]) and torch.equal(loc, enc(x)[0])
    plain = GaussianEncoder(data_dim, 2, (5,), arch=arch)
    assert plain(x, return_context=True)[2].shape == (2, 4, 0) and len(plain(x)) == 2
    with pytest.raises(ValueError, match="^context_dim must be a non-negative integer, got -1"):
        GaussianEncoder(data_dim, 2, (5,), arch=arch, context_dim=-1)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: MLP(4, (3,), 2, activation="swish"), "unknown activation 'swish'; choose one"),
        (lambda: MLP(4, (0,), 2), "hidden must be a sequence of positive integers, got (0,)"),
        (lambda: MLP(4, (3.5,), 2), "hidden must be a sequence of positive integers, got (3.5,)"),
        (lambda: MLP(4, "400", 2), "hidden must be a sequence of positive integers, got '400'"),
        (lambda: MLP(0, (3,), 2), "in_features must be a positive integer, got 0"),
        (lambda: MLP(4, (3,), True), "out_features must be a positive integer, got True"),
        (lambda: GaussianEncoder(10, 0, (3,)), "latent_dim must be a positive integer, got 0"),
        (lambda: GaussianEncoder(10, 2, (3,), arch="rnn"), "unknown arch 'rnn'; choose one of"),
        (lambda: GaussianEncoder(10, 2, (3,), arch="conv"), "needs image_shape for non-square"),
        (lambda: GaussianEncoder(36, 2, (3,), arch="conv"), "divisible by 4"),
        (
            lambda: GaussianEncoder(64, 2, (3,), arch="conv", image_shape=(-8, -8)),
            "image_shape must be (H, W), two positive integers, got (-8, -8)",
        ),
        (
            lambda: GaussianEncoder(64, 2, (3,), arch="conv", image_shape=(8.0, 8)),
            "image_shape must be (H, W), two positive integers, got (8.0, 8)",
        ),
        (lambda: Decoder(2, 784, (3,), arch="conv"), "Decoder(arch='conv') needs image_shape"),
        (
            lambda: Decoder(2, 784, (3,), arch="conv", image_shape=(28,)),
            "image_shape must be (H, W), two positive integers, got (28,)",
        ),
        (
            lambda: Decoder(2, 700, (3,), arch="conv", image_shape=(28, 28)),
            "needs out_features to be a multiple of H * W = 784, got 700",
        ),
    ],
    ids=[
        "activation",
        "hidden0",
        "hidden-float",
        "hidden-str",
        "in0",
        "out-bool",
        "latent0",
        "arch",
        "conv-nonsquare",
        "conv-36",
        "conv-negative",
        "conv-float",
        "conv-dec-noshape",
        "conv-dec-1d-shape",
        "conv-dec-out",
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        make()


def test_check_hidden_and_image_shape():
    assert check_hidden(3) == (3,) and check_hidden(()) == ()
    assert check_hidden([np.int64(4), 2]) == (4, 2)
    assert all(type(h) is int for h in check_hidden([np.int64(4), 2]))
    assert check_image_shape(784, None) == (28, 28)
    assert check_image_shape(64, [4, 16]) == (4, 16)
    assert check_image_shape(64, None, arch="mlp") is None
    assert check_image_shape(63, (7, 9), arch="mlp") == (7, 9)  # mlp: no divisibility by 4
    with pytest.raises(ValueError, match=re.escape("H * W == data_dim (63), got (7, 7)")):
        check_image_shape(63, (7, 7), arch="mlp")


@pytest.mark.parametrize("arch,data_dim,image_shape", ARCH_CASES, ids=ARCH_IDS)
def test_inputs_of_a_wrong_size_are_refused(arch, data_dim, image_shape):
    """A conv net would otherwise reshape (2, D/2) pixels into one image without a word."""
    shape = image_shape or ((8, 8) if data_dim == 64 else None)
    enc = GaussianEncoder(data_dim, 3, (8,), arch=arch, image_shape=shape)
    dec = Decoder(3, data_dim, (8,), arch=arch, image_shape=shape)
    half = data_dim // 2
    with pytest.raises(ValueError, match=re.escape(f"x must have shape (..., {data_dim}), got")):
        enc(torch.rand(2, half))
    with pytest.raises(ValueError, match=re.escape("z must have shape (..., 3), got (2, 4)")):
        dec(torch.randn(2, 4))
    with pytest.raises(ValueError, match=re.escape("x must be a torch.Tensor, got ndarray")):
        enc(np.zeros((2, data_dim), dtype=np.float32))
