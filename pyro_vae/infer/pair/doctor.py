"""The pair doctor: the mistakes in a model/guide pair that no tool would otherwise report.

Every tool checks a pair once, on the first batch, before its first step or estimate, on the
traces it takes anyway (:func:`~pyro_vae.infer.pair.layout.inspect_pair` for the evidence
tools, the IWAE objective and the diagnostics; ``SVIStep.setup`` through
:func:`~pyro_vae.infer.pair.params.validated_traces` for the trainer), each taken by
:func:`trace_pair`, so each mistake below is the same one-line ``ValueError`` everywhere,
naming the site and what to change:

1. **The data**: ``x`` is a tensor of N >= 1 datapoints without NaN or inf
   (:func:`~pyro_vae.infer.pair.sites.check_data`), checked before the pair runs (a NaN batch
   would otherwise surface as torch's many-line constraint error of the encoder's output).
2. **The data plate's size**: every site inside ``pyro.plate(data_plate, n)`` has n = N =
   ``x.shape[0]``; a plate of another size broadcasts silently into a wrong number. The full
   size agrees between model and guide too: replayed at the guide's indices, a model plate of
   N + 3 would silently subsample 5 of 8 and scale its terms by 8/5.
3. **The data plate is the same on both sides**: a latent site inside it in the model is inside
   it in the guide, and the reverse (a guide that forgets its plate trains a wrongly weighted
   objective: a minibatch scales the model's term and not the guide's); one in a plate of size
   N under another name is told to rename it. An observed site outside the data plate but in a
   plate of size N is the data plate under another name (or pass ``data_plate=``).
4. **The latent sites match**: every latent site of the guide is a latent site of the model,
   and every latent site of the model is sampled by the guide, unless the model draws it from
   its prior on purpose: marked ``infer={"from_prior": True}`` (:data:`FROM_PRIOR`), or marked
   for enumeration in the model (summed out by ``TraceEnum_ELBO``). Every tool then proposes
   such a site from the prior, so its p/q ratio is one (the particle tools leave it out of the
   log weights). A model you cannot edit is marked from outside with
   ``poutine.infer_config(model, lambda msg: {"from_prior": True})``.
5. **Observed shapes**: an observed value in the data plate has its distribution's shape,
   ``batch_shape + event_shape`` (:func:`~pyro_vae.infer.pair.values.check_observed_shape`).
6. **The support**: every observed value lies in the support of the model's distribution at
   its site (``fn.support.check``), and so does every latent value the guide proposes. One
   relaxation, for data only: a boolean (Bernoulli) support accepts grey levels in [0, 1], the
   negative cross-entropy of :class:`~pyro_vae.models.likelihoods.BernoulliLikelihood` (as in
   Pyro's VAE example). Masked-out entries and dependent supports are not checked.
7. **Dtypes**: an observed value its distribution cannot score (integers in a Bernoulli) is
   named; a run of the pair that fails with a torch error while ``x`` has another dtype than
   the pair's floating parameters is named with the cast ("pass x.float()"), read by
   :func:`trace_pair` from the sites recorded before the failure, as is a data plate of the
   wrong size there (instead of Pyro's many-line "Shape mismatch ... Trace Shapes:" dump).
   The rule is "the pair fails on x", never "x is not floating": data are never cast.

Global sites (outside the data plate) are the site convention's business
(:func:`~pyro_vae.infer.pair.sites.check_data_plate`): the trainer accepts them, the
per-datapoint tools refuse them (``per_datapoint=True`` below), before the latent sites are
matched.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.infer.pair.sites import (
    DATA_PLATE,
    DataPlate,
    check_data,
    check_data_plate,
    data_frame,
    sample_sites,
    without_enumeration,
)
from pyro_vae.infer.pair.values import (
    check_dtype,
    check_observed_shape,
    check_scored,
    check_support,
)
from pyro_vae.infer.runtime.devices import forked_rng

__all__ = ["FROM_PRIOR", "check_pair", "check_traces", "trace_pair"]

FROM_PRIOR = "from_prior"
"""The ``infer`` key that marks a model latent the guide deliberately does not sample."""


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
        N datapoints or hold NaN or inf; a site in a data plate whose size is not N; a latent
        site inside the data plate on one side of the pair only; a data plate under another
        name; a model latent the guide does not sample (and that is not marked
        :data:`FROM_PRIOR`); a guide latent the model does not have; an observed value of
        another shape than its distribution; an observed or proposed value outside the support
        of the model's distribution; data of a dtype the pair fails on.

    Examples
    --------
    >>> check_pair(vae.model, vae.guide, x[:8])                # doctest: +SKIP
    """
    check_data(x)
    with forked_rng(x), torch.no_grad():
        model_trace, guide_trace = trace_pair(
            model, without_enumeration(guide), x, *args, data_plate=data_plate, **kwargs
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
        one vectorized plate), after the plate sizes and names and before the latent sites.

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
    _check_plate_sizes(sites, num_data, data_plate, per_datapoint)
    if guide_trace is not None:
        _check_plates_match(model_trace, guide_trace, data_plate, num_data)
    _check_plate_names(sites, data_plate, num_data)
    plate = check_data_plate(sites, data_plate, num_data) if per_datapoint else None
    if guide_trace is not None:
        _check_latents_match(model_trace, guide_trace)
    for name, site in sample_sites(model_trace):
        if site["is_observed"]:  # its shape first: a support check broadcasts a wrong one
            check_observed_shape(name, site, data_plate)
            check_support(name, site)
            check_scored(name, site)
        elif guide_trace is not None and name in guide_trace.nodes:  # the guide's proposal
            check_support(name, site)
    return plate


