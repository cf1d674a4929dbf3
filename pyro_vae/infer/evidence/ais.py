"""Evidence log p(x) per datapoint by annealed importance sampling from the guide (Neal 2001).

S chains per datapoint start at guide draws z_0 ~ q(z | x) and pass through the geometric path

    f_t(z) = q(z | x)^(1 - b_t) p(x, z)^(b_t),   0 = b_0 < b_1 < ... < b_T = 1,

each carrying the log weight

    log w = sum_{t=1..T} (b_t - b_{t-1}) [log p(x, z_{t-1}) - log q(z_{t-1} | x)],

where z_t follows z_{t-1} by an HMC transition that leaves f_t invariant
(:mod:`pyro_vae.infer.evidence.hmc`). E[w] = p(x), so log (1/S) sum_s w_s estimates log p(x)
and, by Jensen's inequality, is a stochastic lower bound of it (Grosse et al. 2015). With T = 1
it is importance sampling with the guide; as T grows the chains track the path and the weights
concentrate, which is what importance sampling cannot do when q is far from p(z | x) (a large
PSIS k-hat). Settings follow Wu et al. (2017) for decoder-based models: a sigmoid schedule, HMC
with 10 leapfrog steps, the step size multiplied by 1.02 after a transition whose acceptance
probability is above 0.65 and by 0.98 otherwise, within ``step_size_bounds``. The momentum's
scale is the guide's per-dimension spread (a preconditioner).

Adapting a chain's step from its own acceptance (as Wu et al. do) makes its later kernels
depend on its own path, outside the proof of E[w] = p(x) (a first version that did so put both
BDMC bounds past the exact value on the factor-analysis pair of the tests). So a few *pilot*
chains per datapoint, run beside the others and dropped from the estimate, steer the step: every
kept chain's kernels depend only on paths independent of its own, and its weight stays unbiased.

Cost: T x L gradient evaluations of log p(x, z) and log q(z | x) per chain; a flow guide is
scored through its inverse, which for an IAF takes one pass per latent dimension
(``experiments/bench_ais.py --density-cost``). Vectorized over datapoints and chains, chunked
over datapoints (the budget of :func:`~pyro_vae.infer.evidence.weights.default_chunk_size`),
refused first if one chunk's chains cannot fit in memory
(:func:`~pyro_vae.infer.evidence.memory.check_chains_fit`); under torchrun each rank anneals
its strided share of the datapoints (:mod:`~pyro_vae.infer.evidence.shards`). Continuous latents
only: :func:`~pyro_vae.infer.evidence.enumerated.enumerated_ais` sums a discrete one out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from tqdm.auto import tqdm

from pyro_vae.infer.compile.policy import AUTO_MIN_GRADIENTS, compile_notice, resolve
from pyro_vae.infer.evidence.compiled_hmc import CompiledTransition
from pyro_vae.infer.evidence.hmc import ChainState, hmc_transition
from pyro_vae.infer.evidence.memory import check_chains_fit, latent_size
from pyro_vae.infer.evidence.psis import psis_tail_size
from pyro_vae.infer.evidence.shards import gather_rows, local_rows, rows_of
from pyro_vae.infer.evidence.weights import WeightStream, check_positive, default_chunk_size
from pyro_vae.infer.pair.particles import bind_pair
from pyro_vae.infer.pair.potential import LatentSpace
from pyro_vae.infer.pair.sites import DATA_PLATE, check_data

__all__ = [
    "SCHEDULES",
    "AISResult",
    "AISSettings",
    "ais_evidence",
    "anneal",
    "chain_summary",
    "datapoint_chunks",
    "empty_summary",
    "merge_settings",
    "preconditioner",
    "resolve_compile",
    "schedule",
    "total_chains",
]

SCHEDULES = ("sigmoid", "linear")
SIGMOID_SHARPNESS = 4.0  # Grosse et al. 2015 / Wu et al. 2017: b_t from sigmoid(4 (2t/T - 1))


def schedule(num_steps: int, kind: str = "sigmoid", device=None, dtype=None) -> torch.Tensor:
    """Inverse temperatures 0 = b_0 < ... < b_T = 1, shape (T + 1,).

    ``"sigmoid"``: b_t = (s(t) - s(0)) / (s(T) - s(0)) with s(t) = sigmoid(4 (2t / T - 1)),
    dense near both ends where the target changes fastest; ``"linear"``: b_t = t / T.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if kind == "sigmoid" and num_steps > 1:
        s = torch.sigmoid(SIGMOID_SHARPNESS * (2 * t - 1))
        t = (s - s[0]) / (s[-1] - s[0])
    return t.to(device=device, dtype=dtype or torch.get_default_dtype())


