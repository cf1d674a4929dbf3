"""One epoch of the loop: a data set served in shuffled batches, and a pass over it.

:class:`DataStream` holds a data set as the loop serves it (the data, its per-datapoint extra
columns, its batch transform, on the device); :func:`run_epoch` takes one pass of SVI steps
over it (this rank's shard under torchrun), :func:`mean_loss` one pass without gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pyro_vae.infer.pair.sites import check_data
from pyro_vae.infer.runtime.devices import as_columns, place
from pyro_vae.infer.runtime.distributed import Ranks, all_sum, epoch_shard
from pyro_vae.infer.training.svi import SVIStep, TrainingDivergedError

__all__ = [
    "ONE_PROCESS",
    "Batching",
    "DataStream",
    "labelled_positions",
    "mean_loss",
    "rank_seed",
    "run_epoch",
]

ONE_PROCESS = Ranks()


@dataclass
class DataStream:
    """A data set as the loop serves it: x, the per-datapoint extras, x's batch transform."""

    x: torch.Tensor
    extras: tuple
    transform: Callable

    @classmethod
    def of(cls, data, name: str, device: torch.device) -> DataStream:
        """Check and place ``data`` (see ``train``'s ``data``), naming it ``name`` in errors."""
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


@dataclass(frozen=True)
class Batching:
    """How the loop cuts every epoch into steps, and where the steps run.

    Attributes
    ----------
    batch_size : int
        This process's datapoints per step (under torchrun, ceil(B / P) of the global B).
    labelled_batch_size : int or None
        Datapoints of the labelled stream per step (None without one).
    labelled_schedule : {"alternate", "joint"}
        How the labelled stream enters the steps (see
        :class:`~pyro_vae.infer.training.options.LabelledStream`).
    labelled_passes : int
        Passes over the labelled stream per epoch ("alternate").
    drop_last : bool
        Drop the short last batch (objectives that work on one batch shape only).
    device : torch.device
        Where the batches go.
    ranks : Ranks
        The torchrun processes (one process outside torchrun).
    seed : int
        Seeds the epoch shards of a data-parallel run.
    progress : bool
        Show a tqdm bar per epoch.
    """

    batch_size: int
    labelled_batch_size: int | None
    drop_last: bool
    device: torch.device
    labelled_schedule: str = "joint"
    labelled_passes: int = 1
    ranks: Ranks = ONE_PROCESS
    seed: int = 0
    progress: bool = True


def run_epoch(
    svi: SVIStep, data: DataStream, labelled: DataStream | None, batching: Batching, epoch: int
) -> tuple[float, float, float]:
    """One pass of SVI steps over shuffled minibatches of ``data`` (and of ``labelled``).

    With ``labelled`` and the "joint" schedule each step also takes a labelled batch; with
    "alternate" the labelled batches are steps of their own, spread evenly among the others
    (:func:`labelled_positions`). Under torchrun this is the rank's shard of the epoch, in
    local batches.

    Returns
    -------
    tuple of float
        The means of -ELBO and of the minimized objective per datapoint over all ranks (the
        same number unless the objective is a surrogate), and examples/s.
    """
    batch_size, device, drop_last = batching.batch_size, batching.device, batching.drop_last
    tic = time.perf_counter()
    n = len(data)
    if batching.ranks.distributed:  # this rank's part of one seeded permutation
        order = epoch_shard(n, epoch, batching.seed, batching.ranks).to(data.x.device)
    else:
        order = torch.randperm(n).to(data.x.device)
    local = len(order)
    num_batches = local // batch_size if drop_last else math.ceil(local / batch_size)
    steps = [("data", order[i * batch_size : (i + 1) * batch_size]) for i in range(num_batches)]
    if labelled is not None:
        steps = _with_labelled(steps, labelled, batching)
    total_elbo = total = seen = 0.0
    bar = tqdm(steps, desc=f"epoch {epoch}", leave=False, disable=not batching.progress)
    for step, (stream, index) in enumerate(bar):
        svi.set_progress(epoch - 1 + step / len(steps))  # a schedule's t, from (epoch, step)
        try:
            if stream != "labelled":
                more = {}
                if stream == "joint":  # a labelled batch inside the step
                    index, index_l = index
                    more = dict(
                        labelled=labelled.batch(index_l, device), num_labelled=len(labelled)
                    )
                batch, *extras = data.batch(index, device)
                value = svi.step(batch, *extras, num_data=n, **more)
            else:
                batch, *extras = labelled.batch(index, device)
                share = batch.shape[0] / batch_size
                value = svi.step_labelled(batch, *extras, num_labelled=len(labelled), share=share)
        except TrainingDivergedError as err:
            where = f"the loss became {err.value} at epoch {epoch}, batch {step + 1}"
            raise TrainingDivergedError(where, value=err.value) from None
        total_elbo += svi.last_neg_elbo * len(batch)
        total += value * len(batch)
        seen += len(batch)
        if step % 20 == 0:
            bar.set_postfix_str(f"loss {value:.2f}", refresh=False)
    total_elbo, total, seen = all_sum(total_elbo, total, seen, device=_reduce_device(device))
    return total_elbo / seen, total / seen, seen / (time.perf_counter() - tic)


def _with_labelled(steps: list, labelled: DataStream, batching: Batching) -> list:
    """The epoch's steps with the labelled stream's batches, as its schedule says."""
    batch_l = batching.labelled_batch_size
    if batching.labelled_schedule == "joint":  # a labelled batch inside every step
        order_l = labelled.labelled_order(len(steps), batch_l)
        return [
            ("joint", (index, order_l[i * batch_l : (i + 1) * batch_l]))
            for i, (_, index) in enumerate(steps)
        ]
    batches_l = [
        ("labelled", index)
        for _ in range(batching.labelled_passes)
        for index in torch.randperm(len(labelled)).to(labelled.x.device).split(batch_l)
    ]
    at = set(labelled_positions(len(steps), len(batches_l)))
    source_u, source_l = iter(steps), iter(batches_l)
    return [
        next(source_l) if position in at else next(source_u)
        for position in range(len(steps) + len(batches_l))
    ]


def labelled_positions(num_unlabelled: int, num_labelled: int) -> list[int]:
    """Where the labelled batches go among ``num_unlabelled + num_labelled`` steps: spread
    evenly, the k-th at floor((k + 1/2) T / num_labelled), T the number of steps."""
    total = num_unlabelled + num_labelled
    return [math.floor((k + 0.5) * total / num_labelled) for k in range(num_labelled)]


def _reduce_device(device: torch.device) -> torch.device:
    """Where sums over ranks run: the GPU for NCCL, the CPU for gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


def mean_loss(svi: SVIStep, data: DataStream, batching: Batching) -> float:
    """-ELBO per datapoint over a whole data set, without gradients (rows r, r + P, ... on
    rank r of P, summed over the ranks)."""
    ranks, device, batch_size = batching.ranks, batching.device, batching.batch_size
    n, total = len(data), 0.0
    rows = torch.arange(ranks.rank, n, ranks.world_size, device=data.x.device)
    for index in rows.split(batch_size):
        batch, *extras = data.batch(index, device)
        total += svi.evaluate(batch, *extras, num_data=n) * batch.shape[0]
    return all_sum(total, device=_reduce_device(device))[0] / n


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed of its own for each rank's noise, a function of (seed, epoch, rank) only, so a
    data-parallel run and its resumption repeat."""
    return ((seed * 1_000_003 + epoch) * 1009 + rank) % 2**32  # numpy takes 32-bit seeds
