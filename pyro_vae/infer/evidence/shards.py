"""Per-datapoint estimators under torchrun: each rank scores its strided share, rows gathered.

With a torch.distributed process group of P ranks, rank r scores the datapoints r, r + P, ...
(:func:`local_rows`) and the per-datapoint results are put back in order on every rank
(:func:`gather_rows`, by :func:`~pyro_vae.infer.runtime.distributed.gather_strided`). Without a
process group both are the identity. Importance sampling over a data set
(:func:`~pyro_vae.infer.evidence.dataset.dataset_nll`), AIS and BDMC share their points so.
"""

from __future__ import annotations

import torch

from pyro_vae.infer.runtime.distributed import current, gather_strided

__all__ = ["gather_rows", "local_rows", "rows_of"]


def rows_of(args: tuple, rows) -> tuple:
    """The per-datapoint tensor arguments cut to ``rows`` (a slice or index); others as they are."""
    return tuple(a[rows] if torch.is_tensor(a) and a.dim() else a for a in args)


def local_rows(x: torch.Tensor, args: tuple = ()) -> tuple[torch.Tensor, tuple]:
    """This rank's datapoints ``x[r::P]`` and the matching rows of the tensor arguments.

    Parameters
    ----------
    x : torch.Tensor of shape (N, ...)
        Every datapoint (the same on every rank).
    args : tuple
        Per-datapoint tensors of shape (N, ...) (labels) and other arguments.

    Returns
    -------
    (torch.Tensor, tuple)
        The rows of this rank; with N < P some ranks hold none.
    """
    ranks = current()
    if not ranks.distributed:
        return x, args
    share = slice(ranks.rank, None, ranks.world_size)
    return x[share], rows_of(args, share)


def gather_rows(fields: dict, num_data: int) -> dict:
    """Every tensor of ``fields`` with this rank's rows, gathered over the ranks in order.

    Parameters
    ----------
    fields : dict of str to torch.Tensor
        Per-datapoint results of :func:`local_rows`' share, shape (n_r, ...).
    num_data : int
        N.

    Returns
    -------
    dict
        The same keys, each of shape (N, ...), the same on every rank.
    """
    return {k: gather_strided(v, num_data) for k, v in fields.items()}
