"""Refuse, before allocating, chains that cannot fit in the device's memory.

AIS and BDMC hold S chains for each of the datapoints annealed at once. However small the chunk
of datapoints (one at least), each chain carries its position, momentum, proposal and the two
gradients of the log-densities (:data:`LATENT_COPIES` copies of its D latent numbers), and the
model's network keeps at least the likelihood's parameters for x and their gradient
(:data:`DATA_COPIES` copies of x's size) for the backward pass. :func:`check_chains_fit` compares
that lower bound with what the device has free (``MemAvailable`` of ``/proc/meminfo`` on CPU,
else physical memory by ``os.sysconf``; ``torch.cuda.mem_get_info`` on CUDA) and refuses a
setting that cannot fit in one line, instead of leaving the process to the out-of-memory
killer. Being a lower bound it never refuses a setting that fits; one just above it can still
run out (hidden layers are not counted). :func:`check_fits` does the same for any count, e.g.
the N x L log weights that importance sampling keeps for the IWAE bounds.
"""

from __future__ import annotations

import os

import torch

from pyro_vae.infer.pair.potential import LatentSpace

__all__ = [
    "DATA_COPIES",
    "LATENT_COPIES",
    "available_bytes",
    "check_chains_fit",
    "check_fits",
    "latent_size",
]

LATENT_COPIES = 8  # u, momentum, proposal, two gradients, and the leapfrog's temporaries
DATA_COPIES = 2  # the likelihood's parameters and their gradient


def available_bytes(device) -> int | None:
    """Bytes free for new tensors on ``device``; None where it cannot be told (MPS, XLA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def latent_size(pair) -> int:
    """D, the latent numbers per datapoint of a bound pair, from one guide draw that leaves the
    random stream as it was (the estimates stay those of the same seed)."""
    device = pair.x.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return LatentSpace.draw(pair, 1)[0].dim


def check_chains_fit(
    what: str, num_chains: int, num_points: int, latent_size: int, data_size: int, x
) -> None:
    """Raise ValueError, in one line with the estimate, if the chains cannot fit.

    Parameters
    ----------
    what : str
        The estimator, for the message (``"AIS"``).
    num_chains : int
        Chains per datapoint, pilots included.
    num_points : int
        Datapoints annealed at once.
    latent_size, data_size : int
        D, latent numbers per datapoint, and the numbers of one datapoint x_n.
    x : torch.Tensor
        The data: its dtype and device.
    """
    per_chain = LATENT_COPIES * latent_size + DATA_COPIES * data_size
    need = num_chains * num_points * per_chain * x.element_size()
    estimate = (
        f"{num_chains} chains x {num_points} points x ({LATENT_COPIES} x {latent_size} latent + "
        f"{DATA_COPIES} x {data_size} data numbers) x {x.element_size()} bytes"
    )
    check_fits(what, need, estimate, x.device, "use fewer chains (--ais-chains)")


def check_fits(what: str, need: int, estimate: str, device, fix: str) -> None:
    """Raise ValueError in one line if ``need`` bytes exceed what ``device`` has free.

    Parameters
    ----------
    what : str
        The estimator, for the message.
    need : int
        Bytes, a lower bound of what it allocates.
    estimate : str
        How ``need`` was counted, e.g. ``"2 points x 5000 samples x 4 bytes"``.
    device : str or torch.device
        Where it allocates.
    fix : str
        What the user can do, e.g. ``"use fewer chains (--ais-chains)"``.
    """
    free = available_bytes(device)
    if free is not None and need > free:
        raise ValueError(
            f"{what} needs at least {need / 2**30:.1f} GiB ({estimate}) but {device} has "
            f"{free / 2**30:.1f} GiB free: {fix}"
        )
