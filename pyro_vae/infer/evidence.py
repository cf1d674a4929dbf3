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
784-dimensional images is no problem). The default chunk size, :func:`default_chunk_size`,
is ``budget // (N * D)`` (at least 1), with D the largest per-datapoint size of any sample
site (784 for MNIST images) and the budget in elements ``ELEMENT_BUDGET`` = 2**26 (256 MiB
per float32 tensor) on accelerators, ``CPU_ELEMENT_BUDGET`` = 3 * 2**20 (12 MiB) on CPU,
where small chunks that the allocator can recycle run faster (see
:func:`_prime_cpu_allocator`; measured in ``experiments/bench_evidence.py``). Everything
runs on the device of ``x`` (and of the model's parameters).

Site convention (:mod:`pyro_vae.infer.sites`, docs/design.md): every sample site lies inside
``pyro.plate(data_plate, N)``. A latent or observed site outside it makes a per-datapoint
evidence ill-defined and raises :class:`GlobalLatentError`. Each site's log-prob (scaled and
masked like Pyro's) has batch shape (S, ..., N, ...); every plate dimension other than
particles S and data N is summed.
A model latent that the guide does not sample is drawn from the prior, so its p/q ratio is
one and it does not enter the weight. A discrete guide site marked for enumeration (summed out
by ``TraceEnum_ELBO`` in training) is *sampled* here, as part of the proposal: for the M2
model, y ~ q(y|x) and z ~ q(z|x, y) (the guide runs through
:func:`pyro_vae.infer.sites.without_enumeration`; no change to the user's code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from tqdm.auto import tqdm

from pyro_vae.infer.compiled import CompiledLogWeights
from pyro_vae.infer.devices import as_columns
from pyro_vae.infer.distributed import current, gather_strided
from pyro_vae.infer.psis import pareto_khat, psis_tail_size
from pyro_vae.infer.sites import (
    DATA_PLATE,
    GlobalLatentError,
    check_data,
    check_data_plate,
    data_frame,
    plate_nesting,
    sample_sites,
    without_enumeration,
)

__all__ = [
    "AUTO_MIN_WEIGHTS",
    "CPU_ELEMENT_BUDGET",
    "ELEMENT_BUDGET",
    "EvidenceResult",
    "GlobalLatentError",
    "NLLResult",
    "PairLayout",
    "dataset_nll",
    "default_chunk_size",
    "draw_log_weights",
    "elbo_per_datapoint",
    "inspect_pair",
    "iwae_bound",
    "iwae_from_log_weights",
    "log_evidence",
    "trace_log_prob",
]

# compile="auto" compiles the log weights of an estimate of at least this many weights N * L:
# about twice the measured break-even of ~850,000 (docs/compiled.md)
AUTO_MIN_WEIGHTS = 2_000_000
ELEMENT_BUDGET = 2**26  # elements of the largest (chunk, N, D) tensor on CUDA & co.
CPU_ELEMENT_BUDGET = 3 * 2**20  # ... and on CPU; see the module docstring
_PARTICLE_PLATE = "_evidence_particles"
_ALLOCATOR_PRIMED = False  # see _prime_cpu_allocator


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
        :mod:`pyro_vae.infer.psis`): > 0.7 means unreliable, -inf constant weights, +inf too
        few distinct tail weights to fit.
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


@dataclass(frozen=True)
class PairLayout:
    """Where particles and data live in every site's batch shape (found by one trace).

    Attributes
    ----------
    particle_dim : int
        Negative batch dimension of the particle plate, left of all model and guide plates.
    num_data : int
        N, the data plate's size.
    data_dim : int
        Negative batch dimension of the data plate.
    site_size : int
        Largest per-datapoint number of elements of any sample site (D in the chunk budget).
    """

    particle_dim: int
    num_data: int
    data_dim: int
    site_size: int


# ------------------------------------------------------------------------------------------
# tracing: the layout once, then (S, N) log weights per chunk of particles
# ------------------------------------------------------------------------------------------
def inspect_pair(model, guide, x, *args, data_plate=DATA_PLATE, **kwargs) -> PairLayout:
    """Trace the guide and the replayed model once (no particles); check the site convention.

    Parameters
    ----------
    model, guide : callable
        The pair, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        A batch of data.
    *args, **kwargs
        Passed on to ``model`` and ``guide``.
    data_plate : str
        Name of the data plate.

    Returns
    -------
    PairLayout
        Where particles and datapoints sit in every site's batch shape.

    Raises
    ------
    GlobalLatentError, ValueError
        See :func:`pyro_vae.infer.sites.check_data_plate`.
    """
    guide_trace = poutine.trace(without_enumeration(guide)).get_trace(x, *args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        x, *args, **kwargs
    )
    sites = [("guide", n, s) for n, s in sample_sites(guide_trace)]
    sites += [("model", n, s) for n, s in sample_sites(model_trace)]
    plate = check_data_plate(sites, data_plate, num_data=x.shape[0])
    nesting = plate_nesting(s for _, _, s in sites)
    site_size = max(max(1, s["value"].numel() // plate.size) for _, _, s in sites)
    return PairLayout(-(nesting + 1), plate.size, plate.dim, site_size)


def _per_datapoint(log_prob, site, layout, data_plate, name, num_particles):
    """Reduce a site's log-prob of batch shape (S, ..., N, ...) to (S or 1, N or 1)."""
    n = -layout.particle_dim
    log_prob = torch.as_tensor(log_prob)
    if log_prob.dim() > n:
        raise ValueError(f"site {name!r} has batch dims left of all plates: {log_prob.shape}")
    log_prob = log_prob.reshape((1,) * (n - log_prob.dim()) + log_prob.shape)
    data_dim = n + data_frame(site, data_plate).dim
    other = [d for d in range(1, n) if d != data_dim]
    if other:
        log_prob = log_prob.sum(other, keepdim=True)
    S, N = log_prob.shape[0], log_prob.shape[data_dim]
    if S not in (1, num_particles) or N not in (1, layout.num_data):
        raise ValueError(
            f"site {name!r}: log-prob batch shape {tuple(log_prob.shape)} does not match "
            f"{num_particles} particles at dim {layout.particle_dim} and {layout.num_data} "
            f"datapoints at the data plate's dim; does the model broadcast over an outer plate?"
        )
    return log_prob.reshape(S, N)


def _site_log_prob(site):
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_prob, site["scale"], site["mask"])


def trace_log_prob(trace, layout, num_particles, data_plate=DATA_PLATE, guide_trace=None):
    """Sum of a trace's scaled, masked sample-site log-densities per datapoint.

    With ``guide_trace`` (scoring a model replayed at the guide's draws), model latents the
    guide did not sample are left out: they were drawn from the prior, so their p/q ratio is
    one.

    Parameters
    ----------
    trace : pyro.poutine.Trace
        A trace drawn under a particle plate of S particles at ``layout.particle_dim``.
    layout : PairLayout
        As returned by :func:`inspect_pair`.
    num_particles : int
        S.
    data_plate : str
        Name of the data plate.
    guide_trace : pyro.poutine.Trace, optional
        The guide trace that ``trace``, a model trace, was replayed at.

    Returns
    -------
    torch.Tensor of shape (S, N)
        Log-density per particle and datapoint, nats; a 0-dim zero for a trace without
        sample sites.

    Raises
    ------
    ValueError
        When a site's log-prob batch shape does not fit S particles and N datapoints.
    """
    terms = [
        _per_datapoint(_site_log_prob(site), site, layout, data_plate, name, num_particles)
        for name, site in sample_sites(trace)
        if guide_trace is None or site["is_observed"] or name in guide_trace.nodes
    ]
    if not terms:  # e.g. the empty guide of a model without latents
        return torch.zeros(())  # a 0-dim zero broadcasts on any device
    return sum(terms[1:], terms[0]).expand(num_particles, layout.num_data)


def draw_log_weights(model, guide, x, args, kwargs, layout, data_plate, num_particles):
    """One vectorized draw of S log weights log p(x, z_s) - log q(z_s | x) per datapoint.

    Differentiable when the guide is reparameterized (the IWAE objective trains through it).

    Parameters
    ----------
    model, guide : callable
        The pair, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        A batch of data.
    args : tuple
        Positional arguments after ``x``.
    kwargs : dict
        Keyword arguments of ``model`` and ``guide``.
    layout : PairLayout
        As returned by :func:`inspect_pair` for a batch of this size.
    data_plate : str
        Name of the data plate.
    num_particles : int
        S.

    Returns
    -------
    torch.Tensor of shape (S, N)
        Log weights, nats.
    """
    with poutine.block(), pyro.plate(_PARTICLE_PLATE, num_particles, dim=layout.particle_dim):
        guide_trace = poutine.trace(without_enumeration(guide)).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *args, **kwargs
        )
    log_p = trace_log_prob(model_trace, layout, num_particles, data_plate, guide_trace)
    return log_p - trace_log_prob(guide_trace, layout, num_particles, data_plate)


def _check_compile(compile) -> None:
    if compile not in ("auto", True, False):
        raise ValueError(f'compile must be "auto", True or False, got {compile!r}')


def _log_weight_fn(compile, model, guide, x, args, kwargs, layout, data_plate, num_weights):
    """``draw(S) -> (S, N)`` log weights of S fresh particles, compiled or eager.

    ``compile="auto"`` compiles when ``num_weights`` (N * L of the whole estimate) reaches
    :data:`AUTO_MIN_WEIGHTS`. The compiled draws equal the eager ones for one RNG state
    (:class:`pyro_vae.infer.compiled.CompiledLogWeights`).
    """
    if compile == "auto":
        compile = num_weights >= AUTO_MIN_WEIGHTS
    if compile:
        return CompiledLogWeights(model, guide, x, args, kwargs, layout, data_plate)
    return lambda s: draw_log_weights(model, guide, x, args, kwargs, layout, data_plate, s)


def _chunks(total, chunk_size):
    for start in range(0, total, chunk_size):
        yield min(chunk_size, total - start)


def _setup(model, guide, x, args, kwargs, data_plate, num_samples, chunk_size):
    check_data(x)
    for label, value in (("num_samples", num_samples), ("chunk_size", chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{label} must be a positive int, got {value!r}")
        if value is not None and value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    layout = inspect_pair(model, guide, x, *args, data_plate=data_plate, **kwargs)
    if x.device.type == "cpu":
        _prime_cpu_allocator()
    if chunk_size is None:
        chunk_size = default_chunk_size(layout.num_data, layout.site_size, x.device)
    return layout, chunk_size


def _prime_cpu_allocator():
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


# ------------------------------------------------------------------------------------------
# running statistics of the weights across chunks
# ------------------------------------------------------------------------------------------
class _WeightStream:
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
        Particles drawn per vectorized pass (default: :func:`default_chunk_size`).
    data_plate : str
        Name of the data plate.
    return_log_weights : bool
        Also return all log weights, of shape (N, L).
    compile : {"auto", True, False}
        Compute each chunk's log weights with a graph captured once and compiled
        (:class:`pyro_vae.infer.compiled.CompiledLogWeights`; the same draws as eager for one
        RNG state); ``"auto"`` compiles from N * L >= :data:`AUTO_MIN_WEIGHTS` on.

    Returns
    -------
    EvidenceResult
        Tensors of shape (N,) on the device of ``x``, in nats.

    Raises
    ------
    GlobalLatentError
        If a sample site lies outside the data plate.
    ValueError
        For bad arguments or data (see :func:`pyro_vae.infer.sites.check_data_plate`).
    """
    _check_compile(compile)
    with torch.no_grad():
        layout, chunk_size = _setup(
            model, guide, x, args, kwargs, data_plate, num_samples, chunk_size
        )
        draw = _log_weight_fn(
            compile, model, guide, x, args, kwargs, layout, data_plate, x.shape[0] * num_samples
        )
        stream = _WeightStream(psis_tail_size(num_samples), return_log_weights)
        for s in _chunks(num_samples, chunk_size):
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
    _check_compile(compile)
    with torch.no_grad():
        layout, chunk_size = _setup(model, guide, x, args, kwargs, data_plate, k, chunk_size)
        num_weights = x.shape[0] * k * num_estimates
        compile = num_weights >= AUTO_MIN_WEIGHTS if compile == "auto" else compile
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
        draw = _log_weight_fn(compile, model, guide, x, args, kwargs, layout, data_plate, 0)
        total = 0.0
        for e in _chunks(num_estimates, chunk_size // k):
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
    _check_compile(compile)
    with torch.no_grad():
        layout, chunk_size = _setup(
            model, guide, x, args, kwargs, data_plate, num_samples, chunk_size
        )
        draw = _log_weight_fn(
            compile, model, guide, x, args, kwargs, layout, data_plate, x.shape[0] * num_samples
        )
        total = 0.0
        for s in _chunks(num_samples, chunk_size):
            log_w = draw(s)
            total = total + log_w.sum(0)
        return total / num_samples


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
        When ``batch_size`` is not a positive int, or for bad arguments or data, as for
        :func:`log_evidence`.
    """
    x, extras, transform = as_columns(data, "data")
    x = check_data(x, "data")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    _check_compile(compile)
    if compile == "auto":
        compile = x.shape[0] * num_samples >= AUTO_MIN_WEIGHTS
    num_data, ranks = x.shape[0], current()
    if ranks.distributed:  # under torchrun each rank scores x[r::P]; rows are gathered back
        if num_data < ranks.world_size:
            raise ValueError(f"{num_data} datapoints cannot be shared by {ranks.world_size} ranks")
        x = x[ranks.rank :: ranks.world_size]
        extras = tuple(e[ranks.rank :: ranks.world_size] for e in extras)
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
