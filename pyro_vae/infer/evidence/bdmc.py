"""Bidirectional Monte Carlo: a sandwich around log p(x) on data simulated from the model.

Grosse, Ghahramani & Adams (2015). On data drawn from the model itself, z ~ p(z), x ~ p(x | z),
the z is an exact draw from the posterior p(z | x) of its x. Annealed importance sampling run
forward from the guide (:mod:`pyro_vae.infer.evidence.ais`) gives log (1/S) sum_s w_s, a
stochastic *lower* bound of log p(x); the same chain run in reverse, from z through the path
from p(z | x) back to q(z | x), gives weights with E[w_rev] = 1 / p(x), so
-log (1/S) sum_s w_rev,s is a stochastic *upper* bound. Both bounds hold in expectation: the mean
gap upper - lower over datapoints bounds the mean error of AIS at these settings on data like
this, and shrinks to 0 as T grows, while one datapoint's bounds may cross (lower > upper). The
reverse chains move with the step sizes the forward chains' pilots chose (reversed), so no
reverse kernel depends on a reverse chain's path.

:func:`simulate_data` draws the data from any pair's model (its one observed site sampled
instead of observed, ``poutine.uncondition``), :func:`bdmc` runs both chains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro import poutine
from tqdm.auto import tqdm

from pyro_vae.infer.evidence.ais import (
    AISSettings,
    anneal,
    chain_summary,
    datapoint_chunks,
    merge_settings,
    preconditioner,
    resolve_compile,
    schedule,
    total_chains,
)
from pyro_vae.infer.evidence.shards import gather_rows, local_rows
from pyro_vae.infer.pair.particles import bind_pair
from pyro_vae.infer.pair.potential import LatentSpace
from pyro_vae.infer.pair.sites import DATA_PLATE, check_data, sample_sites

__all__ = ["BDMCResult", "Simulated", "bdmc", "simulate_data"]


@dataclass(frozen=True)
class Simulated:
    """Data drawn from a model with the latents that made it.

    Attributes
    ----------
    x : torch.Tensor of shape (N, ...)
        The simulated data, shaped like the template it was drawn for.
    latents : dict of str to torch.Tensor
        The model's latent values, an exact posterior draw for each datapoint.
    """

    x: torch.Tensor
    latents: dict


@dataclass(frozen=True)
class BDMCResult:
    """Stochastic bounds on log p(x) per simulated datapoint (nats).

    Both hold in expectation: E[lower] <= log p(x) <= E[upper], so averaged over datapoints
    they sandwich the mean log p(x), while on a single datapoint Monte Carlo error can put
    lower above upper (a negative gap), most often when the gap is small.

    Attributes
    ----------
    lower : torch.Tensor of shape (N,)
        Forward AIS, log (1/S) sum_s w_s.
    upper : torch.Tensor of shape (N,)
        Reverse AIS from the exact latents, -log (1/S) sum_s w_rev,s.
    gap : torch.Tensor of shape (N,)
        upper - lower; its mean over datapoints bounds the mean error of AIS at these
        settings on such data, a single value may be negative.
    lower_stderr, upper_stderr : torch.Tensor of shape (N,)
        Delta-method standard errors over the S chains.
    accept_rate : torch.Tensor of shape (N,)
        Mean acceptance probability of the forward chains.
    settings : AISSettings
        How the chains moved.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    gap: torch.Tensor
    lower_stderr: torch.Tensor
    upper_stderr: torch.Tensor
    accept_rate: torch.Tensor
    settings: AISSettings


@torch.no_grad()
def simulate_data(model, x, *args, **kwargs) -> Simulated:
    """Draw z ~ p(z), x ~ p(x | z) from ``model`` for a batch shaped like ``x``.

    The model runs once with its observed site sampled (``poutine.uncondition``); ``x``
    serves only as a template (its shape sets the data plate), ``args`` (labels) are kept.

    Parameters
    ----------
    model : callable
        ``model(x, *args, **kwargs)`` with exactly one observed site, whose value has as many
        elements as ``x``.
    x : torch.Tensor of shape (N, ...)
        Template batch.
    *args, **kwargs
        Passed on to the model.

    Returns
    -------
    Simulated

    Raises
    ------
    ValueError
        When the model has no observed site or several (labels observed beside the data).
    """
    check_data(x)
    template = poutine.trace(model).get_trace(x, *args, **kwargs)
    observed = [n for n, s in sample_sites(template) if s["is_observed"]]
    if len(observed) != 1:
        raise ValueError(
            "simulating data needs a model with exactly one observed site (the data); this "
            f"one observes {observed or 'none'}"
        )
    trace = poutine.trace(poutine.uncondition(model)).get_trace(x, *args, **kwargs)
    value = trace.nodes[observed[0]]["value"]
    if value.numel() != x.numel():
        raise ValueError(
            f"observed site {observed[0]!r} holds {value.numel()} numbers for a batch x of "
            f"{x.numel()}; simulating data needs the site to observe x itself"
        )
    latents = {
        n: s["value"] for n, s in sample_sites(trace) if n != observed[0] and not s["is_observed"]
    }
    return Simulated(value.reshape(x.shape).to(x.dtype), latents)


