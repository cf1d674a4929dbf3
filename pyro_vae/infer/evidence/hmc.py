"""Hamiltonian Monte Carlo on the geometric path between a guide and its model, all chains at once.

The annealed target at inverse temperature b is

    log f_b(u) = (1 - b) log q(z | x) + b log p(x, z),   z = T(u)

(both as densities of the unconstrained u, :class:`~pyro_vae.infer.pair.potential.LatentSpace`).
One transition (Neal 2011, section 5.2) draws a momentum r ~ N(0, M) with the diagonal mass
M = diag(1 / scale^2), takes L leapfrog steps of size eps, and accepts the end point with
probability min(1, exp(-dH)); it leaves f_b invariant for any eps, scale and L. The scale is
the guide's per-dimension spread (a preconditioner: the step is measured in units of q), eps is
per chain and datapoint.

Written here rather than with ``pyro.ops.integrator.velocity_verlet``: that integrator takes
one scalar potential, while the annealed sampler keeps log q and log p and their gradients
apart, so the next temperature reuses the last gradient: L gradient evaluations per transition
instead of L + 1, and the weight increment of the next temperature costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyro_vae.infer.pair.potential import LatentSpace, LogDensities

__all__ = ["ChainState", "hmc_transition", "log_target"]


@dataclass(frozen=True)
class ChainState:
    """Where S chains per datapoint stand: u and the densities (with gradients) there.

    Attributes
    ----------
    u : torch.Tensor of shape (S, N, D)
        Unconstrained latents.
    densities : LogDensities
        log q, log p at u and their gradients.
    """

    u: torch.Tensor
    densities: LogDensities

    @classmethod
    def at(cls, space: LatentSpace, u: torch.Tensor) -> ChainState:
        """The state at ``u``: one evaluation of both densities and their gradients."""
        return cls(u, space.log_densities(u, grad=True))


def log_target(densities: LogDensities, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log f_b and its gradient in u: (S, N) and (S, N, D)."""
    log_f = (1 - beta) * densities.log_q + beta * densities.log_p
    grad = (1 - beta) * densities.grad_q + beta * densities.grad_p
    return log_f, grad


def hmc_transition(
    space: LatentSpace,
    state: ChainState,
    beta: float,
    step_size: torch.Tensor,
    scale: torch.Tensor,
    num_leapfrog: int,
) -> tuple[ChainState, torch.Tensor]:
    """One HMC transition of every chain, leaving f_b invariant.

    Parameters
    ----------
    space : LatentSpace
        The pair's latents.
    state : ChainState
        Where the chains stand.
    beta : float
        Inverse temperature b in [0, 1].
    step_size : torch.Tensor of shape (S, N)
        Leapfrog step eps per chain, in units of ``scale``.
    scale : torch.Tensor of shape (N, D) or (S, N, D)
        Per-dimension scale: the mass matrix is diag(1 / scale^2).
    num_leapfrog : int
        L, leapfrog steps.

    Returns
    -------
    state : ChainState
        The chains after the accept/reject step.
    accept_prob : torch.Tensor of shape (S, N)
        min(1, exp(-dH)); 0 where the energy is not finite.
    """
    eps = step_size.unsqueeze(-1)
    log_f0, grad = log_target(state.densities, beta)
    momentum0 = torch.randn_like(state.u) / scale
    u, densities = state.u, state.densities
    momentum = momentum0 + 0.5 * eps * grad
    for step in range(num_leapfrog):
        u = u + eps * scale.pow(2) * momentum
        densities = space.log_densities(u, grad=True)
        log_f, grad = log_target(densities, beta)
        momentum = momentum + (eps if step < num_leapfrog - 1 else 0.5 * eps) * grad
    kinetic = 0.5 * (momentum * scale).pow(2).sum(-1)
    kinetic0 = 0.5 * (momentum0 * scale).pow(2).sum(-1)
    log_accept = (log_f - kinetic) - (log_f0 - kinetic0)
    log_accept = torch.where(torch.isnan(log_accept), -torch.inf, log_accept)
    accept_prob = log_accept.clamp(max=0.0).exp()
    accept = torch.rand_like(accept_prob) < accept_prob
    keep = accept.unsqueeze(-1)
    new = ChainState(
        torch.where(keep, u, state.u),
        LogDensities(
            torch.where(accept, densities.log_q, state.densities.log_q),
            torch.where(accept, densities.log_p, state.densities.log_p),
            torch.where(keep, densities.grad_q, state.densities.grad_q),
            torch.where(keep, densities.grad_p, state.densities.grad_p),
        ),
    )
    return new, accept_prob
