"""The parameters of a model/guide pair, found by running it, checked, and restored by name.

Parameters are whatever the pair registers with ``pyro.param`` or ``pyro.module`` when it runs;
they are found with ``poutine.trace(..., param_only=True)`` (public Pyro API), or read from the
validated traces a step is set up with (:func:`validated_traces`, :func:`trace_params`), so no
code here knows how Pyro spells the name of a module's parameter in the param store.
"""

from __future__ import annotations

import warnings

import pyro
import torch
from pyro import poutine
from pyro.util import check_model_guide_match

from pyro_vae.infer.pair.doctor import check_traces, trace_pair
from pyro_vae.infer.pair.sites import DATA_PLATE, check_data
from pyro_vae.infer.runtime.devices import forked_rng

__all__ = [
    "check_owned_params",
    "collect_params",
    "restore_params",
    "trace_params",
    "validated_traces",
]


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
    with forked_rng(x), torch.no_grad():
        traces = [
            poutine.trace(fn, param_only=True).get_trace(x, *args, **kwargs)
            for fn in (guide, model)
        ]
        return _params_of(traces)


def _params_of(traces) -> dict[str, torch.Tensor]:
    """Param-store name to the unconstrained leaf of every param site in ``traces``, sorted."""
    params = {}
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "param":
                params[name] = site["value"].unconstrained()
    return dict(sorted(params.items()))


def validated_traces(model, guide, x, *args, data_plate=DATA_PLATE, **kwargs) -> list:
    """Trace the guide and the model replayed at its draws, with Pyro's validation on.

    The pair doctor (:func:`~pyro_vae.infer.pair.doctor.check_traces`) checks the data first
    and then the two traces, each mistake in one line; then Pyro's checks run
    (``check_model_guide_match``, and every site scored once), so that shape mistakes surface
    here, with Pyro's own message.

    Parameters
    ----------
    model, guide : callable
        The pair, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (B, ...)
        A batch of data.
    *args, **kwargs
        Passed on to the pair.
    data_plate : str
        Name of the data plate.

    Returns
    -------
    list of pyro.poutine.Trace
        ``[model_trace, guide_trace]``.

    Raises
    ------
    ValueError
        From the pair doctor: see :func:`~pyro_vae.infer.pair.doctor.check_pair`.
    """
    check_data(x)  # before the pair runs: NaN in x would fail inside it, in many lines
    with pyro.validation_enabled(True):
        model_trace, guide_trace = trace_pair(
            model, guide, x, *args, data_plate=data_plate, **kwargs
        )
        check_traces(model_trace, guide_trace, x.shape[0], data_plate)
        with warnings.catch_warnings():  # the doctor has matched the latent sites already:
            # a model site left to its prior on purpose is no news
            warnings.filterwarnings("ignore", "Found vars in model but not guide")
            check_model_guide_match(model_trace, guide_trace)
        guide_trace.compute_log_prob()  # support and shape mistakes surface here
        model_trace.compute_log_prob()
    return [model_trace, guide_trace]


def trace_params(traces) -> dict[str, torch.Tensor]:
    """Every parameter that the traces recorded, checked to be trainable and finite.

    Parameters
    ----------
    traces : iterable of pyro.poutine.Trace
        E.g. from :func:`validated_traces`.

    Returns
    -------
    dict of str to torch.Tensor
        Param-store name to the *unconstrained* leaf tensor, sorted by name.

    Raises
    ------
    ValueError
        When no parameter requires grad, or a parameter holds NaN or inf values.
    """
    params = _params_of(traces)
    if not any(p.requires_grad for p in params.values()):
        raise ValueError("the model and guide register no trainable parameter")
    for name, value in params.items():
        if not torch.isfinite(value).all():
            raise ValueError(f"parameter {name!r} holds NaN or inf values")
    return params


def check_owned_params(params: dict, fns) -> None:
    """Refuse a module of a bound-method model/guide whose parameters would not be optimized.

    ``pyro.module(name, net)`` returns what the param store already holds under a name, so a
    new network registered under an old name would silently leave its own weights untrained.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        The parameters that will be optimized.
    fns : iterable of callable
        The model and guide; those that are not bound methods of an ``nn.Module`` are skipped.

    Raises
    ------
    ValueError
        Naming the first trainable module parameter that is not among ``params``.
    """
    optimized = {id(p) for p in params.values()}
    for fn in fns:
        owner = getattr(fn, "__self__", None)
        if not isinstance(owner, torch.nn.Module):
            continue
        for name, p in owner.named_parameters():
            if p.requires_grad and id(p) not in optimized:
                raise ValueError(
                    f"parameter {name!r} of {type(owner).__name__} is not among the pair's "
                    "parameters: an older param-store entry shadows it (call "
                    "pyro.clear_param_store() first) or its module is never registered with "
                    "pyro.module"
                )


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
