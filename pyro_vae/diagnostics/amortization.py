"""The amortization gap: how much ELBO the amortized guide loses to per-datapoint guides.

Cremer, Li & Duvenaud (2018), "Inference suboptimality in variational autoencoders": the ELBO
of a mean-field Gaussian fitted to each datapoint separately (here by Adam with the "sticking
the landing" gradient of Roeder, Wu & Duvenaud 2017) minus the ELBO of the amortized guide,
for any model/guide pair following the site convention (:mod:`pyro_vae.infer.pair.sites`).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform, IndependentTransform
from tqdm.auto import tqdm

from pyro_vae.diagnostics.posterior import guide_draws, to_draws_layout
from pyro_vae.infer.evidence.importance import elbo_per_datapoint
from pyro_vae.infer.pair.layout import inspect_pair
from pyro_vae.infer.pair.particles import trace_log_prob
from pyro_vae.infer.pair.sites import DATA_PLATE, check_data, latent_sites, without_enumeration

__all__ = ["amortization_gap"]


def _is_identity(transform) -> bool:
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


def _closed_form_moments(node, transform, data_plate, num_n):
    """The guide's own (mean, stddev) in (N, *rest) layout for a real-valued site, else None."""
    if not _is_identity(transform):
        return None
    try:
        moments = node["fn"].mean, node["fn"].stddev
    except NotImplementedError:
        return None
    return tuple(to_draws_layout(m.unsqueeze(0), node, data_plate, num_n)[0] for m in moments)


def _initial_local_params(guide, x, args, kwargs, sites, data_plate, num_init_samples):
    """Per-site (loc, log_scale, transform, event_ndim); loc of shape (N, *rest), unconstrained.

    Taken from the guide's ``.mean``/``.stddev`` for real-valued sites, else from the moments of
    ``num_init_samples`` guide draws mapped through ``biject_to(support).inv``.
    """
    num_n, params, draws = x.shape[0], {}, None
    for name, node in sites.items():
        fn, transform = node["fn"], biject_to(node["fn"].support)
        moments = _closed_form_moments(node, transform, data_plate, num_n)
        if moments is None:
            if draws is None:
                draws = guide_draws(
                    guide, x, *args, num_chains=1, num_draws=num_init_samples,
                    data_plate=data_plate, **kwargs,
                )  # fmt: skip
            u = transform.inv(draws[name][0])  # (S, N, *rest) unconstrained
            moments = u.mean(0), u.std(0)
        loc, scale = (m.detach() for m in moments)
        event_ndim = fn.event_dim - (transform.codomain.event_dim - transform.domain.event_dim)
        params[name] = (loc, scale.clamp_min(1e-6).log(), transform, event_ndim)
    return params


def _local_guide(
    params: dict, data_plate: str, data_dim: int, num_n: int, amortized=None
) -> Callable:
    """Mean-field Normal in each site's unconstrained space, pushed through biject_to(support).

    With ``amortized``, the amortized guide runs first with the fitted sites hidden, so its
    other (discrete) sites keep their amortized distribution and are recorded.
    """

    def guide(x, *args, **kwargs):
        if amortized is not None:
            hide = [*params, data_plate]  # the plate's own site is recorded below
            poutine.block(without_enumeration(amortized), hide=hide)(x, *args, **kwargs)
        with pyro.plate(data_plate, num_n, dim=data_dim):
            for name, (loc, log_scale, transform, event_ndim) in params.items():
                base = dist.Normal(loc, log_scale.exp()).to_event(event_ndim)
                fn = (
                    base
                    if _is_identity(transform)
                    else dist.TransformedDistribution(base, transform)
                )
                pyro.sample(name, fn)

    return guide


def _stl_elbo(model, live, frozen, x, args, kwargs, data_plate, num_particles, layout):
    """(S, N) reparameterized ELBO samples with the "sticking the landing" estimator.

    log q is evaluated with detached local parameters (Roeder, Wu & Duvenaud 2017): an unbiased
    gradient whose variance vanishes when q equals the posterior.
    """
    with pyro.plate("_amortization_particles", num_particles, dim=layout.particle_dim):
        guide_trace = poutine.trace(live).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *args, **kwargs
        )
        score_trace = poutine.trace(poutine.replay(frozen, trace=guide_trace)).get_trace(
            x, *args, **kwargs
        )
    log_p = trace_log_prob(model_trace, layout, num_particles, data_plate, guide_trace)
    return log_p - trace_log_prob(score_trace, layout, num_particles, data_plate)


def _fit_local(model, init, x, args, kwargs, data_plate, layout, opts, amortized=None):
    """Adam on the local (loc, log-scale) leaves only; Polyak average of the last half."""
    num_steps, lr, num_particles, progress = opts
    num_n = x.shape[0]
    leaves = [t.clone().requires_grad_() for loc, ls, _, _ in init.values() for t in (loc, ls)]
    spec = [(tr, ev) for _, _, tr, ev in init.values()]

    def build(tensors):
        pairs = zip(init, tensors[0::2], tensors[1::2], spec, strict=True)
        return {name: (loc, ls, *s) for name, loc, ls, s in pairs}

    live = _local_guide(build(leaves), data_plate, layout.data_dim, num_n, amortized)
    optim = torch.optim.Adam(leaves, lr=lr)
    averages, count = [torch.zeros_like(t) for t in leaves], 0
    bar = tqdm(range(num_steps), desc="per-datapoint guides", leave=False, disable=not progress)
    for step in bar:
        frozen = _local_guide(
            build([t.detach() for t in leaves]), data_plate, layout.data_dim, num_n, amortized
        )
        elbo = _stl_elbo(model, live, frozen, x, args, kwargs, data_plate, num_particles, layout)
        grads = torch.autograd.grad(-elbo.mean(0).sum(), leaves)  # only the local leaves
        for leaf, grad in zip(leaves, grads, strict=True):
            leaf.grad = grad
        optim.step()
        if step >= num_steps // 2:
            count += 1
            for avg, leaf in zip(averages, leaves, strict=True):
                avg += (leaf.detach() - avg) / count
    return build(averages if count else [t.detach() for t in leaves])


