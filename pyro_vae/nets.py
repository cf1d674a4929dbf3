"""Encoder and decoder networks for deep latent variable models.

The encoder is the inference network f_phi(x) -> (mu, log sigma) of the amortized Gaussian
posterior q_phi(z|x) = N(mu, diag sigma^2); the decoder is f_theta(z), whose output parametrizes
the likelihood p_theta(x|z) (Kingma & Welling 2019, sec. 1.7 and 2.5).

Both come as a multilayer perceptron (``arch="mlp"``) or a small convolutional net for
single-channel images such as 28x28 MNIST (``arch="conv"``). Every net works on inputs with any
number of leading batch dimensions, e.g. codes ``z`` of shape ``(S, N, M)`` drawn under an outer
particle plate: linear layers broadcast over them, conv nets flatten them into one batch dimension
and restore them on the way out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "MLP",
    "GaussianEncoder",
    "Decoder",
    "check_hidden",
    "check_image_shape",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
}

ARCHS = ("mlp", "conv")
_CONV_CHANNELS = (32, 64)  # two stride-2 convolutions: (H, W) -> (H/2, W/2) -> (H/4, W/4)


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_hidden(hidden) -> tuple[int, ...]:
    """Hidden layer sizes as a tuple of positive ints (an int means one layer; ``()`` none)."""
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if isinstance(hidden, str) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a sequence of positive integers, got {hidden!r}")
    return tuple(_check_positive_int("each hidden size", h) for h in hidden)


def check_image_shape(data_dim: int, image_shape) -> tuple[int, int]:
    """``(H, W)`` for a conv net on ``data_dim = H * W`` pixels; square when not given."""
    if image_shape is None:
        side = math.isqrt(data_dim)
        if side * side != data_dim:
            raise ValueError(f"arch='conv' needs image_shape for non-square data_dim={data_dim}")
        image_shape = (side, side)
    h, w = (int(s) for s in image_shape)
    if h * w != data_dim or h % 4 or w % 4:
        raise ValueError(
            f"arch='conv' needs image_shape (H, W) with H * W == data_dim ({data_dim}) and H, W "
            f"divisible by 4 (two stride-2 layers), got {tuple(image_shape)}"
        )
    return h, w


class MLP(nn.Sequential):
    """Multilayer perceptron ``in -> hidden[0] -> ... -> hidden[-1] -> out``.

    An activation follows every hidden layer; the output layer is linear. Input
    ``(..., in_features)``, output ``(..., out_features)`` for any leading batch dims.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ):
        sizes = (
            _check_positive_int("in_features", in_features),
            *check_hidden(hidden),
            _check_positive_int("out_features", out_features),
        )
        _activation(activation)  # fail early on a bad name
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_activation(activation))
        super().__init__(*layers)


class _ConvEncoderTrunk(nn.Sequential):
    """``(..., H*W)`` pixels -> ``(..., 64 * H/4 * W/4)`` features: two 4x4 stride-2 convs."""

    def __init__(self, image_shape: tuple[int, int], activation: str):
        c1, c2 = _CONV_CHANNELS
        super().__init__(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),
            _activation(activation),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            _activation(activation),
        )
        self.image_shape = image_shape
        self.out_features = c2 * (image_shape[0] // 4) * (image_shape[1] // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]  # conv layers take one batch dim: flatten the leading dims, restore
        h = super().forward(x.reshape(-1, 1, *self.image_shape))
        return h.reshape(*lead, self.out_features)


class _ConvDecoderTrunk(nn.Sequential):
    """``(..., 64 * H/4 * W/4)`` features -> ``(..., k * H * W)``: two 4x4 stride-2 transposed
    convs to ``k`` output channels, flattened channel-major (``k`` blocks of ``H * W``)."""

    def __init__(self, image_shape: tuple[int, int], channels: int, activation: str):
        c1, c2 = _CONV_CHANNELS
        super().__init__(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            _activation(activation),
            nn.ConvTranspose2d(c1, channels, 4, stride=2, padding=1),
        )
        self.in_shape = (c2, image_shape[0] // 4, image_shape[1] // 4)
        self.out_features = channels * image_shape[0] * image_shape[1]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        lead = h.shape[:-1]
        out = super().forward(h.reshape(-1, *self.in_shape))
        return out.reshape(*lead, self.out_features)


def _check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    return arch


class GaussianEncoder(nn.Module):
    """Inference network of q_phi(z|x) = N(z; mu, diag sigma^2), (mu, log sigma) = f_phi(x).

    Kingma & Welling (2019), sec. 2.5. One output layer produces ``2 * latent_dim``
    numbers split into ``mu`` and ``log sigma`` (one matmul instead of two).

    Input ``x``: ``(..., data_dim)``. Output ``(loc, scale)``, each ``(..., latent_dim)``,
    with ``scale = exp(log sigma) > 0``.

    ``arch="mlp"``: ``MLP(data_dim, hidden, 2 * latent_dim)``. ``arch="conv"``: reads ``x`` as
    single-channel ``image_shape`` images (default square), two stride-2 convolutions, then
    ``MLP(features, hidden, 2 * latent_dim)``.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        activation: str = "relu",
        arch: str = "mlp",
        image_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        _check_positive_int("data_dim", data_dim)
        self.latent_dim = _check_positive_int("latent_dim", latent_dim)
        if _check_arch(arch) == "conv":
            trunk = _ConvEncoderTrunk(check_image_shape(data_dim, image_shape), activation)
            self.net = nn.Sequential(
                trunk, MLP(trunk.out_features, hidden, 2 * latent_dim, activation)
            )
        else:
            self.net = MLP(data_dim, hidden, 2 * latent_dim, activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.net(x).split(self.latent_dim, dim=-1)
        return loc, log_scale.exp()


class Decoder(nn.Module):
    """Generative network f_theta(z) giving the parameters of p_theta(x|z) (K&W 2019, sec. 1.7).

    Input ``z``: ``(..., latent_dim)``, e.g. ``(S, N, M)``. Output: raw (unconstrained)
    likelihood parameters ``(..., out_features)``; the likelihood maps them to a distribution.

    ``arch="mlp"``: ``MLP(latent_dim, hidden, out_features)``. ``arch="conv"``:
    ``MLP(latent_dim, hidden, features)``, activation, then two stride-2 transposed convolutions
    to ``out_features / (H * W)`` channels, flattened channel-major.
    """

    def __init__(
        self,
        latent_dim: int,
        out_features: int,
        hidden: Sequence[int],
        activation: str = "relu",
        arch: str = "mlp",
        image_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        _check_positive_int("latent_dim", latent_dim)
        _check_positive_int("out_features", out_features)
        if _check_arch(arch) == "conv":
            if image_shape is None:
                raise ValueError("Decoder(arch='conv') needs image_shape (H, W)")
            h, w = check_image_shape(int(image_shape[0]) * int(image_shape[1]), image_shape)
            if out_features % (h * w):
                raise ValueError(
                    f"arch='conv' needs out_features to be a multiple of H * W = {h * w}, "
                    f"got {out_features}"
                )
            trunk = _ConvDecoderTrunk((h, w), out_features // (h * w), activation)
            features = math.prod(trunk.in_shape)
            self.net = nn.Sequential(
                MLP(latent_dim, hidden, features, activation), _activation(activation), trunk
            )
        else:
            self.net = MLP(latent_dim, hidden, out_features, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
