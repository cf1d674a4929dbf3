"""The state of a run beyond its parameters, and the folder that keeps it between sessions.

:class:`RunState` is what a checkpoint adds to the parameters (epoch, history, early-stopping
bookkeeping); :class:`Checkpointer` writes it with the step's parameters, optimizer, LR
scheduler and every RNG state into ``out_dir/checkpoint.pt`` (atomic, code-free:
:mod:`pyro_vae.infer.training.checkpoint`) and the history beside it, and reads it back on
``resume``, so that a resumed CPU run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from pyro_vae.infer.runtime.files import atomic_write, json_text, remove_leftovers
from pyro_vae.infer.training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pyro_vae.infer.training.svi import SVIStep

__all__ = ["CHECKPOINT_NAME", "HISTORY_NAMES", "Checkpointer", "RunState"]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAMES = ("history.json", "history.csv")


@dataclass
class RunState:
    """The part of a run's state that is not parameters: what a checkpoint adds to them."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best: float = math.inf
    bad_epochs: int = 0

    def record(self, monitored: float) -> None:
        """Early-stopping bookkeeping for one epoch's monitored loss."""
        if monitored < self.best:
            self.best, self.bad_epochs = monitored, 0
        else:
            self.bad_epochs += 1


class Checkpointer:
    """Saves a run every epoch into ``out_dir`` and restores it on ``resume``.

    Parameters
    ----------
    out_dir : str or Path, optional
        Where ``checkpoint.pt`` and ``history.json``/``.csv`` go; None keeps nothing.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` when it exists (else start afresh).
    """

    def __init__(self, out_dir: str | Path | None = None, resume: bool = False):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume = resume

    @property
    def path(self) -> Path | None:
        """The checkpoint file, or None without ``out_dir``."""
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    def restore(self, svi: SVIStep, scheduler) -> RunState:
        """The stored state, loaded into ``svi`` and ``scheduler``, or a fresh one.

        Parameters
        ----------
        svi : SVIStep
            Set up already; its parameters and optimizer are overwritten.
        scheduler : torch LR scheduler or None
            Overwritten too, when the checkpoint has one.

        Returns
        -------
        RunState
            Fresh unless ``resume`` and a checkpoint exists; then every RNG state is restored.

        The temporary files of a checkpoint or history write killed mid-way (``kill -9``) are
        removed first: no write of this run is under way yet.
        """
        if self.out_dir is not None:
            remove_leftovers(self.out_dir, (CHECKPOINT_NAME, *HISTORY_NAMES))
        if not (self.resume and self.path is not None and self.path.exists()):
            return RunState()
        checkpoint = load_checkpoint(self.path)
        svi.load_state_dict(checkpoint)
        if scheduler is not None and checkpoint.get("scheduler") is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"])
        return RunState(
            checkpoint["epoch"], checkpoint["history"], checkpoint["best"], checkpoint["bad_epochs"]
        )

    def save(self, svi: SVIStep, scheduler, state: RunState) -> None:
        """Write the checkpoint (atomic); nothing without ``out_dir``. The history follows."""
        if self.out_dir is None:
            return
        checkpoint = {
            "epoch": state.epoch,
            **svi.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "history": state.history,
            "best": state.best,
            "bad_epochs": state.bad_epochs,
        }
        save_checkpoint(self.path, checkpoint)

    def save_history(self, state: RunState) -> None:
        """Write history.json and history.csv (each atomic); nothing without ``out_dir``."""
        if self.out_dir is not None:
            _write_history(self.out_dir, state.history)

    def note(self) -> str:
        """Where the last good state is, for a divergence message."""
        if self.out_dir is None:
            return "no checkpoint is kept (out_dir=None)"
        if not self.path.exists():
            return f"no checkpoint was written yet in {self.out_dir}"
        return f"the last good checkpoint {self.path} is unchanged"


def _write_history(out_dir: Path, history: list[dict]) -> None:
    """history.json and history.csv, each atomic (an interrupted write leaves the last one)."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(history[-1]), restval="")
    writer.writeheader()
    writer.writerows(history)
    texts = (json_text(history), table.getvalue())  # strict JSON: no NaN token
    for name, text in zip(HISTORY_NAMES, texts, strict=True):
        atomic_write(out_dir / name, lambda f, text=text: f.write(text.encode()), binary=True)
