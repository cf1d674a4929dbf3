"""Inspecting a pair once: where particles and data sit, and what its guide can do.

Every tool that draws particles first traces the guide and the replayed model once, without
particles, to check the site convention (:mod:`pyro_vae.infer.pair.sites`) and the pair
(:mod:`pyro_vae.infer.pair.doctor`), and to find the layout (:class:`PairLayout`); the
objectives ask whether the guide is reparameterized and how deep its plates nest. Each of these
runs the pair in a forked RNG (or is called inside one), so asking never changes the draws that
follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyro_vae.infer.pair.doctor import check_traces, trace_pair
from pyro_vae.infer.pair.sites import (
    DATA_PLATE,
    check_data,
    counts,
    plate_nesting,
    sample_sites,
    without_enumeration,
)
from pyro_vae.infer.runtime.devices import forked_rng

__all__ = [
    "PairLayout",
    "inspect_pair",
    "is_fully_reparameterized",
    "max_plate_nesting",
    "require_reparameterized",
]


@dataclass(frozen=True)
class PairLayout:
    """Where particles and data live in every site's batch shape (found by one trace).

    Attributes
    ----------
    particle_dim : int
        Negative batch dimension of the particle plate, left of all model and guide plates.
    num_data : int
        N, the data plate's size.
    data_dim : int
        Negative batch dimension of the data plate.
    site_size : int
        Largest per-datapoint number of elements of any sample site (D in the chunk budget).
    """

    particle_dim: int
    num_data: int
    data_dim: int
    site_size: int


def inspect_pair(model, guide, x, *args, data_plate=DATA_PLATE, **kwargs) -> PairLayout:
    """Trace the guide and the replayed model once (no particles); check the site convention.

    Parameters
    ----------
    model, guide : callable
        The pair, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        A batch of data.
    *args, **kwargs
        Passed on to ``model`` and ``guide``.
    data_plate : str
        Name of the data plate.

    Returns
    -------
    PairLayout
        Where particles and datapoints sit in every site's batch shape.

    Raises
    ------
    GlobalLatentError, ValueError
        See :func:`pyro_vae.infer.pair.sites.check_data_plate` and the pair doctor,
        :func:`pyro_vae.infer.pair.doctor.check_traces` (data, plate sizes, latent sites
        matched, values in their supports).
    """
    check_data(x)  # before the pair runs: NaN in x would fail inside it, in many lines
    model_trace, guide_trace = trace_pair(
        model, without_enumeration(guide), x, *args, data_plate=data_plate, **kwargs
    )
    # the pair doctor on these traces: plate sizes, the convention, latent sites, supports
    plate = check_traces(model_trace, guide_trace, x.shape[0], data_plate, per_datapoint=True)
    sites = [("guide", n, s) for n, s in sample_sites(guide_trace)]
    sites += [("model", n, s) for n, s in sample_sites(model_trace)]
    nesting = plate_nesting(s for _, _, s in sites)
    site_size = max(max(1, s["value"].numel() // plate.size) for _, _, s in sites)
    return PairLayout(-(nesting + 1), plate.size, plate.dim, site_size)


def is_fully_reparameterized(
    model, guide, x, *args, allow_enumerated: bool = False, **kwargs
) -> bool:
    """Whether every latent site of the guide, traced once on ``x``, draws by ``rsample``.

    Parameters
    ----------
    model, guide : callable
        The pair (only the guide runs).
    x : torch.Tensor of shape (N, ...)
        A batch of data.
    *args, **kwargs
        Passed on to the guide.
    allow_enumerated : bool
        Also accept sites marked for enumeration (summed out by ``TraceEnum_ELBO``, never
        drawn), e.g. for the compiled step, where only a score-function gradient is refused.

    Returns
    -------
    bool
        False when a latent site has no ``rsample`` or (unless ``allow_enumerated``) is marked
        for enumeration. The trace runs in a forked RNG, so asking does not change the draws
        that follow.
    """
    with forked_rng(x), torch.no_grad():
        _, guide_trace = trace_pair(None, guide, x, *args, **kwargs)
    return all(
        allow_enumerated if site["infer"].get("enumerate") else site["fn"].has_rsample
        for site in guide_trace.nodes.values()
        if counts(site) and not site["is_observed"]
    )


def max_plate_nesting(model, guide, x, *args, **kwargs) -> int:
    """How many batch dimensions the pair's plates use, for ``TraceEnum_ELBO``.

    Traces the guide (with enumeration marks ignored: every site sampled) and the model
    replayed at its draws, once, without gradients and in a forked RNG; the answer is the
    largest ``-dim`` of a vectorized plate and the longest batch shape of any sample site.
    Enumerated dimensions then go left of it.

    Parameters
    ----------
    model, guide : callable
        The pair, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        A batch.
    *args, **kwargs
        Passed on to the pair.

    Returns
    -------
    int
        At least 1 for a pair with a data plate.
    """
    with forked_rng(x), torch.no_grad():
        model_trace, guide_trace = trace_pair(model, without_enumeration(guide), x, *args, **kwargs)
    return plate_nesting(s for t in (guide_trace, model_trace) for _, s in sample_sites(t))


def require_reparameterized(what: str, model, guide, x, *args, **kwargs) -> None:
    """Refuse a guide that :func:`is_fully_reparameterized` rejects, naming ``what`` needs it.

    Parameters
    ----------
    what : str
        The objective that needs reparameterized draws, e.g. "the IWAE objective", as the
        subject of the message.
    model, guide, x, *args, **kwargs
        As for :func:`is_fully_reparameterized`.

    Raises
    ------
    ValueError
        When a latent site of the guide has no ``rsample`` or is marked for enumeration.
    """
    if not is_fully_reparameterized(model, guide, x, *args, **kwargs):
        raise ValueError(
            f"{what} needs a guide whose latent sites are all reparameterized (rsample); this "
            "guide has one that is not"
        )
