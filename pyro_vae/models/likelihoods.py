"""Observation models p_theta(x|z) for a decoder output, i.e. the "x" site of a DLVM.

A :class:`Likelihood` turns the raw decoder output ``f_theta(z)`` of shape ``(..., P)``, with
``P = num_params(D)``, into a distribution over the ``D`` pixels with event dimension 1 (pixels
are conditionally independent given z): the Bernoulli MLP decoder of Kingma & Welling (2014),
Appendix C.1, and the Gaussian one of their Appendix C.2; Kingma & Welling (2019), sec. 2.5 and
Algorithm 2.

To add an observation model, subclass :class:`Likelihood`, implement ``forward`` (and
``num_params`` if the decoder must emit more than one number per pixel), and pass an instance
as ``VAE(..., likelihood=MyLikelihood())``. Parameters of the likelihood itself (e.g. a learned
noise scale) are ordinary ``nn.Parameter``s; the VAE registers them with ``pyro.module``.

References
----------
Kingma, D. P. and Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
Kingma, D. P. and Welling, M. (2019). An Introduction to Variational Autoencoders. Foundations
and Trends in Machine Learning 12(4).
"""

from __future__ import annotations

import math
import numbers

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from pyro_vae.nets import check_positive_int

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "IndependentBernoulli",
    "GaussianLikelihood",
    "LIKELIHOODS",
    "get_likelihood",
]