def amortization_gap(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_steps: int = 300,
    lr: float = 0.05,
    num_samples: int = 500,
    num_particles: int = 8,
    data_plate: str = DATA_PLATE,
    progress: bool = False,
    **kwargs,
) -> dict:
    """Amortization gap per datapoint (Cremer, Li & Duvenaud 2018, Table 1), in nats.

    The gap is L[q*] - L[q], the ELBO of the best guide of a family fitted to each datapoint
    minus the ELBO of the amortized guide. Here q* is a mean-field Normal with local parameters
    (loc, log-scale) per datapoint and per latent unit -- in the unconstrained space
    ``biject_to(support)`` of each latent site -- initialised from the amortized guide's
    mean/scale (or draw moments) and fitted by Adam (``num_steps``, ``lr``) on a
    ``num_particles``-sample ELBO with the "sticking the landing" gradient (Roeder, Wu &
    Duvenaud 2017). Gradients are taken with ``torch.autograd.grad`` w.r.t. the local
    parameters only: model and guide parameters are constants, no ``.grad`` is set and the
    param store is untouched. Both ELBOs are then estimated by
    :func:`pyro_vae.infer.evidence.elbo_per_datapoint` with ``num_samples`` draws.

    Discrete latent sites (e.g. y of the M2 model) keep the amortized guide's distribution
    (q_phi(y|x)); only the continuous sites get local parameters, one q*(z) per datapoint
    whatever y is drawn, so the gap measures the amortized q(z|x, y) against that.

    The gap is >= 0 up to Monte Carlo and optimization error when the amortized guide is
    itself a mean-field Gaussian; a richer amortized guide (full covariance, flows) can make
    it negative.

    Parameters
    ----------
    model : callable
        ``model(x, *args, **kwargs)`` following the site convention (docs/design.md).
    guide : callable
        ``guide(x, *args, **kwargs)``, the amortized guide.
    x : torch.Tensor of shape (N, ...)
        Data batch, datapoints along the first dimension.
    *args, **kwargs
        Passed on to ``model`` and ``guide``.
    num_steps : int, default 300
        Adam steps of the local fit (the last half are averaged).
    lr : float, default 0.05
        Adam learning rate.
    num_samples : int, default 500
        Draws per datapoint of the final ELBO estimates.
    num_particles : int, default 8
        Draws per datapoint of each optimization step.
    data_plate : str, default "data"
        Name of the data plate.
    progress : bool, default False
        A tqdm bar over the optimization steps.

    Returns
    -------
    dict
        ``elbo_amortized``, ``elbo_optimized``, ``amortization_gap``: torch.Tensor of shape
        (N,) in nats; ``mean_elbo_amortized``, ``mean_elbo_optimized``,
        ``mean_amortization_gap``: their means (float); ``local_guide``: the fitted
        per-datapoint guide, a callable on ``x``.

    Raises
    ------
    ValueError
        If ``num_steps < 0``, ``num_particles < 1`` or ``num_samples < 1``, or the pair
        doctor finds a mistake (:func:`~pyro_vae.infer.pair.doctor.check_pair`).
    pyro_vae.infer.pair.sites.GlobalLatentError
        If a latent site of the model or guide lies outside the data plate.
    """
    if num_steps < 0 or num_particles < 1 or num_samples < 1:
        raise ValueError("need num_steps >= 0, num_particles >= 1 and num_samples >= 1")
    check_data(x)  # before the guide runs (inspect_pair then checks the pair itself)
    with torch.no_grad():
        sites = latent_sites(poutine.trace(guide).get_trace(x, *args, **kwargs), data_plate)
        # where particles go; refuses any site of the model or guide outside the data plate
        layout = inspect_pair(model, guide, x, *args, data_plate=data_plate, **kwargs)
    continuous = {n: s for n, s in sites.items() if not s["fn"].support.is_discrete}
    # discrete sites keep the amortized q(y|x): only continuous sites get local parameters
    amortized = guide if len(continuous) < len(sites) else None
    local = guide  # a guide with discrete latents only has nothing to fit: the gap is 0
    if continuous:
        init = _initial_local_params(guide, x, args, kwargs, continuous, data_plate, num_samples)
        opts = (num_steps, lr, num_particles, progress)
        fitted = _fit_local(model, init, x, args, kwargs, data_plate, layout, opts, amortized)
        local = _local_guide(fitted, data_plate, layout.data_dim, x.shape[0], amortized)
    estimate = dict(num_samples=num_samples, data_plate=data_plate, **kwargs)
    amortized = elbo_per_datapoint(model, guide, x, *args, **estimate)
    if local is guide:
        optimized = amortized
    else:
        optimized = elbo_per_datapoint(model, local, x, *args, **estimate)
    gap = optimized - amortized
    return {
        "elbo_amortized": amortized,
        "elbo_optimized": optimized,
        "amortization_gap": gap,
        "mean_elbo_amortized": amortized.mean().item(),
        "mean_elbo_optimized": optimized.mean().item(),
        "mean_amortization_gap": gap.mean().item(),
        "local_guide": local,
    }
