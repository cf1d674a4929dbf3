"""Encoder and decoder networks for deep latent variable models.

The encoder is the inference network f_phi(x) -> (mu, log sigma) of the amortized Gaussian
posterior q_phi(z|x) = N(mu, diag sigma^2) (the "Gaussian MLP as encoder" of Kingma & Welling
2014, Appendix C.2); the decoder is f_theta(z), whose output parametrizes the likelihood
p_theta(x|z) (their Appendix C.1 for Bernoulli pixels; Kingma & Welling 2019, sec. 1.7 and 2.5).

Both come as a multilayer perceptron (``arch="mlp"``) or a small convolutional net for
single-channel images such as 28x28 MNIST (``arch="conv"``). Every net works on inputs with any
number of leading batch dimensions, e.g. codes ``z`` of shape ``(S, N, M)`` drawn under an outer
particle plate: linear layers broadcast over them, conv nets flatten them into one batch dimension
and restore them on the way out.

Size: the two networks, the MLP and conv trunks they are built from, and the argument checks
(``check_*``) that they and the models share: one vocabulary, half of it docstrings, that the
models import from one place; apart, the nets would be a thin module importing every check.

References
----------
Kingma, D. P. and Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
Kingma, D. P. and Welling, M. (2019). An Introduction to Variational Autoencoders. Foundations
and Trends in Machine Learning 12(4).
Kingma, D. P., Salimans, T., Jozefowicz, R., Chen, X., Sutskever, I. and Welling, M. (2016).
Improving Variational Inference with Inverse Autoregressive Flow. NeurIPS.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "MLP",
    "GaussianEncoder",
    "Decoder",
    "check_activation",
    "check_arch",
    "check_hidden",
    "check_image_shape",
    "check_positive_int",
    "check_init",
    "init_hidden_layers",
    "INITS",
]

#: Hidden-layer nonlinearities by name (the ``activation=`` argument of every net).
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

#: Network architectures (the ``arch=`` argument of every net).
ARCHS = ("mlp", "conv")
_CONV_CHANNELS = (32, 64)  # two stride-2 convolutions: (H, W) -> (H/2, W/2) -> (H/4, W/4)


def check_activation(name: str) -> str:
    """``name`` if it is a key of :data:`ACTIVATIONS`, else a ValueError listing them."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return name


def _activation(name: str) -> nn.Module:
    return ACTIVATIONS[check_activation(name)]()


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int if it is a positive integer, else a ValueError naming ``name``."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_arch(arch: str) -> str:
    """``arch`` if it is one of :data:`ARCHS`, else a ValueError listing them."""
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    return arch


