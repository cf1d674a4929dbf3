"""A pair's latent sites as one unconstrained tensor, and the two log-densities MCMC needs.

Annealed importance sampling moves S chains per datapoint through the latent space of a pair.
:class:`LatentSpace` lays every latent site of the guide out as one tensor u of shape
(S, N, D): each site's value has its particle and data dimensions moved to the front and the
rest flattened; a site with a constrained support (a LogNormal's positive reals) is mapped to
the real line by ``torch.distributions.biject_to(support)``, z = T(u), whose log-Jacobian
log|det dT/du| enters both densities. :meth:`LatentSpace.log_densities` returns, per chain and
datapoint, log q(z | x) and log p(x, z), each plus that log-Jacobian (so both are densities of
u and their difference is the importance weight), and on request their gradients in u.

The model is scored conditioned on the values (``poutine.condition``); the guide likewise,
unless it has exactly one latent site: then that site's distribution cannot depend on other
latents, and it is traced once and scored at new values without running the guide (its
network) again.

Refused, each in one line: a discrete latent site (HMC moves continuous ones; score such a pair
by importance sampling), a support whose bijection changes the shape (a simplex), and a model
latent that the guide does not sample (it would be redrawn from the prior at every
evaluation, so the densities would be random).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from torch.distributions import biject_to, constraints

from pyro_vae.infer.pair.particles import (
    PairBatch,
    reduce_to_datapoints,
    site_log_prob,
    trace_log_prob,
    trace_under_particles,
)
from pyro_vae.infer.pair.sites import sample_sites, without_enumeration

__all__ = ["LatentBlock", "LatentSpace", "LogDensities"]


@dataclass(frozen=True)
class LatentBlock:
    """Where one latent site sits in the flat tensor u of shape (S, N, D).

    Attributes
    ----------
    name : str
        The site.
    start, size : int
        Its columns ``u[..., start:start + size]``.
    data_index : int
        Position of the data plate's dimension in the site's value.
    value_shape : torch.Size
        The site's value shape under the particle plate, ``(S, ..., N, ..., *event)``.
    transform : torch.distributions.Transform or None
        From the real line to the site's support; None for a real support.
    site : dict
        The guide's trace node (its distribution, scale and mask).
    """

    name: str
    start: int
    size: int
    data_index: int
    value_shape: torch.Size
    transform: object
    site: dict


@dataclass(frozen=True)
class LogDensities:
    """log q(z | x) and log p(x, z) of z = T(u), each + log|det dT/du|, per chain and datapoint.

    Attributes
    ----------
    log_q, log_p : torch.Tensor of shape (S, N)
        Nats, detached.
    grad_q, grad_p : torch.Tensor of shape (S, N, D) or None
        Their gradients in u, when asked for.
    """

    log_q: torch.Tensor
    log_p: torch.Tensor
    grad_q: torch.Tensor | None = None
    grad_p: torch.Tensor | None = None


def _real_support(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _transform(name, fn):
    """The bijection from the real line to the site's support (None for reals); refusals."""
    support = fn.support
    if support.is_discrete:
        raise ValueError(
            f"guide site {name!r} is discrete: annealed importance sampling moves continuous "
            "latents by HMC; score this pair by importance sampling (log_evidence)"
        )
    if _real_support(support):
        return None
    transform = biject_to(support)
    shape = fn.batch_shape + fn.event_shape
    if transform.inverse_shape(shape) != shape:
        raise ValueError(
            f"guide site {name!r} has support {support} whose map to the real line changes "
            "its shape; annealed importance sampling does not support it"
        )
    return transform


