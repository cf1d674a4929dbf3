"""The parameters of a model/guide pair, found by running it, and restored by name.

Parameters are whatever the pair registers with ``pyro.param`` or ``pyro.module`` when it runs;
they are found with ``poutine.trace(..., param_only=True)`` (public Pyro API), so no code here
knows how Pyro spells the name of a module's parameter in the param store.
"""

from __future__ import annotations

import torch
from pyro import poutine

from pyro_vae.infer.runtime.devices import forked_rng

__all__ = ["collect_params", "restore_params"]


def collect_params(model, guide, x, *args, **kwargs) -> dict[str, torch.Tensor]:
    """Run ``guide`` and ``model`` once on ``x`` and return every parameter they register.

    The run draws from a forked RNG and without gradients, so the caller's random stream is
    unchanged.

    Parameters
    ----------
    model, guide : callable
        A model/guide pair called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        A batch of data (a few datapoints suffice).
    *args, **kwargs
        Passed on to ``model`` and ``guide``.

    Returns
    -------
    dict of str to torch.Tensor
        Param-store name to the *unconstrained* leaf tensor that an optimizer updates, sorted
        by name.
    """
    params = {}
    with forked_rng(x), torch.no_grad():
        for fn in (guide, model):
            trace = poutine.trace(fn, param_only=True).get_trace(x, *args, **kwargs)
            for name, site in trace.nodes.items():
                params[name] = site["value"].unconstrained()
    return dict(sorted(params.items()))


def restore_params(params: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    """Copy ``saved`` unconstrained values into the leaf tensors ``params``, in place.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        As returned by :func:`collect_params`.
    saved : dict of str to torch.Tensor
        The same names, e.g. a checkpoint's ``"params"``.

    Returns
    -------
    None
        The tensors of ``params`` are overwritten in place, without gradients.

    Raises
    ------
    ValueError
        When the names or shapes differ, naming them, or a saved value is not finite.
    """
    extra, missing = sorted(set(saved) - set(params)), sorted(set(params) - set(saved))
    if extra or missing:
        raise ValueError(
            f"the saved parameters do not fit this model/guide pair: saved but not in the pair "
            f"{extra or 'none'}; in the pair but not saved {missing or 'none'}"
        )
    for name, value in params.items():
        if value.shape != saved[name].shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(value.shape)} in the pair but "
                f"{tuple(saved[name].shape)} in the saved state"
            )
        if not torch.isfinite(saved[name]).all():
            raise ValueError(f"the saved parameter {name!r} holds NaN or inf values")
    with torch.no_grad():
        for name, value in params.items():
            value.copy_(saved[name])
