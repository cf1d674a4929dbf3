"""What every latent-Gaussian model here shares: p(z) = N(0, I), p_theta(x|z, ...), checks.

:class:`LatentGaussianModel` is the base of :class:`~pyro_vae.models.vae.VAE` and (through
:class:`~pyro_vae.models.labelled.LabelledLatentModel`) of
:class:`~pyro_vae.models.conditional.CVAE` and :class:`~pyro_vae.models.m2.M2`. Each of them
is a deep latent variable model (Kingma & Welling 2019, sec. 1.7) with

    z ~ p(z) = N(0, I)                          site "z", batch shape (N,), event shape (M,)
    x ~ p_theta(x|z, ...), params = f_theta(...) site "x", the likelihood of the decoder output

and an amortized Gaussian (or flow) guide q_phi(z|x, ...) (the encoder). The base holds the
validated constructor arguments (:func:`check_model_args`, the ``config`` property), the
likelihood object and its registration with Pyro, the prior, and the checks of every tensor a
model is given (:func:`check_tensor`); a subclass builds its networks, in its own order (the
order of the global torch RNG draws, so a seed gives the same weights), and writes ``model``
and ``guide`` as its equations.

References
----------
Kingma, D. P. and Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
Kingma, D. P. and Welling, M. (2019). An Introduction to Variational Autoencoders. Foundations
and Trends in Machine Learning 12(4).
"""

from __future__ import annotations

import copy
import numbers

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.models.likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from pyro_vae.nets import (
    check_activation,
    check_arch,
    check_hidden,
    check_image_shape,
    check_positive_int,
)

__all__ = ["LatentGaussianModel", "check_model_args", "check_tensor", "make_likelihood"]


def check_model_args(
    data_dim,
    latent_dim,
    hidden,
    likelihood,
    activation,
    arch,
    image_shape,
    flows,
) -> tuple[int, int, tuple[int, ...], tuple[int, int] | None, int]:
    """Validate every constructor argument before anything is built (or any RNG draw is made).

    Parameters
    ----------
    data_dim : int
        Number of pixels D.
    latent_dim : int
        Dimension M of z.
    hidden : int or sequence of int
        Hidden layer sizes, at least one.
    likelihood : {"bernoulli", "gaussian"} or Likelihood
        A name in :data:`~pyro_vae.models.likelihoods.LIKELIHOODS` or an instance.
    activation : str
        A key of :data:`pyro_vae.nets.ACTIVATIONS`.
    arch : {"mlp", "conv"}
        The network architecture.
    image_shape : sequence of two int or None
        ``(H, W)`` with ``H * W == D``.
    flows : int
        Number of IAF steps, >= 0.

    Returns
    -------
    data_dim : int
    latent_dim : int
    hidden : tuple of int
    image_shape : tuple of two int or None
        As :func:`pyro_vae.nets.check_image_shape` normalizes it (a square default for "conv").
    flows : int

    Raises
    ------
    ValueError
        When ``data_dim`` or ``latent_dim`` is not a positive integer; ``hidden`` is empty or
        holds a size that is not a positive integer; ``likelihood``, ``activation`` or ``arch``
        is unknown (the message lists the valid choices); ``image_shape`` does not fit
        ``data_dim`` (and ``arch``); or ``flows`` is not a non-negative integer.
    """
    data_dim = check_positive_int("data_dim", data_dim)
    latent_dim = check_positive_int("latent_dim", latent_dim)
    hidden = check_hidden(hidden)
    if not hidden:
        raise ValueError(
            "hidden must be a non-empty sequence of positive integers (at least one hidden "
            "layer), got ()"
        )
    if not isinstance(likelihood, Likelihood) and (
        not isinstance(likelihood, str) or likelihood not in LIKELIHOODS
    ):
        raise ValueError(
            f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS} or pass a "
            "Likelihood instance"
        )
    check_activation(activation)
    check_arch(arch)
    image_shape = check_image_shape(data_dim, image_shape, arch)
    if isinstance(flows, bool) or not isinstance(flows, numbers.Integral) or flows < 0:
        raise ValueError(
            f"flows must be a non-negative integer (0: the diagonal Gaussian guide), got {flows!r}"
        )
    return data_dim, latent_dim, hidden, image_shape, int(flows)