def _check_last_dim(name: str, t: torch.Tensor, size: int) -> None:
    """Shape check of a net's input: ``t`` must be ``(..., size)`` (a cheap attribute read)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < 1 or t.shape[-1] != size:
        raise ValueError(f"{name} must have shape (..., {size}), got {tuple(t.shape)}")


def check_hidden(hidden) -> tuple[int, ...]:
    """Validate hidden layer sizes.

    Parameters
    ----------
    hidden : int or sequence of int
        Sizes of the hidden layers; an int means one layer and ``()`` none (an affine map).

    Returns
    -------
    tuple of int
        The sizes, each a positive Python int.

    Raises
    ------
    ValueError
        When ``hidden`` is not an int or a sequence of ints (a string is refused), or a size is
        not a positive integer.
    """
    if _is_int(hidden):
        hidden = (hidden,)
    if (
        isinstance(hidden, str)
        or not isinstance(hidden, Sequence)
        or not all(_is_int(h) and h >= 1 for h in hidden)
    ):
        raise ValueError(f"hidden must be a sequence of positive integers, got {hidden!r}")
    return tuple(int(h) for h in hidden)


def _parse_image_shape(image_shape) -> tuple[int, int]:
    """``image_shape`` as ``(H, W)``, two positive ints, or a ValueError naming it."""
    ok = (
        isinstance(image_shape, Sequence)
        and not isinstance(image_shape, str)
        and len(image_shape) == 2
        and all(_is_int(s) and s >= 1 for s in image_shape)
    )
    if not ok:
        raise ValueError(f"image_shape must be (H, W), two positive integers, got {image_shape!r}")
    return int(image_shape[0]), int(image_shape[1])


def check_image_shape(data_dim: int, image_shape, arch: str = "conv") -> tuple[int, int] | None:
    """Validate the image shape ``(H, W)`` of ``data_dim = H * W`` pixels for ``arch``.

    Parameters
    ----------
    data_dim : int
        Number of pixels D.
    image_shape : sequence of two int, or None
        ``(H, W)``. For ``arch="conv"`` it defaults to a square image and ``H`` and ``W`` must be
        divisible by 4 (two stride-2 layers); for ``arch="mlp"`` it is only metadata (e.g. for
        plots) and may be None.
    arch : {"conv", "mlp"}
        The architecture that reads the pixels.

    Returns
    -------
    tuple of (int, int), or None
        ``(H, W)``; None only for ``arch="mlp"`` without an image shape.

    Raises
    ------
    ValueError
        When ``image_shape`` is not two positive integers, ``H * W != data_dim``, a conv net gets
        a non-square ``data_dim`` without ``image_shape``, or ``H`` or ``W`` is not divisible by
        4 for a conv net.
    """
    check_positive_int("data_dim", data_dim)
    if check_arch(arch) == "mlp":
        if image_shape is None:
            return None
        h, w = _parse_image_shape(image_shape)
        if h * w != data_dim:
            raise ValueError(
                f"image_shape (H, W) must have H * W == data_dim ({data_dim}), got {(h, w)}"
            )
        return h, w
    if image_shape is None:
        side = math.isqrt(data_dim)
        if side * side != data_dim:
            raise ValueError(f"arch='conv' needs image_shape for non-square data_dim={data_dim}")
        image_shape = (side, side)
    h, w = _parse_image_shape(image_shape)
    if h * w != data_dim or h % 4 or w % 4:
        raise ValueError(
            f"arch='conv' needs image_shape (H, W) with H * W == data_dim ({data_dim}) and H, W "
            f"divisible by 4 (two stride-2 layers), got {(h, w)}"
        )
    return h, w


class MLP(nn.Sequential):
    """Multilayer perceptron from ``in`` through ``hidden[0]``, ..., ``hidden[-1]`` to ``out``.

    An activation follows every hidden layer; the output layer is linear. Called on an input of
    shape ``(..., in_features)`` it returns ``(..., out_features)``, for any leading batch dims.
    Weights get PyTorch's default initialization from the global torch RNG, so construction
    after ``torch.manual_seed(s)`` is reproducible.

    Parameters
    ----------
    in_features : int
        Input size.
    hidden : int or sequence of int
        Hidden layer sizes; ``()`` gives a single affine layer.
    out_features : int
        Output size.
    activation : str, default "relu"
        A key of :data:`ACTIVATIONS`.

    Raises
    ------
    ValueError
        When a size is not a positive integer or ``activation`` is unknown (the message lists
        the valid names).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ):
        sizes = (
            check_positive_int("in_features", in_features),
            *check_hidden(hidden),
            check_positive_int("out_features", out_features),
        )
        _activation(activation)  # fail early on a bad name
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_activation(activation))
        super().__init__(*layers)


#: Start weights by name (the ``init=`` argument of the models that take one): ``"torch"``,
#: PyTorch's default (uniform, scaled by fan-in); ``"small"``, the hidden layers' weights and
#: biases from N(0, 0.001^2), as in Pyro's semi-supervised VAE example (its ``custom_mlp.py``).
INITS = ("torch", "small")
SMALL_INIT_STD = 1e-3


