"""Negative log-likelihood of a whole data set: importance sampling batch by batch.

:func:`dataset_nll` runs :func:`~pyro_vae.infer.evidence.importance.log_evidence` over batches of
a data set (tensors, :class:`pyro_vae.data.ImageData`, or tuples with per-datapoint extras such
as labels), with a progress bar; under torchrun each rank scores its strided share and the rows
are gathered back in order (:mod:`~pyro_vae.infer.evidence.shards`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pyro_vae.infer.compile.policy import AUTO_MIN_WEIGHTS, compile_notice, resolve
from pyro_vae.infer.evidence.importance import log_evidence
from pyro_vae.infer.evidence.memory import check_fits
from pyro_vae.infer.evidence.shards import local_rows
from pyro_vae.infer.evidence.weights import check_positive
from pyro_vae.infer.pair.sites import DATA_PLATE, check_data
from pyro_vae.infer.runtime.devices import as_columns
from pyro_vae.infer.runtime.distributed import current, gather_strided

__all__ = ["NLLResult", "dataset_nll"]


@dataclass(frozen=True)
class NLLResult:
    """Dataset negative log-likelihood, in nats per datapoint.

    Attributes
    ----------
    nll : float
        Mean of -log p(x_n) over the N datapoints, nats.
    stderr : float
        Its standard error over datapoints, std(log p(x_n)) / sqrt(N) (nan when N = 1).
    log_px : torch.Tensor of shape (N,)
        Per-datapoint estimates of log p(x_n), nats.
    mc_stderr : torch.Tensor of shape (N,)
        Their Monte Carlo standard errors.
    khat : torch.Tensor of shape (N,)
        Their PSIS Pareto k-hat.
    num_samples : int
        L, importance samples per datapoint.
    log_weights : torch.Tensor of shape (N, L) or None
        All log weights, only if requested.
    """

    nll: float
    stderr: float
    log_px: torch.Tensor
    mc_stderr: torch.Tensor
    khat: torch.Tensor
    num_samples: int
    log_weights: torch.Tensor | None = None

    @property
    def nll_mc_stderr(self) -> float:
        """Monte Carlo standard error of ``nll`` itself: sqrt(sum_n se_n^2) / N.

        Returns
        -------
        float
            Nats per datapoint.
        """
        return self.mc_stderr.pow(2).sum().sqrt().item() / self.log_px.numel()


def dataset_nll(
    model,
    guide,
    data,
    *,
    num_samples=1000,
    batch_size=100,
    chunk_size=None,
    progress=True,
    data_plate=DATA_PLATE,
    return_log_weights=False,
    compile=False,
) -> NLLResult:
    """Negative log-likelihood -log p(x) in nats per datapoint over a whole data set.

    Parameters
    ----------
    model, guide : callable
        As for :func:`log_evidence`.
    data : torch.Tensor of shape (N, ...), object with a tensor ``.x``, or tuple
        E.g. :class:`pyro_vae.data.ImageData`; its ``batch_transform`` (dynamic
        binarization), if any, is applied to each batch. A tuple ``(x, *extras)`` of such
        data and tensors of shape (N, ...) passes each batch's rows of the extras on to the
        pair, ``f(x[idx], *(e[idx] for e in extras))``: ``(x, y)`` scores a conditional pair's
        log p(x|y).
    num_samples, chunk_size, data_plate, return_log_weights
        As for :func:`log_evidence`.
    batch_size : int
        Datapoints per call of :func:`log_evidence`.
    progress : bool
        Show a tqdm bar over batches.
    compile : {"auto", True, False}
        As for :func:`log_evidence`; ``"auto"`` decides once for the whole data set (N * L),
        and the compiled graphs are reused across batches.

    Returns
    -------
    NLLResult
        With per-datapoint tensors of shape (N,) (and ``log_weights`` of shape (N, L)).
        Under torchrun (a torch.distributed process group of P ranks) each rank scores the
        datapoints r, r + P, ... and every rank returns the whole result, gathered in order.

    Raises
    ------
    GlobalLatentError
        If a sample site lies outside the data plate.
    ValueError
        When ``batch_size`` is not a positive int, for bad arguments or data, as for
        :func:`log_evidence`, or when the kept log weights cannot fit in memory.
    """
    x, extras, transform = as_columns(data, "data")
    x = check_data(x, "data")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    compile = resolve(compile, work=x.shape[0] * num_samples, min_work=AUTO_MIN_WEIGHTS).compile
    if compile and progress:
        tqdm.write(compile_notice("log weights"))  # the first batch compiles them
    num_data, ranks = x.shape[0], current()
    if num_data < ranks.world_size:
        raise ValueError(f"{num_data} datapoints cannot be shared by {ranks.world_size} ranks")
    x, extras = local_rows(x, tuple(extras))  # under torchrun: x[r::P]; rows gathered back
    check_positive(num_samples=num_samples, chunk_size=chunk_size)  # as log_evidence would
    if return_log_weights:  # kept whole: N x L numbers (every rank gathers all N rows)
        need = num_data * num_samples * x.element_size()
        estimate = f"{num_data} points x {num_samples} samples x {x.element_size()} bytes"
        fix = "use fewer samples (--num-samples) or points (--num-points)"
        check_fits("keeping the log weights", need, estimate, x.device, fix)
    parts = []
    starts = range(0, x.shape[0], batch_size)
    for start in tqdm(starts, desc="log p(x)", unit="batch", disable=not progress):
        rows = slice(start, start + batch_size)
        result = log_evidence(
            model,
            guide,
            transform(x[rows]),
            *(e[rows] for e in extras),
            num_samples=num_samples,
            chunk_size=chunk_size,
            data_plate=data_plate,
            return_log_weights=return_log_weights,
            compile=compile,
        )
        parts.append(result)

    def gathered(field):
        return gather_strided(torch.cat([getattr(r, field) for r in parts]), num_data)

    log_px = gathered("log_px")
    n = log_px.numel()
    return NLLResult(
        nll=-log_px.mean().item(),
        stderr=(log_px.std().item() / math.sqrt(n)) if n > 1 else math.nan,
        log_px=log_px,
        mc_stderr=gathered("stderr"),
        khat=gathered("khat"),
        num_samples=num_samples,
        log_weights=gathered("log_weights") if return_log_weights else None,
    )
