"""Data parallelism on torch.distributed: the process group, epoch shards, gradient averaging.

Started as ``torchrun --nproc-per-node P ...`` (one node or several, the way torchrun does it),
every process runs the same program; :func:`init_from_env` joins the process group torchrun
describes in the environment (gloo on CPU, NCCL on CUDA). Then:

- each epoch, every rank takes a disjoint shard of one seeded permutation of the data
  (:func:`epoch_shard`, the semantics of ``torch.utils.data.DistributedSampler``: the
  permutation depends on the seed and the epoch, is padded by wrapping to a multiple of P, and
  rank r takes every P-th index from r), so P local batches of b make one global batch of P b;
- after ``backward`` every gradient is averaged over the ranks (:func:`average_gradients`, one
  all-reduce of all gradients flattened together, as DDP's buckets do), so each rank takes the
  step of the global batch and the parameters stay identical everywhere;
- sums (losses, counts) are added over ranks with :func:`all_sum`, per-datapoint results are
  put back in order with :func:`gather_strided`;
- a rank that stops (an error, ``kill``, a lost machine) makes the others fail in their next
  collective; they raise :class:`PeerLostError`, one line, instead of gloo's "Connection closed
  by peer" traceback;
- every process leaves the group before the interpreter shuts down (:func:`leave`; a gloo
  group also at exit): gloo's worker threads left alive into the interpreter's finalization
  can abort the process (SIGABRT) after its work is done.

Without torchrun (no ``WORLD_SIZE`` above 1 in the environment, no process group) everything
here is the identity on one process, rank 0 of 1.
"""

from __future__ import annotations

import atexit
import math
import os
import re
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = [
    "PeerLostError",
    "Ranks",
    "all_sum",
    "average_gradients",
    "barrier",
    "broadcast_params",
    "current",
    "epoch_shard",
    "gather_strided",
    "init_from_env",
    "join",
    "leave",
]

# a rank that waits longer than this for the others gives up with an error instead of hanging
TIMEOUT = timedelta(minutes=10)

# how gloo (and a timeout) words a lost peer; NCCL raises DistBackendError / DistNetworkError
_PEER_LOST = re.compile(r"by peer|broken pipe|timed? ?out|connection refused", re.IGNORECASE)


class PeerLostError(RuntimeError):
    """Another process of the job stopped while this one waited for it in a collective.

    The message names the collective and the backend's reason in one line; the process that
    stopped first prints its own error.
    """


@contextmanager
def _collective(what: str):
    """Turn the backend's error of a collective that lost a peer into :class:`PeerLostError`."""
    try:
        yield
    except RuntimeError as err:
        text = str(err).strip()
        if not (isinstance(err, dist.DistError) or _PEER_LOST.search(text)):
            raise  # a genuine misuse (shapes, dtypes) keeps its own error
        reason = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else "")
        reason = reason.split(". ")[0].rstrip(".")  # gloo adds "This is typically caused..."
        ranks = current()
        backend = dist.get_backend() if dist.is_initialized() else "torch.distributed"
        raise PeerLostError(
            f"rank {ranks.rank} of {ranks.world_size} lost another process of the job during "
            f"the {what} ({backend}: {reason}): that process stopped, and its own error says "
            "why"
        ) from None


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, histories, figures and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def current() -> Ranks:
    """This process's rank and the world size (rank 0 of 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def init_from_env(device: torch.device) -> Ranks:
    """Join the process group torchrun describes, once; a lone process stays rank 0 of 1.

    Parameters
    ----------
    device : torch.device
        The device this process trains on: gloo for CPU, NCCL for CUDA (each rank then uses
        ``cuda:LOCAL_RANK``; pass that device).

    Returns
    -------
    Ranks
        This process's rank and the world size.

    Raises
    ------
    RuntimeError
        When torchrun's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
        are incomplete or torch.distributed is not available.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing or not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing) or 'torch.distributed'} is "
            "missing: start the processes with torchrun"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(leave)  # a script that never calls leave() still leaves a gloo group
    return current()


