"""The pair doctor's checks of values: observed shapes, supports and dtypes.

:mod:`pyro_vae.infer.pair.doctor` runs them on the traces every tool takes anyway (and
:func:`check_dtype` on a run that failed); each raises one line naming the site, or ``x``, and
what to change.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_vae.infer.pair.sites import data_frame

__all__ = ["check_dtype", "check_observed_shape", "check_scored", "check_support"]

_WRAPPERS = (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)
_CASTS = {torch.float32: "x.float()", torch.float64: "x.double()", torch.float16: "x.half()"}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _base_name(fn) -> str:
    """The name of the distribution inside its wrappers (Independent, masked, expanded)."""
    while isinstance(fn, _WRAPPERS):
        fn = fn.base_dist
    return type(fn).__name__


def check_dtype(x: torch.Tensor, param_sites) -> None:
    """Refuse ``x`` of another dtype than the pair's parameters, once the pair failed on it.

    Parameters
    ----------
    x : torch.Tensor of shape (N, ...)
        The data the pair failed on.
    param_sites : list of dict
        The param sites the failed run recorded; their one floating dtype is the target
        (torch's default dtype when none was registered yet).

    Raises
    ------
    ValueError
        "x is int64 but the pair's parameters are float32, and the pair fails on it: pass
        x.float()", when ``x``'s dtype is not the target; nothing when the parameters have
        several floating dtypes (no one cast to name).
    """
    dtypes = {s["value"].dtype for s in param_sites if torch.is_floating_point(s["value"])}
    if len(dtypes) > 1:
        return
    target = dtypes.pop() if dtypes else torch.get_default_dtype()
    if x.dtype == target:
        return
    whose = "the pair's parameters are" if param_sites else "torch's default dtype is"
    cast = _CASTS.get(target, f"x.to({target})")
    raise ValueError(
        f"x is {_dtype_name(x.dtype)} but {whose} {_dtype_name(target)}, and the pair fails on "
        f"it: pass {cast}"
    )


def check_observed_shape(name: str, site: dict, data_plate: str) -> None:
    """Refuse an observed value in the data plate whose shape is not its distribution's.

    Torch would fail later, in many lines, or broadcast one into the other. Outside the data
    plate a value may broadcast (a global observation is the site convention's business).

    Parameters
    ----------
    name : str
        The site's name.
    site : dict
        The model's trace node of an observed site.
    data_plate : str
        Name of the data plate.

    Raises
    ------
    ValueError
        When the value's shape is not ``fn.batch_shape + fn.event_shape``, naming both.
    """
    fn, value = site["fn"], torch.as_tensor(site["value"])
    expected = fn.batch_shape + fn.event_shape
    if data_frame(site, data_plate) is None or value.shape == expected:
        return
    raise ValueError(
        f"observed site {name!r} has a value of shape {tuple(value.shape)} but its "
        f"distribution {_base_name(fn)} has shape {tuple(expected)} (batch "
        f"{tuple(fn.batch_shape)}, event {tuple(fn.event_shape)}); give the distribution the "
        "shape of the data it scores (e.g. the decoder's output size x.shape[1:], and "
        ".to_event(...) over the data's own dimensions)"
    )


def check_scored(name: str, site: dict) -> None:
    """Refuse an observed value that its distribution cannot score, e.g. integers in a
    Bernoulli (torch's "result type Float can't be cast to the desired output type Long").

    Parameters
    ----------
    name : str
        The site's name.
    site : dict
        The model's trace node of an observed site; its log-density is computed once (one
        elementwise pass over the batch, no run of the pair).

    Raises
    ------
    ValueError
        Naming the site, the value's dtype and torch's first line; Pyro's own validation
        errors of the value are left to :func:`check_support`.
    """
    value = torch.as_tensor(site["value"])
    try:
        site["fn"].log_prob(value, *site.get("args", ()), **site.get("kwargs", {}))
    except ValueError:  # Pyro's validation of the value: the support is checked apart
        return
    except RuntimeError as failure:
        first = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
        fix = (
            "pass floating-point data, e.g. x.float()"
            if not value.is_floating_point()
            else "give the data the dtype of the distribution's parameters"
        )
        raise ValueError(
            f"observed site {name!r}: {_base_name(site['fn'])} cannot score its "
            f"{_dtype_name(value.dtype)} values ({first}); {fix}"
        ) from failure


def _support_of(site: dict):
    """``(constraint, text)`` to check a site's value against, or None when it cannot be.

    Independent wrappers are unwrapped (the check is per element); for an observed site a
    boolean support is relaxed to [0, 1]: grey levels score as the Bernoulli cross-entropy.
    """
    try:
        support = site["fn"].support
    except NotImplementedError:  # a distribution without a declared support
        return None
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if constraints.is_dependent(support):
        return None
    if site["is_observed"] and support is constraints.boolean:
        return constraints.unit_interval, "boolean, or grey levels in [0, 1]"
    return support, repr(support)


def check_support(name: str, site: dict) -> None:
    """Refuse a site whose value lies outside its distribution's support, naming both.

    Parameters
    ----------
    name : str
        The site's name.
    site : dict
        The model's trace node: an observed site, or a latent site at the guide's draw.

    Raises
    ------
    ValueError
        With the count of values outside the support and an example; masked-out entries and
        dependent supports are not checked, and a boolean support of data accepts [0, 1].
    """
    found, mask = _support_of(site), site["mask"]
    if found is None or mask is False:
        return
    support, text = found
    value = torch.as_tensor(site["value"])
    bad = ~support.check(value)
    if torch.is_tensor(mask):  # masked-out entries are not scored: any value is fine there
        batch_ndim = value.dim() - site["fn"].event_dim
        mask = mask.reshape(mask.shape + (1,) * max(bad.dim() - batch_ndim, 0))
        try:
            bad = bad & mask
        except RuntimeError:  # a mask that does not line up with the check: check it all
            pass
    count = int(bad.sum())
    if not count:
        return
    example = f", e.g. {value[bad][0].item():g}" if bad.shape == value.shape else ""
    if site["is_observed"]:
        what = f"observed site {name!r} has values"
        hint = (
            "are the data scaled to [0, 1]?"
            if support is constraints.unit_interval
            else "check the data's range and dtype against the model's distribution there"
        )
    else:
        what = f"model latent site {name!r} gets values from the guide"
        hint = "give the guide's site a distribution with the model's support"
    raise ValueError(
        f"{what} outside the support of {_base_name(site['fn'])} ({text}): {count} of "
        f"{bad.numel()}{example}; {hint}"
    )
