"""How long a compile took the last time this machine ran it.

A first compile of the training step on a machine costs more than later ones (inductor keeps
what it built in an on-disk cache), and what a compile costs differs between machines and days
(the main job's step: 23 s cold and 2.4 s warm in docs/compiled.md; 14-15 s warm on another
day, README "Compiled steps"). So the line a compiled run opens with says what the same compile
took last time here, when it is known. After a compile the library writes one small file named
by a signature of what was compiled (:func:`step_signature`: the pair's module parameters and
their shapes, the objective, the batch's shape, dtype and device, the torch version), in
inductor's cache folder, so that clearing that cache clears the record too.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch

__all__ = ["compiled_before", "inductor_cache_dir", "remember_compile", "step_signature"]


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


def step_signature(what: str, fns, objective, x: torch.Tensor) -> str:
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

    Returns
    -------
    str
        A hex digest.
    """
    described = re.sub(r" at 0x[0-9a-f]+", "", repr(objective))  # a default repr's address
    parts = [what, torch.__version__, described, str(tuple(x.shape)), str(x.dtype)]
    parts.append(x.device.type)
    for fn in fns:
        owner = getattr(fn, "__self__", None)
        parts.append(f"{type(owner).__qualname__}.{getattr(fn, '__name__', fn)}")
        if isinstance(owner, torch.nn.Module):
            parts += [f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in owner.named_parameters()]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _record(signature: str) -> Path:
    return inductor_cache_dir() / "pyro_vae_compiled" / f"{signature}.json"


def compiled_before(signature: str) -> float | None:
    """Seconds the compile of ``signature`` took on this machine, or None if it never ran."""
    try:
        return float(json.loads(_record(signature).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_compile(signature: str, seconds: float) -> None:
    """Record that ``signature`` was compiled, in ``seconds``; a folder that cannot be written
    leaves no record (the next run then decides as on a cold machine)."""
    path = _record(signature)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"seconds": seconds}))
    except OSError:
        pass