def leave(wait: bool = False) -> None:
    """Leave the process group, if this process is in one (nothing otherwise; idempotent).

    The group's threads then stop while the interpreter is whole: left alive into its
    finalization, gloo's can abort a process that has finished its work (SIGABRT).

    Parameters
    ----------
    wait : bool
        Every rank has succeeded: wait at a barrier for all of them, then leave together
        (NCCL's shutdown is a collective call in some versions of NCCL). Without it (after a
        failure, when the others may be gone) only a gloo group is left, without waiting,
        and an error of its teardown is dropped: the failure has been reported already.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        barrier()
        dist.destroy_process_group()
    elif dist.get_backend() == "gloo":
        with suppress(RuntimeError):
            dist.destroy_process_group()


def join(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join torchrun's process group, if any, and pick this rank's device.

    Parameters
    ----------
    device : torch.device
        The device asked for; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``, one
        GPU per process.

    Returns
    -------
    ranks : Ranks
        This process's rank and the world size (rank 0 of 1 without torchrun).
    device : torch.device
        The device this rank uses.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return init_from_env(device), device


def barrier() -> None:
    """Wait until every rank gets here (nothing on one process)."""
    if current().distributed:
        with _collective("barrier"):
            dist.barrier()


def epoch_shard(num_data: int, epoch: int, seed: int, ranks: Ranks) -> torch.Tensor:
    """This rank's indices for one epoch, as ``DistributedSampler`` chooses them.

    Parameters
    ----------
    num_data : int
        N, the size of the data set.
    epoch : int
        The epoch (1, 2, ...): each epoch is reshuffled.
    seed : int
        The run's seed; every rank must pass the same.
    ranks : Ranks
        This process's rank and the world size.

    Returns
    -------
    torch.Tensor of shape (ceil(N / P),), dtype long
        Indices into the data; over all ranks they cover every datapoint, the first
        ``ceil(N / P) * P - N`` of the permutation twice (the padding that keeps every rank's
        shard, so its number of steps, equal).
    """
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(num_data, generator=generator)
    total = math.ceil(num_data / ranks.world_size) * ranks.world_size
    if total > num_data:
        order = torch.cat([order, order[: total - num_data]])
    return order[ranks.rank : total : ranks.world_size]


def average_gradients(params: dict[str, torch.Tensor]) -> None:
    """Replace every gradient by its mean over the ranks: one all-reduce of all of them.

    The signature of ``SVIStep``'s ``grad_hook``. A parameter without a gradient on this rank
    takes part with zeros, so every rank sends the same tensors.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        Leaf tensors, after ``backward``.
    """
    world_size = dist.get_world_size()
    tensors = list(params.values())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in tensors]
    flat = _flatten_dense_tensors(grads)
    with _collective("gradient all-reduce"):
        dist.all_reduce(flat)
    flat /= world_size
    for p, mean in zip(tensors, _unflatten_dense_tensors(flat, grads), strict=True):
        p.grad = mean.view_as(p)


def broadcast_params(params: dict[str, torch.Tensor]) -> None:
    """Copy rank 0's parameter values to every rank (as DDP does when it wraps a model).

    Parameters
    ----------
    params : dict of str to torch.Tensor
        Leaf tensors, in the same order on every rank.
    """
    with torch.no_grad(), _collective("broadcast of the parameters"):
        for value in params.values():
            dist.broadcast(value, src=0)


def all_sum(*values: float, device: torch.device | str = "cpu") -> list[float]:
    """Each value summed over the ranks (itself on one process).

    Parameters
    ----------
    *values : float
        Numbers to add up, e.g. a summed loss and a count.
    device : torch.device or str
        Where the reduction runs (the backend's device: CPU for gloo, CUDA for NCCL).

    Returns
    -------
    list of float
    """
    if not current().distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    with _collective("sum over ranks"):
        dist.all_reduce(t)
    return t.tolist()


def gather_strided(local: torch.Tensor, num_data: int) -> torch.Tensor:
    """Put per-datapoint rows computed on the strided shards ``x[r::P]`` back in order.

    Parameters
    ----------
    local : torch.Tensor of shape (len(range(r, N, P)), ...)
        This rank's rows, for datapoints r, r + P, r + 2P, ...
    num_data : int
        N.

    Returns
    -------
    torch.Tensor of shape (N, ...)
        Every rank's rows interleaved: row n comes from rank n mod P. The same on every rank.
    """
    ranks = current()
    if not ranks.distributed:
        return local
    size = math.ceil(num_data / ranks.world_size)
    padded = local.new_zeros((size, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ranks.world_size)]
    with _collective("gathering of per-datapoint results"):
        dist.all_gather(parts, padded.contiguous())
    out = local.new_empty((num_data, *local.shape[1:]))
    for r, part in enumerate(parts):
        rows = len(range(r, num_data, ranks.world_size))
        out[r :: ranks.world_size] = part[:rows]
    return out
