"""train(model, guide, data): epochs of SVI with validation, checkpoints, history, early stopping.

The loop around :class:`~pyro_vae.infer.training.svi.SVIStep`, which does the steps, in the
shape of NumPyro's ``SVI``: set-up (data placed, objective built, the compile policy resolved
once, the step traced on a first batch, a checkpoint restored) is apart from the epochs. Its
settings are one :class:`~pyro_vae.infer.training.options.TrainOptions`; a semi-supervised
second stream is a :class:`~pyro_vae.infer.training.options.LabelledStream`; saving and resuming
is a :class:`~pyro_vae.infer.training.run_state.Checkpointer`. Every reported number is -ELBO
per datapoint, in nats.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.infer.compile.policy import (
    AUTO_MIN_EVALUATIONS,
    CompileDecision,
    compile_advice,
    compile_notice,
    resolve,
    resolve_training,
    step_blocker,
)
from pyro_vae.infer.compile.warm import recorded_costs, remember_costs, step_signature
from pyro_vae.infer.objectives.registry import make_objective
from pyro_vae.infer.runtime.devices import forked_rng, move_owners, resolve_device
from pyro_vae.infer.runtime.distributed import Ranks, average_gradients, broadcast_params, join
from pyro_vae.infer.training.compiled_step import CompiledSVIStep
from pyro_vae.infer.training.epochs import Batching, DataStream, mean_loss, rank_seed, run_epoch
from pyro_vae.infer.training.options import LabelledStream, TrainOptions
from pyro_vae.infer.training.run_state import Checkpointer, RunState
from pyro_vae.infer.training.svi import SVIStep, TrainingDivergedError

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What :func:`train` did: one history record per epoch, where it left things, and the
    path its step took (``compile_decision``: compiled or eager, and why)."""

    history: list[dict]
    epochs_run: int
    stopped_early: bool
    device: torch.device
    param_names: list[str]
    out_dir: Path | None = None
    compile_decision: CompileDecision | None = None

    @property
    def final(self) -> dict:
        """The last history record (empty when no epoch ran)."""
        return self.history[-1] if self.history else {}


