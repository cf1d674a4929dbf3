"""What compiling the training step cost, and saved, the last time this machine ran it.

A first compile of the training step on a machine costs more than later ones (inductor keeps
what it built in an on-disk cache), and what a compile costs, and what it saves per step,
differ between machines and days (the main job's step: 23 s cold and 2.4 s warm, 2.6 ms saved
per step, in docs/compiled.md; 14-15 s warm and 5 ms saved on another day,
docs/results/numpyro.md). So a run remembers what it measured (:class:`StepCosts`: the
compile's seconds, and the seconds per step of the compiled or the eager step), in one small
file named by a signature
of what was trained (:func:`step_signature`: the pair's module parameters and their shapes, the
objective, the batch's shape, dtype and device, the number of processes, the torch version), in
inductor's cache folder, so that clearing that cache clears the record too. The record only
advises (:func:`~pyro_vae.infer.compile.policy.compile_advice`: "compiling would save about X s
on this machine"), and a compiled run's opening line says what the same compile took last time
here; it never decides the path a run takes, which is a function of the run alone
(:func:`~pyro_vae.infer.compile.policy.resolve_training`).

The environment variable ``PYRO_VAE_STEP_COSTS`` names another folder for the records, or
``off`` for none (neither read nor written: no advice, no "last time" in the compile notice).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from pyro_vae.infer.runtime.files import write_json

__all__ = ["StepCosts", "inductor_cache_dir", "recorded_costs", "remember_costs", "step_signature"]


def inductor_cache_dir() -> Path:
    """Inductor's on-disk cache folder, found the way inductor finds it.

    ``TORCHINDUCTOR_CACHE_DIR``, else ``<tempdir>/torchinductor_<user>``. Written out here
    because importing inductor's own ``cache_dir`` imports ``torch._dynamo`` (2.7 s, measured),
    which a run that ends up eager should not pay.
    """
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if folder is None:
        try:
            user = getpass.getuser()
        except (KeyError, ModuleNotFoundError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        user = re.sub(r'[\\/:*?"<>|]', "_", user)
        folder = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    return Path(folder).absolute()


def step_signature(what: str, fns, objective, x: torch.Tensor, world_size: int = 1) -> str:
    """A signature of a compiled ``what`` (e.g. "training step") for a pair and a batch.

    Parameters
    ----------
    what : str
        What is compiled.
    fns : iterable of callable
        The model and guide; the parameters (names, shapes, dtypes) of the ``nn.Module``
        behind bound methods enter the signature (a pair of plain functions is known by the
        other parts only).
    objective : object
        Its ``repr`` enters the signature (without an object address).
    x : torch.Tensor
        The first batch: shape, dtype, device.
    world_size : int
        The processes of a data-parallel run (their all-reduce is part of every step).

    Returns
    -------
    str
        A hex digest.
    """
    described = re.sub(r" at 0x[0-9a-f]+", "", repr(objective))  # a default repr's address
    parts = [what, torch.__version__, described, str(tuple(x.shape)), str(x.dtype)]
    parts += [x.device.type, f"processes:{world_size}"]
    for fn in fns:
        owner = getattr(fn, "__self__", None)
        parts.append(f"{type(owner).__qualname__}.{getattr(fn, '__name__', fn)}")
        if isinstance(owner, torch.nn.Module):
            parts += [f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in owner.named_parameters()]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class StepCosts:
    """What the training step of one signature cost on this machine, the last time it ran.

    Attributes
    ----------
    compile_seconds : float or None
        Capturing and compiling the step's graphs.
    compiled_step_seconds, eager_step_seconds : float or None
        Wall time per optimizer step (an epoch's steps over its training time, compiling
        excluded) of the compiled and of the eager step.
    """

    compile_seconds: float | None = None
    compiled_step_seconds: float | None = None
    eager_step_seconds: float | None = None

    @property
    def complete(self) -> bool:
        """Whether all three were measured (enough to decide whether a compile repays)."""
        return None not in (
            self.compile_seconds,
            self.compiled_step_seconds,
            self.eager_step_seconds,
        )


def _record(signature: str) -> Path | None:
    folder = os.environ.get("PYRO_VAE_STEP_COSTS")
    if folder == "off":
        return None
    folder = Path(folder) if folder else inductor_cache_dir() / "pyro_vae_compiled"
    return folder / f"{signature}.json"


def recorded_costs(signature: str) -> StepCosts:
    """What this machine measured for ``signature`` (fields never measured are None)."""
    path = _record(signature)
    if path is None:
        return StepCosts()
    try:
        stored = json.loads(path.read_text())
        return StepCosts(**{k: float(v) for k, v in stored.items() if v is not None})
    except (OSError, ValueError, TypeError, AttributeError):  # none, unreadable, another shape
        return StepCosts()


def remember_costs(signature: str, **measured: float) -> None:
    """Update the record of ``signature`` with the given fields of :class:`StepCosts`; a
    folder that cannot be written leaves no record (the next run decides as on a new
    machine)."""
    path = _record(signature)
    if path is None:
        return
    costs = replace(recorded_costs(signature), **measured)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(costs))  # strict JSON, as every other file we write
    except OSError:
        pass