class LatentSpace:
    """The latent sites of a pair bound to a batch, as one unconstrained tensor (S, N, D).

    Parameters
    ----------
    pair : PairBatch
        The pair bound to a batch of N datapoints, with its layout.
    guide_trace : pyro.poutine.Trace
        A trace of the guide (enumeration marks ignored) under the particle plate of
        ``num_chains`` particles: it fixes the sites, their shapes and supports.
    num_chains : int
        S.
    rerun_guide : bool
        Score log q by running the guide conditioned on the values even when it has one
        latent site (for a captured graph, where a traced distribution would be a constant).
    """

    def __init__(self, pair: PairBatch, guide_trace, num_chains: int, rerun_guide=False):
        self.pair, self.num_chains = pair, num_chains
        layout = pair.layout
        self.blocks, start = [], 0
        for name, site in sample_sites(guide_trace):
            if site["is_observed"]:
                continue
            value = site["value"]
            batch_end = value.dim() - site["fn"].event_dim
            size = value.numel() // (num_chains * layout.num_data)
            self.blocks.append(
                LatentBlock(
                    name=name,
                    start=start,
                    size=size,
                    data_index=batch_end + layout.data_dim,
                    value_shape=value.shape,
                    transform=_transform(name, site["fn"]),
                    site=site,
                )
            )
            start += size
        self.dim = start
        self._one_site = len(self.blocks) == 1 and not rerun_guide

    @classmethod
    def draw(
        cls, pair: PairBatch, num_chains: int, rerun_guide: bool = False
    ) -> tuple[LatentSpace, torch.Tensor]:
        """Draw S chains' start z ~ q(z | x): the space and u of shape (S, N, D) (no grad)."""
        with torch.no_grad():
            guide_trace = trace_under_particles(pair, num_chains, without_enumeration(pair.guide))
        space = cls(pair, guide_trace, num_chains, rerun_guide)
        values = {b.name: guide_trace.nodes[b.name]["value"] for b in space.blocks}
        return space, space.flatten(values)

    # --- layout ----------------------------------------------------------------------------
    def flatten(self, values: dict) -> torch.Tensor:
        """Constrained site values -> u of shape (S, N, D).

        A value without the particle dimensions (one per datapoint, e.g. an exact posterior
        draw) is broadcast to every chain.
        """
        S, N = self.num_chains, self.pair.layout.num_data
        columns = []
        for block in self.blocks:
            value = values[block.name]
            value = value.reshape((1,) * (len(block.value_shape) - value.dim()) + value.shape)
            value = value.expand(block.value_shape)
            if block.transform is not None:
                value = block.transform.inv(value)
            columns.append(value.movedim(block.data_index, 1).reshape(S, N, block.size))
        if not columns:
            return torch.zeros(S, N, 0, device=self.pair.x.device, dtype=self.pair.x.dtype)
        return torch.cat(columns, -1)

    def unflatten(self, u: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """u of shape (S, N, D) -> (constrained site values, log|det dT/du| of shape (S, N))."""
        S, N = self.num_chains, self.pair.layout.num_data
        values, log_jacobian = {}, torch.zeros((), device=u.device, dtype=u.dtype)
        for block in self.blocks:
            moved = list(block.value_shape)
            moved.insert(1, moved.pop(block.data_index))
            unconstrained = u[..., block.start : block.start + block.size].reshape(moved)
            unconstrained = unconstrained.movedim(1, block.data_index)
            if block.transform is None:
                values[block.name] = unconstrained
                continue
            value = block.transform(unconstrained)
            values[block.name] = value
            ladj = block.transform.log_abs_det_jacobian(unconstrained, value)
            batch_dims = len(block.value_shape) - block.site["fn"].event_dim
            ladj = sum_rightmost(ladj, ladj.dim() - batch_dims)
            layout, plate = self.pair.layout, self.pair.data_plate
            log_jacobian = log_jacobian + reduce_to_datapoints(
                ladj, block.site, layout, plate, block.name, S
            )
        return values, log_jacobian.expand(S, N)

    # --- densities -------------------------------------------------------------------------
    def log_densities(self, u: torch.Tensor, grad: bool = False) -> LogDensities:
        """log q and log p of u (densities of the unconstrained u), and their gradients.

        Parameters
        ----------
        u : torch.Tensor of shape (S, N, D)
            Unconstrained latents.
        grad : bool
            Also return the gradients in u (two backward passes: one through the model, one
            through the guide's density).

        Returns
        -------
        LogDensities
        """
        if grad and not self.dim:  # no latents: nothing moves, both gradients are empty
            densities = self.log_densities(u)
            return LogDensities(densities.log_q, densities.log_p, u, u)
        with torch.enable_grad() if grad else nullcontext():
            if grad:
                u = u.detach().requires_grad_(True)
            values, log_jacobian = self.unflatten(u)
            log_q = self._log_q(values) + log_jacobian
            log_p = self._log_p(values) + log_jacobian
            if not grad:
                return LogDensities(log_q.detach(), log_p.detach())
            grad_q, grad_p = (
                torch.autograd.grad(
                    term.sum(), u, retain_graph=True, allow_unused=True, materialize_grads=True
                )[0]
                for term in (log_q, log_p)
            )
        return LogDensities(log_q.detach(), log_p.detach(), grad_q, grad_p)

    def _log_p(self, values: dict) -> torch.Tensor:
        pair, S = self.pair, self.num_chains
        trace = trace_under_particles(pair, S, poutine.condition(pair.model, data=values))
        unconditioned = [n for n, s in sample_sites(trace) if not s["is_observed"]]
        if unconditioned:
            raise ValueError(
                f"model latent site {unconditioned[0]!r} is not sampled by the guide; "
                "annealed importance sampling needs the guide to sample every model latent"
            )
        return trace_log_prob(trace, pair.layout, S, pair.data_plate)

    def _log_q(self, values: dict) -> torch.Tensor:
        pair, S = self.pair, self.num_chains
        if self._one_site:
            (block,) = self.blocks
            value = values[block.name]
            return site_log_prob(block.site, value, pair.layout, S, pair.data_plate, block.name)
        if not self.blocks:
            return torch.zeros((), device=pair.x.device)
        guide = poutine.condition(without_enumeration(pair.guide), data=values)
        return trace_log_prob(
            trace_under_particles(pair, S, guide), pair.layout, S, pair.data_plate
        )

    def guide_scale(self, num_draws: int = 64) -> torch.Tensor:
        """Per-dimension spread of q in u: the std of ``num_draws`` fresh guide draws, (N, D).

        Fresh draws, independent of the chains, so a preconditioner built from them is a fixed
        part of the HMC kernel. Floored at 1e-3 of the largest scale of the datapoint.
        """
        space, u = type(self).draw(self.pair, num_draws)
        if space.dim != self.dim:
            raise ValueError("the guide samples a different set of latents on each call")
        scale = u.std(0)
        floor = 1e-3 * scale.amax(-1, keepdim=True).clamp_min(math.ulp(1.0))
        return torch.maximum(scale, floor)
