"""Observation models p_theta(x|z) for a decoder output, i.e. the "x" site of a DLVM.

A :class:`Likelihood` turns the raw decoder output ``f_theta(z)`` of shape ``(..., num_params)``
into a distribution over the ``D`` pixels with event dimension 1 (pixels are conditionally
independent given z; Kingma & Welling 2019, sec. 2.5 and its Bernoulli example, Algorithm 2).

To add an observation model, subclass :class:`Likelihood`, implement ``forward`` (and
``num_params`` if the decoder must emit more than one number per pixel), and pass an instance
as ``VAE(..., likelihood=MyLikelihood())``. Parameters of the likelihood itself (e.g. a learned
noise scale) are ordinary ``nn.Parameter``s; the VAE registers them with ``pyro.module``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "IndependentBernoulli",
    "GaussianLikelihood",
    "LIKELIHOODS",
    "get_likelihood",
]


class Likelihood(nn.Module):
    """Base class: maps decoder outputs ``(..., num_params(D))`` to p(x|z) with event dim 1."""

    def num_params(self, data_dim: int) -> int:
        """Number of decoder outputs for ``data_dim`` pixels (default: one per pixel)."""
        return data_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """The distribution p(x|z) with ``event_shape == (D,)`` for decoder output ``params``."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z], shape ``(..., D)``; by default the mean of :meth:`forward`."""
        return self(params).mean


class IndependentBernoulli(dist.TorchDistribution):
    """D independent Bernoulli pixels with ``logits`` (..., D), as one event of shape (D,).

    The same density as ``Bernoulli(logits=l).to_event(1)``, with log p(x) computed as
    ``-BCE_with_logits(l, x).sum(-1)``: negating after the sum saves a pass over all N x D
    (or S x N x D, under a particle plate) elements, which is measurable at D = 784.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IndependentBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(IndependentBernoulli, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        return new

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        return p * (1 - p)

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(torch.Size(sample_shape))
            probs = torch.sigmoid(self.logits.expand(shape))
            return torch.bernoulli(probs)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_j Bernoulli(x_j; sigmoid(l_j)), logits ``l = f_theta(z)`` (K&W 2019, sec. 2.5).

    log p(x|z) = sum_j x_j l_j - log(1 + exp(l_j)) = -BCE_with_logits(l, x) summed over pixels.
    Arguments are not validated, so grey-scale x in [0, 1] is accepted (the log-density formula is
    then the negative cross-entropy, as in Pyro's VAE example); no per-call support checks run.
    """

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return IndependentBernoulli(params, validate_args=False)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class GaussianLikelihood(Likelihood):
    """p(x|z) = N(x; mu_theta(z), diag sigma^2), mean from the decoder, a learned per-pixel scale.

    ``log_scale`` is a ``(data_dim,)`` parameter (``sigma = exp(log_scale)``), shared by all
    datapoints and initialised to ``log(init_scale)``.
    """

    def __init__(self, data_dim: int, init_scale: float = 1.0):
        super().__init__()
        if isinstance(data_dim, bool) or not isinstance(data_dim, int) or data_dim < 1:
            raise ValueError(f"data_dim must be a positive integer, got {data_dim!r}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale!r}")
        self.log_scale = nn.Parameter(torch.full((data_dim,), float(init_scale)).log())

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, self.log_scale.exp()).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params


LIKELIHOODS = ("bernoulli", "gaussian")


def get_likelihood(name: str, data_dim: int) -> Likelihood:
    """The built-in likelihood ``name`` ("bernoulli" or "gaussian") for ``data_dim`` pixels."""
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(data_dim)
    raise ValueError(
        f"unknown likelihood {name!r}; choose one of {LIKELIHOODS} or pass a Likelihood instance"
    )
