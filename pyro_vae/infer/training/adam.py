"""torch's Adam, without importing ``torch._dynamo`` until something else does.

``torch.optim`` wraps ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict``,
``load_state_dict`` and the functional ``adam`` in ``torch._disable_dynamo``, which imports
``torch._dynamo`` on the first call, and ``Adam.step`` imports it on every call to place its
graph breaks. That import takes about 2 s (measured: ``experiments/bench_startup.py``), more than
a short run trains, and all of it is for Dynamo's tracing, which cannot be under way before
``torch._dynamo`` is imported. :class:`EagerAdam` therefore calls the plain functions until then
and torch's own wrappers from the moment it is imported (by ``torch.compile``, inductor,
torchvision...): the same arithmetic, state and checkpoints as ``torch.optim.Adam``, of which it
is a subclass. The four ``Optimizer`` methods are wrapped for every torch optimizer in the
process, with the same rule, which changes nothing while Dynamo is not imported and nothing
after. Where torch's internals are not as expected, :func:`eager_adam_class` answers
``torch.optim.Adam`` itself.
"""

from __future__ import annotations

import inspect
import sys

import torch
import torch.optim.adam as torch_adam  # torch.optim deletes its submodules' names
import torch.optim.optimizer as torch_optimizer

__all__ = ["EagerAdam", "eager_adam_class"]

_DISABLE_CACHE = "__dynamo_disable"  # where torch._compile._disable_dynamo keeps its wrapper


def _lazy_disable(fn):
    """``fn`` while Dynamo is not imported; torch's ``torch._dynamo.disable(fn)`` once it is."""

    def call(*args, **kwargs):
        if "torch._dynamo" not in sys.modules:  # nothing can be tracing: disabling is a no-op
            return fn(*args, **kwargs)
        disabled = sys.modules["torch._dynamo"].disable(fn, True, wrapping=False)  # as torch
        setattr(fn, _DISABLE_CACHE, disabled)  # what torch itself would have cached
        return disabled(*args, **kwargs)

    return call


def _wrapped_functions() -> list | None:
    """The plain functions behind torch.optim's dynamo-disabling wrappers (None: not found)."""
    optimizer = torch_optimizer.Optimizer
    wrappers = [
        optimizer.add_param_group,
        optimizer.zero_grad,
        optimizer.state_dict,
        optimizer.load_state_dict,
        torch_adam.adam,
    ]
    plain = [getattr(w, "__wrapped__", None) for w in wrappers]
    return None if any(f is None for f in plain) else plain


_PLAIN_STEP = inspect.unwrap(torch.optim.Adam.step)
_USE_GRAD = getattr(torch_optimizer, "_use_grad_for_differentiable", None)
_TORCH_STEP = _USE_GRAD(_PLAIN_STEP) if _USE_GRAD is not None else None  # Adam.step's own


class EagerAdam(torch.optim.Adam):
    """``torch.optim.Adam`` whose step imports nothing (see the module docstring)."""

    def step(self, closure=None):
        """One Adam step, as ``torch.optim.Adam.step``."""
        if "torch._dynamo" in sys.modules:  # torch's own step, graph breaks and all
            return _TORCH_STEP(self, closure)
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _PLAIN_STEP(self, closure)


def eager_adam_class() -> type[torch.optim.Adam]:
    """:class:`EagerAdam`, its lazy wrappers installed once; ``torch.optim.Adam`` where the
    torch internals it relies on are missing (another torch version)."""
    plain = _wrapped_functions()
    if plain is None or _TORCH_STEP is None or _PLAIN_STEP is torch.optim.Adam.step:
        return torch.optim.Adam
    for fn in plain:
        if not hasattr(fn, _DISABLE_CACHE):  # not yet called through torch's wrapper
            setattr(fn, _DISABLE_CACHE, _lazy_disable(fn))
    return EagerAdam
