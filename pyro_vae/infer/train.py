"""train(model, guide, data): epochs of SVI with validation, checkpoints, history, early stopping.

The loop around :class:`pyro_vae.infer.svi.SVIStep`, which does the steps. Every reported
number is -ELBO per datapoint, in nats. Checkpoints (:mod:`pyro_vae.infer.checkpoint`) hold
the parameters, optimizer, scheduler, every RNG state and the history, so that a resumed CPU
run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.infer.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pyro_vae.infer.devices import as_tensor, move_owners, place, resolve_device
from pyro_vae.infer.sites import DATA_PLATE, check_data
from pyro_vae.infer.svi import SVIStep, TrainingDivergedError, make_adam

__all__ = ["CHECKPOINT_NAME", "TrainResult", "TrainingDivergedError", "make_adam", "train"]

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainResult:
    """What :func:`train` did: one history record per epoch, and where it left things."""

    history: list[dict]
    epochs_run: int
    stopped_early: bool
    device: torch.device
    param_names: list[str]
    out_dir: Path | None = None

    @property
    def final(self) -> dict:
        """The last history record (empty when no epoch ran)."""
        return self.history[-1] if self.history else {}


@dataclass
class _Progress:
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


def _epoch(svi: SVIStep, x, transform, batch_size, drop_last, device, progress, epoch):
    """One pass over shuffled minibatches.

    Returns the means of -ELBO and of the minimized objective per datapoint (the same number
    unless the objective is a surrogate), and examples/s.
    """
    tic = time.perf_counter()
    n = x.shape[0]
    num_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    order = torch.randperm(n).to(x.device)
    total = total_elbo = 0.0
    bar = tqdm(range(num_batches), desc=f"epoch {epoch}", leave=False, disable=not progress)
    for step in bar:
        batch = transform(x[order[step * batch_size : (step + 1) * batch_size]].to(device))
        svi.set_progress(epoch - 1 + step / num_batches)  # a schedule's t, from (epoch, step)
        try:
            value = svi.step(batch, num_data=n)
        except TrainingDivergedError as err:
            where = f"the loss became {err.value} at epoch {epoch}, batch {step + 1}"
            raise TrainingDivergedError(where, value=err.value) from None
        total += value * batch.shape[0]
        total_elbo += svi.last_neg_elbo * batch.shape[0]
        if step % 20 == 0:
            bar.set_postfix_str(f"loss {value:.2f}", refresh=False)
    seen = num_batches * batch_size if drop_last else n
    return total_elbo / seen, total / seen, seen / (time.perf_counter() - tic)


def _mean_loss(svi: SVIStep, x, transform, batch_size, device) -> float:
    """-ELBO per datapoint over a whole data set, without gradients."""
    n, total = x.shape[0], 0.0
    for start in range(0, n, batch_size):
        batch = transform(x[start : start + batch_size].to(device, non_blocking=True))
        total += svi.evaluate(batch, num_data=n) * batch.shape[0]
    return total / n


def _write_history(out_dir: Path, history: list[dict]) -> None:
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    with open(out_dir / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[-1]), restval="")
        writer.writeheader()
        writer.writerows(history)


def _epoch_line(record: dict, epochs: int) -> str:
    val = record["val_loss"]
    val_text = f"  val -ELBO {val:.3f}" if val is not None else ""
    return (
        f"epoch {record['epoch']:>3}/{epochs}  train -ELBO {record['train_loss']:.3f}{val_text}"
        f" nats/datapoint  {record['seconds']:.1f} s  {record['examples_per_s']:.0f} examples/s"
    )


def _check_arguments(epochs, batch_size, patience) -> None:
    for name, value, least in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be a positive int or None, got {patience!r}")


def _save(out_dir: Path, svi: SVIStep, scheduler, state: _Progress) -> None:
    checkpoint = {
        "epoch": state.epoch,
        **svi.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "history": state.history,
        "best": state.best,
        "bad_epochs": state.bad_epochs,
    }
    save_checkpoint(out_dir / CHECKPOINT_NAME, checkpoint)
    _write_history(out_dir, state.history)


def _restore(path: Path, svi: SVIStep, scheduler) -> _Progress:
    checkpoint = load_checkpoint(path)
    svi.load_state_dict(checkpoint)
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"])
    return _Progress(
        checkpoint["epoch"], checkpoint["history"], checkpoint["best"], checkpoint["bad_epochs"]
    )


def _checkpoint_note(out_dir: Path | None) -> str:
    """Where the last good state is, for a divergence message."""
    if out_dir is None:
        return "no checkpoint is kept (out_dir=None)"
    path = out_dir / CHECKPOINT_NAME
    if not path.exists():
        return f"no checkpoint was written yet in {out_dir}"
    return f"the last good checkpoint {path} is unchanged"


def train(
    model,
    guide,
    data,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    loss="trace",
    val_data=None,
    device: str | torch.device = "auto",
    seed: int | None = None,
    clip_norm: float | None = None,
    lr_schedule: Callable | None = None,
    patience: int | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    data_plate: str = DATA_PLATE,
    on_epoch_end: Callable[[dict], None] | None = None,
    tags: dict | None = None,
) -> TrainResult:
    """Fit ``model``/``guide`` by SVI, minimizing -ELBO per datapoint with Adam.

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention (docs/design.md), called as ``f(x)``. Bound
        methods of an ``nn.Module`` bring their module to ``device``.
    data, val_data : torch.Tensor of shape (N, ...), Dataset or object with ``.x``
        Training and (optional) validation data; an object's ``batch_transform`` (e.g.
        dynamic binarization) is applied to every batch. NaN or inf values are refused.
    epochs : int
        Epochs to reach (counting those of a resumed checkpoint).
    batch_size : int
        Datapoints per step (the last batch of an epoch may be smaller, except for ``"jit"``).
    lr : float
        Adam's learning rate.
    loss : str, pyro.infer.ELBO or callable
        The objective, see :func:`pyro_vae.infer.objectives.make_objective`; e.g.
        ``"iwae"``, :class:`~pyro_vae.infer.iwae.IWAEObjective`,
        :class:`~pyro_vae.infer.kl_control.KLControlledELBO` (KL annealing, free bits). An
        objective with ``set_progress(t)`` gets t, the epochs done (fractional), before every
        step; a resumed run recomputes t from its epoch, so the schedule continues exactly.
    device : str or torch.device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
    seed : int, optional
        Seeds Pyro, torch, NumPy and Python before anything is drawn here. Networks built
        before the call drew their initial weights already: seed before building them too
        (``pyro.set_rng_seed``), as ``pyro-vae train`` does, for a run that repeats bit for bit.
    clip_norm : float, optional
        Global gradient-norm clipping.
    lr_schedule : callable, optional
        ``f(optimizer) -> torch LR scheduler``, stepped once per epoch.
    patience : int, optional
        Stop after this many epochs without a better validation (else training) loss.
    out_dir : str or Path, optional
        Where ``checkpoint.pt`` (every epoch, atomic) and ``history.json``/``.csv`` go.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` when it exists (else start afresh; the command
        line refuses ``--resume`` without a checkpoint).
    progress : bool
        A tqdm bar per epoch and one line per finished epoch.
    data_plate : str
        Name of the data plate.
    on_epoch_end : callable, optional
        Called with each epoch's history record, after the epoch's checkpoint is written.
    tags : dict, optional
        Constant columns added to every history record this call writes.

    Returns
    -------
    TrainResult
        ``history`` has one dict per epoch: ``epoch``, ``train_loss`` and ``val_loss``
        (-ELBO per datapoint, nats; ``val_loss`` None without ``val_data``),
        ``train_objective`` (the mean of the minimized loss: -ELBO itself, or the annealed,
        free-bits or IWAE objective), ``kl_weight`` (the KL annealing weight beta at the
        epoch's last step, else 1), ``seconds``, ``examples_per_s``, ``lr`` and the ``tags``.

    Raises
    ------
    TrainingDivergedError
        When the loss becomes NaN or infinite; the last checkpoint is left unchanged.
    """
    _check_arguments(epochs, batch_size, patience)
    device = resolve_device(device)
    if seed is not None:
        pyro.set_rng_seed(seed)
    x, transform = as_tensor(data)
    x = place(check_data(x, "data"), device)
    val = None
    if val_data is not None:
        val_x, val_transform = as_tensor(val_data)
        val = (place(check_data(val_x, "val_data"), device), val_transform)
    move_owners(device, model, guide)
    batch_size = min(batch_size, x.shape[0])

    svi = SVIStep(model, guide, loss, lr=lr, clip_norm=clip_norm, data_plate=data_plate)
    svi.setup(transform(x[:batch_size].to(device)))
    scheduler = lr_schedule(svi.optimizer) if lr_schedule is not None else None
    out_dir = Path(out_dir) if out_dir is not None else None
    state = _Progress()
    if resume and out_dir is not None and (out_dir / CHECKPOINT_NAME).exists():
        state = _restore(out_dir / CHECKPOINT_NAME, svi, scheduler)

    stopped_early = False
    with pyro.validation_enabled(False):
        for epoch in range(state.epoch + 1, epochs + 1):
            tic = time.perf_counter()
            drop_last = loss == "jit"  # the JIT compiles one batch shape
            try:
                train_loss, train_objective, rate = _epoch(
                    svi, x, transform, batch_size, drop_last, device, progress, epoch
                )
            except TrainingDivergedError as err:
                raise TrainingDivergedError(f"{err}; {_checkpoint_note(out_dir)}") from None
            val_loss = _mean_loss(svi, *val, batch_size, device) if val else None
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "train_objective": train_objective,
                "kl_weight": getattr(svi.objective, "beta", 1.0),
                "seconds": time.perf_counter() - tic,
                "examples_per_s": rate,
                "lr": svi.optimizer.param_groups[0]["lr"],
                **(tags or {}),
            }
            state.epoch = epoch
            state.history.append(record)
            state.record(val_loss if val_loss is not None else train_loss)
            if scheduler is not None:
                scheduler.step()
            if progress:
                tqdm.write(_epoch_line(record, epochs))
            if out_dir is not None:
                _save(out_dir, svi, scheduler, state)
            if on_epoch_end is not None:  # after the save: the epoch is on disk when it runs
                on_epoch_end(record)
            if patience is not None and state.bad_epochs >= patience:
                stopped_early = True
                break

    return TrainResult(
        history=state.history,
        epochs_run=len(state.history),
        stopped_early=stopped_early,
        device=device,
        param_names=list(svi.params),
        out_dir=out_dir,
    )