def train(
    model,
    guide,
    data,
    *,
    val_data=None,
    labelled: LabelledStream | tuple | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[dict], None] | None = None,
    on_start: Callable[[CompileDecision], None] | None = None,
    options: TrainOptions | None = None,
    **settings,
) -> TrainResult:
    """Fit ``model``/``guide`` by SVI, minimizing -ELBO per datapoint with Adam.

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention (docs/design.md), called as ``f(x)`` (or
        ``f(x, *extras)``, below). Bound methods of an ``nn.Module`` bring their module to
        the device.
    data, val_data : torch.Tensor of shape (N, ...), Dataset, object with ``.x``, or tuple
        Training and (optional) validation data; an object's ``batch_transform`` (e.g.
        dynamic binarization) is applied to every batch. NaN or inf values are refused. A
        tuple ``(x, *extras)`` of one of those and tensors of shape (N, ...) (e.g. labels of
        shape (N,)) serves each batch as ``f(x[idx], *(e[idx] for e in extras))``: a
        conditional pair ``model(x, y)`` trains on ``(x, y)``.
    labelled : LabelledStream or tuple, optional
        A second, labelled data set for semi-supervised training (a tuple ``(x_l, *extras_l)``
        is ``LabelledStream(tuple)``). For the M2 model, ``data`` holds the unlabelled images
        (y summed out by ``loss="enum"``) and ``labelled`` the images with labels.
    out_dir : str or Path, optional
        Where ``checkpoint.pt`` (every epoch, atomic) and ``history.json``/``.csv`` go.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` when it exists (else start afresh; the command
        line refuses ``--resume`` without a checkpoint).
    on_epoch_end : callable, optional
        Called with each epoch's history record as soon as the epoch's checkpoint is written
        (before the history files).
    on_start : callable, optional
        Called once the step is set up with the path it takes (a :class:`~pyro_vae.infer.
        compile.policy.CompileDecision`), decided from the run alone (:func:`~pyro_vae.infer.
        compile.policy.resolve_training`): the same arguments take the same path everywhere.
    options : TrainOptions, optional
        The loop's settings (epochs, batch size, learning rate, loss, device, seed, compile,
        ...: see :class:`~pyro_vae.infer.training.options.TrainOptions`).
    **settings
        Fields of :class:`~pyro_vae.infer.training.options.TrainOptions` given one by one, e.g.
        ``epochs=5, lr=1e-3``; they replace those of ``options``.

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
    TypeError
        For a keyword that is not a field of ``TrainOptions``.
    ValueError
        For invalid settings or data.
    """
    options = TrainOptions.build(options, settings)
    if options.patience is not None and val_data is None:
        warnings.warn(
            f"patience={options.patience} without val_data stops on the training loss; pass "
            "val_data to stop when held-out data stop improving",
            UserWarning,
            stacklevel=2,
        )
    labelled = LabelledStream.of(labelled)
    ranks, device = join(resolve_device(options.device))
    if options.seed is not None:
        pyro.set_rng_seed(options.seed)
    stream = DataStream.of(data, "data", device)
    val = DataStream.of(val_data, "val_data", device) if val_data is not None else None
    stream_l = DataStream.of(labelled.data, "labelled", device) if labelled else None
    move_owners(device, model, guide)
    batching = _batching(options, ranks, device, len(stream), labelled, stream_l)
    svi, timer = _make_step(model, guide, options, batching, stream, stream_l, labelled, on_start)
    if val is not None and isinstance(svi, CompiledSVIStep):
        svi.compile_evaluation = _compile_validation(options, len(val), batching).compile
    # an objective traced for one batch shape (Pyro's JIT) cannot take the short last batch
    batching = dataclasses.replace(batching, drop_last=svi.objective.fixed_batch_shape)
    if ranks.distributed:
        broadcast_params(svi.params)  # every rank starts from rank 0's parameters
    lr_schedule = options.lr_schedule
    scheduler = lr_schedule(svi.optimizer) if lr_schedule is not None else None
    checkpointer = Checkpointer(out_dir, resume)
    state = checkpointer.restore(svi, scheduler)
    if ranks.distributed:
        pyro.set_rng_seed(rank_seed(batching.seed, state.epoch, ranks.rank))
    stopped_early = False
    with pyro.validation_enabled(False):
        first_epoch = state.epoch + 1
        for epoch in range(first_epoch, options.epochs + 1):
            tic = time.perf_counter()
            try:
                train_loss, objective, rate = timer.run(
                    run_epoch, svi, stream, stream_l, batching, epoch
                )
            except TrainingDivergedError as err:
                raise TrainingDivergedError(f"{err}; {checkpointer.note()}") from None
            if epoch == first_epoch:
                _report_compile(svi, batching.progress, validation=val is not None)
            val_loss = mean_loss(svi, val, batching) if val else None
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "train_objective": objective,
                "kl_weight": svi.objective.kl_weight,
                "seconds": time.perf_counter() - tic,
                "examples_per_s": rate,
                "lr": svi.optimizer.param_groups[0]["lr"],
                **(options.tags or {}),
            }
            _end_epoch(record, state, scheduler, options, batching)
            if ranks.is_main:  # one writer; every rank holds the same
                checkpointer.save(svi, scheduler, state)
                # as soon as the checkpoint is on disk, before the history files: what a caller
                # records (the epoch a Ctrl-C or SIGTERM names) never lags the checkpoint
                if on_epoch_end is not None:
                    on_epoch_end(record)
                checkpointer.save_history(state)
            if options.patience is not None and state.bad_epochs >= options.patience:
                stopped_early = True
                break
    return TrainResult(
        history=state.history,
        epochs_run=len(state.history),
        stopped_early=stopped_early,
        device=device,
        param_names=list(svi.params),
        out_dir=checkpointer.out_dir,
        compile_decision=timer.decision,
    )


