"""The one atomic write: a temporary file in the same folder, flushed, then renamed.

A crash or a full disk mid-write leaves the previous file intact, and the temporary file is
removed on any failure. Checkpoints (:mod:`pyro_vae.infer.training.checkpoint`) and the run
folder's JSON files (:mod:`pyro_vae.runs`) are written through it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "first_line"]


def atomic_write(path: str | os.PathLike, write: Callable, *, binary: bool, what: str = "") -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file that then replaces it.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; its folder must exist.
    write : callable
        ``write(f)`` writes the content to the open file object ``f``.
    binary : bool
        Open the temporary file in binary ("wb") or text ("w") mode.
    what : str
        What the file is, for the error message (e.g. "checkpoint ").

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OSError
        One line naming ``path`` and the reason; the previous file, if any, is unchanged.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        kept = (
            f"the previous {what or 'file '}is unchanged" if path.exists() else "none was written"
        )
        reason = getattr(err, "strerror", None) or first_line(err)
        failure = OSError(f"could not write {what}{path} ({reason}); {kept}")
        failure.errno = getattr(err, "errno", None)  # kept, without "[Errno N]" in the text
        raise failure from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
