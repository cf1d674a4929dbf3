"""Simulation-based calibration of an amortized guide q(z|x): is it over-confident, biased, right?

Talts, Betancourt, Simpson, Vehtari & Gelman (2018). Draw (z_n, x_n) from the model, z_n ~ p(z),
x_n ~ p(x | z_n), and L draws z_n^(l) ~ q(z | x_n). If q(z|x) = p(z|x) for every x, z_n is one
more draw from the same distribution as its L guide draws, so its *rank* among them, the number
of guide draws below it, is uniform on {0, ..., L} for every latent dimension, averaged over the
data the model generates. One run of the model with its observed site sampled gives N
simulations at once (the data plate; :func:`pyro_vae.infer.evidence.bdmc.simulate_data`), so
SBC costs N model draws and N x L guide draws, in chunks of datapoints within the evidence
estimators' memory budget (:func:`pyro_vae.infer.evidence.weights.default_chunk_size`, counted
on the guide's latents, the only tensors that carry the L draws).

Besides the per-dimension ranks, the guide's mean and standard deviation per simulation (for the
z-score and contraction of Schad, Betancourt & Vasishth 2021) and one joint check are kept: the
rank of log q(z_n | x_n) among the log q(z_n^(l) | x_n) of the draws (a density rank in the
spirit of TARP, Lemos et al. 2023), uniform under the same condition, since z_n and its draws
are exchangeable given x_n and any function of them ranks uniformly.

Constrained latents are ranked as they are: a rank is invariant under the monotone bijection to
the unconstrained space. A discrete guide site (M2's label y) is not ranked: the guide is run at
its true value (the continuous latents are ranked as q(z | x, y_true)), and the calibration of
q(y | x) is judged by its reliability (:mod:`pyro_vae.diagnostics.sbc_statistics`).

The statistics a user reads are in :mod:`pyro_vae.diagnostics.sbc_statistics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from pyro import poutine
from tqdm.auto import tqdm

from pyro_vae.diagnostics.posterior import to_draws_layout
from pyro_vae.diagnostics.sbc_statistics import SBCStatistics, reliability, sbc_statistics
from pyro_vae.infer.evidence.bdmc import simulate_data
from pyro_vae.infer.evidence.weights import check_positive, default_chunk_size
from pyro_vae.infer.pair.particles import (
    PairBatch,
    bind_pair,
    trace_log_prob,
    trace_under_particles,
)
from pyro_vae.infer.pair.sites import DATA_PLATE, check_data, latent_sites, without_enumeration

__all__ = ["GUIDE_WORK", "SBCResult", "sbc"]

GUIDE_WORK = 8  # a guide's tensors under the particles per latent number (an IAF's hidden layers)


@dataclass(frozen=True)
class SBCResult:
    """Ranks of simulated truths among guide draws, with the statistics a user reads.

    Attributes
    ----------
    ranks : dict of str to torch.Tensor of shape (N,) + event_shape, int64
        Per continuous latent site, the number of the L guide draws below the true value
        (0..L).
    density_ranks : torch.Tensor of shape (N,), int64
        The number of draws whose log q(z^(l) | x_n) is below log q(z_n | x_n) (0..L).
    truth, post_mean, post_sd : dict of str to torch.Tensor of shape (N,) + event_shape
        The simulated latents, and the mean and standard deviation of the L guide draws.
    num_draws : int
        L, guide draws per simulation.
    x : torch.Tensor of shape (N, ...)
        The simulated data.
    discrete : dict of str to dict
        Per discrete guide site, ``{"probs": (N, K) q(y|x_n), "truth": (N,) index of y_n}``.
    statistics : SBCStatistics
        Per-dimension statistics and verdicts (:func:`sbc_statistics`).
    """

    ranks: dict
    density_ranks: torch.Tensor
    truth: dict
    post_mean: dict
    post_sd: dict
    num_draws: int
    x: torch.Tensor
    discrete: dict = field(default_factory=dict)
    statistics: SBCStatistics | None = None


def _discrete_probs(site: dict, truth: torch.Tensor) -> dict:
    """q(y | x_n) over the support of a discrete guide site, and the index of the truth."""
    fn = site["fn"]
    support = fn.enumerate_support(expand=False)  # (K, 1, ..., *event)
    log_q = fn.log_prob(support)  # (K, N)
    probs = log_q.reshape(log_q.shape[0], -1).T.softmax(-1)  # (N, K)
    event_dims = tuple(range(-fn.event_dim, 0)) if fn.event_dim else ()
    same = support == truth.to(support.dtype)
    if event_dims:
        same = same.all(dim=event_dims)
    index = same.reshape(same.shape[0], -1).float().argmax(0)  # (N,)
    return {"probs": probs, "truth": index}


def _truth_log_q(pair, truth: dict) -> torch.Tensor:
    """log q(z_n | x_n) at the simulated latents (every guide site conditioned): shape (N,)."""
    conditioned = poutine.condition(without_enumeration(pair.guide), data=truth)
    trace = trace_under_particles(pair, 1, conditioned)
    return trace_log_prob(trace, pair.layout, 1, pair.data_plate).reshape(-1)


@torch.no_grad()
def _rank_chunk(pair: PairBatch, truth: dict, num_draws: int):
    """Ranks, guide moments and the density rank of one chunk of simulations."""
    guide, x, data_plate = pair.guide, pair.x, pair.data_plate
    first = pair.call(poutine.trace(without_enumeration(guide)).get_trace)
    sites = latent_sites(first, data_plate)
    discrete = {n for n, s in sites.items() if s["fn"].support.is_discrete}
    at_truth = {n: truth[n] for n in discrete}  # q(z | x, y_true) for the continuous ones
    conditioned = poutine.condition(without_enumeration(guide), data=at_truth)
    trace = trace_under_particles(pair, num_draws, conditioned)
    out = {"ranks": {}, "mean": {}, "sd": {}, "discrete": {}}
    for name, site in sites.items():
        if name in discrete:
            out["discrete"][name] = _discrete_probs(first.nodes[name], truth[name])
            continue
        value = trace.nodes[name]["value"]
        draws = to_draws_layout(value, trace.nodes[name], data_plate, x.shape[0])
        true = to_draws_layout(truth[name].expand(value.shape)[:1], site, data_plate, x.shape[0])
        out["ranks"][name] = (draws < true).sum(0)
        out["mean"][name], out["sd"][name] = draws.mean(0), draws.std(0)
    log_q_draws = trace_log_prob(trace, pair.layout, num_draws, data_plate)  # (L, N)
    out["density"] = (log_q_draws < _truth_log_q(pair, truth)).sum(0)
    return out


def _guide_site_size(guide, x, args, kwargs) -> int:
    """The largest per-datapoint size of a guide latent, times ``GUIDE_WORK``: only the guide
    runs under the L particles (the model runs once, unbatched), so its latents, not the data,
    set the chunk."""
    trace = poutine.trace(without_enumeration(guide)).get_trace(x, *args, **kwargs)
    sizes = [s["value"].numel() // x.shape[0] for s in latent_sites(trace).values()]
    return GUIDE_WORK * max(sizes, default=1)


def _concat(chunks: list[dict], key: str) -> dict:
    return {name: torch.cat([c[key][name] for c in chunks]) for name in chunks[0][key]}


def _concat_discrete(chunks: list[dict]) -> dict:
    names = chunks[0]["discrete"]
    return {
        n: {k: torch.cat([c["discrete"][n][k] for c in chunks]) for k in ("probs", "truth")}
        for n in names
    }


def sbc(
    model,
    guide,
    x: torch.Tensor,
    *args,
    num_draws: int = 99,
    alpha: float = 0.05,
    chunk_size: int | None = None,
    data_plate: str = DATA_PLATE,
    progress: bool = False,
    **kwargs,
) -> SBCResult:
    """Simulation-based calibration of ``guide`` against ``model`` on data shaped like ``x``.

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention (docs/design.md), called ``f(x, *args,
        **kwargs)``; the model has exactly one observed site (the data) and no global latent.
    x : torch.Tensor of shape (N, ...)
        Template batch: its N is the number of simulations, its device and dtype those of the
        simulated data; ``args`` (labels: the CVAE's y) are kept as they are.
    *args, **kwargs
        Passed on to the pair; ``args`` are per-datapoint columns, sliced with ``x``.
    num_draws : int, default 99
        L, guide draws per simulation (ranks take L + 1 values).
    alpha : float, default 0.05
        Family-wise false-alarm rate of the verdicts over every test of the run
        (:func:`~pyro_vae.diagnostics.sbc_statistics.sbc_statistics`).
    chunk_size : int, optional
        Simulations per vectorized pass; default from the evidence estimators' memory budget.
    data_plate : str, default "data"
        Name of the data plate.
    progress : bool, default False
        A progress bar over the chunks.

    Returns
    -------
    SBCResult

    Raises
    ------
    ValueError
        ``num_draws`` or ``chunk_size`` not a positive int, ``alpha`` outside (0, 1), NaN in
        ``x``, a model with several observed sites (or none).
    pyro_vae.infer.pair.sites.GlobalLatentError
        A latent or observed site outside the data plate.
    """
    check_positive(num_draws=num_draws, chunk_size=chunk_size)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    num_n = check_data(x).shape[0]
    layout = bind_pair(model, guide, x, *args, data_plate=data_plate, **kwargs).layout
    simulated = simulate_data(model, x, *args, **kwargs)
    if chunk_size is None:
        chunk_size = default_chunk_size(
            num_draws, _guide_site_size(guide, x, args, kwargs), x.device
        )
    bar = tqdm(total=num_n, desc="SBC", unit="sim", disable=not progress, leave=False)
    chunks = []
    with bar:
        for start in range(0, num_n, chunk_size):
            rows = slice(start, start + chunk_size)
            truth = {n: v[rows] for n, v in simulated.latents.items()}
            x_rows = simulated.x[rows]
            part = tuple(a[rows] for a in args)  # per-datapoint columns (labels)
            shape = replace(layout, num_data=x_rows.shape[0])  # the pair is inspected once
            pair = PairBatch(model, guide, x_rows, part, kwargs, shape, data_plate)
            chunks.append(_rank_chunk(pair, truth, num_draws))
            bar.update(min(chunk_size, num_n - start))
    result = SBCResult(
        ranks=_concat(chunks, "ranks"),
        density_ranks=torch.cat([c["density"] for c in chunks]),
        truth={n: simulated.latents[n] for n in chunks[0]["ranks"]},
        post_mean=_concat(chunks, "mean"),
        post_sd=_concat(chunks, "sd"),
        num_draws=num_draws,
        x=simulated.x,
        discrete={
            name: {**d, "reliability": reliability(d["probs"], d["truth"])}
            for name, d in _concat_discrete(chunks).items()
        },
    )
    stats = sbc_statistics(
        result.ranks,
        result.density_ranks,
        num_draws,
        result.truth,
        result.post_mean,
        result.post_sd,
        alpha=alpha,
    )
    return SBCResult(**{**result.__dict__, "statistics": stats})
