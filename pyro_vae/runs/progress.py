"""What a ``pyro-vae train`` command has on disk, and what a failure, Ctrl-C or SIGTERM leaves.

A run is saved whole after every epoch (an atomic checkpoint, then the history), so a command
that stops at any moment leaves either the last complete epoch or, for a new run that finished
none, nothing: :meth:`RunProgress.guard` removes what such a command created (the folder, or
the run's files in a folder that was there before) and names what became of the run in the
one line it fails with. A resume keeps its folder as it was: its last complete epoch stays.

SIGTERM (``kill``, a batch scheduler's stop, torchrun stopping the other ranks when one dies)
stops a command the way Ctrl-C does, inside :func:`sigterm_as_interrupt`: without it Python
dies at once, leaving a new run that saved no epoch on disk and saying nothing.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyro_vae.infer.runtime.distributed import PeerLostError
from pyro_vae.infer.training.checkpoint import CheckpointError
from pyro_vae.infer.training.svi import TrainingDivergedError
from pyro_vae.runs.folders import clear_run

__all__ = [
    "ONE_LINE_ERRORS",
    "RunProgress",
    "Terminated",
    "TrainingInterrupted",
    "missing_root",
    "sigterm_as_interrupt",
]

ONE_LINE_ERRORS = (OSError, ValueError, CheckpointError, TrainingDivergedError, PeerLostError)
"""The failures the command line reports in one line (exit status 2), not as a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by :func:`sigterm_as_interrupt`.

    A ``KeyboardInterrupt``, so that whatever undoes or names the work of a Ctrl-C does the
    same for it; the command exits with ``status`` 143 (128 + SIGTERM).
    """

    status = 128 + signal.SIGTERM


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM during ``pyro-vae train``, with what was kept and how to go on.

    The command exits with ``status``: 130 after Ctrl-C (128 + SIGINT, the shell's convention),
    143 after SIGTERM.
    """

    def __init__(self, message: str, status: int = 128 + signal.SIGINT):
        super().__init__(message)
        self.status = status


def sigterm_as_interrupt():
    """Within: SIGTERM raises :class:`Terminated`, as Ctrl-C raises ``KeyboardInterrupt``.

    The previous handler is back afterwards, and at once after the first SIGTERM, so that a
    second one stops the process as it would have. Python runs the handler in the main thread
    between bytecodes: a SIGTERM that comes during a long call into C++ (a collective waiting
    for its peers) acts when the call returns. Nothing changes in another thread, where Python
    cannot set a handler, nor over a handler installed from C (``getsignal`` gives None).
    """
    return _sigterm_handled_by(_terminate_after)


def _terminate_after(previous):
    """The handler that puts ``previous`` back (a second SIGTERM acts as it would have) and
    raises :class:`Terminated`."""

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        raise Terminated("terminated (SIGTERM)")

    return terminate


@contextmanager
def _sigterm_handled_by(handler_for) -> Iterator[None]:
    """Within: SIGTERM goes to ``handler_for(previous)``, the previous handler back afterwards;
    nothing changes outside the main thread or over a handler installed from C."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    signal.signal(signal.SIGTERM, handler_for(previous))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def missing_root(folder: str | Path) -> Path | None:
    """The topmost folder on ``folder``'s path that does not exist yet.

    Parameters
    ----------
    folder : str or Path
        A folder about to be created with its parents.

    Returns
    -------
    Path or None
        What creating ``folder`` adds to the disk, removed whole if the command fails; None
        when ``folder`` exists.
    """
    folder, root = Path(folder), None
    for path in [folder, *folder.parents]:
        if path.exists():
            break
        root = path
    return root


@dataclass
class RunProgress:
    """What a ``pyro-vae train`` command has saved so far.

    Attributes
    ----------
    run_dir : Path
        The run folder (``--out``).
    epoch : int
        The last epoch whose checkpoint is on disk (a resume starts at the run's).
    new : bool
        A new run (or ``--overwrite``), not a resume.
    created : Path or None
        The topmost folder this command creates for a new run (:func:`missing_root`); None
        when the folder was there before.
    writes : bool
        This process writes the run (rank 0); the others change nothing on disk.
    trained : bool
        Every epoch is done; what follows is scoring and drawing.
    """

    run_dir: Path
    epoch: int
    new: bool
    created: Path | None = None
    writes: bool = True
    trained: bool = False

    @contextmanager
    def guard(self) -> Iterator[RunProgress]:
        """Run the command's writes and training; on a failure, undo or name what it left.

        Raises
        ------
        TrainingInterrupted
            On Ctrl-C (``KeyboardInterrupt``) or SIGTERM (:class:`Terminated`).
        OSError, ValueError, CheckpointError, TrainingDivergedError, PeerLostError
            The failure, its message followed by what became of the run folder.
        """
        try:
            yield self
        except KeyboardInterrupt as err:
            how = str(err) or "interrupted"  # Terminated says so; Ctrl-C's is empty
            status = getattr(err, "status", 128 + signal.SIGINT)
            raise TrainingInterrupted(self._interrupted(how), status) from None
        except ONE_LINE_ERRORS as err:
            # resuming a diverged run repeats it bit for bit: no "continue with" after one
            note = self._settle(resumable=not isinstance(err, TrainingDivergedError))
            if note is None:
                raise
            raise _with_note(err, note) from None
        except BaseException:
            self._settle()
            raise

    def _continue(self) -> str:
        return f"continue with: pyro-vae train --out {shlex.quote(str(self.run_dir))} --resume"

    def _interrupted(self, how: str) -> str:
        note = self._settle()
        if note is None:  # not the writing rank: rank 0 says what became of the run
            return how
        if self.new and self.epoch == 0:
            return f"{how} before the first epoch finished; {note}"
        if self.trained:
            return f"{how} after the last epoch, while scoring and drawing; {note}"
        return f"{how} after epoch {self.epoch}; {self._continue()}"

    def _settle(self, resumable: bool = True) -> str | None:
        """Remove a new run that saved no epoch; what became of the folder (None: not ours)."""
        with _sigterm_ignored():  # the command stops already: a SIGTERM would cut the removal
            return self._settle_now(resumable)

    def _settle_now(self, resumable: bool) -> str | None:
        if not self.writes:
            return None
        if self.new and self.epoch == 0:
            return self._discard()
        if self.trained:
            return f"the run in {self.run_dir} is complete ({self.epoch} epochs)"
        held = f"{self.run_dir} holds epoch {self.epoch}"
        return f"{held}; {self._continue()}" if resumable else held

    def _discard(self) -> str:
        try:
            if self.created is not None:
                shutil.rmtree(self.created)
                return f"removed {self.created}, which this command had created"
            clear_run(self.run_dir)
        except OSError as err:
            return f"could not remove what this command wrote in {self.run_dir} ({err})"
        return f"removed the run files this command wrote in {self.run_dir}"


def _sigterm_ignored():
    """Within: SIGTERM is ignored (in the main thread; see :func:`sigterm_as_interrupt`)."""
    return _sigterm_handled_by(lambda previous: signal.SIG_IGN)


def _with_note(err: BaseException, note: str) -> BaseException:
    """``err`` again, of its own type, with ``note`` after its message."""
    text = str(err).split("\nTrace Shapes:")[0].rstrip()  # before Pyro's dump of the trace
    text = f"{text}; {note}"
    try:
        return type(err)(text)
    except TypeError:  # an exception class with another signature keeps its own message
        return err