def trace_pair(model, guide, x, *args, data_plate: str = DATA_PLATE, **kwargs) -> tuple:
    """Trace the guide and the model replayed at its draws, once; diagnose a run that fails.

    When the pair raises while it runs, the sites it recorded so far are read for the mistakes
    that make it fail: a data plate whose size is not N (Pyro's many-line "Shape mismatch"
    dump of the site that follows), or data of another dtype than the pair's parameters
    (torch's "mat1 and mat2 must have the same dtype"); either is raised as the doctor's one
    line, from the original error. Any other failure is raised as it is.

    Parameters
    ----------
    model : callable or None
        The model, called as ``model(x, *args, **kwargs)``; None to trace the guide alone.
    guide : callable or None
        The guide (wrapped as the caller needs, e.g. by ``without_enumeration``); None to
        trace the model alone (NUTS).
    x : torch.Tensor of shape (N, ...)
        A batch of data.
    *args, **kwargs
        Passed on to the pair.
    data_plate : str
        Name of the data plate.

    Returns
    -------
    model_trace : pyro.poutine.Trace or None
        The model, replayed at the guide's draws (None without a model).
    guide_trace : pyro.poutine.Trace or None
        The guide (None without one).

    Raises
    ------
    ValueError
        One line, for a data plate of the wrong size or data of the wrong dtype found in a
        failed run; anything else the pair raises.
    """
    tracers, model_trace, guide_trace = [], None, None
    try:
        if guide is not None:
            tracers.append(("guide", poutine.trace(guide)))
            guide_trace = tracers[-1][1].get_trace(x, *args, **kwargs)
        if model is not None:
            replayed = model if guide is None else poutine.replay(model, trace=guide_trace)
            tracers.append(("model", poutine.trace(replayed)))
            model_trace = tracers[-1][1].get_trace(x, *args, **kwargs)
    except (ValueError, RuntimeError) as failure:
        recorded = [(role, n, s) for role, t in tracers for n, s in t.trace.nodes.items()]
        try:
            samples = [site for site in recorded if site[2]["type"] == "sample"]
            _check_plate_sizes(samples, x.shape[0], data_plate)
            if isinstance(failure, RuntimeError):  # torch's dtype errors are RuntimeErrors
                check_dtype(x, [s for _, _, s in recorded if s["type"] == "param"])
        except ValueError as mistake:
            raise mistake from failure
        raise
    return model_trace, guide_trace


