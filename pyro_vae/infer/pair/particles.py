"""Particles: S draws z ~ q(z|x) at once, and their per-datapoint log weights.

The engine under every estimator and every importance-weighted objective. S particles are one
vectorized draw under an outer ``pyro.plate`` placed left of every plate of the pair
(``PairLayout.particle_dim``), so each site's log-density has batch shape (S, ..., N, ...);
:func:`trace_log_prob` reduces it to (S, N) by summing every plate other than particles and
data, and :func:`draw_log_weights` returns log p(x, z_s) - log q(z_s | x), shape (S, N).

Its parts are public, for objectives that need more than the weights (the path-derivative
estimators of :mod:`~pyro_vae.infer.objectives.stl` and :mod:`~pyro_vae.infer.objectives.dreg`):
:func:`trace_guide` (the guide's draw under the particle plate, or the guide replayed at given
draws), :func:`trace_model` (the model replayed at the guide's draws), :func:`guide_log_prob`
and :func:`model_log_prob` (log q and log p per particle and datapoint) and
:func:`detach_draws` (the same draws cut from the graph, for a replay whose gradient reaches the
parameters of the densities but not the draws)::

    guide = trace_guide(pair, S)                      # z_s ~ q(z | x), reparameterized
    model = trace_model(pair, S, guide)               # p(x, z_s) at the same z_s
    log_w = model_log_prob(pair, S, model, guide) - guide_log_prob(pair, S, guide)
    score = guide_log_prob(pair, S, trace_guide(pair, S, at=detach_draws(guide)))

A model latent that the guide does not sample (allowed only when marked so, see
:mod:`~pyro_vae.infer.pair.doctor`) is drawn from the prior, so its p/q ratio is one
and it does not enter the weight. A discrete guide site marked for enumeration is *sampled*
(the guide runs through :func:`~pyro_vae.infer.pair.sites.without_enumeration`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask

from pyro_vae.infer.pair.layout import PairLayout, inspect_pair
from pyro_vae.infer.pair.sites import DATA_PLATE, data_frame, sample_sites, without_enumeration

__all__ = [
    "PARTICLE_PLATE",
    "PairBatch",
    "bind_pair",
    "detach_draws",
    "draw_log_weights",
    "guide_log_prob",
    "model_log_prob",
    "reduce_to_datapoints",
    "site_log_prob",
    "trace_guide",
    "trace_log_prob",
    "trace_model",
    "trace_under_particles",
]

PARTICLE_PLATE = "_evidence_particles"


@dataclass(frozen=True)
class PairBatch:
    """A model/guide pair bound to one batch: the one value the particle tools pass around.

    Attributes
    ----------
    model, guide : callable
        The pair, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        The batch.
    args : tuple
        Positional arguments after ``x`` (per-datapoint columns such as labels).
    kwargs : dict
        Keyword arguments of the pair.
    layout : PairLayout
        As :func:`~pyro_vae.infer.pair.layout.inspect_pair` found it for a batch of this size.
    data_plate : str
        Name of the data plate.
    """

    model: Callable
    guide: Callable
    x: torch.Tensor
    args: tuple
    kwargs: dict = field(default_factory=dict)
    layout: PairLayout | None = None
    data_plate: str = DATA_PLATE

    def call(self, fn: Callable):
        """``fn(x, *args, **kwargs)``: run the model, the guide, or a handler-wrapped one."""
        return fn(self.x, *self.args, **self.kwargs)


def bind_pair(model, guide, x, *args, data_plate: str = DATA_PLATE, **kwargs) -> PairBatch:
    """Inspect the pair on ``x`` once and bind it: a :class:`PairBatch` with its layout.

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        A batch of data.
    *args, **kwargs
        Passed on to the pair.
    data_plate : str
        Name of the data plate.

    Returns
    -------
    PairBatch

    Raises
    ------
    GlobalLatentError, ValueError
        See :func:`~pyro_vae.infer.pair.sites.check_data_plate`.
    """
    layout = inspect_pair(model, guide, x, *args, data_plate=data_plate, **kwargs)
    return PairBatch(model, guide, x, args, kwargs, layout, data_plate)


def reduce_to_datapoints(log_prob, site, layout, data_plate, name, num_particles):
    """Reduce a tensor of a site's batch shape (S, ..., N, ...) to (S or 1, N or 1) by summing
    every plate dimension other than particles and data (a log-prob, a log-Jacobian)."""
    n = -layout.particle_dim
    log_prob = torch.as_tensor(log_prob)
    if log_prob.dim() > n:
        raise ValueError(f"site {name!r} has batch dims left of all plates: {log_prob.shape}")
    log_prob = log_prob.reshape((1,) * (n - log_prob.dim()) + log_prob.shape)
    data_dim = n + data_frame(site, data_plate).dim
    other = [d for d in range(1, n) if d != data_dim]
    if other:
        log_prob = log_prob.sum(other, keepdim=True)
    S, N = log_prob.shape[0], log_prob.shape[data_dim]
    if S not in (1, num_particles) or N not in (1, layout.num_data):
        raise ValueError(
            f"site {name!r}: log-prob batch shape {tuple(log_prob.shape)} does not match "
            f"{num_particles} particles at dim {layout.particle_dim} and {layout.num_data} "
            f"datapoints at the data plate's dim; does the model broadcast over an outer plate?"
        )
    return log_prob.reshape(S, N)


def _site_log_prob(site):
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_prob, site["scale"], site["mask"])


def site_log_prob(site, value, layout, num_particles, data_plate=DATA_PLATE, name="?"):
    """A traced site's scaled, masked log-density at another ``value``, per datapoint: (S, N).

    For scoring new values under a distribution traced once (a guide whose one latent site
    does not depend on other latents), without running the guide again.
    """
    log_prob = site["fn"].log_prob(value)
    log_prob = scale_and_mask(log_prob, site["scale"], site["mask"])
    return reduce_to_datapoints(log_prob, site, layout, data_plate, name, num_particles)


def trace_log_prob(trace, layout, num_particles, data_plate=DATA_PLATE, guide_trace=None):
    """Sum of a trace's scaled, masked sample-site log-densities per datapoint.

    With ``guide_trace`` (scoring a model replayed at the guide's draws), model latents the
    guide did not sample are left out: they were drawn from the prior, so their p/q ratio is
    one.

    Parameters
    ----------
    trace : pyro.poutine.Trace
        A trace drawn under a particle plate of S particles at ``layout.particle_dim``.
    layout : PairLayout
        As returned by :func:`inspect_pair`.
    num_particles : int
        S.
    data_plate : str
        Name of the data plate.
    guide_trace : pyro.poutine.Trace, optional
        The guide trace that ``trace``, a model trace, was replayed at.

    Returns
    -------
    torch.Tensor of shape (S, N)
        Log-density per particle and datapoint, nats; a 0-dim zero for a trace without
        sample sites.

    Raises
    ------
    ValueError
        When a site's log-prob batch shape does not fit S particles and N datapoints.
    """
    terms = [
        reduce_to_datapoints(_site_log_prob(site), site, layout, data_plate, name, num_particles)
        for name, site in sample_sites(trace)
        if guide_trace is None or site["is_observed"] or name in guide_trace.nodes
    ]
    if not terms:  # e.g. the empty guide of a model without latents
        return torch.zeros(())  # a 0-dim zero broadcasts on any device
    return sum(terms[1:], terms[0]).expand(num_particles, layout.num_data)


def trace_under_particles(pair: PairBatch, num_particles: int, fn):
    """Trace ``fn`` (the pair's model or guide, maybe handled) on the pair's batch, under the
    particle plate of S particles, blocked from any outer handler."""
    layout = pair.layout
    with poutine.block(), pyro.plate(PARTICLE_PLATE, num_particles, dim=layout.particle_dim):
        return pair.call(poutine.trace(fn).get_trace)


def trace_guide(pair: PairBatch, num_particles: int, at: poutine.Trace | None = None):
    """The guide's trace under the particle plate: S draws z_s ~ q(z | x), or a replay.

    Parameters
    ----------
    pair : PairBatch
        The pair bound to its batch, with its layout (:func:`bind_pair`).
    num_particles : int
        S.
    at : pyro.poutine.Trace, optional
        A guide trace of S particles whose draws the guide replays instead of drawing (with
        :func:`detach_draws`: log q at fixed draws, differentiable in the guide's parameters
        only). A site marked for enumeration is sampled (``without_enumeration``).

    Returns
    -------
    pyro.poutine.Trace
    """
    guide = without_enumeration(pair.guide)
    if at is not None:
        guide = poutine.replay(guide, trace=at)
    return trace_under_particles(pair, num_particles, guide)


def trace_model(pair: PairBatch, num_particles: int, at: poutine.Trace):
    """The model's trace under the particle plate, replayed at a guide trace's draws.

    A model latent that the guide does not sample is drawn from the prior (its p/q ratio is
    one: :func:`model_log_prob` leaves it out).

    Parameters
    ----------
    pair : PairBatch
        The pair bound to its batch, with its layout.
    num_particles : int
        S.
    at : pyro.poutine.Trace
        The guide trace (from :func:`trace_guide`, maybe through :func:`detach_draws`).

    Returns
    -------
    pyro.poutine.Trace
    """
    return trace_under_particles(pair, num_particles, poutine.replay(pair.model, trace=at))


def detach_draws(trace: poutine.Trace) -> poutine.Trace:
    """A copy of ``trace`` whose sample values are cut from the autograd graph.

    Replaying a model or guide at it gives densities at the same draws whose gradient reaches
    the parameters of the densities, not the draws' reparameterization path.

    Parameters
    ----------
    trace : pyro.poutine.Trace

    Returns
    -------
    pyro.poutine.Trace
        A shallow copy; ``trace`` is unchanged.
    """
    copy = trace.copy()
    for name, site in sample_sites(trace):
        copy.nodes[name] = {**site, "value": site["value"].detach()}
    return copy


def guide_log_prob(pair: PairBatch, num_particles: int, guide_trace) -> torch.Tensor:
    """log q(z_s | x) per particle and datapoint: shape (S, N), nats."""
    return trace_log_prob(guide_trace, pair.layout, num_particles, pair.data_plate)


def model_log_prob(pair: PairBatch, num_particles: int, model_trace, guide_trace) -> torch.Tensor:
    """log p(x, z_s) per particle and datapoint, shape (S, N), nats, over the observed sites
    and the latents the guide drew (a latent drawn from the prior has p/q = 1)."""
    return trace_log_prob(model_trace, pair.layout, num_particles, pair.data_plate, guide_trace)


def draw_log_weights(pair: PairBatch, num_particles: int) -> torch.Tensor:
    """One vectorized draw of S log weights log p(x, z_s) - log q(z_s | x) per datapoint.

    Differentiable when the guide is reparameterized (the IWAE objective trains through it).

    Parameters
    ----------
    pair : PairBatch
        The pair bound to its batch of N datapoints, with its layout (:func:`bind_pair`).
    num_particles : int
        S.

    Returns
    -------
    torch.Tensor of shape (S, N)
        Log weights, nats.
    """
    guide = trace_guide(pair, num_particles)
    model = trace_model(pair, num_particles, guide)
    return model_log_prob(pair, num_particles, model, guide) - guide_log_prob(
        pair, num_particles, guide
    )
