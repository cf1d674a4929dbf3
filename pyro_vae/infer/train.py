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
from pyro_vae.infer.compiled import CompiledSVIStep, should_compile
from pyro_vae.infer.devices import as_columns, move_owners, place, resolve_device
from pyro_vae.infer.distributed import (
    Ranks,
    all_sum,
    average_gradients,
    broadcast_params,
    epoch_shard,
    join,
)
from pyro_vae.infer.sites import DATA_PLATE, check_data
from pyro_vae.infer.svi import SVIStep, TrainingDivergedError, make_adam

__all__ = ["CHECKPOINT_NAME", "TrainResult", "TrainingDivergedError", "make_adam", "train"]

CHECKPOINT_NAME = "checkpoint.pt"
ONE_PROCESS = Ranks()


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


@dataclass
class _Stream:
    """A data set as the loop serves it: x, the per-datapoint extras, x's batch transform."""

    x: torch.Tensor
    extras: tuple
    transform: Callable

    @classmethod
    def of(cls, data, name: str, device: torch.device) -> _Stream:
        x, extras, transform = as_columns(data, name)
        x = place(check_data(x, name), device)
        extras = tuple(
            place(check_data(e, f"{name}[{i}]"), device) for i, e in enumerate(extras, 1)
        )
        return cls(x, extras, transform)

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, index, device) -> tuple:
        """``(transform(x[index]), *extras[index])`` on ``device``."""
        return (
            self.transform(self.x[index].to(device)),
            *(e[index].to(device) for e in self.extras),
        )

    def labelled_order(self, num_batches: int, batch_size: int) -> torch.Tensor:
        """Indices of ``num_batches`` batches: fresh permutations, one after the other."""
        n = len(self)
        perms = [torch.randperm(n) for _ in range(math.ceil(num_batches * batch_size / n))]
        return torch.cat(perms).to(self.x.device)


def _epoch(
    svi: SVIStep,
    data,
    batch_size,
    drop_last,
    device,
    progress,
    epoch,
    labelled=None,
    ranks: Ranks = ONE_PROCESS,
    seed: int = 0,
):
    """One pass over shuffled minibatches of ``data``; each step also takes a batch of
    ``labelled`` (a ``(_Stream, batch_size)`` pair) when given. Under torchrun this rank's
    shard of the epoch, in local batches of ``batch_size``.

    Returns the means of -ELBO and of the minimized objective per datapoint over all ranks
    (the same number unless the objective is a surrogate), and examples/s.
    """
    tic = time.perf_counter()
    x = data.x
    n = x.shape[0]
    if ranks.distributed:  # this rank's part of one seeded permutation (DistributedSampler)
        order = epoch_shard(n, epoch, seed, ranks).to(x.device)
    else:
        order = torch.randperm(n).to(x.device)
    local = len(order)
    num_batches = local // batch_size if drop_last else math.ceil(local / batch_size)
    if labelled is not None:
        stream_l, batch_l = labelled
        order_l = stream_l.labelled_order(num_batches, batch_l)
    total = total_elbo = 0.0
    bar = tqdm(range(num_batches), desc=f"epoch {epoch}", leave=False, disable=not progress)
    for step in bar:
        batch, *extras = data.batch(order[step * batch_size : (step + 1) * batch_size], device)
        more = {}
        if labelled is not None:
            index_l = order_l[step * batch_l : (step + 1) * batch_l]
            more = dict(labelled=stream_l.batch(index_l, device), num_labelled=len(stream_l))
        svi.set_progress(epoch - 1 + step / num_batches)  # a schedule's t, from (epoch, step)
        try:
            value = svi.step(batch, *extras, num_data=n, **more)
        except TrainingDivergedError as err:
            where = f"the loss became {err.value} at epoch {epoch}, batch {step + 1}"
            raise TrainingDivergedError(where, value=err.value) from None
        total += value * batch.shape[0]
        total_elbo += svi.last_neg_elbo * batch.shape[0]
        if step % 20 == 0:
            bar.set_postfix_str(f"loss {value:.2f}", refresh=False)
    seen = num_batches * batch_size if drop_last else local
    total_elbo, total, seen = all_sum(total_elbo, total, seen, device=_reduce_device(device))
    return total_elbo / seen, total / seen, seen / (time.perf_counter() - tic)