def _check_plate_sizes(sites, num_data: int, data_plate: str, per_datapoint=False) -> None:
    """Refuse a site in a data plate whose size is not N, or (``per_datapoint``) that
    subsamples, or whose full size differs between model and guide (replayed, the model's
    plate takes the guide's indices); a plate's own subsample-index site too (in the partial
    trace of a failed run)."""
    full_sizes, other = {}, {"model": "guide", "guide": "model"}
    for role, name, site in sites:
        if site_is_subsample(site):  # recorded as the plate is made, before its sites
            if name == data_plate and len(site["value"]) != num_data:
                raise ValueError(
                    f"the {role}'s data plate {data_plate!r} has size {len(site['value'])} but "
                    f"x holds {num_data} datapoints; the plate must range over the first "
                    f"dimension of x: pyro.plate({data_plate!r}, x.shape[0])"
                )
            continue
        frame = data_frame(site, data_plate)
        if frame is None:
            continue
        full = frame.full_size or frame.size
        full_sizes.setdefault(role, full)
        theirs = full_sizes.get(other[role], full)
        if theirs != full and full != num_data:  # replayed at the other's indices: subsampled
            raise ValueError(
                f"{role} site {name!r}: the data plate {data_plate!r} has size {full} but x "
                f"holds {num_data} datapoints (the {other[role]}'s plate has {theirs}); the "
                f"plate must range over the first dimension of x: "
                f"pyro.plate({data_plate!r}, x.shape[0])"
            )
        if frame.size != num_data:
            raise ValueError(
                f"{role} site {name!r}: the data plate {data_plate!r} has size {frame.size} but "
                f"x holds {num_data} datapoints; the plate must range over the first dimension "
                f"of x: pyro.plate({data_plate!r}, x.shape[0])"
            )
        if per_datapoint and full != num_data:  # fine for a trainer's minibatch
            raise ValueError(
                f"{role} site {name!r}: the data plate {data_plate!r} subsamples {num_data} of "
                f"{full} datapoints, which scales every log-density by {full}/{num_data}; a "
                f"per-datapoint tool scores the rows of x as they are: pyro.plate({data_plate!r}, "
                "x.shape[0]) without subsampling"
            )


def _plates_of_size(site: dict, size: int, data_plate: str) -> list[str]:
    """Names of the site's other plates of ``size``: a data plate under another name?"""
    return [f.name for f in site["cond_indep_stack"] if f.size == size and f.name != data_plate]


def _check_plates_match(model_trace, guide_trace, data_plate: str, num_data: int) -> None:
    """Refuse a latent site inside the data plate in one of the pair and outside it in the
    other: a minibatch would scale one's term and not the other's (a wrong objective)."""
    model_sites = dict(sample_sites(model_trace))
    for name, q_site in sample_sites(guide_trace):
        p_site = model_sites.get(name)
        if q_site["is_observed"] or p_site is None or p_site["is_observed"]:
            continue
        p_inside = data_frame(p_site, data_plate) is not None
        if p_inside == (data_frame(q_site, data_plate) is not None):
            continue
        role, other, outside = (
            ("guide", "model", q_site) if p_inside else ("model", "guide", p_site)
        )
        others = _plates_of_size(outside, num_data, data_plate)
        if others:
            fix = f"name the {role}'s plate {data_plate!r}, as the {other}'s"
            where = f"is in plate {others[0]!r}, not in the data plate {data_plate!r}"
        else:
            fix = f"sample it inside `with pyro.plate({data_plate!r}, x.shape[0]):`"
            where = f"lies outside the data plate {data_plate!r}"
        raise ValueError(
            f"{role} latent site {name!r} {where}, while the {other}'s {name!r} lies inside it "
            f"(a minibatch would scale one term and not the other): {fix}"
        )


def _check_plate_names(sites, data_plate: str, num_data: int) -> None:
    """Refuse an observed site outside the data plate but in a plate of size N: the data
    plate under another name (the trainer would take it for a global site, unscaled)."""
    for role, name, site in sites:
        if not site["is_observed"] or data_frame(site, data_plate) is not None:
            continue
        others = _plates_of_size(site, num_data, data_plate)
        if others:
            raise ValueError(
                f"observed site {name!r} of the {role} is in plate {others[0]!r} of size "
                f"{num_data}, not in the data plate {data_plate!r}: name that plate "
                f"{data_plate!r}, or pass data_plate={others[0]!r}"
            )


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