def _batching(options, ranks: Ranks, device, num_data, labelled, stream_l) -> Batching:
    """Per-process batch sizes: P local batches of ceil(B / P) make one global batch of B."""
    batch_size = min(options.batch_size, num_data)
    if ranks.distributed:
        batch_size = math.ceil(batch_size / ranks.world_size)
    batch_l, passes = None, 1
    if stream_l is not None:
        batch_l = min(labelled.batch_size or batch_size, len(stream_l))
        local_data = math.ceil(num_data / ranks.world_size)  # this rank's shard
        passes = labelled.resolve_passes(
            math.ceil(local_data / batch_size), math.ceil(len(stream_l) / batch_l)
        )
    return Batching(
        batch_size,
        batch_l,
        drop_last=False,  # known once the objective is built
        device=device,
        labelled_schedule=labelled.schedule if labelled is not None else "joint",
        labelled_passes=passes,
        ranks=ranks,
        seed=options.seed if options.seed is not None else 0,
        progress=options.progress and ranks.is_main,
    )


def _make_step(model, guide, options, batching, stream, stream_l, labelled, on_start):
    """Build the objectives on a first batch, resolve ``compile`` once, set the step up.

    Returns the step and its :class:`_StepTimer`, which holds the decision and measures the
    step's costs under the signature of this pair, objective and batch
    (:func:`~pyro_vae.infer.compile.warm.step_signature`): what the next run's advice reads.
    """
    device = batching.device
    first_l = stream_l.batch(slice(0, batching.labelled_batch_size), device) if stream_l else None
    first = stream.batch(slice(0, batching.batch_size), device)
    plate = dict(data_plate=options.data_plate)
    with forked_rng(first[0]):  # building an objective traces the pair: no draw may change
        objective = make_objective(options.loss, model, guide, *first, **plate)
        labelled_objective = None
        if first_l is not None:
            loss_l = labelled.loss if labelled.loss is not None else options.loss
            labelled_objective = make_objective(loss_l, model, guide, *first_l, **plate)
    grad_hook = average_gradients if batching.ranks.distributed else None
    steps_per_epoch = _steps_per_epoch(batching, len(stream), stream_l, labelled_objective)
    joint = batching.labelled_schedule == "joint"
    blocker = step_blocker(objective, labelled_objective=labelled_objective, joint=joint)
    steps = options.epochs * steps_per_epoch
    decision = resolve_training(options.compile, steps=steps, blocker=blocker)
    svi = (CompiledSVIStep if decision else SVIStep)(
        model,
        guide,
        objective,
        lr=options.lr,
        clip_norm=options.clip_norm,
        data_plate=options.data_plate,
        labelled_loss=labelled_objective,
        grad_hook=grad_hook,
    )
    svi.setup(*first, labelled=first_l)
    compiling = isinstance(svi, CompiledSVIStep) and svi.fallback_reason is None
    if decision and not compiling:  # the capture is refused at set-up: the run is eager
        blocker = svi.fallback_reason
        decision = CompileDecision(False, f"{decision.reason}; fell back: {blocker}")
    if on_start is not None:
        on_start(decision)
    world_size = batching.ranks.world_size
    signature = step_signature("training step", (model, guide), objective, first[0], world_size)
    costs = recorded_costs(signature)
    advice = compile_advice(decision, steps=steps, costs=costs, blocker=blocker)
    if advice is not None and batching.progress:
        tqdm.write(advice)
    if compiling and batching.progress:  # the first step compiles: how long it took before
        tqdm.write(compile_notice("training step", costs.compile_seconds))
    return svi, _StepTimer(signature, steps_per_epoch, batching.ranks.is_main, decision)