class Likelihood(nn.Module):
    """Base class of observation models: decoder outputs ``(..., P)`` -> p(x|z), event dim 1.

    Subclasses implement :meth:`forward` and, when the decoder must emit more than one number
    per pixel, :meth:`num_params`.
    """

    def num_params(self, data_dim: int) -> int:
        """Number of decoder outputs P for ``data_dim`` pixels.

        Parameters
        ----------
        data_dim : int
            Number of pixels D.

        Returns
        -------
        int
            P; the default is one per pixel, ``P = D``.
        """
        return data_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """The distribution p(x|z) for the decoder output ``params``.

        Parameters
        ----------
        params : torch.Tensor of shape (..., P)
            Raw decoder output f_theta(z).

        Returns
        -------
        pyro.distributions.TorchDistribution
            With ``batch_shape == params.shape[:-1]`` and ``event_shape == (D,)``.

        Raises
        ------
        NotImplementedError
            In the base class.
        """
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z], by default the mean of :meth:`forward`.

        Parameters
        ----------
        params : torch.Tensor of shape (..., P)
            Raw decoder output f_theta(z).

        Returns
        -------
        torch.Tensor of shape (..., D)
            The mean of p(x|z).
        """
        return self(params).mean


class IndependentBernoulli(dist.TorchDistribution):
    """D independent Bernoulli pixels with logits ``l``, as one event of shape (D,).

    The same density as ``Bernoulli(logits=l).to_event(1)``, with log p(x) computed as
    ``-BCE_with_logits(l, x).sum(-1)``: negating after the sum saves a pass over all N x D
    (or S x N x D, under a particle plate) elements, which is measurable at D = 784.

    Parameters
    ----------
    logits : torch.Tensor of shape (..., D)
        Log-odds of each pixel being 1; the leading dimensions are the batch shape.
    validate_args : bool, optional
        Passed to :class:`torch.distributions.Distribution`.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        """The same pixels broadcast to a new batch shape (no copy).

        Parameters
        ----------
        batch_shape : sequence of int
            The new batch shape B, broadcastable from the current one.

        Returns
        -------
        IndependentBernoulli
            With logits of shape ``(*B, D)``.
        """
        new = self._get_checked_instance(IndependentBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(IndependentBernoulli, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        return new

    @property
    def mean(self) -> torch.Tensor:
        """torch.Tensor of shape (..., D): sigmoid(logits)."""
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        """torch.Tensor of shape (..., D): p (1 - p) with p = sigmoid(logits)."""
        p = torch.sigmoid(self.logits)
        return p * (1 - p)

    def sample(self, sample_shape=()) -> torch.Tensor:
        """Binary draws from the global torch RNG, without gradients.

        Parameters
        ----------
        sample_shape : sequence of int, default ()
            Leading shape S of the draws.

        Returns
        -------
        torch.Tensor of shape (*S, ..., D)
            Zeros and ones in the dtype of ``logits``.
        """
        with torch.no_grad():
            shape = self._extended_shape(torch.Size(sample_shape))
            probs = torch.sigmoid(self.logits.expand(shape))
            return torch.bernoulli(probs)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """sum_j x_j l_j - log(1 + exp(l_j)), i.e. minus the binary cross-entropy.

        ``value`` is not checked against the support (no pass over the data): for x in [0, 1]
        this is the negative cross-entropy, a log-density only for binary x.

        Parameters
        ----------
        value : torch.Tensor of shape (..., D)
            Pixels x, broadcastable against the logits.

        Returns
        -------
        torch.Tensor of shape (...)
            The log-probability of each event, summed over its D pixels (the broadcast batch
            shape of ``logits`` and ``value``).
        """
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_j Bernoulli(x_j; sigmoid(l_j)) with logits l = f_theta(z).

    The Bernoulli MLP decoder of Kingma & Welling (2014), Appendix C.1 (their eq. 11):
    log p(x|z) = sum_j x_j log y_j + (1 - x_j) log(1 - y_j), y = sigmoid(l), computed stably as
    -BCE_with_logits(l, x) summed over pixels (Kingma & Welling 2019, Algorithm 2).

    Range of x: no check is made, by design. Binary x gives the Bernoulli log-probability;
    grey-scale x in [0, 1] gives the negative cross-entropy (as in Pyro's VAE example), which is
    not a normalized density; x outside [0, 1] gives a number with no meaning. A check would be a
    pass over every N x D batch plus a device-to-host synchronization on every step, so it is
    left to the data layer, which checks the range once at load (:class:`pyro_vae.data.ImageData`
    refuses pixels outside [0, 1]); dynamically binarized batches are then binary by
    construction.
    """

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """The pixel-wise Bernoulli distribution.

        Parameters
        ----------
        params : torch.Tensor of shape (..., D)
            Logits f_theta(z).

        Returns
        -------
        IndependentBernoulli
            ``batch_shape == params.shape[:-1]``, ``event_shape == (D,)``.
        """
        return IndependentBernoulli(params, validate_args=False)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z] = sigmoid(logits).

        Parameters
        ----------
        params : torch.Tensor of shape (..., D)
            Logits f_theta(z).

        Returns
        -------
        torch.Tensor of shape (..., D)
            Pixel probabilities in [0, 1].
        """
        return torch.sigmoid(params)


class GaussianLikelihood(Likelihood):
    """p(x|z) = N(x; mu_theta(z), diag sigma^2), the decoder's mean and a learned pixel scale.

    The Gaussian MLP decoder of Kingma & Welling (2014), Appendix C.2 (their eq. 12), with the
    scale shared by all datapoints instead of computed from z: ``log_scale`` is a ``(D,)``
    parameter (``sigma = exp(log_scale)``) initialized to ``log(init_scale)``.

    Parameters
    ----------
    data_dim : int
        Number of pixels D.
    init_scale : float, default 1.0
        Initial sigma of every pixel, positive and finite.

    Raises
    ------
    ValueError
        When ``data_dim`` is not a positive integer or ``init_scale`` is not a positive, finite
        number.
    """

    def __init__(self, data_dim: int, init_scale: float = 1.0):
        super().__init__()
        data_dim = check_positive_int("data_dim", data_dim)
        if (
            isinstance(init_scale, bool)
            or not isinstance(init_scale, numbers.Real)
            or not (init_scale > 0 and math.isfinite(init_scale))
        ):
            raise ValueError(f"init_scale must be a positive, finite number, got {init_scale!r}")
        self.log_scale = nn.Parameter(torch.full((int(data_dim),), float(init_scale)).log())

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """The diagonal Gaussian distribution.

        Parameters
        ----------
        params : torch.Tensor of shape (..., D)
            Means mu_theta(z).

        Returns
        -------
        pyro.distributions.Independent
            ``Normal(params, exp(log_scale)).to_event(1)``: ``batch_shape == params.shape[:-1]``,
            ``event_shape == (D,)``.
        """
        return dist.Normal(params, self.log_scale.exp()).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z] = mu_theta(z).

        Parameters
        ----------
        params : torch.Tensor of shape (..., D)
            Means mu_theta(z).

        Returns
        -------
        torch.Tensor of shape (..., D)
            ``params`` itself.
        """
        return params


#: Names of the built-in likelihoods, for :func:`get_likelihood` and ``VAE(likelihood=...)``.
LIKELIHOODS = ("bernoulli", "gaussian")


def get_likelihood(name: str, data_dim: int) -> Likelihood:
    """The built-in likelihood called ``name``.

    Parameters
    ----------
    name : {"bernoulli", "gaussian"}
        Which observation model.
    data_dim : int
        Number of pixels D (the Gaussian's learned scale has one entry per pixel).

    Returns
    -------
    Likelihood
        A new :class:`BernoulliLikelihood` or :class:`GaussianLikelihood`.

    Raises
    ------
    ValueError
        When ``name`` is not in :data:`LIKELIHOODS` (the message lists them).
    """
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(data_dim)
    raise ValueError(
        f"unknown likelihood {name!r}; choose one of {LIKELIHOODS} or pass a Likelihood instance"
    )
