"""How a guide uses its latent space: active units, KL per dimension, amortization gap, exact KL.

For any model/guide pair following the site convention (:mod:`pyro_vae.infer.pair.sites`:
per-datapoint latent sites inside the data plate; default latent site ``"z"``):

- :func:`active_units` -- Burda, Grosse & Salakhutdinov (2015), "Importance weighted
  autoencoders", sec. 5.2: unit u is active when A_u = Cov_x(E_q[z_u | x]) exceeds 0.01.
- :func:`kl_per_dimension` -- mean over datapoints of KL(q(z_u | x) || p(z_u)) per latent unit.
- :func:`latent_kl` -- the whole latent term E_q[log q(z|x) - log p(z)] per datapoint, by
  Monte Carlo, for any guide (flows and full-covariance Gaussians included).
- :func:`amortization_gap` -- Cremer, Li & Duvenaud (2018), "Inference suboptimality in
  variational autoencoders": ELBO of a mean-field Gaussian fitted to each datapoint separately
  minus the ELBO of the amortized guide (written in :mod:`pyro_vae.diagnostics.amortization`,
  importable from here).
- :func:`gaussian_kl_to_posterior` -- exact KL(q(z|x) || p(z|x)) against a Gaussian posterior
  (pPCA: Bishop PRML eq. 12.42).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from pyro_vae.diagnostics.amortization import amortization_gap
from pyro_vae.diagnostics.posterior import guide_draws, to_draws_layout
from pyro_vae.infer.pair.doctor import check_traces, trace_pair
from pyro_vae.infer.pair.layout import inspect_pair
from pyro_vae.infer.pair.particles import trace_log_prob
from pyro_vae.infer.pair.sites import DATA_PLATE, check_data, latent_sites
from pyro_vae.infer.runtime.devices import forked_rng

__all__ = [
    "active_units",
    "kl_per_dimension",
    "latent_kl",
    "amortization_gap",
    "gaussian_kl_to_posterior",
]


# --------------------------------------------------------------------------------------------
# tracing helpers
# --------------------------------------------------------------------------------------------
def _guide_site(guide, x, args, kwargs, site, data_plate) -> dict:
    """Trace the guide once (no grad) and return the checked latent site ``site``."""
    check_data(x)  # before the guide runs: NaN would fail inside it, in many lines
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
    sites = latent_sites(trace, data_plate)
    if site not in sites:
        raise ValueError(f"the guide has no latent site {site!r}; its latent sites: {list(sites)}")
    return sites[site]


def _per_datapoint(value: torch.Tensor, site: dict, data_plate: str, num_n: int) -> torch.Tensor:
    """A per-site tensor of shape batch + event -> (N, D) with D the flattened remainder."""
    return to_draws_layout(value.unsqueeze(0), site, data_plate, num_n)[0].reshape(num_n, -1)


def _factors(fn) -> tuple[torch.distributions.Distribution, int]:
    """Unwrap ``Independent`` layers: (univariate base distribution, reinterpreted dims)."""
    ndims = 0
    while isinstance(fn, Independent):
        ndims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    if fn.event_shape != torch.Size():
        # e.g. a full-covariance Gaussian or a flow (TransformedDistribution): the marginals
        # q(z_u | x) have no closed form, and summing per-unit KLs would miss the dependence
        raise ValueError(
            f"kl_per_dimension needs a factorized distribution (Independent of univariate "
            f"factors, e.g. Normal(loc, scale).to_event(1)); got {type(fn).__name__} with event "
            f"shape {tuple(fn.event_shape)}, whose per-unit marginals have no closed form (for a "
            f"flow or full-covariance guide, the total KL term is E_q[log q - log p(z)])"
        )
    return fn, ndims


# --------------------------------------------------------------------------------------------
# active units and KL per dimension
# --------------------------------------------------------------------------------------------
def active_units(
    guide: Callable,
    x: torch.Tensor,
    *args,
    threshold: float = 0.01,
    site: str = "z",
    num_samples: int = 1000,
    data_plate: str = DATA_PLATE,
    **kwargs,
) -> tuple[int, torch.Tensor]:
    """Number of active latent units (Burda, Grosse & Salakhutdinov 2015, sec. 5.2).

    Unit u is active when A_u = Cov_x(E_q[z_u | x]) > ``threshold`` (0.01 in the paper).
    E_q[z | x] is the traced guide distribution's ``.mean`` when it has one (e.g.
    ``Independent(Normal)``), else the mean of ``num_samples`` guide draws (e.g. a flow guide,
    whose ``TransformedDistribution`` has no closed-form mean). Cov_x is the population
    variance over the N rows of ``x``.

    Parameters
    ----------
    guide : callable
        ``guide(x, *args, **kwargs)`` following the site convention (docs/design.md).
    x : torch.Tensor of shape (N, ...)
        Data batch, N >= 2 datapoints along the first dimension.
    *args, **kwargs
        Passed on to ``guide``.
    threshold : float, default 0.01
        Activity above which a unit counts as active.
    site : str, default "z"
        The latent site whose units are counted.
    num_samples : int, default 1000
        Guide draws per datapoint when the site's distribution has no closed-form mean.
    data_plate : str, default "data"
        Name of the data plate.

    Returns
    -------
    num_active : int
        Number of units with A_u > ``threshold``.
    cov_per_dim : torch.Tensor of shape (D_z,)
        A_u for every unit, the event dimensions of ``site`` flattened.

    Raises
    ------
    ValueError
        If ``x`` has fewer than 2 rows, the guide has no latent site ``site``, or ``site`` is
        discrete without a mean (a Categorical).
    """
    num_n = x.shape[0]
    if num_n < 2:
        raise ValueError(f"active_units needs at least 2 datapoints, got {num_n}")
    node = _guide_site(guide, x, args, kwargs, site, data_plate)
    try:
        mean = _per_datapoint(node["fn"].mean, node, data_plate, num_n)
        if not torch.isfinite(mean).all():
            raise NotImplementedError
    except NotImplementedError:  # no closed-form mean: Monte Carlo over guide draws
        if node["fn"].support.is_discrete:  # the mean of category indices means nothing
            raise ValueError(
                f"active units need E_q[{site}|x], but the discrete site {site!r} "
                f"({type(node['fn']).__name__}) has no mean; count the units of a continuous site"
            ) from None
        draws = guide_draws(
            guide, x, *args, num_chains=1, num_draws=num_samples, data_plate=data_plate, **kwargs
        )[site][0]
        mean = draws.mean(0).reshape(num_n, -1)
    cov = mean.detach().var(0, unbiased=False)
    return int((cov > threshold).sum()), cov


def kl_per_dimension(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    site: str = "z",
    data_plate: str = DATA_PLATE,
    **kwargs,
) -> torch.Tensor:
    """Mean over datapoints of KL(q(z_u | x_n) || p(z_u)) for every latent unit u, in nats.

    Analytic, via ``torch.distributions.kl_divergence`` on the univariate factors of a
    factorized guide and prior (``Independent`` of univariate distributions); the prior is read
    from the model replayed on a guide draw. Summed over u it is the KL term of the ELBO
    (Kingma & Welling 2014, eq. 10). A guide whose site is not factorized -- a full-covariance
    Gaussian, or a normalizing flow such as the IAF guide of ``VAE(flows=K)`` (a
    ``TransformedDistribution``) -- is refused with a ValueError: its per-unit marginals have
    no closed form.

    Parameters
    ----------
    model : callable
        ``model(x, *args, **kwargs)`` following the site convention (docs/design.md).
    guide : callable
        ``guide(x, *args, **kwargs)``, with the same latent site ``site``.
    x : torch.Tensor of shape (N, ...)
        Data batch, datapoints along the first dimension.
    *args, **kwargs
        Passed on to ``model`` and ``guide``.
    site : str, default "z"
        The latent site.
    data_plate : str, default "data"
        Name of the data plate.

    Returns
    -------
    torch.Tensor of shape (D_z,)
        KL per unit, the event dimensions of ``site`` flattened.

    Raises
    ------
    ValueError
        If ``site`` is not a latent site of both, q or p is not factorized (e.g. a flow guide),
        the pair of factor distributions has no analytic KL, or the pair doctor finds a
        mistake (:func:`~pyro_vae.infer.pair.doctor.check_traces`).
    """
    num_n = check_data(x).shape[0]
    with torch.no_grad():
        model_trace, guide_trace = trace_pair(
            model, guide, x, *args, data_plate=data_plate, **kwargs
        )
    check_traces(model_trace, guide_trace, num_n, data_plate)  # the pair doctor
    sites = latent_sites(guide_trace, data_plate)
    if site not in sites or site not in model_trace.nodes:
        raise ValueError(f"site {site!r} must be a latent site of both guide and model")
    q_node, p_fn = sites[site], model_trace.nodes[site]["fn"]
    (q, _), (p, _) = _factors(q_node["fn"]), _factors(p_fn)
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError as err:
        raise ValueError(
            f"no analytic KL between {type(q).__name__} and {type(p).__name__}"
        ) from err
    kl = kl.detach().expand(q.batch_shape)
    return _per_datapoint(kl, q_node, data_plate, num_n).mean(0)


# --------------------------------------------------------------------------------------------
# the whole latent KL term by Monte Carlo, and the exact KL to a Gaussian posterior
# --------------------------------------------------------------------------------------------
def latent_kl(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int = 10,
    data_plate: str = DATA_PLATE,
    **kwargs,
) -> torch.Tensor:
    """E_q[log q(z | x_n) - log p(z)] per datapoint, by Monte Carlo, for any guide.

    The latent term of the ELBO (ELBO = E_q[log p(x | z)] - this), summed over every latent
    site the guide samples, with p the model's density of those sites replayed at the guide's
    draws. Unlike :func:`kl_per_dimension` it needs no factorized or closed-form density, so it
    serves flow and full-covariance guides; for a factorized Gaussian guide it estimates the sum
    of :func:`kl_per_dimension` (the test compares them).

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        Data batch.
    *args, **kwargs
        Passed on to ``model`` and ``guide``.
    num_samples : int, default 10
        Guide draws per datapoint, drawn at once under an outer plate.
    data_plate : str, default "data"
        Name of the data plate.

    Returns
    -------
    torch.Tensor of shape (N,)
        The Monte Carlo mean over draws, nats per datapoint.
    """
    with forked_rng(x):  # finding the layout must not change the draws that follow
        layout = inspect_pair(model, guide, x, *args, data_plate=data_plate, **kwargs)
    with torch.no_grad(), pyro.plate("_kl_draws", num_samples, dim=layout.particle_dim):
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *args, **kwargs
        )
    for name in [n for n, site in model_trace.nodes.items() if site.get("is_observed")]:
        model_trace.remove_node(name)  # keep p(z): the latent sites only
    log_q = trace_log_prob(guide_trace, layout, num_samples, data_plate)
    log_p = trace_log_prob(model_trace, layout, num_samples, data_plate, guide_trace)
    return (log_q - log_p).mean(0)


def _as_multivariate_normal(fn) -> MultivariateNormal:
    if isinstance(fn, MultivariateNormal):
        return fn
    if isinstance(fn, Independent) and isinstance(fn.base_dist, Normal):
        if fn.reinterpreted_batch_ndims == 1:
            base = fn.base_dist
            return MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))
    raise ValueError(
        "gaussian_kl_to_posterior needs a Gaussian guide site: MultivariateNormal or "
        f"Normal(loc, scale).to_event(1); got {fn}"
    )


def gaussian_kl_to_posterior(
    guide: Callable,
    x: torch.Tensor,
    exact_posterior: MultivariateNormal,
    *args,
    site: str = "z",
    data_plate: str = DATA_PLATE,
    **kwargs,
) -> torch.Tensor:
    """Exact KL(q(z | x_n) || p(z | x_n)) in nats for a Gaussian guide and Gaussian posterior.

    The closed form between two Gaussians,
    0.5 [tr(S_p^-1 S_q) + (m_p - m_q)^T S_p^-1 (m_p - m_q) - D + log det S_p - log det S_q],
    against e.g. pPCA's exact posterior (Bishop 2006, PRML eq. 12.42).

    Parameters
    ----------
    guide : callable
        ``guide(x, *args, **kwargs)`` whose site ``site`` is a ``MultivariateNormal`` or
        ``Normal(loc, scale).to_event(1)`` with batch shape (N,).
    x : torch.Tensor of shape (N, ...)
        Data batch, datapoints along the first dimension.
    exact_posterior : torch.distributions.MultivariateNormal
        p(z | x_n), batch shape (N,), event shape (D_z,); for pPCA ``PPCA.posterior(x)``.
    *args, **kwargs
        Passed on to ``guide``.
    site : str, default "z"
        The latent site.
    data_plate : str, default "data"
        Name of the data plate.

    Returns
    -------
    torch.Tensor of shape (N,)
        KL per datapoint.

    Raises
    ------
    ValueError
        If ``exact_posterior`` is not a ``MultivariateNormal``, the guide's site is not
        Gaussian, or the batch or event shapes do not match.
    """
    if not isinstance(exact_posterior, MultivariateNormal):
        raise ValueError(f"exact_posterior must be a MultivariateNormal, got {exact_posterior}")
    num_n = x.shape[0]
    q = _as_multivariate_normal(_guide_site(guide, x, args, kwargs, site, data_plate)["fn"])
    expected = (torch.Size([num_n]), exact_posterior.event_shape)
    if (q.batch_shape, q.event_shape) != expected:
        raise ValueError(
            f"guide site {site!r} has batch {tuple(q.batch_shape)}, event {tuple(q.event_shape)}"
            f"; expected batch ({num_n},), event {tuple(exact_posterior.event_shape)}"
        )
    if exact_posterior.batch_shape != torch.Size([num_n]):
        raise ValueError(
            f"exact_posterior batch {tuple(exact_posterior.batch_shape)} != ({num_n},)"
        )
    with torch.no_grad():
        return kl_divergence(q, exact_posterior)
