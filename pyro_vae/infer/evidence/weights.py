"""Weights drawn in chunks: chunk sizes under a memory budget, running statistics across chunks.

The estimators draw L particles per datapoint in chunks of S (:func:`chunks`), so only
(S, N, D) numbers live at once whatever L; :func:`default_chunk_size` is ``budget // (N * D)``
with D the largest per-datapoint size of any sample site, the budget in elements
:data:`ELEMENT_BUDGET` on accelerators and :data:`CPU_ELEMENT_BUDGET` on CPU, where small chunks
that the allocator can recycle run faster (:func:`prime_cpu_allocator`; measured in
``experiments/bench_evidence.py``). :class:`WeightStream` merges the chunks' weights into the
per-datapoint estimate, its standard error, ESS and PSIS k-hat (:class:`EvidenceResult`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyro_vae.infer.evidence.psis import pareto_khat

__all__ = [
    "CPU_ELEMENT_BUDGET",
    "ELEMENT_BUDGET",
    "EvidenceResult",
    "WeightStream",
    "check_positive",
    "chunks",
    "default_chunk_size",
    "prime_cpu_allocator",
]

ELEMENT_BUDGET = 2**26  # elements of the largest (chunk, N, D) tensor on CUDA & co.
CPU_ELEMENT_BUDGET = 3 * 2**20  # ... and on CPU; see the module docstring
_ALLOCATOR_PRIMED = False  # see prime_cpu_allocator


@dataclass(frozen=True)
class EvidenceResult:
    """Per-datapoint importance-sampling estimate of the evidence (nats).

    Attributes
    ----------
    log_px : torch.Tensor of shape (N,)
        log (1/L) sum_l w_l, nats per datapoint.
    stderr : torch.Tensor of shape (N,)
        Its Monte Carlo standard error by the delta method, sqrt(var(w) / L) / mean(w)
        (nan when L = 1).
    ess : torch.Tensor of shape (N,)
        Effective sample size (sum w)^2 / sum w^2, between 1 and L.
    khat : torch.Tensor of shape (N,)
        PSIS Pareto k-hat of the weights (Vehtari et al. 2024; see
        :mod:`pyro_vae.infer.evidence.psis`): > ``KHAT_OK`` (0.7) means unreliable, -inf
        constant weights, +inf too few distinct tail weights to fit.
    num_samples : int
        L, importance samples per datapoint.
    log_weights : torch.Tensor of shape (N, L) or None
        All log weights, only if requested.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    num_samples: int
    log_weights: torch.Tensor | None = None


def check_positive(**values) -> None:
    """Refuse, naming it, a value that is neither None nor a positive int (sizes, counts)."""
    for label, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{label} must be a positive int, got {value!r}")
        if value is not None and value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")


def chunks(total: int, chunk_size: int):
    """Sizes of consecutive chunks of ``chunk_size`` (the last one smaller) adding to ``total``."""
    for start in range(0, total, chunk_size):
        yield min(chunk_size, total - start)


def prime_cpu_allocator() -> None:
    """Allocate and free one 31 MiB block, once per process.

    glibc's malloc answers the free by raising its mmap threshold to 32 MiB and its trim
    threshold to 64 MiB (its documented dynamic heuristic, mallopt(3)), the state any
    process reaches after freeing one large tensor. Chunk temporaries of <= 12 MiB are then
    recycled from the heap instead of being handed back to the OS after each chunk and
    page-faulted in again, which made CPU runs ~1.7x slower. A no-op where the thresholds
    are already raised or fixed (MALLOC_* variables) and outside glibc.
    """
    global _ALLOCATOR_PRIMED
    if not _ALLOCATOR_PRIMED:
        torch.empty(31 * 2**20, dtype=torch.uint8)  # allocated and freed at once, untouched
        _ALLOCATOR_PRIMED = True


def default_chunk_size(num_data: int, site_size: int, device) -> int:
    """Particles per vectorized pass: budget // (N * D), at least 1 (see module docstring).

    Parameters
    ----------
    num_data : int
        N, datapoints per batch.
    site_size : int
        D, the largest per-datapoint number of elements of any sample site.
    device : str or torch.device
        :data:`CPU_ELEMENT_BUDGET` applies on CPU, :data:`ELEMENT_BUDGET` elsewhere.

    Returns
    -------
    int
        The chunk size, at least 1.
    """
    on_cpu = torch.device(device).type == "cpu"
    budget = CPU_ELEMENT_BUDGET if on_cpu else ELEMENT_BUDGET
    return max(1, budget // (num_data * site_size))


class WeightStream:
    """Running max-shifted mean and centered second moment of w, plus the top-k log w.

    Each chunk's weights are scaled by exp(-max log w), so the mean is a running
    logsumexp; chunks are merged with Chan et al.'s (1979) parallel variance update. The
    centered sum M2 = sum (w - mean)^2 is exactly 0 for constant weights, where the
    formula L sum w^2 / (sum w)^2 - 1 from two logsumexps loses all digits to cancellation.
    For k-hat only the M+1 largest log weights are kept: chunks are buffered and cut back
    to them by ``torch.topk`` whenever more than 4 (M+1) rows are waiting.
    """

    def __init__(self, tail, keep_all):
        self.count, self.ref, self.mean, self.m2 = 0, None, None, None
        self.tail, self.kept = tail, [] if keep_all else None
        self.candidates, self.num_candidates = [], 0

    def update(self, log_w):  # (S_c, N)
        ref = log_w.max(0).values
        u = torch.exp(log_w - torch.where(torch.isfinite(ref), ref, 0))
        self._merge(log_w.shape[0], ref, u.mean(0), (u - u.mean(0)).pow(2).sum(0))
        self.candidates.append(log_w)
        self.num_candidates += log_w.shape[0]
        if self.num_candidates > 4 * (self.tail + 1):
            self._cut_candidates()
        if self.kept is not None:
            self.kept.append(log_w)

    def _merge(self, s, ref, mean, m2):
        """Chan et al.'s update of (count, mean, M2), both sides rescaled to a common max."""
        if self.count:
            new_ref = torch.maximum(self.ref, ref)
            safe = torch.where(torch.isfinite(new_ref), new_ref, 0)
            fa, fb = torch.exp(self.ref - safe), torch.exp(ref - safe)
            mean_a, m2_a, mean_b, m2_b = self.mean * fa, self.m2 * fa**2, mean * fb, m2 * fb**2
            n = self.count + s
            delta = mean_b - mean_a
            mean = mean_a + delta * (s / n)
            m2 = m2_a + m2_b + delta.pow(2) * (self.count * s / n)
            ref = new_ref
        self.count, self.ref, self.mean, self.m2 = self.count + s, ref, mean, m2

    def _cut_candidates(self):
        rows = torch.cat(self.candidates)
        top = rows.topk(min(self.tail + 1, rows.shape[0]), dim=0).values
        self.candidates, self.num_candidates = [top], top.shape[0]

    def result(self) -> EvidenceResult:
        L, mean = self.count, self.mean
        log_px = self.ref + torch.log(mean)
        rel_var = self.m2 / (L * mean.pow(2))  # var_pop(w) / mean(w)^2 = L / ESS - 1
        stderr = (rel_var / (L - 1)).sqrt() if L > 1 else torch.full_like(mean, math.nan)
        log_weights = None if self.kept is None else torch.cat(self.kept).T.contiguous()
        self._cut_candidates()
        return EvidenceResult(
            log_px=log_px,
            stderr=stderr,
            ess=L / (1 + rel_var),
            khat=pareto_khat(self.candidates[0].T, num_samples=L),
            num_samples=L,
            log_weights=log_weights,
        )