def check_tensor(name: str, t, size: int, weight: torch.Tensor, batched: bool, what: str) -> None:
    """Refuse ``t`` unless it is ``(N, size)`` (or ``(..., N, size)`` when ``batched``) with the
    dtype and device of ``weight``. Reads shape, dtype and device only: no pass over the data.

    Parameters
    ----------
    name : str
        The argument's name in the messages ("x", "z").
    t : torch.Tensor of shape (N, size), or (..., N, size) when ``batched``
        The tensor to check.
    size : int
        Its last dimension (D for data, M for codes).
    weight : torch.Tensor
        A parameter of the network that will read ``t``: gives the dtype and device.
    batched : bool
        Whether leading batch dimensions (e.g. particles) are allowed.
    what : str
        That network's name in the messages ("encoder", "decoder", "classifier").

    Raises
    ------
    ValueError
        When ``t`` is not a tensor, has the wrong shape, or another dtype or device than
        ``weight``; the message says how to convert it.
    """
    expected = f"(N, {size}) or (..., N, {size})" if batched else f"(N, {size})"
    if not isinstance(t, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape {expected}, got {type(t).__name__}"
        )
    if (t.dim() < 2 if batched else t.dim() != 2) or t.shape[-1] != size:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")
    if t.dtype != weight.dtype:
        raise ValueError(
            f"{name} must have the dtype of the VAE's parameters, {weight.dtype}, got {t.dtype} "
            f"(convert it with {name}.to({weight.dtype}))"
        )
    if t.device != weight.device:
        raise ValueError(
            f"{name} is on device {t.device} but the VAE's {what} is on {weight.device}; move "
            f"one of them ({name}.to(device) or vae.to(device))"
        )


def make_likelihood(likelihood: str | Likelihood, data_dim: int) -> Likelihood:
    """The likelihood object of a (validated) ``likelihood`` argument.

    Parameters
    ----------
    likelihood : {"bernoulli", "gaussian"} or Likelihood
        A name, or an instance (returned as it is, not copied).
    data_dim : int
        Number of pixels D.

    Returns
    -------
    Likelihood
        ``likelihood`` itself when it is an instance, else a new built-in one
        (:func:`~pyro_vae.models.likelihoods.get_likelihood`).

    Raises
    ------
    ValueError
        When ``likelihood`` is an unknown name.
    """
    if isinstance(likelihood, Likelihood):
        return likelihood
    return get_likelihood(likelihood, data_dim)


