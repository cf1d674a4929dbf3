"""Checkpoints that cannot run code: tensors, numbers, strings, lists and dicts only.

A checkpoint holds the unconstrained parameters by param-store name, the optimizer (and LR
scheduler) state, every RNG state, the epoch and the history. It is written atomically (to a
temporary file in the same folder, then renamed), so a crash mid-write leaves the previous one
intact, and read with ``torch.load(weights_only=True)``, so a crafted pickle is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from pyro_vae.infer.runtime.files import atomic_write, first_line

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "pyro_vae.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupted, unsafe or not ours.

    Raised by :func:`load_checkpoint`; the message names the file and the reason.
    """


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (write a temporary file, then rename).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; missing parent folders are created.
    state : dict
        Tensors, numbers, strings, lists and dicts only (what ``torch.load(weights_only=True)``
        reads back); the key ``"format"`` is set to :data:`CHECKPOINT_FORMAT`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OSError
        When the file cannot be written (e.g. a full disk); the temporary file is removed and
        a previous checkpoint at ``path`` is left unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, **state}
    return atomic_write(path, lambda f: torch.save(state, f), binary=True, what="checkpoint ")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else clearly.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    map_location : str, torch.device or callable
        Where tensors are loaded, as for ``torch.load``.

    Returns
    -------
    dict
        The saved state, including its ``"format"`` key.

    Raises
    ------
    CheckpointError
        When the file is missing, is not a torch archive, is corrupted, holds Python objects
        other than tensors and plain data, or is not a pyro_vae checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{path} is corrupted or not a checkpoint (not a torch archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL [\w.]+", str(err))
        what = f" ({found.group(0)})" if found else ""
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects{what} besides tensors and plain "
            "data, which could run code when unpickled; only load checkpoints written by "
            "pyro_vae"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is corrupted or not a checkpoint ({first_line(err)})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pyro_vae checkpoint ({CHECKPOINT_FORMAT})")
    return state


def rng_state() -> dict:
    """Every RNG a training run draws from: torch (CPU and CUDA), Python and NumPy.

    Returns
    -------
    dict
        Keys ``"torch"``, ``"cuda"`` (one state per device, empty without CUDA), ``"python"``
        and ``"numpy"``, as tensors and plain data that :func:`save_checkpoint` can store.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global RNG itself)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(state: dict) -> None:
    """Restore every RNG from :func:`rng_state` output (as read back from a checkpoint).

    Parameters
    ----------
    state : dict
        As returned by :func:`rng_state`. The CUDA states are skipped when torch sees no CUDA
        device.

    Returns
    -------
    None
    """
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
