"""The site convention every generic tool relies on, written once (see docs/design.md).

A model/guide pair is called as ``model(x, *args, **kwargs)``. Its *per-datapoint* sample sites
live inside ``pyro.plate(data_plate, N)`` with N = ``x.shape[0]`` (``data_plate`` defaults to
``"data"``). Which sites count:

- a sample site counts unless it is a plate's own subsample-index site (a plate records one)
  or a ``pyro.deterministic`` site (it adds nothing to any density);
- an unobserved site that counts is a *latent* site;
- a counting site outside the data plate is *global*: shared by all datapoints, it makes a
  per-datapoint quantity (log p(x_n), q(z_n | x_n)) ill-defined, and the per-datapoint tools
  refuse it with :class:`GlobalLatentError`. The trainer accepts global sites (minibatch
  scaling, below, keeps their ELBO term right).

Discrete latent sites marked for enumeration (``infer={"enumerate": "parallel"}``, e.g. by
``pyro.infer.config_enumerate``) are summed out by ``TraceEnum_ELBO`` in training; every tool
that draws particles (evidence, guide draws) runs the guide through :func:`without_enumeration`
and so *samples* them as part of its proposal: the same user code serves both.

Minibatches: a site inside the data plate is scaled by N_total / full_size when a trainer says
the whole data set has N_total datapoints, so the loss of a batch is an unbiased estimate of
the full-data loss; a plate that subsamples itself (``subsample=``) has full_size = N_total and
is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.infer.pair.pyro_adapter import is_deterministic

__all__ = [
    "DATA_PLATE",
    "DataPlate",
    "GlobalLatentError",
    "check_data",
    "check_data_plate",
    "counts",
    "data_frame",
    "data_scale",
    "latent_sites",
    "plate_nesting",
    "sample_sites",
    "without_enumeration",
]

DATA_PLATE = "data"


class GlobalLatentError(ValueError):
    """A sample site lies outside the data plate, so a per-datapoint quantity is undefined.

    Raised by :func:`check_data_plate` and so by every per-datapoint tool; the message names
    the site and whether it belongs to the model or the guide.
    """


def counts(site: dict) -> bool:
    """Whether a trace site or message is a sample site that enters the densities.

    Parameters
    ----------
    site : dict
        A Pyro trace node or effect-handler message.

    Returns
    -------
    bool
        False for param sites, plate subsample-index sites and ``pyro.deterministic`` sites.
    """
    return site["type"] == "sample" and not site_is_subsample(site) and not is_deterministic(site)


def sample_sites(trace) -> Iterator[tuple[str, dict]]:
    """The ``(name, site)`` pairs of a trace that :func:`counts`, in execution order.

    Parameters
    ----------
    trace : pyro.poutine.Trace
        A trace of a model or guide.

    Returns
    -------
    iterator of (str, dict)
        Site name and trace node, lazily.
    """
    return ((name, site) for name, site in trace.nodes.items() if counts(site))


def data_frame(site: dict, data_plate: str = DATA_PLATE):
    """The data plate's frame in the site's plate stack, or None when the site is outside it.

    Parameters
    ----------
    site : dict
        A Pyro trace node or effect-handler message.
    data_plate : str
        The name of the data plate.

    Returns
    -------
    pyro.poutine.indep_messenger.CondIndepStackFrame or None
        The frame, with the plate's ``size``, ``full_size`` and batch ``dim``.
    """
    return next((f for f in site["cond_indep_stack"] if f.name == data_plate), None)


def data_scale(site: dict, data_plate: str, num_data: int | None) -> float:
    """N_total / full_size for a site inside the data plate; 1 outside it or when N is None.

    Parameters
    ----------
    site : dict
        A Pyro trace node or effect-handler message.
    data_plate : str
        The name of the data plate.
    num_data : int or None
        N_total, the size of the whole data set; None when the batch is the whole data set.

    Returns
    -------
    float
        The factor that makes a minibatch's log-density an unbiased estimate of the full-data
        one (a plate that subsamples itself has full_size = N_total, so 1).
    """
    if num_data is None:
        return 1.0
    frame = data_frame(site, data_plate)
    return 1.0 if frame is None else num_data / (frame.full_size or frame.size)


class DataPlate(NamedTuple):
    """The data plate as found by :func:`check_data_plate`.

    Attributes
    ----------
    size : int
        N, the number of datapoints in the plate.
    dim : int
        The plate's (negative) batch dimension.
    """

    size: int
    dim: int


def check_data_plate(
    sites: Iterable[tuple[str, str, dict]], data_plate: str = DATA_PLATE, num_data=None
) -> DataPlate:
    """Check that every site is per-datapoint, in one vectorized data plate of one size.

    Parameters
    ----------
    sites : iterable of (role, name, site)
        ``role`` says whose site it is in messages ("model" or "guide").
    data_plate : str
        The name of the data plate.
    num_data : int, optional
        The number N of datapoints in ``x``; the plate must have that size.

    Returns
    -------
    DataPlate
        The plate's ``(size, dim)``.

    Raises
    ------
    GlobalLatentError
        For the first site outside the data plate, naming it (and saying so when no site at
        all is in a plate of that name).
    ValueError
        When there is no site, the plate is not vectorized, its size or dim differs between
        sites, or its size is not ``num_data``.
    """
    sites = list(sites)
    if not sites:
        raise ValueError("the model and guide have no sample site at all")
    frames = [data_frame(site, data_plate) for _, _, site in sites]
    for (role, name, site), frame in zip(sites, frames, strict=True):
        if frame is None:
            kind = "observed" if site["is_observed"] else "latent"
            hint = (
                f"; no site at all is inside a plate named {data_plate!r} (pass "
                "data_plate=<your plate's name> if it has another)"
                if all(f is None for f in frames)
                else ""
            )
            raise GlobalLatentError(
                f"{kind} site {name!r} of the {role} lies outside the data plate "
                f"{data_plate!r}: a site shared by all datapoints has no per-datapoint value; "
                f"put it inside `with pyro.plate({data_plate!r}, N):` or integrate it out{hint}"
            )
        if not frame.vectorized:
            raise ValueError(f"the data plate {data_plate!r} must be vectorized (not a loop)")
    shapes = {(f.size, f.dim) for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"the data plate {data_plate!r} has differing (size, dim): {shapes}")
    plate = DataPlate(*shapes.pop())
    if num_data is not None and plate.size != num_data:
        raise ValueError(
            f"the data plate {data_plate!r} has size {plate.size} but x holds {num_data} "
            "datapoints: the plate must range over the first dimension of x"
        )
    return plate


def latent_sites(trace, data_plate: str = DATA_PLATE, role: str = "guide") -> dict[str, dict]:
    """The latent sites of a trace, each checked to be per-datapoint, in execution order.

    Parameters
    ----------
    trace : pyro.poutine.Trace
        A trace of a guide (or of a model).
    data_plate : str
        The name of the data plate.
    role : str
        Whose trace it is ("guide" or "model"), for error messages.

    Returns
    -------
    dict of str to dict
        Site name to trace node, for every unobserved site that :func:`counts`.

    Raises
    ------
    ValueError
        When the trace has no latent site.
    GlobalLatentError
        For a latent site outside the data plate.
    """
    sites = {name: site for name, site in sample_sites(trace) if not site["is_observed"]}
    if not sites:
        raise ValueError(f"the {role} has no latent (unobserved) sample site")
    check_data_plate([(role, n, s) for n, s in sites.items()], data_plate)
    return sites


def plate_nesting(sites: Iterable[dict]) -> int:
    """How many batch dimensions the sites' plates and batch shapes use.

    The largest ``-dim`` of a vectorized plate, or the longest batch shape of a site's
    distribution, whichever is larger: an outer plate (particles, enumerated values) placed at
    ``-(nesting + 1)`` or further left is clear of them all.

    Parameters
    ----------
    sites : iterable of dict
        Sample sites (trace nodes) of a model and its guide.

    Returns
    -------
    int
        0 for no site.
    """
    sites = list(sites)
    return max(
        [-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized]
        + [len(s["fn"].batch_shape) for s in sites],
        default=0,
    )


def check_data(x, name: str = "x") -> torch.Tensor:
    """Refuse data that is not a tensor of datapoints or holds NaN or inf, naming ``name``.

    Parameters
    ----------
    x : torch.Tensor of shape (N, ...)
        Datapoints along the first dimension, N >= 1.
    name : str
        What to call ``x`` in the error message.

    Returns
    -------
    torch.Tensor of shape (N, ...)
        ``x`` itself.

    Raises
    ------
    ValueError
        When ``x`` is not a tensor, is 0-dim, has no datapoints, or holds NaN or inf values.
    """
    if not torch.is_tensor(x) or x.dim() < 1 or x.shape[0] < 1:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (N, ...) with N >= 1, got {shape}")
    if x.is_floating_point() or x.is_complex():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or inf values")
    return x


def _drop_enumerate(msg) -> dict:
    return {"enumerate": None} if msg["infer"].get("enumerate") else {}


def without_enumeration(fn):
    """``fn`` with every enumeration mark removed, so its discrete sites are sampled.

    ``TraceEnum_ELBO`` sums a site marked ``infer={"enumerate": "parallel"}`` out exactly;
    importance sampling and guide draws instead draw it from its distribution, as one more
    part of the proposal q. The particle tools wrap the guide with this, so a pair enumerated
    in training needs no change to be evaluated.

    Parameters
    ----------
    fn : callable
        A model or guide.

    Returns
    -------
    callable
        ``fn`` under ``poutine.infer_config``, with the same signature.
    """
    return poutine.infer_config(fn, config_fn=_drop_enumerate)
