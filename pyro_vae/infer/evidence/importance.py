"""Evidence log p(x) per datapoint by importance sampling, for any model/guide pair.

With z_l ~ q(z | x) and weights w_l = p(x, z_l) / q(z_l | x) (Kingma & Welling 2014,
Appendix E; Burda et al. 2015, eq. 8),

    log p(x) ~ log (1/L) sum_l w_l

is a consistent estimate of log p(x) for each datapoint x. Unlike ``pyro.infer.Importance``
(a Python loop over samples, one number for the batch) this module draws all L particles at
once under an outer ``pyro.plate`` placed left of every model plate, keeps the data plate's
dimension and so returns one estimate per datapoint, shape (N,).

Memory: particles are drawn in chunks of ``chunk_size`` and combined with a running
logsumexp, so only (chunk_size, N, D) numbers live at once, whatever L (L = 5000 for
784-dimensional images is no problem). The default chunk size,
:func:`~pyro_vae.infer.evidence.weights.default_chunk_size`, is ``budget // (N * D)`` (at least
1), with D the largest per-datapoint size of any sample site (784 for MNIST images) and the
budget in elements ``ELEMENT_BUDGET`` = 2**26 (256 MiB per float32 tensor) on accelerators,
``CPU_ELEMENT_BUDGET`` = 3 * 2**20 (12 MiB) on CPU, where small chunks that the allocator can
recycle run faster (see :func:`~pyro_vae.infer.evidence.weights.prime_cpu_allocator`; measured
in ``experiments/bench_evidence.py``). Everything runs on the device of ``x`` (and of the
model's parameters).

Site convention (:mod:`pyro_vae.infer.pair.sites`, docs/design.md): every sample site lies
inside ``pyro.plate(data_plate, N)``. A latent or observed site outside it makes a per-datapoint
evidence ill-defined and raises :class:`GlobalLatentError`. The particles and their log weights
come from :mod:`pyro_vae.infer.pair.particles`: each site's log-prob (scaled and masked like
Pyro's) has batch shape (S, ..., N, ...), and every plate dimension other than particles S and
data N is summed. A discrete guide site marked for enumeration (summed out by
``TraceEnum_ELBO`` in training) is *sampled* here, as part of the proposal: for the M2 model,
y ~ q(y|x) and z ~ q(z|x, y), with no change to the user's code.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from pyro_vae.infer.compile.policy import AUTO_MIN_WEIGHTS, resolve
from pyro_vae.infer.evidence.compiled import CompiledLogWeights
from pyro_vae.infer.evidence.psis import psis_tail_size
from pyro_vae.infer.evidence.weights import (
    EvidenceResult,
    WeightStream,
    check_positive,
    chunks,
    default_chunk_size,
    prime_cpu_allocator,
)
from pyro_vae.infer.pair.particles import PairBatch, bind_pair, draw_log_weights
from pyro_vae.infer.pair.sites import DATA_PLATE, check_data

__all__ = [
    "EvidenceResult",
    "elbo_per_datapoint",
    "iwae_bound",
    "iwae_from_log_weights",
    "log_evidence",
]


def _bind(model, guide, x, args, kwargs, data_plate, chunk_size) -> tuple[PairBatch, int]:
    """Bind the pair to ``x`` (one inspecting trace) and size the chunks."""
    pair = bind_pair(model, guide, x, *args, data_plate=data_plate, **kwargs)
    if x.device.type == "cpu":
        prime_cpu_allocator()
    if chunk_size is None:
        chunk_size = default_chunk_size(pair.layout.num_data, pair.layout.site_size, x.device)
    return pair, chunk_size


def _drawer(pair: PairBatch, compile: bool):
    """``draw(S) -> (S, N)`` log weights of S fresh particles, compiled or eager (the same
    draws for one RNG state: :class:`~pyro_vae.infer.evidence.compiled.CompiledLogWeights`)."""
    return CompiledLogWeights(pair) if compile else partial(draw_log_weights, pair)


# ------------------------------------------------------------------------------------------
# public estimators
# ------------------------------------------------------------------------------------------
def log_evidence(
    model,
    guide,
    x,
    *args,
    num_samples=1000,
    chunk_size=None,
    data_plate=DATA_PLATE,
    return_log_weights=False,
    compile=False,
    **kwargs,
) -> EvidenceResult:
    """Importance-sampled log p(x_n) per datapoint with error bars and PSIS k-hat.

    log p(x) ~ log (1/L) sum_l p(x, z_l) / q(z_l | x), z_l ~ q(z | x) (Burda et al. 2015,
    eq. 8, with k = L); k-hat as in Vehtari et al. (2024).

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention, called as ``f(x, *args, **kwargs)``; the guide
        is the proposal q(z | x).
    x : torch.Tensor of shape (N, ...)
        Data; N is the size of the data plate. NaN or inf values are refused.
    *args, **kwargs
        Passed on to ``model`` and ``guide``.
    num_samples : int
        L, importance samples per datapoint.
    chunk_size : int, optional
        Particles drawn per vectorized pass (default:
        :func:`~pyro_vae.infer.evidence.weights.default_chunk_size`).
    data_plate : str
        Name of the data plate.
    return_log_weights : bool
        Also return all log weights, of shape (N, L).
    compile : {"auto", True, False}
        Compute each chunk's log weights with a graph captured once and compiled
        (:class:`pyro_vae.infer.evidence.compiled.CompiledLogWeights`; the same draws as eager
        for one RNG state); ``"auto"`` compiles from N * L >=
        :data:`~pyro_vae.infer.compile.policy.AUTO_MIN_WEIGHTS` on (the one policy,
        :func:`~pyro_vae.infer.compile.policy.resolve`).

    Returns
    -------
    EvidenceResult
        Tensors of shape (N,) on the device of ``x``, in nats.

    Raises
    ------
    GlobalLatentError
        If a sample site lies outside the data plate.
    ValueError
        For bad arguments or data (see :func:`pyro_vae.infer.pair.sites.check_data_plate`).
    """
    check_data(x)
    check_positive(num_samples=num_samples, chunk_size=chunk_size)
    compile = resolve(compile, work=x.shape[0] * num_samples, min_work=AUTO_MIN_WEIGHTS).compile
    with torch.no_grad():
        pair, chunk_size = _bind(model, guide, x, args, kwargs, data_plate, chunk_size)
        draw = _drawer(pair, compile)
        stream = WeightStream(psis_tail_size(num_samples), return_log_weights)
        for s in chunks(num_samples, chunk_size):
            stream.update(draw(s))
        return stream.result()


def iwae_bound(
    model,
    guide,
    x,
    k,
    *args,
    num_estimates=1,
    chunk_size=None,
    data_plate=DATA_PLATE,
    compile=False,
    **kwargs,
) -> torch.Tensor:
    """The importance-weighted bound L_k = E[log (1/k) sum_i w_i] per datapoint.

    Burda, Grosse & Salakhutdinov 2015, eq. (8): L_1 is the ELBO, L_k <= L_{k+1} <= log p(x).
    Averages ``num_estimates`` independent k-sample estimates; when k fits in a chunk,
    several estimates are drawn in one vectorized pass.

    Parameters
    ----------
    model, guide, x, data_plate, chunk_size, compile, *args, **kwargs
        As for :func:`log_evidence`; ``x`` is a torch.Tensor of shape (N, ...).
    k : int
        Importance samples per bound.
    num_estimates : int
        Independent k-sample estimates averaged.

    Returns
    -------
    torch.Tensor of shape (N,)
        Nats per datapoint.

    Raises
    ------
    GlobalLatentError
        If a sample site lies outside the data plate.
    ValueError
        When ``k``, ``num_estimates`` or ``chunk_size`` is not a positive int, or for bad data.
    """
    for label, value in (("k", k), ("num_estimates", num_estimates)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    check_data(x)
    check_positive(chunk_size=chunk_size)
    num_weights = x.shape[0] * k * num_estimates
    compile = resolve(compile, work=num_weights, min_work=AUTO_MIN_WEIGHTS).compile
    with torch.no_grad():
        pair, chunk_size = _bind(model, guide, x, args, kwargs, data_plate, chunk_size)
        if k > chunk_size:  # each estimate itself needs a running logsumexp over chunks
            estimates = [
                log_evidence(
                    model,
                    guide,
                    x,
                    *args,
                    num_samples=k,
                    chunk_size=chunk_size,
                    data_plate=data_plate,
                    compile=compile,
                    **kwargs,
                ).log_px
                for _ in range(num_estimates)
            ]
            return torch.stack(estimates).mean(0)
        draw = _drawer(pair, compile)
        total = 0.0
        for e in chunks(num_estimates, chunk_size // k):
            log_w = draw(e * k)
            total = total + (log_w.reshape(e, k, -1).logsumexp(1) - math.log(k)).sum(0)
        return total / num_estimates


def iwae_from_log_weights(log_weights: torch.Tensor, k: int) -> torch.Tensor:
    """IWAE bound L_k per datapoint from log weights already drawn: (N, L) -> (N,).

    The L weights of each row are cut into floor(L / k) disjoint groups of k; the mean over
    groups of log (1/k) sum_group w is an unbiased estimate of L_k (Burda et al. 2015, eq. 8).
    With the weights of :func:`log_evidence` (``return_log_weights=True``) one draw serves the
    evidence, the ELBO (k = 1) and every L_k, instead of drawing afresh for each.

    Parameters
    ----------
    log_weights : torch.Tensor of shape (N, L)
        Independent log importance weights log p(x, z_l) - log q(z_l | x) per datapoint.
    k : int
        Samples per bound, 1 <= k <= L.

    Returns
    -------
    torch.Tensor of shape (N,)
        Nats per datapoint.

    Raises
    ------
    ValueError
        When ``log_weights`` is not 2-dim or ``k`` is not an int in [1, L].
    """
    if log_weights.dim() != 2:
        raise ValueError(f"log_weights must have shape (N, L), got {tuple(log_weights.shape)}")
    num_samples = log_weights.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_samples:
        raise ValueError(f"k must be an int in [1, L={num_samples}], got {k!r}")
    groups = num_samples // k
    grouped = log_weights[:, : groups * k].reshape(log_weights.shape[0], groups, k)
    return (grouped.logsumexp(-1) - math.log(k)).mean(-1)


def elbo_per_datapoint(
    model,
    guide,
    x,
    *args,
    num_samples=1,
    chunk_size=None,
    data_plate=DATA_PLATE,
    compile=False,
    **kwargs,
) -> torch.Tensor:
    """Monte Carlo ELBO per datapoint, mean_l log w_l = E_q[log p(x, z) - log q(z | x)].

    Kingma & Welling 2014, eq. (3); equals :func:`iwae_bound` with k = 1. No gradients.

    Parameters
    ----------
    model, guide, x, data_plate, chunk_size, compile, *args, **kwargs
        As for :func:`log_evidence`; ``x`` is a torch.Tensor of shape (N, ...).
    num_samples : int
        Samples averaged per datapoint.

    Returns
    -------
    torch.Tensor of shape (N,)
        Nats per datapoint.

    Raises
    ------
    GlobalLatentError
        If a sample site lies outside the data plate.
    ValueError
        When ``num_samples`` or ``chunk_size`` is not a positive int, or for bad data.
    """
    check_data(x)
    check_positive(num_samples=num_samples, chunk_size=chunk_size)
    compile = resolve(compile, work=x.shape[0] * num_samples, min_work=AUTO_MIN_WEIGHTS).compile
    with torch.no_grad():
        pair, chunk_size = _bind(model, guide, x, args, kwargs, data_plate, chunk_size)
        draw = _drawer(pair, compile)
        total = 0.0
        for s in chunks(num_samples, chunk_size):
            log_w = draw(s)
            total = total + log_w.sum(0)
        return total / num_samples
