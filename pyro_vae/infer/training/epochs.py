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

__all__ = ["ONE_PROCESS", "Batching", "DataStream", "mean_loss", "rank_seed", "run_epoch"]

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
    ranks: Ranks = ONE_PROCESS
    seed: int = 0
    progress: bool = True


def run_epoch(
    svi: SVIStep, data: DataStream, labelled: DataStream | None, batching: Batching, epoch: int
) -> tuple[float, float, float]:
    """One pass of SVI steps over shuffled minibatches of ``data``.

    Each step also takes a batch of ``labelled`` when given. Under torchrun this is the rank's
    shard of the epoch, in local batches.

    Returns
    -------
    tuple of float
        The means of -ELBO and of the minimized objective per datapoint over all ranks (the
        same number unless the objective is a surrogate), and examples/s.
    """
    batch_size, batch_l, device = batching.batch_size, batching.labelled_batch_size, batching.device
    drop_last, ranks = batching.drop_last, batching.ranks
    tic = time.perf_counter()
    x = data.x
    n = x.shape[0]
    if ranks.distributed:  # this rank's part of one seeded permutation (DistributedSampler)
        order = epoch_shard(n, epoch, batching.seed, ranks).to(x.device)
    else:
        order = torch.randperm(n).to(x.device)
    local = len(order)
    num_batches = local // batch_size if drop_last else math.ceil(local / batch_size)
    if labelled is not None:
        order_l = labelled.labelled_order(num_batches, batch_l)
    total = total_elbo = 0.0
    bar = tqdm(
        range(num_batches), desc=f"epoch {epoch}", leave=False, disable=not batching.progress
    )
    for step in bar:
        batch, *extras = data.batch(order[step * batch_size : (step + 1) * batch_size], device)
        more = {}
        if labelled is not None:
            index_l = order_l[step * batch_l : (step + 1) * batch_l]
            more = dict(labelled=labelled.batch(index_l, device), num_labelled=len(labelled))
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
