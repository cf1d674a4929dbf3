"""The pair doctor: the mistakes in a model/guide pair that no tool would otherwise report.

Every tool checks a pair once, on the first batch, before its first step or estimate, on the
traces it takes anyway (:func:`~pyro_vae.infer.pair.layout.inspect_pair` for the evidence
tools, the IWAE objective and the diagnostics; ``SVIStep.setup`` through
:func:`~pyro_vae.infer.pair.params.validated_traces` for the trainer), so each mistake below is
the same one-line ``ValueError`` everywhere, naming the site and what to change:

1. **The data**: ``x`` is a tensor of N >= 1 datapoints without NaN or inf
   (:func:`~pyro_vae.infer.pair.sites.check_data`), checked before the pair runs (a NaN batch
   would otherwise surface as torch's many-line constraint error of the encoder's output).
2. **The data plate's size**: every site inside ``pyro.plate(data_plate, n)`` has n = N =
   ``x.shape[0]``; a plate of another size broadcasts silently into a wrong number.
3. **The latent sites match**: every latent site of the guide is a latent site of the model,
   and every latent site of the model is sampled by the guide, unless the model draws it from
   its prior on purpose: marked ``infer={"from_prior": True}`` (:data:`FROM_PRIOR`), or marked
   for enumeration in the model (summed out by ``TraceEnum_ELBO``). Every tool then proposes
   such a site from the prior, so its p/q ratio is one (the particle tools leave it out of the
   log weights). A model you cannot edit is marked from outside with
   ``poutine.infer_config(model, lambda msg: {"from_prior": True})``.
4. **The support**: every observed value lies in the support of the model's distribution at
   its site (``fn.support.check``), and so does every latent value the guide proposes. One
   relaxation, for data only: a boolean (Bernoulli) support accepts grey levels in [0, 1], the
   negative cross-entropy of :class:`~pyro_vae.models.likelihoods.BernoulliLikelihood` (as in
   Pyro's VAE example). Masked-out entries and dependent supports are not checked.

Global sites (outside the data plate) are the site convention's business
(:func:`~pyro_vae.infer.pair.sites.check_data_plate`): the trainer accepts them, the
per-datapoint tools refuse them (``per_datapoint=True`` below), before the latent sites are
matched.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints

from pyro_vae.infer.pair.sites import (
    DATA_PLATE,
    DataPlate,
    check_data,
    check_data_plate,
    data_frame,
    sample_sites,
    without_enumeration,
)
from pyro_vae.infer.runtime.devices import forked_rng

__all__ = ["FROM_PRIOR", "check_pair", "check_traces"]

FROM_PRIOR = "from_prior"
"""The ``infer`` key that marks a model latent the guide deliberately does not sample."""

_WRAPPERS = (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)


def check_pair(model, guide, x, *args, data_plate: str = DATA_PLATE, **kwargs) -> None:
    """Check a model/guide pair on a batch once: data, data plate, latent sites, supports.

    Runs the guide and the model replayed at its draws once, without gradients and in a forked
    RNG (asking changes no draw that follows). Every tool runs the same checks on its own first
    trace; call this to ask before anything else runs.

    Parameters
    ----------
    model, guide : callable
        The pair, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        A batch of data, datapoints along the first dimension.
    *args, **kwargs
        Passed on to ``model`` and ``guide``.
    data_plate : str
        Name of the data plate.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        One line naming the first mistake found (see the module docstring): data that are not
        N datapoints or hold NaN or inf; a site in a data plate whose size is not N; a model
        latent the guide does not sample (and that is not marked :data:`FROM_PRIOR`); a guide
        latent the model does not have; an observed or proposed value outside the support of
        the model's distribution.

    Examples
    --------
    >>> check_pair(vae.model, vae.guide, x[:8])                # doctest: +SKIP
    """
    check_data(x)
    with forked_rng(x), torch.no_grad():
        guide_trace = poutine.trace(without_enumeration(guide)).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *args, **kwargs
        )
    check_traces(model_trace, guide_trace, x.shape[0], data_plate)


def check_traces(
    model_trace, guide_trace, num_data: int, data_plate: str = DATA_PLATE, *, per_datapoint=False
) -> DataPlate | None:
    """The checks of :func:`check_pair` on traces already taken (no further run of the pair).

    Parameters
    ----------
    model_trace : pyro.poutine.Trace
        The model, replayed at the guide's draws.
    guide_trace : pyro.poutine.Trace or None
        The guide; None for a tool that runs the model alone (NUTS): the latent sites are
        then not matched.
    num_data : int
        N, the number of datapoints in ``x``.
    data_plate : str
        Name of the data plate.
    per_datapoint : bool
        Also apply the site convention of the per-datapoint tools: a data plate that does not
        subsample (its minibatch scale would scale log p(x_n)), and
        :func:`~pyro_vae.infer.pair.sites.check_data_plate` (no site outside the data plate,
        one vectorized plate), after the plate sizes and before the latent sites.

    Returns
    -------
    DataPlate or None
        The data plate's ``(size, dim)`` when ``per_datapoint``, else None.

    Raises
    ------
    GlobalLatentError
        With ``per_datapoint``, for a site outside the data plate.
    ValueError
        As for :func:`check_pair`.
    """
    traces = [("guide", guide_trace), ("model", model_trace)]
    sites = [(role, n, s) for role, t in traces if t is not None for n, s in sample_sites(t)]
    for role, name, site in sites:
        frame = data_frame(site, data_plate)
        if frame is not None and frame.size != num_data:
            raise ValueError(
                f"{role} site {name!r}: the data plate {data_plate!r} has size {frame.size} but "
                f"x holds {num_data} datapoints; the plate must range over the first dimension "
                f"of x: pyro.plate({data_plate!r}, x.shape[0])"
            )
        full = frame.full_size if frame is not None else None
        if per_datapoint and full not in (None, num_data):  # fine for a trainer's minibatch
            raise ValueError(
                f"{role} site {name!r}: the data plate {data_plate!r} subsamples {num_data} of "
                f"{full} datapoints, which scales every log-density by {full}/{num_data}; a "
                f"per-datapoint tool scores the rows of x as they are: pyro.plate({data_plate!r}, "
                "x.shape[0]) without subsampling"
            )
    plate = check_data_plate(sites, data_plate, num_data) if per_datapoint else None
    if guide_trace is not None:
        _check_latents_match(model_trace, guide_trace)
    for name, site in sample_sites(model_trace):
        proposed = guide_trace is not None and name in guide_trace.nodes
        if site["is_observed"] or proposed:
            _check_support(name, site)
    return plate


def _drawn_from_prior(site: dict) -> bool:
    """Whether a model latent site is drawn from its prior on purpose, not by the guide.

    Parameters
    ----------
    site : dict
        A model's trace node or effect-handler message.

    Returns
    -------
    bool
        True when it is marked ``infer={"from_prior": True}`` (:data:`FROM_PRIOR`) or marked
        for enumeration (``TraceEnum_ELBO`` sums it out in the model).
    """
    return bool(site["infer"].get(FROM_PRIOR) or site["infer"].get("enumerate"))


def _quoted(names) -> str:
    return ", ".join(repr(n) for n in names)


def _check_latents_match(model_trace, guide_trace) -> None:
    """Refuse a model latent that the guide does not sample, or a guide latent the model lacks."""
    model_sites = dict(sample_sites(model_trace))
    model_latents = [n for n, s in model_sites.items() if not s["is_observed"]]
    guide_latents = [n for n, s in sample_sites(guide_trace) if not s["is_observed"]]
    for name in model_latents:
        if name in guide_latents or _drawn_from_prior(model_sites[name]):
            continue
        others = [n for n in guide_latents if n not in model_latents]
        if others:
            fix = f"it samples {_quoted(others)}); rename the guide's site to {name!r}"
        else:
            samples = f"only {_quoted(guide_latents)}" if guide_latents else "no latent site"
            fix = f"it samples {samples}); sample {name!r} in the guide"
        raise ValueError(
            f"model latent site {name!r} is not sampled by the guide ({fix}, or mark the model "
            f"site infer={{{FROM_PRIOR!r}: True}} if it is meant to be drawn from its prior in "
            "every tool"
        )
    for name in guide_latents:
        if name in model_latents:
            continue
        if name in model_sites:
            raise ValueError(
                f"guide latent site {name!r} is observed in the model: a guide samples only "
                "the model's latent sites; do not sample it in the guide when the model "
                "observes it"
            )
        raise ValueError(
            f"guide latent site {name!r} is not a latent site of the model (whose latent "
            f"sites are {_quoted(model_latents) or 'none'}); rename it to the model site it "
            "proposes, or remove it"
        )


def _support_of(site: dict):
    """``(constraint, text)`` to check a site's value against, or None when it cannot be.

    Independent wrappers are unwrapped (the check is per element); for an observed site a
    boolean support is relaxed to [0, 1]: grey levels score as the Bernoulli cross-entropy.
    """
    try:
        support = site["fn"].support
    except NotImplementedError:  # a distribution without a declared support
        return None
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if constraints.is_dependent(support):
        return None
    if site["is_observed"] and support is constraints.boolean:
        return constraints.unit_interval, "boolean, or grey levels in [0, 1]"
    return support, repr(support)


def _check_support(name: str, site: dict) -> None:
    """Refuse a site whose value lies outside its distribution's support, naming both."""
    found, mask = _support_of(site), site["mask"]
    if found is None or mask is False:
        return
    support, text = found
    value = torch.as_tensor(site["value"])
    bad = ~support.check(value)
    if torch.is_tensor(mask):  # masked-out entries are not scored: any value is fine there
        batch_ndim = value.dim() - site["fn"].event_dim
        mask = mask.reshape(mask.shape + (1,) * max(bad.dim() - batch_ndim, 0))
        try:
            bad = bad & mask
        except RuntimeError:  # a mask that does not line up with the check: check it all
            pass
    count = int(bad.sum())
    if not count:
        return
    fn = site["fn"]
    while isinstance(fn, _WRAPPERS):  # name the distribution, not its wrapping
        fn = fn.base_dist
    example = f", e.g. {value[bad][0].item():g}" if bad.shape == value.shape else ""
    if site["is_observed"]:
        what = f"observed site {name!r} has values"
        hint = (
            "are the data scaled to [0, 1]?"
            if support is constraints.unit_interval
            else "check the data's range and dtype against the model's distribution there"
        )
    else:
        what = f"model latent site {name!r} gets values from the guide"
        hint = "give the guide's site a distribution with the model's support"
    raise ValueError(
        f"{what} outside the support of {type(fn).__name__} ({text}): {count} of "
        f"{bad.numel()}{example}; {hint}"
    )
