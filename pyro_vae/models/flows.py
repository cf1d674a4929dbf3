"""Amortized inverse autoregressive flow (IAF): a Gaussian guide made richer by K flow steps.

The building block of an IAF guide (Kingma et al. 2016, sec. 3-4 and Algorithm 1): draw a
diagonal Gaussian z0 from the encoder, then apply K invertible autoregressive steps, each
conditioned on a context h(x) that the encoder also emits,

    z0 ~ N(mu(x), diag sigma(x)^2)
    z_k = m_k(z_{k-1}, h) + s_k(z_{k-1}, h) * z_{k-1},   k = 1, ..., K   (their eq. 10)

where (m_k, log s_k) is a masked autoregressive net (MADE, Germain et al. 2015): entry i of
(m_k, s_k) sees only the entries of z_{k-1} before i in step k's ordering, so dz_k/dz_{k-1} is
triangular with diagonal s_k and the density of z = z_K is (their eq. 5 and 11) ::

    log q(z | x) = log N(z0; mu, diag sigma^2) - sum_k log |det dz_k/dz_{k-1}|
                 = log N(z0; mu, diag sigma^2) - sum_k sum_i log s_k,i.

Each step is Pyro's own ``ConditionalAffineAutoregressive`` (the plain eq. 10 form, not the
"stable" sigmoid variant) on a ``ConditionalAutoRegressiveNN``; consecutive steps use reversed
variable orders, so the steps do not all share one autoregressive ordering. Each step starts
at the identity (the net's output layer is zero: m_k = 0, log s_k = 0), so a fresh flow has
exactly the density of the Gaussian guide N(mu, diag sigma^2) and training starts from it.

Scoring a draw is cheap: sampling runs every step forward once, and each Pyro transform caches
its last input and log-scale, so ``log_prob`` of the value just drawn reads z_{k-1} and log s_k
from the cache instead of inverting the flow (M sequential passes per step). Any other value
is scored by that sequential inversion: correct, but M times slower.

To use it in a guide of your own, register the flow with ``pyro.module`` and sample from
:meth:`IAFlow.distribution` inside the data plate::

    encoder = GaussianEncoder(D, M, hidden=(400,), context_dim=C)  # pyro_vae.nets
    flow = IAFlow(latent_dim=M, context_dim=C, num_flows=2)

    def guide(x):
        pyro.module("encoder", encoder)
        pyro.module("flow", flow)
        loc, scale, h = encoder(x, return_context=True)  # (N, M), (N, M), (N, C)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", flow.distribution(loc, scale, h))

The guide also runs vectorized under an outer ``pyro.plate("particles", S, dim=-2)`` (z of shape
``(S, N, M)``, context ``(N, C)``), as the evidence estimators of :mod:`pyro_vae.infer.evidence`
run it.

References
----------
Kingma, D. P., Salimans, T., Jozefowicz, R., Chen, X., Sutskever, I. and Welling, M. (2016).
Improving Variational Inference with Inverse Autoregressive Flow. NeurIPS.
Germain, M., Gregor, K., Murray, I. and Larochelle, H. (2015). MADE: Masked Autoencoder for
Distribution Estimation. ICML.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from pyro_vae.nets import ACTIVATIONS, check_activation, check_hidden, check_positive_int

__all__ = ["IAFlow"]


def _check_tensor(name: str, t, size: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < 2 or t.shape[-1] != size:
        raise ValueError(f"{name} must have shape (..., N, {size}), got {tuple(t.shape)}")


class IAFlow(nn.Module):
    """K conditional inverse autoregressive flow steps (Kingma et al. 2016, eq. 10).

    Maps a diagonal Gaussian draw z0 ~ N(mu, diag sigma^2) to z = z_K, step k computing
    z_k = m_k(z_{k-1}, h) + s_k(z_{k-1}, h) * z_{k-1} with an autoregressive net conditioned on
    the context h; :meth:`distribution` gives the Pyro distribution of z, with ::

        log q(z | x) = log N(z0; mu, diag sigma^2) - sum_k log |det dz_k/dz_{k-1}|.

    Steps alternate between the natural and the reversed variable order, and start at the
    identity (zero output layer), so a fresh flow gives exactly the Gaussian density. log s_k is
    clipped to [-5, 3] (the default of Pyro's transform). Construction draws the hidden-layer
    weights from the global torch RNG (PyTorch's default initialization) and nothing else.

    Parameters
    ----------
    latent_dim : int
        Dimension M of z.
    context_dim : int
        Size C of the context h(x), at least 1.
    num_flows : int
        Number K of flow steps, at least 1.
    hidden : int or sequence of int, optional
        Hidden layer sizes of each step's autoregressive net, each at least ``latent_dim`` (so
        that every output can depend on every earlier input); default ``(10 * latent_dim,)``,
        the default of Pyro's ``conditional_affine_autoregressive``.
    activation : str, default "relu"
        Hidden-layer nonlinearity, a key of :data:`pyro_vae.nets.ACTIVATIONS`.

    Raises
    ------
    ValueError
        When ``latent_dim``, ``context_dim`` or ``num_flows`` is not a positive integer,
        ``hidden`` is empty or holds a size that is not an integer >= ``latent_dim``, or
        ``activation`` is unknown.
    """

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        num_flows: int,
        hidden: int | Sequence[int] | None = None,
        activation: str = "relu",
    ):
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.context_dim = check_positive_int("context_dim", context_dim)
        self.num_flows = check_positive_int("num_flows", num_flows)
        hidden = (10 * self.latent_dim,) if hidden is None else check_hidden(hidden)
        if not hidden or min(hidden) < self.latent_dim:
            raise ValueError(
                f"hidden must be a non-empty sequence of integers >= latent_dim "
                f"({self.latent_dim}), got {hidden!r}"
            )
        nonlinearity = ACTIVATIONS[check_activation(activation)]
        self.hidden = hidden
        forward, backward = torch.arange(self.latent_dim), torch.arange(self.latent_dim).flip(0)
        steps = []
        for k in range(self.num_flows):
            with warnings.catch_warnings():
                # M = 1: a step is an affine map whose shift and scale depend on h(x) only,
                # still a valid flow; Pyro warns about it
                warnings.filterwarnings("ignore", message="ConditionalAutoRegressiveNN input_dim")
                arn = ConditionalAutoRegressiveNN(
                    self.latent_dim,
                    self.context_dim,
                    list(hidden),
                    permutation=backward if k % 2 else forward,  # given: no RNG draw
                    nonlinearity=nonlinearity(),
                )
            with torch.no_grad():  # identity at the start: m_k = 0, log s_k = 0
                arn.layers[-1].weight.zero_()
                arn.layers[-1].bias.zero_()
            steps.append(ConditionalAffineAutoregressive(arn, stable=False))
        self.steps = nn.ModuleList(steps)

    def _check(self, context: torch.Tensor, batch_shape: torch.Size) -> None:
        _check_tensor("context", context, self.context_dim)
        try:
            ok = torch.broadcast_shapes(context.shape[:-1], batch_shape) == batch_shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"context of shape {tuple(context.shape)} does not broadcast to the batch shape "
                f"{tuple(batch_shape)} of z"
            )

    def distribution(
        self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor
    ) -> dist.TransformedDistribution:
        """The distribution of z = z_K: N(loc, diag scale^2) pushed through the K steps.

        Parameters
        ----------
        loc : torch.Tensor of shape (..., N, M)
            mu(x), the mean of the base Gaussian.
        scale : torch.Tensor of shape (..., N, M)
            sigma(x) > 0, its standard deviation.
        context : torch.Tensor of shape (N, C)
            h(x); any shape ``(..., N, C)`` whose batch part broadcasts to that of ``loc``.

        Returns
        -------
        pyro.distributions.TransformedDistribution
            Batch shape ``loc.shape[:-1]``, event shape ``(M,)`` (event dim 1), reparameterized;
            ``log_prob(z)`` is ``log N(z0; mu, diag sigma^2) - sum_k log |det dz_k/dz_{k-1}|``,
            from the cache for the value last drawn. Under an outer plate, e.g.
            ``pyro.plate("particles", S, dim=-2)``, Pyro expands it and draws z of shape
            ``(S, N, M)`` with ``context`` broadcast.

        Raises
        ------
        ValueError
            When ``loc`` or ``scale`` is not a tensor of shape ``(..., N, M)``, their shapes
            differ, or ``context`` does not end in C or broadcast to their batch shape.
        """
        _check_tensor("loc", loc, self.latent_dim)
        _check_tensor("scale", scale, self.latent_dim)
        if loc.shape != scale.shape:
            raise ValueError(
                f"loc and scale must have one shape, got {tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        self._check(context, loc.shape[:-1])
        base = dist.Normal(loc, scale).to_event(1)
        flow = dist.ConditionalTransformedDistribution(base, list(self.steps))
        return flow.condition(context)

    def forward(self, z0: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Push base points through the K steps: z0 -> z_K.

        Parameters
        ----------
        z0 : torch.Tensor of shape (..., N, M)
            Points of the base space, e.g. draws of N(mu, diag sigma^2) or mu itself.
        context : torch.Tensor of shape (N, C)
            h(x); any shape ``(..., N, C)`` whose batch part broadcasts to that of ``z0``.

        Returns
        -------
        torch.Tensor of shape (..., N, M)
            z_K.

        Raises
        ------
        ValueError
            When ``z0`` is not a tensor of shape ``(..., N, M)`` or ``context`` does not fit.
        """
        _check_tensor("z0", z0, self.latent_dim)
        self._check(context, z0.shape[:-1])
        z = z0
        for step in self.steps:
            z = step.condition(context)(z)
        return z
