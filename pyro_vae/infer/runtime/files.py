"""The one atomic write: a temporary file in the same folder, flushed, then renamed.

A crash or a full disk mid-write leaves the previous file intact, and the temporary file is
removed on any failure. Checkpoints (:mod:`pyro_vae.infer.training.checkpoint`) and the run
folder's JSON files (:mod:`pyro_vae.runs`) are written through it. Only a process killed
mid-write (``kill -9``, a power cut) leaves its temporary file, ``.NAME.*.tmp``, behind:
:func:`remove_leftovers` removes them when the next run or resume starts.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "first_line", "json_text", "remove_leftovers", "write_json"]


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
        One line naming ``path`` and the reason ("no space left on device writing PATH; ..."
        for a full disk, with ``errno.ENOSPC``); the previous file, if any, is unchanged.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    recorder = None
    try:
        os.chmod(tmp, _file_mode(path))  # mkstemp's 0600 would hide the run from others
        with os.fdopen(fd, "wb" if binary else "w") as f:
            recorder = _RecordingFile(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        # torch.save turns the OSError of a failed write into "unexpected pos ...": the error
        # the file itself raised says what happened
        err = (recorder.error if recorder is not None else None) or err
        raise _write_failure(err, path, what) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_text(value) -> str:
    """``value`` as strict JSON text: every non-finite float (NaN, +-inf) becomes ``null``.

    Parameters
    ----------
    value : dict, list, tuple, str, int, float, bool or None
        Nested as JSON allows (tuples become lists).

    Returns
    -------
    str
        Indented by one space, as every JSON file of a run folder; no ``NaN`` or ``Infinity``
        token, so any strict parser (``JSON.parse``, ``jq``) reads it.
    """
    return json.dumps(_finite_or_null(value), indent=1, allow_nan=False)


def write_json(path: str | os.PathLike, value, *, what: str = "") -> Path:
    """Write ``value`` to ``path`` as strict JSON (:func:`json_text`) by :func:`atomic_write`.

    ``path`` and ``what`` are as there, and so are the return value (``path``) and the
    one-line ``OSError`` of a failed write; ``value`` is any JSON-ready object.
    """
    text = json_text(value)  # before the file is touched: a value JSON cannot hold changes nothing
    return atomic_write(path, lambda f: f.write(text), binary=False, what=what)


def _finite_or_null(value):
    """``value`` with every non-finite float replaced by None, containers copied."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def remove_leftovers(folder: str | os.PathLike, names) -> list[Path]:
    """Remove the temporary files that writes of ``names`` killed mid-way left in ``folder``.

    :func:`atomic_write` removes its temporary file on every failure it sees; only a process
    killed during a write (``kill -9``) leaves one, ``.NAME.*.tmp``, next to ``NAME``.

    Parameters
    ----------
    folder : str or os.PathLike
        The folder (it need not exist).
    names : iterable of str
        The file names whose leftovers go (e.g. ``"checkpoint.pt"``).

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for name in names:
        for leftover in folder.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _file_mode(path: Path) -> int:
    """The permissions ``path`` keeps, or a new file's (0666 less the umask, as ``open``)."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    return 0o666 & ~umask


class _RecordingFile:
    """A file object that keeps the OSError its ``write`` raised (torch.save hides it)."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def _write_failure(err: BaseException, path: Path, what: str) -> OSError:
    """The one-line OSError of a failed write of ``path``, its errno kept (not in the text)."""
    kept = f"the previous {what or 'file '}is unchanged" if path.exists() else "none was written"
    code = getattr(err, "errno", None)
    if code == errno.ENOSPC:
        text = f"no space left on device writing {what}{path}; {kept}"
    else:
        reason = getattr(err, "strerror", None) or first_line(err)
        text = f"could not write {what}{path} ({reason}); {kept}"
    failure = OSError(text)
    failure.errno = code  # kept, without "[Errno N]" in the text
    return failure


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