@dataclass
class _StepTimer:
    """The training step's costs on this machine, measured every epoch and remembered under
    its signature for the next run's advice
    (:func:`~pyro_vae.infer.compile.policy.compile_advice`); and the path the step takes.

    The seconds per step are the median over this run's epochs that did not compile (one epoch
    on a shared machine varies by 15%, measured). What compiling cost is what the epoch that
    compiled took beyond such an epoch: the capture and compile, and the first, slower calls of
    the new graphs (the compile's own seconds until another epoch has run).
    """

    signature: str
    steps_per_epoch: int
    write: bool  # one writer: the main rank
    decision: CompileDecision  # the path the step takes, and why
    per_step: list = field(default_factory=list)  # epochs that did not compile
    compiling_epoch: tuple | None = None  # (its seconds, its compile's seconds)

    def run(self, epoch: Callable, svi: SVIStep, *args):
        """``epoch(svi, *args)``, timed: its seconds per step, and what compiling cost,
        remembered for the compiled or the eager step (one that fell back is neither)."""
        compiled = isinstance(svi, CompiledSVIStep)
        compiled_before = svi.compile_seconds if compiled else 0.0
        tic = time.perf_counter()
        out = epoch(svi, *args)
        seconds = time.perf_counter() - tic
        if not self.write or (compiled and svi.num_compiles and svi.fallback_reason):
            return out
        if compiled and svi.compile_seconds > compiled_before:
            self.compiling_epoch = (seconds, svi.compile_seconds - compiled_before)
        else:
            self.per_step.append(seconds / self.steps_per_epoch)
        if not compiled or not svi.num_compiles:
            remember_costs(self.signature, eager_step_seconds=statistics.median(self.per_step))
        elif not self.per_step:  # the compiling epoch alone: its compile, its other steps
            epoch_seconds, compile_seconds = self.compiling_epoch
            per_step = (epoch_seconds - compile_seconds) / self.steps_per_epoch
            remember_costs(
                self.signature, compile_seconds=compile_seconds, compiled_step_seconds=per_step
            )
        else:
            per_step = statistics.median(self.per_step)
            costs = dict(compiled_step_seconds=per_step)
            if self.compiling_epoch is not None:  # never less than the compile itself took
                epoch_seconds, compile_seconds = self.compiling_epoch
                beyond = epoch_seconds - per_step * self.steps_per_epoch
                costs["compile_seconds"] = max(beyond, compile_seconds)
            remember_costs(self.signature, **costs)
        return out


def _compile_validation(options, num_val: int, batching: Batching):
    """Whether a compiled run's validation batches repay their own compile
    (:data:`~pyro_vae.infer.compile.policy.AUTO_MIN_EVALUATIONS`); never with compile=False."""
    full_batches = num_val // batching.batch_size  # a short last batch runs eagerly
    request = "auto" if options.compile is True else options.compile
    return resolve(request, work=options.epochs * full_batches, min_work=AUTO_MIN_EVALUATIONS)


def _report_compile(svi: SVIStep, progress: bool, validation: bool) -> None:
    """After the first epoch: how long compiling took; then, before validation compiles
    (right after this), that it does."""
    if not isinstance(svi, CompiledSVIStep) or not progress:
        return
    if svi.num_compiles:
        tqdm.write(f"compiled the training step in {svi.compile_seconds:.1f} s")
    if validation and svi.compile_evaluation and svi.fallback_reason is None:
        tqdm.write(compile_notice("validation pass"))


def _steps_per_epoch(batching: Batching, num_data: int, stream_l, labelled_objective) -> int:
    """The optimizer steps of one epoch: one per batch, and in the "alternate" schedule one per
    part of the labelled objective on each labelled batch of each pass."""
    steps = math.ceil(num_data / batching.batch_size)
    if stream_l is not None and batching.labelled_schedule == "alternate":
        batches_l = math.ceil(len(stream_l) / batching.labelled_batch_size)
        parts = len(labelled_objective.step_parts())
        steps += batching.labelled_passes * batches_l * parts
    return steps


def _end_epoch(record: dict, state: RunState, scheduler, options, batching) -> None:
    """Book an epoch: history, early stopping, the LR schedule, the epoch line."""
    state.epoch = record["epoch"]
    state.history.append(record)
    state.record(record["val_loss"] if record["val_loss"] is not None else record["train_loss"])
    if scheduler is not None:
        scheduler.step()
    if batching.progress:
        tqdm.write(_epoch_line(record, options.epochs))


def _epoch_line(record: dict, epochs: int) -> str:
    val = record["val_loss"]
    val_text = f"  val -ELBO {val:.3f}" if val is not None else ""
    return (
        f"epoch {record['epoch']:>3}/{epochs}  train -ELBO {record['train_loss']:.3f}{val_text}"
        f" nats/datapoint  {record['seconds']:.1f} s  {record['examples_per_s']:.0f} examples/s"
    )