class LatentGaussianModel(nn.Module):
    """Base of the models with prior p(z) = N(0, I), a decoder and an encoder network.

    A subclass validates its arguments (:func:`check_model_args`), calls
    ``super().__init__(config)`` with the validated keyword arguments that rebuild it, then
    builds ``self.encoder`` and ``self.decoder`` (and any other network) and attaches the
    likelihood with :meth:`_set_likelihood`, in the order that fixes its RNG draws and its
    submodule order. It then writes ``model`` with :meth:`_register_decoder` and
    :meth:`prior`, and checks every tensor it is given with :meth:`_check_x` and
    :meth:`_check_z`. Two public hooks let a subclass change what the base holds without
    touching it: :meth:`prior` (a learned or structured p(z); every draw from the prior, in
    ``model`` and in :meth:`sample_prior`, asks it) and :meth:`extend_config` (its own extra
    constructor arguments, so that ``type(m)(**m.config)`` rebuilds it).

    Parameters
    ----------
    config : dict
        The validated constructor arguments, with at least ``data_dim`` (D), ``latent_dim``
        (M), ``likelihood`` and ``image_shape``; the ``config`` property returns a copy of it.

    Attributes
    ----------
    data_dim : int
        D.
    latent_dim : int
        M.
    image_shape : tuple of two int or None
        ``(H, W)`` (metadata, for plots).
    """

    prior_factorizes: bool = True
    """Whether :meth:`prior` is a product of univariate factors (``Independent``), so that the
    KL to it splits by latent dimension (``kl_per_dimension``); a subclass whose prior couples
    the dimensions (a mixture: the VampPrior) sets False, and the tools then report only the
    Monte Carlo total."""

    def __init__(self, config: dict):
        super().__init__()
        self._config = config
        self.data_dim, self.latent_dim = config["data_dim"], config["latent_dim"]
        self.image_shape = config["image_shape"]

    @property
    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture: ``type(m)(**m.config)``.

        Returns
        -------
        dict
            The constructor's arguments, validated (``VAE``: ``data_dim``, ``latent_dim``,
            ``hidden``, ``likelihood``, ``activation``, ``arch``, ``image_shape``, ``flows``;
            ``CVAE`` and ``M2``: ``data_dim``, ``num_classes``, ``latent_dim``, ``hidden``,
            ``likelihood``, ``activation``, ``image_shape``, and M2's ``init``). A likelihood
            given as an instance is deep-copied, so the rebuilt model owns its own.
        """
        config = dict(self._config)
        if isinstance(config["likelihood"], Likelihood):
            config["likelihood"] = copy.deepcopy(config["likelihood"])
        return config

    def _set_likelihood(self, likelihood: Likelihood) -> None:
        """Attach p_theta(x|...) as the submodule ``likelihood`` (registered with Pyro by
        :meth:`_register_decoder` only when it has parameters)."""
        self.likelihood = likelihood
        self._likelihood_has_params = any(True for _ in likelihood.parameters())

    def _weight(self, net: nn.Module) -> torch.Tensor:
        """A parameter of ``net``: its dtype and device are the ones its inputs must have."""
        return next(net.parameters())

    def _check_x(self, x, net: nn.Module, what: str, batched: bool = False) -> None:
        """Refuse data ``x`` unless it is ``(N, D)`` (``(..., N, D)`` when ``batched``) in the
        dtype and on the device of ``net`` (called ``what`` in the message); see
        :func:`check_tensor`."""
        check_tensor("x", x, self.data_dim, self._weight(net), batched, what)

    def _check_z(self, z) -> None:
        """Refuse codes ``z`` unless they are ``(..., N, M)`` in the dtype and on the device of
        the decoder; see :func:`check_tensor`."""
        check_tensor("z", z, self.latent_dim, self._weight(self.decoder), True, "decoder")

    def _register_decoder(self) -> None:
        """``pyro.module("decoder", ...)``, and ``pyro.module("likelihood", ...)`` when the
        likelihood has parameters (e.g. a learned Gaussian scale)."""
        pyro.module("decoder", self.decoder)
        if self._likelihood_has_params:
            pyro.module("likelihood", self.likelihood)

    def extend_config(self, **entries) -> None:
        """Add a subclass's own validated constructor arguments to :attr:`config`.

        Called once in the subclass's ``__init__``, after ``super().__init__(...)``, with the
        extra keyword arguments its constructor takes (already validated), so that
        ``type(m)(**m.config)`` rebuilds it (M2's ``init``, the VampVAE's ``pseudo_inputs``).

        Parameters
        ----------
        **entries
            Argument name -> validated value, in the constructor's order.

        Raises
        ------
        ValueError
            When a name is already in the config (a base argument cannot be redefined by a
            subclass: pass it to ``super().__init__`` instead).
        """
        taken = sorted(set(entries) & set(self._config))
        if taken:
            raise ValueError(
                f"config entries {taken} are already set by {type(self).__name__}'s base; "
                "extend_config adds new constructor arguments only"
            )
        self._config.update(entries)

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z) for the batch ``x``: by default N(0, I), batch shape (N,), event shape (M,).

        The model samples site "z" from it inside the data plate, and :meth:`sample_prior`
        draws from it, so a subclass that overrides it (a learned prior such as the VampPrior,
        :class:`~pyro_vae.models.vamp.VampVAE`) is honoured by training, every estimator and
        the decoded draws alike. A prior with learnable parts registers them here
        (``pyro.module(name, net)``), for ``model`` calls it on every pass; it must keep batch
        shape (N,) and event shape (M,), and be scored at z of shape ``(..., N, M)`` (an
        outer particle plate).

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
            The data batch: gives N, the dtype and the device (the default reads nothing else).

        Returns
        -------
        pyro.distributions.TorchDistribution
            The default: scalar 0 and 1 expanded (not copied) to ``(N, M)``, event dimension
            1; constants, so argument validation is skipped.
        """
        prior = dist.Normal(x.new_zeros(()), x.new_ones(()), validate_args=False)
        return prior.expand([x.shape[0], self.latent_dim]).to_event(1)

    def sample_prior(self, n: int) -> torch.Tensor:
        """``n`` draws z ~ p(z) from :meth:`prior`, from the global torch RNG, without gradients.

        Parameters
        ----------
        n : int
            Number of draws.

        Returns
        -------
        torch.Tensor of shape (n, M)
            On the device and in the dtype of the decoder's parameters.

        Raises
        ------
        ValueError
            When ``n`` is not a positive integer.
        """
        n = check_positive_int("n", n)
        stand_in = self._weight(self.decoder).new_zeros(n, self.data_dim)  # gives N, dtype, device
        with torch.no_grad():
            return self.prior(stand_in).sample()