def bdmc(
    model,
    guide,
    simulated: Simulated,
    *args,
    settings: AISSettings | None = None,
    chunk_size=None,
    data_plate=DATA_PLATE,
    progress=True,
    compile=False,
    **kwargs,
) -> BDMCResult:
    """Forward and reverse AIS on simulated data: per-datapoint bounds on log p(x).

    Parameters
    ----------
    model, guide : callable
        The pair, as for :func:`~pyro_vae.infer.evidence.ais.ais_evidence`.
    simulated : Simulated
        Data drawn from ``model`` with its latents (:func:`simulate_data`).
    *args, **kwargs
        Passed on to the pair (the labels the data were simulated with).
    settings : AISSettings, optional
        As for ``ais_evidence`` (fields also as keywords); both directions use them.
    chunk_size, data_plate, progress, compile
        As for ``ais_evidence`` (the work of ``compile="auto"`` counts both directions).

    Returns
    -------
    BDMCResult
        Under torchrun each rank runs the chains of its strided share of the datapoints and
        every rank returns all rows.
    """
    settings = merge_settings(settings, kwargs)
    x = check_data(simulated.x)
    pair = bind_pair(model, guide, x, *args, data_plate=data_plate, **kwargs)
    exact = LatentSpace.draw(pair, 1)[0].flatten(simulated.latents)[0]  # (N, D)
    compile = resolve_compile(compile, settings, 2 * x.shape[0])
    num_data = x.shape[0]
    x, (exact, *args) = local_rows(x, (exact, *args))  # under torchrun: this rank's x[r::P]
    if not len(x):  # more ranks than datapoints
        cat = dict.fromkeys(("lower", "upper", "lower_stderr", "upper_stderr", "accept_rate"))
        cat = {k: x.new_empty(0) for k in cat}
    else:
        cat = _sandwiches(model, guide, x, exact, args, kwargs, settings, chunk_size, data_plate,
                          progress, compile)  # fmt: skip
    cat = gather_rows(cat, num_data)
    return BDMCResult(**cat, gap=cat["upper"] - cat["lower"], settings=settings)


def _sandwiches(model, guide, x, exact, args, kwargs, settings, chunk_size, data_plate, progress,
                compile) -> dict:  # fmt: skip
    """Both directions on every chunk of this rank's datapoints, their rows joined."""
    pair = bind_pair(model, guide, x, *args, data_plate=data_plate, **kwargs)
    betas = schedule(settings.num_steps, settings.schedule, x.device, x.dtype)
    chunks, num_chunks = datapoint_chunks(
        model, guide, x, args, kwargs, settings, chunk_size, data_plate, bound=pair
    )
    rows = []
    total = 2 * num_chunks * settings.num_steps
    with tqdm(total=total, desc="BDMC", unit="step", disable=not progress) as bar:
        for cut, chunk in chunks:
            rows.append(_sandwich(chunk, exact[cut], settings, betas, bar.update, compile))
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def _sandwich(pair, exact, settings, betas, on_step, compile) -> dict:
    """Forward chains (adapting their steps), then reverse ones on the steps they used."""
    space, u = LatentSpace.draw(pair, total_chains(settings), rerun_guide=compile)
    scale = preconditioner(space, settings)
    log_w, accept_rate, steps = anneal(space, u, betas, settings, scale, None, on_step, compile)
    forward = chain_summary(log_w, accept_rate, steps)
    space = LatentSpace.draw(pair, settings.num_chains, rerun_guide=compile)[0]
    u_exact = exact.unsqueeze(0).expand(settings.num_chains, *exact.shape).clone()
    reverse = chain_summary(
        *anneal(space, u_exact, betas.flip(0), settings, scale, steps.flip(0), on_step, compile)
    )
    return {
        "lower": forward["log_px"],
        "upper": -reverse["log_px"],
        "lower_stderr": forward["stderr"],
        "upper_stderr": reverse["stderr"],
        "accept_rate": accept_rate,
    }