def check_init(init: str) -> str:
    """``init`` if it is one of :data:`INITS`, else a ValueError listing them."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
    return init


def init_hidden_layers(module: nn.Module, init: str) -> nn.Module:
    """Redraw the hidden layers of every :class:`MLP` inside ``module``, as ``init`` says.

    A hidden layer is a linear layer that an activation follows; output layers keep their
    draws. ``"small"`` starts every hidden unit near zero, so at the start each hidden
    activation is about the same for every input (softplus(0) = log 2): the nets begin close
    to a function of the output biases alone and grow their input dependence from the data.
    M2 starts this way by default; what it changes is measured in
    ``docs/results/semi_supervised.md`` (``--init torch`` against the default).

    Parameters
    ----------
    module : nn.Module
        Networks to reinitialize in place (draws from the global torch RNG).
    init : {"torch", "small"}
        ``"torch"`` leaves them as built.

    Returns
    -------
    nn.Module
        ``module``.

    Raises
    ------
    ValueError
        For an unknown ``init``, listing :data:`INITS`.
    """
    if check_init(init) == "torch":
        return module
    with torch.no_grad():
        for mlp in (m for m in module.modules() if isinstance(m, MLP)):
            linears = [layer for layer in mlp if isinstance(layer, nn.Linear)]
            for layer in linears[:-1]:  # the last one is the output layer
                layer.weight.normal_(0.0, SMALL_INIT_STD)
                layer.bias.normal_(0.0, SMALL_INIT_STD)
    return module


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


class GaussianEncoder(nn.Module):
    """Inference network of q_phi(z|x) = N(z; mu, diag sigma^2), (mu, log sigma) = f_phi(x).

    The "Gaussian MLP as encoder" of Kingma & Welling (2014), Appendix C.2 (which outputs
    log sigma^2; here the net outputs log sigma, the same family); Kingma & Welling (2019),
    sec. 2.5. One output layer produces ``2 * latent_dim`` numbers split into ``mu`` and
    ``log sigma`` (one matmul instead of two).

    ``arch="mlp"``: ``MLP(data_dim, hidden, 2 * latent_dim)``. ``arch="conv"``: reads ``x`` as
    single-channel ``image_shape`` images (default square), two stride-2 convolutions, then
    ``MLP(features, hidden, 2 * latent_dim)``.

    With ``context_dim = C > 0`` the output layer also emits a context h(x) of C numbers, a
    linear function of the last hidden layer, for the flow steps that follow the Gaussian draw
    (the extra encoder output h of inverse autoregressive flow; Kingma et al. 2016, sec. 4 and
    Fig. 2): the output layer has ``2 * latent_dim + C`` units. ``context_dim = 0`` builds
    exactly the net above (same layers, same initial random draws).

    Parameters
    ----------
    data_dim : int
        Number of input pixels D.
    latent_dim : int
        Dimension M of z.
    hidden : int or sequence of int
        Hidden layer sizes of the MLP (``()``: affine).
    activation : str, default "relu"
        A key of :data:`ACTIVATIONS`.
    arch : {"mlp", "conv"}, default "mlp"
        Architecture.
    image_shape : sequence of two int, optional
        ``(H, W)`` with ``H * W == data_dim``, for ``arch="conv"``; see
        :func:`check_image_shape`.
    context_dim : int, default 0
        Size C of the extra context output h(x); 0 for none.

    Raises
    ------
    ValueError
        When a size is not a positive integer (``context_dim``: not a non-negative integer), or
        ``activation``, ``arch`` or ``image_shape`` is invalid (the message names the argument
        and the valid choices).
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        activation: str = "relu",
        arch: str = "mlp",
        image_shape: Sequence[int] | None = None,
        context_dim: int = 0,
    ):
        super().__init__()
        self.data_dim = check_positive_int("data_dim", data_dim)
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        if not _is_int(context_dim) or context_dim < 0:
            raise ValueError(f"context_dim must be a non-negative integer, got {context_dim!r}")
        self.context_dim = int(context_dim)
        out = 2 * self.latent_dim + self.context_dim
        if check_arch(arch) == "conv":
            trunk = _ConvEncoderTrunk(check_image_shape(data_dim, image_shape), activation)
            self.net = nn.Sequential(trunk, MLP(trunk.out_features, hidden, out, activation))
        else:
            self.net = MLP(data_dim, hidden, out, activation)

    def forward(self, x: torch.Tensor, return_context: bool = False) -> tuple[torch.Tensor, ...]:
        """The posterior parameters of each datapoint (and its context h(x)).

        Parameters
        ----------
        x : torch.Tensor of shape (..., D)
            Data, any number of leading batch dimensions.
        return_context : bool, default False
            Also return the context h(x).

        Returns
        -------
        loc : torch.Tensor of shape (..., M)
            mu_phi(x).
        scale : torch.Tensor of shape (..., M)
            sigma_phi(x) = exp(log sigma) > 0.
        context : torch.Tensor of shape (..., C)
            h(x), only when ``return_context`` (shape ``(..., 0)`` when C = 0).

        Raises
        ------
        ValueError
            When ``x`` is not a tensor whose last dimension is D.
        """
        _check_last_dim("x", x, self.data_dim)
        sizes = (self.latent_dim, self.latent_dim, self.context_dim)
        loc, log_scale, context = self.net(x).split(sizes, dim=-1)
        return (loc, log_scale.exp(), context) if return_context else (loc, log_scale.exp())