@dataclass(frozen=True)
class AISSettings:
    """How the chains move (defaults: Wu et al. 2017).

    Attributes
    ----------
    num_chains : int
        S, chains per datapoint.
    num_steps : int
        T, intermediate distributions (HMC transitions: T - 1). 100 by default: on the
        README's main-job VAE the BDMC gap is 0.09 nats at T = 100 (``pyro-vae certify``).
    num_leapfrog : int
        L, leapfrog steps per transition.
    schedule : {"sigmoid", "linear"}
        The path's inverse temperatures.
    step_size : float
        Every chain's first leapfrog step, in units of the guide's scale.
    target_accept : float
        Acceptance probability the step size is adapted toward.
    adapt_step_size : bool
        Adapt each datapoint's step: x 1.02 after a transition whose mean acceptance over the
        pilot chains is above ``target_accept``, else x 0.98.
    num_pilot_chains : int
        Extra chains per datapoint that steer the adaptation; their weights are dropped.
    step_size_bounds : (float, float)
        Bounds of the adapted step.
    precondition : bool
        Scale the momentum by the guide's per-dimension spread (else unit scale).
    """

    num_chains: int = 16
    num_steps: int = 100
    num_leapfrog: int = 10
    schedule: str = "sigmoid"
    step_size: float = 0.1
    target_accept: float = 0.65
    adapt_step_size: bool = True
    num_pilot_chains: int = 4
    step_size_bounds: tuple = (1e-4, 1.0)
    precondition: bool = True

    def __post_init__(self):
        if isinstance(self.num_pilot_chains, bool) or not isinstance(self.num_pilot_chains, int):
            raise ValueError(f"num_pilot_chains must be an int, got {self.num_pilot_chains!r}")
        if self.adapt_step_size and self.num_pilot_chains < 1:
            raise ValueError("adapting the step size needs num_pilot_chains >= 1")
        for label in ("num_chains", "num_steps", "num_leapfrog"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive int, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        low, high = self.step_size_bounds
        if not 0 < low <= self.step_size <= high:
            raise ValueError(
                f"need 0 < step_size_bounds[0] <= step_size <= step_size_bounds[1], got "
                f"step_size={self.step_size} and bounds {self.step_size_bounds}"
            )
        if not 0 < self.target_accept < 1:
            raise ValueError(f"target_accept must lie in (0, 1), got {self.target_accept}")


@dataclass(frozen=True)
class AISResult:
    """Per-datapoint AIS estimate of the evidence (nats) and how the chains fared.

    Attributes
    ----------
    log_px : torch.Tensor of shape (N,)
        log (1/S) sum_s w_s.
    stderr : torch.Tensor of shape (N,)
        Its standard error by the delta method over the S chains.
    ess, khat : torch.Tensor of shape (N,)
        Effective sample size and PSIS k-hat of the S chain weights (with few chains k-hat is
        rough: it fits the tail of S weights).
    accept_rate : torch.Tensor of shape (N,)
        Mean acceptance probability over chains and transitions.
    step_size : torch.Tensor of shape (N,)
        The final step size of each datapoint's chains.
    log_weights : torch.Tensor of shape (N, S)
        The chains' log weights.
    settings : AISSettings
        How they were drawn.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    accept_rate: torch.Tensor
    step_size: torch.Tensor
    log_weights: torch.Tensor
    settings: AISSettings


def anneal(
    space, u, betas, settings: AISSettings, scale, step_sizes=None, on_step=None, compile=False
):
    """Run the chains in ``u`` along ``betas``: log weights, acceptance, the steps used.

    The weight is sum_k (b_k - b_{k-1}) (log p - log q) at the state before the k-th
    transition, so increasing ``betas`` from 0 to 1 estimates log p(x) (forward AIS) and
    decreasing ones from 1 to 0 estimate -log p(x) (the reverse chain of BDMC).

    Step sizes, one per datapoint and transition: given as ``step_sizes`` (L + 1, N), or
    adapted (``settings.adapt_step_size``) from the last ``settings.num_pilot_chains``
    chains of ``u``, whose weights are dropped (module docstring); else ``settings.step_size``.
    With ``compile`` every transition runs as one compiled graph (:class:`CompiledTransition`
    of :mod:`~pyro_vae.infer.evidence.compiled_hmc`; ``space`` built with ``rerun_guide=True``).

    Returns
    -------
    log_w : torch.Tensor of shape (S, N)
        The non-pilot chains' log weights.
    accept_rate : torch.Tensor of shape (N,)
        Their mean acceptance probability over chains and transitions.
    step_sizes : torch.Tensor of shape (len(betas), N)
        The step of each transition (row k: the move after the k-th increment).
    """
    state = ChainState.at(space, u)
    N = state.densities.log_q.shape[1]
    leapfrog = settings.num_leapfrog
    if compile:
        transition = CompiledTransition(space, leapfrog)
    else:
        transition = partial(hmc_transition, space, num_leapfrog=leapfrog)
    pilots = settings.num_pilot_chains if settings.adapt_step_size and step_sizes is None else 0
    main = slice(0, u.shape[0] - pilots)
    log_w = torch.zeros_like(state.densities.log_q)
    accept_sum = torch.zeros(N, device=u.device, dtype=u.dtype)
    step = torch.full((N,), settings.step_size, device=u.device, dtype=u.dtype)
    used = torch.empty(len(betas), N, device=u.device, dtype=u.dtype)
    low, high = settings.step_size_bounds
    betas, moves = betas.tolist(), 0
    for k in range(1, len(betas)):
        log_w += (betas[k] - betas[k - 1]) * (state.densities.log_p - state.densities.log_q)
        used[k] = step = step if step_sizes is None else step_sizes[k]
        if k < len(betas) - 1 and space.dim:
            eps = step.expand(u.shape[0], N)
            state, accept = transition(state, betas[k], eps, scale)
            accept_sum += accept[main].mean(0)
            moves += 1
            if pilots:
                above = accept[main.stop :].mean(0) > settings.target_accept
                step = (step * torch.where(above, 1.02, 0.98)).clamp(low, high)
        if on_step is not None:
            on_step()
    used[0] = used[1] if len(betas) > 1 else step
    accept_rate = accept_sum / moves if moves else torch.ones_like(accept_sum)
    return log_w[main], accept_rate, used


def datapoint_chunks(model, guide, x, args, kwargs, settings, chunk_size, data_plate, bound=None):
    """The chunks of datapoints annealed at once: ``(slice, PairBatch)`` pairs, and their count.

    Default size: a quarter of the estimators' budget over chains x largest site (gradients
    hold more than weights). The pair is checked (on one datapoint, or ``bound``) first, then
    that the chains of a chunk can fit in memory (ValueError otherwise).
    """

    def bind(rows):
        return bind_pair(model, guide, x[rows], *rows_of(args, rows), data_plate=data_plate,
                         **kwargs)  # fmt: skip

    first = bound or bind(slice(0, 1))
    check_positive(chunk_size=chunk_size)
    chains = total_chains(settings)
    if chunk_size is None:
        chunk_size = max(1, default_chunk_size(chains, first.layout.site_size, x.device) // 4)
    num_data, dim = x.shape[0], latent_size(first)
    check_chains_fit("AIS", chains, min(chunk_size, num_data), dim, x[0].numel(), x)

    def chunks():
        for start in range(0, num_data, chunk_size):
            rows = slice(start, min(num_data, start + chunk_size))
            yield rows, bind(rows)

    return chunks(), math.ceil(num_data / chunk_size)


def ais_evidence(
    model,
    guide,
    x,
    *args,
    settings: AISSettings | None = None,
    chunk_size=None,
    data_plate=DATA_PLATE,
    progress=True,
    compile=False,
    **kwargs,
) -> AISResult:
    """Annealed importance sampling of log p(x_n) per datapoint, started from the guide.

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention, called as ``f(x, *args, **kwargs)``; every
        latent site continuous and sampled by the guide.
    x : torch.Tensor of shape (N, ...)
        Data; N is the size of the data plate. NaN or inf values are refused.
    *args, **kwargs
        Passed on to ``model`` and ``guide``; tensor arguments are per-datapoint columns and
        are cut into the same chunks as ``x``.
    settings : AISSettings, optional
        Chains, steps, leapfrog steps, schedule, step-size adaptation (default: Wu et al.'s).
        Fields may also be given as keywords, e.g. ``num_chains=16, num_steps=1000``.
    chunk_size : int, optional
        Datapoints annealed at once (default: a quarter of the evidence estimators' budget
        over S chains times the largest site size; the gradients hold more than the weights).
    data_plate : str
        Name of the data plate.
    progress : bool
        Show a tqdm bar over the transitions of every chunk.
    compile : {"auto", True, False}
        Run each HMC transition as one compiled graph
        (:class:`~pyro_vae.infer.evidence.compiled_hmc.CompiledTransition`; the same draws as
        eager for one RNG state); ``"auto"`` compiles from
        :data:`~pyro_vae.infer.compile.policy.AUTO_MIN_GRADIENTS` gradient evaluations on.

    Returns
    -------
    AISResult
        Tensors on the device of ``x``, in nats.

    Raises
    ------
    GlobalLatentError
        If a sample site lies outside the data plate.
    ValueError
        For bad settings or data, a discrete guide site, or a model latent the guide does not
        sample.
    """
    settings = merge_settings(settings, kwargs)
    num_data = check_data(x).shape[0]
    compile = resolve_compile(compile, settings, num_data)
    x, args = local_rows(x, args)  # under torchrun: this rank's x[r::P]
    if not len(x):  # more ranks than datapoints
        return AISResult(**gather_rows(empty_summary(x, settings), num_data), settings=settings)
    betas = schedule(settings.num_steps, settings.schedule, x.device, x.dtype)
    chunks, num_chunks = datapoint_chunks(
        model, guide, x, args, kwargs, settings, chunk_size, data_plate
    )
    results = []
    with tqdm(
        total=num_chunks * settings.num_steps, desc="AIS", unit="step", disable=not progress
    ) as bar:
        if compile and progress:
            bar.write(compile_notice("HMC transition"))
        for _, chunk in chunks:
            results.append(_forward_chunk(chunk, settings, betas, bar.update, compile))
    fields = {k: torch.cat([r[k] for r in results]) for k in results[0]}
    return AISResult(**gather_rows(fields, num_data), settings=settings)


def chain_summary(log_w, accept_rate, step_size) -> dict:
    """The per-datapoint fields of an :class:`AISResult` from S chains' log weights (S, N)."""
    stream = WeightStream(psis_tail_size(log_w.shape[0]), keep_all=True)
    stream.update(log_w)
    weights = stream.result()
    return {
        "log_px": weights.log_px,
        "stderr": weights.stderr,
        "ess": weights.ess,
        "khat": weights.khat,
        "accept_rate": accept_rate,
        "step_size": step_size[-1],
        "log_weights": weights.log_weights,
    }


def empty_summary(x, settings: AISSettings) -> dict:
    """The fields of an :class:`AISResult` for no datapoint (a rank without a share)."""
    names = ("log_px", "stderr", "ess", "khat", "accept_rate", "step_size")
    S = settings.num_chains
    return {**{k: x.new_empty(0) for k in names}, "log_weights": x.new_empty(0, S)}


def merge_settings(settings: AISSettings | None, kwargs: dict) -> AISSettings:
    """``settings`` with the AISSettings fields found in ``kwargs`` (removed from it) applied."""
    fields = set(AISSettings.__dataclass_fields__)
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    return AISSettings(**{**(settings.__dict__ if settings else {}), **overrides})


def resolve_compile(compile, settings: AISSettings, num_data: int) -> bool:
    """The one compile policy, for N datapoints' chains x transitions x leapfrog gradients."""
    work = num_data * total_chains(settings) * settings.num_steps * settings.num_leapfrog
    return resolve(compile, work=work, min_work=AUTO_MIN_GRADIENTS).compile


def _forward_chunk(pair, settings, betas, on_step, compile):
    space, u = LatentSpace.draw(pair, total_chains(settings), rerun_guide=compile)
    scale = preconditioner(space, settings)
    log_w, accept, steps = anneal(space, u, betas, settings, scale, None, on_step, compile)
    return chain_summary(log_w, accept, steps)


def total_chains(settings: AISSettings) -> int:
    """Chains drawn per datapoint: S, plus the pilots when the step size is adapted."""
    return settings.num_chains + (settings.num_pilot_chains if settings.adapt_step_size else 0)


def preconditioner(space: LatentSpace, settings: AISSettings) -> torch.Tensor:
    """The momentum's per-dimension scale, (N, D): the guide's spread, or ones."""
    if settings.precondition and space.dim:
        return space.guide_scale()
    N = space.pair.layout.num_data
    return torch.ones(N, space.dim, device=space.pair.x.device, dtype=space.pair.x.dtype)
