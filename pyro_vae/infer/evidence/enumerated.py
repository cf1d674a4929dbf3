"""AIS for a pair with one discrete latent in the data plate, by enumerating its values.

For a guide site y of finite support (M2's unobserved label) beside continuous latents z,

    p(x) = sum_y p(x, y) = sum_y integral p(x, y, z) dz.

For each value y of the support the model and the guide are conditioned on it, and annealed
importance sampling (:func:`~pyro_vae.infer.evidence.ais.ais_evidence`) moves z from the
guide's q(z | x, y) to p(z | x, y): the conditioned model scores log p(y) at its now observed
site, so chain s's weight w_{y,s} has E[w_{y,s}] = p(x, y). The sum over the support
w_s = sum_y w_{y,s} is then an unbiased estimate of p(x), independent across s, and

    log (1/S) sum_s w_s = logsumexp_y [log (1/S) sum_s w_{y,s}],

with its standard error, ESS and k-hat, follows from these S sums as for continuous AIS. The
guide's own q(y | x) plays no part: in the guide the site is fixed and its density masked out.
Cost: one AIS run per value of the support (10 for M2 on MNIST).

:func:`enumerated_bdmc` gives bidirectional Monte Carlo its upper bound. On simulated data
(y*, z*) ~ p(y, z | x), so z* ~ p(z | x, y*), and reverse AIS from z* on the pair conditioned
on y* estimates 1 / p(x, y*) without bias. For any distribution r(y),
E_{y* ~ p(y|x)} [r(y*) / p(x, y*)] = sum_y r(y) / p(x) = 1 / p(x); with r = q(y | x), the
guide's own, -log of the estimate, log p^(x, y*) - log q(y* | x), is a stochastic upper bound
of log p(x), tight when both the guide's q(y | x) and the chains are exact.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from pyro_vae.infer.evidence.ais import AISResult, ais_evidence, chain_summary, merge_settings
from pyro_vae.infer.evidence.bdmc import BDMCResult, Simulated, bdmc
from pyro_vae.infer.pair.sites import sample_sites, without_enumeration

_ESTIMATOR_OPTIONS = ("chunk_size", "data_plate", "progress", "compile")  # the rest: the pair's

__all__ = ["DiscreteSite", "discrete_site", "enumerated_ais", "enumerated_bdmc", "fix_site"]


class _FixSite(Messenger):
    """Give site ``name`` the value ``value`` as an observation; ``hide`` masks its density."""

    def __init__(self, name: str, value: torch.Tensor, hide: bool):
        super().__init__()
        self.name, self.value, self.hide = name, value, hide

    def _pyro_sample(self, msg):
        if msg["name"] == self.name:
            msg["value"], msg["is_observed"] = self.value, True
            if self.hide:
                msg["mask"] = False  # a density of 0 nats: q(y | x) leaves the weights


class DiscreteSite:
    """A guide's one discrete site in the data plate: its name and its support.

    Attributes
    ----------
    name : str
        The site.
    support : torch.Tensor of shape (K,) + event_shape
        Its values, the same for every datapoint.
    """

    def __init__(self, name: str, support: torch.Tensor):
        self.name, self.support = name, support


def fix_site(fn, name: str, value: torch.Tensor | None = None, hide: bool = False):
    """``fn(x, ...)`` with site ``name`` observed at a value for each of the N datapoints.

    Parameters
    ----------
    fn : callable
        A model or guide, ``fn(x, *args, **kwargs)``.
    name : str
        The site.
    value : torch.Tensor of shape event_shape, optional
        One value of its support, broadcast to the N rows of ``x``. Without it the returned
        callable takes one value per datapoint, shape (N,) + event_shape, as its last
        positional argument, so the estimators cut it into chunks and shards with ``x``.
    hide : bool
        Mask the site's density (for the guide: the weights leave q(y | x) out).

    Returns
    -------
    callable
    """

    def fixed(x, *args, **kwargs):
        if value is None:
            *args, rows = args
        else:
            rows = value.expand(x.shape[0], *value.shape)
        with _FixSite(name, rows, hide):
            return fn(x, *args, **kwargs)

    return fixed


def discrete_site(guide, x, *args, **kwargs) -> DiscreteSite | None:
    """The guide's one latent site of finite support in the data plate, or None.

    Parameters
    ----------
    guide : callable
        ``guide(x, *args, **kwargs)``; traced once (its discrete sites sampled), leaving the
        random stream as it was.
    x : torch.Tensor of shape (N, ...)
    *args, **kwargs
        Passed on.

    Returns
    -------
    DiscreteSite or None
        None when every latent site is continuous.

    Raises
    ------
    ValueError
        Several discrete sites, one without an enumerable support, or one batched by more
        than the data plate.
    """
    cuda = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the random stream stays that of the seed
        trace = poutine.trace(without_enumeration(guide)).get_trace(x, *args, **kwargs)
    found = [
        (n, s)
        for n, s in sample_sites(trace)
        if not s["is_observed"] and s["fn"].support.is_discrete
    ]
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(repr(n) for n, _ in found)
        raise ValueError(
            f"guide sites {names} are discrete: AIS enumerates one discrete latent, not several"
        )
    name, site = found[0]
    fn = site["fn"]
    if not fn.has_enumerate_support or tuple(fn.batch_shape) != (x.shape[0],):
        raise ValueError(
            f"guide site {name!r} is discrete but AIS can enumerate only a site with a finite "
            "support batched by the data plate alone (like a Categorical label per datapoint)"
        )
    support = fn.enumerate_support(expand=False).reshape(-1, *fn.event_shape)
    return DiscreteSite(name, support)


def enumerated_ais(model, guide, x, *args, settings=None, **options) -> AISResult:
    """AIS of log p(x_n) per datapoint, summing a discrete guide site out by enumeration.

    Without a discrete guide site this is :func:`~pyro_vae.infer.evidence.ais.ais_evidence`.
    With one (:func:`discrete_site`), AIS runs once per value y of its support on the pair
    conditioned on y, and chain s's weights are summed over y (module docstring).

    Parameters
    ----------
    model, guide, x, *args, settings, **options
        As for :func:`~pyro_vae.infer.evidence.ais.ais_evidence` (``chunk_size``,
        ``data_plate``, ``progress``, ``compile``, AIS settings and the pair's keywords).

    Returns
    -------
    AISResult
        ``log_weights`` (N, S) are the summed chains' log weights; ``accept_rate`` and
        ``step_size`` are means over the values of the support.

    Raises
    ------
    ValueError
        As ``ais_evidence``, and as :func:`discrete_site`.
    """
    settings = merge_settings(settings, options)
    pair_keywords = {k: v for k, v in options.items() if k not in _ESTIMATOR_OPTIONS}
    site = discrete_site(guide, x, *args, **pair_keywords)
    if site is None:
        return ais_evidence(model, guide, x, *args, settings=settings, **options)
    runs = [
        ais_evidence(
            fix_site(model, site.name, value),
            fix_site(guide, site.name, value, hide=True),
            x,
            *args,
            settings=settings,
            **options,
        )
        for value in site.support
    ]
    log_w = torch.stack([r.log_weights for r in runs]).logsumexp(0)  # (N, S): sum_y w_{y,s}
    accept = torch.stack([r.accept_rate for r in runs]).mean(0)
    steps = torch.stack([r.step_size for r in runs]).mean(0, keepdim=True)
    return AISResult(**chain_summary(log_w.T, accept, steps), settings=settings)


def enumerated_bdmc(
    model, guide, simulated: Simulated, *args, settings=None, **options
) -> BDMCResult:
    """Bidirectional Monte Carlo with a discrete guide site (module docstring).

    Without a discrete guide site this is :func:`~pyro_vae.infer.evidence.bdmc.bdmc`. With
    one, the lower bound is :func:`enumerated_ais` on the simulated data, and the upper bound
    reverse AIS on the pair conditioned on the simulated value y*, minus log q(y* | x).

    Parameters
    ----------
    model, guide, simulated, *args, settings, **options
        As for :func:`~pyro_vae.infer.evidence.bdmc.bdmc` (``chunk_size``, ``data_plate``,
        ``progress``, ``compile``, AIS settings as keywords).

    Returns
    -------
    BDMCResult
        ``accept_rate`` is that of the chains conditioned on y*.
    """
    settings = merge_settings(settings, options)
    x = simulated.x
    pair_keywords = {k: v for k, v in options.items() if k not in _ESTIMATOR_OPTIONS}
    site = discrete_site(guide, x, *args, **pair_keywords)
    if site is None:
        return bdmc(model, guide, simulated, *args, settings=settings, **options)
    y_star = simulated.latents[site.name]
    rest = {n: v for n, v in simulated.latents.items() if n != site.name}
    lower = enumerated_ais(model, guide, x, *args, settings=settings, **options)
    fixed = (fix_site(model, site.name), fix_site(guide, site.name, hide=True))
    at_y = bdmc(*fixed, Simulated(x, rest), *args, y_star, settings=settings, **options)
    labelled_guide = without_enumeration(fix_site(guide, site.name))
    q_y = poutine.trace(labelled_guide).get_trace(x, *args, y_star, **pair_keywords)
    q_y = q_y.nodes[site.name]["fn"]
    upper = at_y.upper - q_y.log_prob(y_star).detach()
    return BDMCResult(
        lower=lower.log_px,
        upper=upper,
        gap=upper - lower.log_px,
        lower_stderr=lower.stderr,
        upper_stderr=at_y.upper_stderr,
        accept_rate=at_y.accept_rate,
        settings=settings,
    )