class Decoder(nn.Module):
    """Generative network f_theta(z) giving the parameters of p_theta(x|z).

    The decoder MLP of Kingma & Welling (2014), Appendix C.1 (Bernoulli) and C.2 (Gaussian);
    Kingma & Welling (2019), sec. 1.7. Its output is raw (unconstrained) likelihood parameters,
    which a :class:`~pyro_vae.models.likelihoods.Likelihood` maps to a distribution.

    ``arch="mlp"``: ``MLP(latent_dim, hidden, out_features)``. ``arch="conv"``:
    ``MLP(latent_dim, hidden, features)``, activation, then two stride-2 transposed convolutions
    to ``out_features / (H * W)`` channels, flattened channel-major.

    Parameters
    ----------
    latent_dim : int
        Dimension M of z.
    out_features : int
        Number of outputs P, e.g. D (one logit per pixel) or 2 D (a location and a scale).
    hidden : int or sequence of int
        Hidden layer sizes of the MLP (``()``: affine).
    activation : str, default "relu"
        A key of :data:`ACTIVATIONS`.
    arch : {"mlp", "conv"}, default "mlp"
        Architecture.
    image_shape : sequence of two int, optional
        ``(H, W)``, required for ``arch="conv"``; ``out_features`` must be a multiple of
        ``H * W``.

    Raises
    ------
    ValueError
        When a size is not a positive integer, ``activation`` or ``arch`` is unknown, or a conv
        decoder has no valid ``image_shape`` or an ``out_features`` that is not a multiple of
        ``H * W``.
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
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.out_features = check_positive_int("out_features", out_features)
        if check_arch(arch) == "conv":
            if image_shape is None:
                raise ValueError("Decoder(arch='conv') needs image_shape (H, W)")
            h, w = _parse_image_shape(image_shape)
            check_image_shape(h * w, (h, w))
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
        """The raw likelihood parameters f_theta(z).

        Parameters
        ----------
        z : torch.Tensor of shape (..., M)
            Codes, any number of leading batch dimensions, e.g. ``(S, N, M)``.

        Returns
        -------
        torch.Tensor of shape (..., P)
            Unconstrained outputs, P = ``out_features``.

        Raises
        ------
        ValueError
            When ``z`` is not a tensor whose last dimension is M.
        """
        _check_last_dim("z", z, self.latent_dim)
        return self.net(z)
