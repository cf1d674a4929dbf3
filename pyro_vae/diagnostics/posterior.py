"""Posterior draws of the per-datapoint latents: from a guide, and from a NUTS reference.

Both functions return the same layout, ``{site: tensor (chains, draws, N, *event_shape)}``, so
that :func:`pyro_vae.diagnostics.arviz_io.to_inference_data` can put the amortized posterior
q(z|x) next to a gold-standard Markov chain on p(z|x) (Hoffman & Gelman 2014, NUTS) with the
model's parameters (decoder, likelihood scale, ...) held fixed at their param-store values.

Works for any model/guide pair following the site convention (:mod:`pyro_vae.infer.pair.sites`):
latent sites are found by tracing the guide (or the model, for NUTS); every latent site must
live inside the data plate, because a global latent has no per-datapoint posterior.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate
from pyro.infer.mcmc import MCMC, NUTS

from pyro_vae.infer.pair.doctor import check_traces, trace_pair
from pyro_vae.infer.pair.sites import (
    DATA_PLATE,
    check_data,
    data_frame,
    latent_sites,
    plate_nesting,
    sample_sites,
    without_enumeration,
)

__all__ = ["guide_draws", "nuts_reference", "to_draws_layout"]


def to_draws_layout(value: torch.Tensor, site: dict, data_plate: str, num_n: int) -> torch.Tensor:
    """Reshape a site value of batch shape ``(S, ..., N, ...)`` to ``(S, N, *rest)``.

    Batch dimensions between the particle dim and the data dim must have size 1 (the data plate
    is the outermost plate of a per-datapoint latent).

    Parameters
    ----------
    value : torch.Tensor
        The site's value (or a per-site tensor of the same layout), particles first.
    site : dict
        The trace node, for its distribution's event dim and its data-plate frame.
    data_plate : str
        Name of the data plate.
    num_n : int
        N, the number of datapoints.

    Returns
    -------
    torch.Tensor of shape (S, N, *rest)

    Raises
    ------
    ValueError
        If the data plate is not the site's outermost plate.
    """
    event_dim = site["fn"].event_dim
    batch_ndim = value.dim() - event_dim
    pos = batch_ndim + data_frame(site, data_plate).dim  # index of the data dim in value.shape
    if value.shape[pos] != num_n or any(s != 1 for s in value.shape[1:pos]):
        raise ValueError(
            f"site {site['name']!r} has shape {tuple(value.shape)}; expected the data plate "
            f"({num_n} datapoints) to be its outermost plate"
        )
    return value.reshape(value.shape[0], *value.shape[pos:])


@torch.no_grad()
def guide_draws(
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_chains: int = 4,
    num_draws: int = 500,
    data_plate: str = DATA_PLATE,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """Independent draws z ~ q(z|x) of every latent site of ``guide``, in the MCMC layout.

    The guide is run once, vectorized under an outer ``pyro.plate("_particles", S)`` with
    S = num_chains * num_draws, without gradients; a discrete site marked for enumeration
    (e.g. y of the M2 model) is sampled like any other. "Chains" of a guide are just independent
    blocks of draws (their R-hat is 1 by construction), kept so guide and NUTS line up in ArviZ.

    Parameters
    ----------
    guide : callable
        ``guide(x, *args, **kwargs)`` following the site convention (docs/design.md); every
        latent site inside ``data_plate``.
    x : torch.Tensor of shape (N, ...)
        Data batch, datapoints along the first dimension.
    *args, **kwargs
        Passed on to ``guide``.
    num_chains : int, default 4
        Blocks of draws.
    num_draws : int, default 500
        Draws per block.
    data_plate : str, default "data"
        Name of the data plate.

    Returns
    -------
    dict of str to torch.Tensor of shape (num_chains, num_draws, N, *event_shape)
        One entry per latent site of the guide.

    Raises
    ------
    ValueError
        If ``num_chains`` or ``num_draws`` is below 1, ``x`` holds NaN or inf, or the data
        plate is not a site's outermost plate.
    pyro_vae.infer.pair.sites.GlobalLatentError
        If a latent site lies outside the data plate.
    """
    if num_chains < 1 or num_draws < 1:
        raise ValueError(f"num_chains and num_draws must be >= 1, got {num_chains}, {num_draws}")
    num_n = check_data(x).shape[0]
    guide = without_enumeration(guide)  # a site enumerated in training is drawn here
    _, first = trace_pair(None, guide, x, *args, data_plate=data_plate, **kwargs)
    sites = latent_sites(first, data_plate)
    num = num_chains * num_draws
    with pyro.plate("_particles", num, dim=-(plate_nesting(sites.values()) + 1)):
        trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
    draws = {}
    for name in sites:
        site = trace.nodes[name]
        value = to_draws_layout(site["value"], site, data_plate, num_n)
        draws[name] = value.reshape(num_chains, num_draws, *value.shape[1:])
    return draws


def nuts_reference(
    model: Callable,
    x: torch.Tensor,
    *args,
    num_chains: int = 2,
    num_warmup: int = 300,
    num_samples: int = 300,
    seed: int = 0,
    data_plate: str = DATA_PLATE,
    progress: bool = False,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """Gold-standard draws from p(z|x) by NUTS, with the model's parameters held fixed.

    The No-U-Turn sampler of Hoffman & Gelman (2014), JMLR 15, through ``pyro.infer.mcmc``.
    Observed sites are already conditioned through ``obs=x`` in the model; ``pyro.param`` /
    ``pyro.module`` values are read from the param store as constants (NUTS differentiates the
    potential energy only with respect to the latents, so no parameter gets a ``.grad`` and the
    store is unchanged). Chains run sequentially, chain c with seed ``seed + c``; the global RNG
    state is restored afterwards.

    Parameters
    ----------
    model : callable
        ``model(x, *args, **kwargs)`` following the site convention (docs/design.md); every
        latent site inside ``data_plate``.
    x : torch.Tensor of shape (N, ...)
        Data batch, datapoints along the first dimension.
    *args, **kwargs
        Passed on to ``model``.
    num_chains : int, default 2
        Independent chains.
    num_warmup : int, default 300
        Warm-up (adaptation) steps per chain, discarded.
    num_samples : int, default 300
        Kept draws per chain.
    seed : int, default 0
        Seed of the first chain.
    data_plate : str, default "data"
        Name of the data plate.
    progress : bool, default False
        Show Pyro's progress bar.

    Discrete latent sites (e.g. y of the M2 model) are summed out exactly: NUTS runs on the
    model with them marked for parallel enumeration (``pyro.infer.config_enumerate``), which
    Pyro's HMC marginalizes, and they are not among the draws returned.

    Returns
    -------
    dict of str to torch.Tensor of shape (num_chains, num_samples, N, *event_shape)
        One entry per continuous latent site of the model.

    Raises
    ------
    ValueError
        If ``num_chains`` or ``num_samples`` is below 1, or the pair doctor finds a mistake
        (:func:`~pyro_vae.infer.pair.doctor.check_traces`: NaN data, a data plate of the wrong
        size, an observed value outside its support).
    pyro_vae.infer.pair.sites.GlobalLatentError
        If a latent or observed site lies outside the data plate.
    """
    if num_chains < 1 or num_samples < 1:
        raise ValueError(
            f"num_chains and num_samples must be >= 1, got {num_chains}, {num_samples}"
        )
    check_data(x)
    with torch.no_grad():
        trace, _ = trace_pair(model, None, x, *args, data_plate=data_plate, **kwargs)
        # the pair doctor on the model alone (plate sizes, observed values in their supports);
        # an observation outside the data plate is global too: p(z_n | x) is not per datapoint
        check_traces(trace, None, x.shape[0], data_plate, per_datapoint=True)
        sites = latent_sites(trace, data_plate, role="model")
    discrete = [name for name, site in sites.items() if site["fn"].support.is_discrete]
    # every plate of the model, observed sites' too: enumerated values go left of them all
    nesting = plate_nesting(s for _, s in sample_sites(trace)) if discrete else None
    if discrete:  # summed out by NUTS's enumeration, so they have no draws
        model = config_enumerate(model, default="parallel")
        sites = {name: site for name, site in sites.items() if name not in discrete}
    rng_state = pyro.util.get_rng_state()
    chains: dict[str, list[torch.Tensor]] = {name: [] for name in sites}
    try:
        for c in range(num_chains):
            pyro.set_rng_seed(seed + c)
            mcmc = MCMC(
                NUTS(model, max_plate_nesting=nesting),
                num_samples=num_samples,
                warmup_steps=num_warmup,
                num_chains=1,
                disable_progbar=not progress,
            )
            mcmc.run(x, *args, **kwargs)
            samples = mcmc.get_samples()
            for name in sites:
                chains[name].append(samples[name].detach())
    finally:
        pyro.util.set_rng_state(rng_state)
    return {name: torch.stack(values) for name, values in chains.items()}