def _reduce_device(device: torch.device) -> torch.device:
    """Where sums over ranks run: the GPU for NCCL, the CPU for gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


def _mean_loss(svi: SVIStep, data: _Stream, batch_size, device, ranks=ONE_PROCESS) -> float:
    """-ELBO per datapoint over a whole data set, without gradients (rows r, r + P, ... on
    rank r of P, summed over the ranks)."""
    n, total = len(data), 0.0
    rows = torch.arange(ranks.rank, n, ranks.world_size, device=data.x.device)
    for index in rows.split(batch_size):
        batch, *extras = data.batch(index, device)
        total += svi.evaluate(batch, *extras, num_data=n) * batch.shape[0]
    return all_sum(total, device=_reduce_device(device))[0] / n


def _wants_compiled(compile, num_steps, device, ranks, loss, labelled) -> bool:
    """Whether to use :class:`CompiledSVIStep`: ``compile=True``, or ``"auto"`` for a run
    long enough to repay the compile time (:func:`should_compile`) whose step the capture
    supports (no gradient all-reduce, schedule or labelled stream, which would only fall back
    with a notice)."""
    if compile not in ("auto", True, False):
        raise ValueError(f'compile must be "auto", True or False, got {compile!r}')
    if compile != "auto":
        return compile
    capturable = not ranks.distributed and labelled is None and not hasattr(loss, "set_progress")
    return capturable and should_compile(num_steps, device)


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed of its own for each rank's noise, a function of (seed, epoch, rank) only, so a
    data-parallel run and its resumption repeat."""
    return ((seed * 1_000_003 + epoch) * 1009 + rank) % 2**32  # numpy takes 32-bit seeds


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
    labelled=None,
    labelled_batch_size: int | None = None,
    labelled_loss=None,
    compile="auto",
) -> TrainResult:
    """Fit ``model``/``guide`` by SVI, minimizing -ELBO per datapoint with Adam.

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention (docs/design.md), called as ``f(x)`` (or
        ``f(x, *extras)``, below). Bound methods of an ``nn.Module`` bring their module to
        ``device``.
    data, val_data : torch.Tensor of shape (N, ...), Dataset, object with ``.x``, or tuple
        Training and (optional) validation data; an object's ``batch_transform`` (e.g.
        dynamic binarization) is applied to every batch. NaN or inf values are refused. A
        tuple ``(x, *extras)`` of one of those and tensors of shape (N, ...) (e.g. labels of
        shape (N,)) serves each batch as ``f(x[idx], *(e[idx] for e in extras))``: a
        conditional pair ``model(x, y)`` trains on ``(x, y)``.
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
    labelled : tuple, optional
        A second, labelled data set ``(x_l, *extras_l)`` (same forms as ``data``) for
        semi-supervised training: every step also takes a batch of it, called as
        ``f(x_l[idx], *extras_l[idx])``, and minimizes the loss of the union of both data
        sets per datapoint, (N * loss(batch) + N_l * labelled_loss(batch_l)) / (N + N_l),
        each stream scaled for its own minibatch (see :meth:`SVIStep.step`). An epoch is one
        pass over ``data``; the labelled batches are drawn from fresh permutations of the
        labelled set, one after the other. For the M2 model, ``data`` holds the unlabelled
        images (y summed out by ``loss="enum"``) and ``labelled`` the images with labels.
    labelled_batch_size : int, optional
        Datapoints of the labelled stream per step (default ``min(batch_size, N_l)``).
    labelled_loss : str, pyro.infer.ELBO or callable, optional
        The objective of the labelled stream (default ``loss``), e.g. an
        :class:`~pyro_vae.infer.objectives.AuxiliaryTerm` with a classification term.

    Data parallelism: started under ``torchrun --nproc-per-node P`` (one node or several),
    every process runs this same call; it joins torchrun's process group (gloo on CPU, NCCL on
    CUDA with one GPU per process), each epoch every rank takes a disjoint shard of one
    permutation seeded by (``seed``, epoch) in local batches of ceil(``batch_size`` / P), the
    gradients are averaged over the ranks after every ``backward`` (one all-reduce), so the
    loss stays -ELBO per datapoint of the whole data set and every rank takes the step of the
    global batch. Rank 0 writes the checkpoint and the history, every rank reads it on
    ``resume`` (a shared folder), with the same or another number of processes. Each rank
    draws its own noise from a seed of (``seed``, epoch, rank): a data-parallel run repeats,
    but is not bit-identical to a run with another number of processes.

    compile : {"auto", True, False}
        Run each step as one compiled graph (:class:`~pyro_vae.infer.compiled.CompiledSVIStep`:
        the Pyro handlers run once per batch shape while capturing; a pair that cannot be
        captured falls back to the eager step with a notice). ``"auto"`` compiles a run of at
        least :data:`~pyro_vae.infer.compiled.AUTO_MIN_STEPS` steps (epochs x batches, so a
        resume with the same ``epochs`` decides the same) on one process, without a schedule
        or a labelled stream. Compiled and eager runs agree to float rounding, not bit for bit.

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
    if labelled_batch_size is not None:
        _check_arguments(0, labelled_batch_size, None)
    ranks, device = join(resolve_device(device))
    if seed is not None:
        pyro.set_rng_seed(seed)
    stream = _Stream.of(data, "data", device)
    val = _Stream.of(val_data, "val_data", device) if val_data is not None else None
    stream_l = _Stream.of(labelled, "labelled", device) if labelled is not None else None
    move_owners(device, model, guide)
    batch_size = min(batch_size, len(stream))
    if ranks.distributed:  # P local batches make one global batch of batch_size
        batch_size = math.ceil(batch_size / ranks.world_size)
    first_l = None
    if stream_l is not None:
        labelled_batch_size = min(labelled_batch_size or batch_size, len(stream_l))
        first_l = stream_l.batch(slice(0, labelled_batch_size), device)

    use_compiled = _wants_compiled(
        compile, epochs * math.ceil(len(stream) / batch_size), device, ranks, loss, stream_l
    )
    svi = (CompiledSVIStep if use_compiled else SVIStep)(
        model,
        guide,
        loss,
        lr=lr,
        clip_norm=clip_norm,
        data_plate=data_plate,
        labelled_loss=labelled_loss,
        grad_hook=average_gradients if ranks.distributed else None,
    )
    svi.setup(*stream.batch(slice(0, batch_size), device), labelled=first_l)
    if ranks.distributed:
        broadcast_params(svi.params)  # every rank starts from rank 0's parameters
    scheduler = lr_schedule(svi.optimizer) if lr_schedule is not None else None
    out_dir = Path(out_dir) if out_dir is not None else None
    state = _Progress()
    if resume and out_dir is not None and (out_dir / CHECKPOINT_NAME).exists():
        state = _restore(out_dir / CHECKPOINT_NAME, svi, scheduler)
    seed = seed if seed is not None else 0
    if ranks.distributed:
        pyro.set_rng_seed(_rank_seed(seed, state.epoch, ranks.rank))
    progress = progress and ranks.is_main

    stopped_early = False
    with pyro.validation_enabled(False):
        for epoch in range(state.epoch + 1, epochs + 1):
            tic = time.perf_counter()
            drop_last = loss == "jit"  # the JIT compiles one batch shape
            try:
                both = (stream_l, labelled_batch_size) if stream_l is not None else None
                train_loss, train_objective, rate = _epoch(
                    svi, stream, batch_size, drop_last, device, progress, epoch, both, ranks, seed
                )
            except TrainingDivergedError as err:
                raise TrainingDivergedError(f"{err}; {_checkpoint_note(out_dir)}") from None
            val_loss = _mean_loss(svi, val, batch_size, device, ranks) if val else None
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
            if out_dir is not None and ranks.is_main:  # one writer; every rank holds the same
                _save(out_dir, svi, scheduler, state)
            if on_epoch_end is not None and ranks.is_main:  # after the save: it is on disk
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
