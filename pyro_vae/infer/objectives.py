"""Training objectives: -ELBO per datapoint for any model/guide pair, with minibatch scaling.

An *objective* is any callable with the signature

    objective(model, guide, x, *args, num_data=None, **kwargs) -> torch.Tensor (0-dim)

returning a differentiable estimate of -ELBO per datapoint (nats) of the batch ``x``, where
``num_data`` is the size N of the whole training set (None: the batch is the data set). The
trainer (:class:`pyro_vae.infer.svi.SVIStep`) accepts any such callable; :func:`make_objective`
builds the built-in ones by name or from a ``pyro.infer.ELBO``.

The fast path, :class:`FastTraceELBO`, computes exactly the single-particle Trace_ELBO estimate

    ELBO(x) = log p_theta(x, z) - log q_phi(z | x),  z ~ q_phi(z | x)  (Kingma & Welling 2014)

but records log-densities as the sites run instead of building two full ``Trace`` objects, so a
step costs little more than the networks themselves (Pyro's ``SVI`` with ``Trace_ELBO`` runs at
0.73x of a hand-written loop, ``SVIStep`` with this objective at 1.0x:
``experiments/bench_train.py``). It requires every guide site to be
reparameterized; :func:`make_objective` falls back to Pyro's own ``Trace_ELBO`` otherwise.

Discrete latents: ``"enum"`` is Pyro's ``TraceEnum_ELBO``, which sums every guide site marked
``infer={"enumerate": "parallel"}`` (``pyro.infer.config_enumerate``) out exactly instead of
sampling it; its ``max_plate_nesting`` is found by tracing the pair once
(:func:`max_plate_nesting`), or pass ``TraceEnum_ELBO(max_plate_nesting=k)`` yourself.
:class:`AuxiliaryTerm` adds a per-datapoint term to any objective, e.g. the classification
loss alpha * -log q(y|x) of the M2 model on labelled data (Kingma et al. 2014, eq. 9).

Minibatches: every site inside the data plate is scaled by N / full_size
(:func:`pyro_vae.infer.sites.data_scale`), which makes the loss an unbiased estimate of the
full-data -ELBO even when a model also has global sites. The returned loss is that estimate
divided by N: -ELBO per datapoint, in nats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from pyro import poutine
from pyro.distributions.util import is_identically_one, scale_and_mask
from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from pyro_vae.infer.devices import forked_rng
from pyro_vae.infer.sites import (
    DATA_PLATE,
    counts,
    data_frame,
    data_scale,
    plate_nesting,
    sample_sites,
    without_enumeration,
)

__all__ = [
    "LOSSES",
    "AuxiliaryTerm",
    "FastTraceELBO",
    "PyroELBO",
    "SiteTerm",
    "is_fully_reparameterized",
    "make_objective",
    "require_reparameterized",
    "max_plate_nesting",
    "run_pair",
]

LOSSES = ("trace", "pyro-trace", "meanfield", "jit", "iwae", "enum")


class SiteTerm:
    """One counting sample site as a Pyro run saw it: enough to score it later.

    Attributes
    ----------
    fn : torch.distributions.Distribution
        The site's distribution.
    value : torch.Tensor
        Its value (the draw, or the observation).
    mask : torch.Tensor or None
        Pyro's mask of the site.
    scale : float or torch.Tensor
        Pyro's scale times the minibatch factor N_total / full_size of the data plate.
    is_observed : bool
        Whether the site is observed.
    per_datapoint : bool
        Whether the site lies inside the data plate.
    """

    __slots__ = ("fn", "value", "mask", "scale", "is_observed", "per_datapoint")

    def __init__(self, msg, data_plate: str, num_data: int | None):
        self.fn, self.value, self.mask = msg["fn"], msg["value"], msg["mask"]
        self.scale = msg["scale"] * data_scale(msg, data_plate, num_data)
        self.is_observed = msg["is_observed"]
        self.per_datapoint = data_frame(msg, data_plate) is not None

    def log_prob_sum(self) -> torch.Tensor:
        """The scaled, masked log-density summed over the site's batch: a 0-dim tensor."""
        log_prob = self.fn.log_prob(self.value)
        if self.mask is not None:
            log_prob = scale_and_mask(log_prob, mask=self.mask)
        # multiply after summing: one scalar op instead of one over the whole batch
        scale = self.scale
        return log_prob.sum() if is_identically_one(scale) else log_prob.sum() * scale


class _GuideRecorder(Messenger):
    """Runs the guide, keeping each latent value and its :class:`SiteTerm`."""

    def __init__(self, data_plate: str, num_data: int | None):
        super().__init__()
        self.data_plate, self.num_data = data_plate, num_data
        self.values: dict[str, torch.Tensor] = {}
        self.latents: dict[str, SiteTerm] = {}

    def _pyro_post_sample(self, msg):
        if msg["is_observed"]:
            return
        self.values[msg["name"]] = msg["value"]  # plate indices too: the model replays them
        if counts(msg):
            self.latents[msg["name"]] = SiteTerm(msg, self.data_plate, self.num_data)


class _ModelScorer(Messenger):
    """Runs the model at the guide's latent values (a replay), keeping every :class:`SiteTerm`."""

    def __init__(self, values: dict[str, torch.Tensor], data_plate: str, num_data: int | None):
        super().__init__()
        self.values, self.data_plate, self.num_data = values, data_plate, num_data
        self.sites: dict[str, SiteTerm] = {}

    def _pyro_sample(self, msg):
        value = self.values.get(msg["name"])
        if value is not None and not msg["is_observed"]:
            msg["value"] = value
            msg["done"] = True

    def _pyro_post_sample(self, msg):
        if counts(msg):
            self.sites[msg["name"]] = SiteTerm(msg, self.data_plate, self.num_data)


def run_pair(model, guide, x, *args, data_plate=DATA_PLATE, num_data=None, **kwargs):
    """Draw z ~ q(z|x) once and replay the model there, recording every counting site.

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention (docs/design.md), called as
        ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (B, ...)
        A minibatch.
    *args, **kwargs
        Passed on to ``model`` and ``guide``.
    data_plate : str
        Name of the data plate.
    num_data : int, optional
        Size N of the whole training set, for the minibatch factor in each site's ``scale``.

    Returns
    -------
    guide_sites : dict of str to SiteTerm
        The guide's latent sites.
    model_sites : dict of str to SiteTerm
        The model's sites, observed and latent, in execution order.
    """
    with _GuideRecorder(data_plate, num_data) as guide_run:
        guide(x, *args, **kwargs)
    with _ModelScorer(guide_run.values, data_plate, num_data) as model_run:
        model(x, *args, **kwargs)
    return guide_run.latents, model_run.sites


def _total(terms) -> torch.Tensor | float:
    return sum((site.log_prob_sum() for site in terms), 0.0)


class FastTraceELBO:
    """Single-particle, reparameterized Trace_ELBO as -ELBO per datapoint (nats).

    Estimates -[log p(x, z) - log q(z | x)] with z ~ q(z | x) drawn by reparameterization
    (Kingma & Welling 2014, Secs. 2.3-2.4): the same estimator and gradients as
    ``pyro.infer.Trace_ELBO`` for fully reparameterized guides.

    Parameters
    ----------
    data_plate : str
        Name of the data plate.
    """

    def __init__(self, data_plate: str = DATA_PLATE):
        self.data_plate = data_plate

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """-ELBO per datapoint of the batch ``x``, differentiable in every parameter.

        Parameters
        ----------
        model, guide : callable
            A pair following the site convention (docs/design.md), called as
            ``f(x, *args, **kwargs)``.
        x : torch.Tensor of shape (B, ...)
            A minibatch of B datapoints.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        num_data : int, optional
            Size N of the whole training set, for minibatch scaling (None: ``x`` is all of it).

        Returns
        -------
        torch.Tensor of shape ()
            -ELBO per datapoint, in nats: the minibatch estimate of the full-data -ELBO,
            divided by N.
        """
        n = num_data or x.shape[0]
        guide_sites, model_sites = run_pair(
            model, guide, x, *args, data_plate=self.data_plate, num_data=num_data, **kwargs
        )
        return (_total(guide_sites.values()) - _total(model_sites.values())) / n


class _ScaleDataPlate(Messenger):
    """Multiplies the scale of data-plate sites by N / full_size, for Pyro's own ELBOs."""

    def __init__(self, data_plate: str, num_data: int | None):
        super().__init__()
        self.data_plate, self.num_data = data_plate, num_data

    def _pyro_sample(self, msg):
        factor = data_scale(msg, self.data_plate, self.num_data)
        if factor != 1.0:
            msg["scale"] = msg["scale"] * factor


class PyroELBO:
    """Any ``pyro.infer.ELBO`` (Trace, TraceMeanField, Jit...) as -ELBO per datapoint (nats).

    Parameters
    ----------
    elbo : pyro.infer.ELBO
        The estimator; its ``differentiable_loss`` runs on the pair with every data-plate
        site scaled for the minibatch.
    data_plate : str
        Name of the data plate.
    """

    def __init__(self, elbo: ELBO, data_plate: str = DATA_PLATE):
        self.elbo, self.data_plate = elbo, data_plate

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """-ELBO per datapoint of the batch ``x``, differentiable in every parameter.

        Parameters
        ----------
        model, guide : callable
            A pair following the site convention (docs/design.md), called as
            ``f(x, *args, **kwargs)``.
        x : torch.Tensor of shape (B, ...)
            A minibatch of B datapoints.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        num_data : int, optional
            Size N of the whole training set, for minibatch scaling (None: ``x`` is all of it).

        Returns
        -------
        torch.Tensor of shape ()
            -ELBO per datapoint, in nats: the minibatch estimate of the full-data -ELBO,
            divided by N.
        """
        n = num_data or x.shape[0]
        scale = _ScaleDataPlate(self.data_plate, num_data)
        with warnings.catch_warnings():
            # Pyro's JIT ELBOs use torch.jit.trace, which torch now flags as deprecated
            warnings.filterwarnings("ignore", message="`torch.jit.trace` is deprecated")
            if isinstance(self.elbo, TraceEnum_ELBO) and not torch.is_grad_enabled():
                # its differentiable_loss refuses a loss without gradients (validation)
                loss = torch.as_tensor(
                    self.elbo.loss(scale(model), scale(guide), x, *args, **kwargs)
                )
            else:
                loss = self.elbo.differentiable_loss(scale(model), scale(guide), x, *args, **kwargs)
        return loss / n


def is_fully_reparameterized(model, guide, x, *args, **kwargs) -> bool:
    """Whether every latent site of the guide, traced once on ``x``, draws by ``rsample``.

    Parameters
    ----------
    model, guide : callable
        The pair (only the guide runs).
    x : torch.Tensor of shape (N, ...)
        A batch of data.
    *args, **kwargs
        Passed on to the guide.

    Returns
    -------
    bool
        False when a latent site has no ``rsample`` or is marked for enumeration. The trace
        runs in a forked RNG, so asking does not change the draws that follow.
    """
    with forked_rng(x), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
    return all(
        site["fn"].has_rsample and not site["infer"].get("enumerate")
        for site in guide_trace.nodes.values()
        if counts(site) and not site["is_observed"]
    )


def max_plate_nesting(model, guide, x, *args, **kwargs) -> int:
    """How many batch dimensions the pair's plates use, for ``TraceEnum_ELBO``.

    Traces the guide (with enumeration marks ignored: every site sampled) and the model
    replayed at its draws, once, without gradients and in a forked RNG; the answer is the
    largest ``-dim`` of a vectorized plate and the longest batch shape of any sample site.
    Enumerated dimensions then go left of it.

    Parameters
    ----------
    model, guide : callable
        The pair, called as ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (N, ...)
        A batch.
    *args, **kwargs
        Passed on to the pair.

    Returns
    -------
    int
        At least 1 for a pair with a data plate.
    """
    with forked_rng(x), torch.no_grad():
        guide_trace = poutine.trace(without_enumeration(guide)).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *args, **kwargs
        )
    return plate_nesting(s for t in (guide_trace, model_trace) for _, s in sample_sites(t))


class AuxiliaryTerm:
    """An objective plus ``weight`` times a per-datapoint term: -ELBO + weight * term.

    Per datapoint n of the batch, the loss is -ELBO(x_n) + weight * term(x_n, ...), and the
    returned number is its minibatch estimate per datapoint (the objective's, plus ``weight``
    times the batch mean of ``term``). For the M2 model on labelled data, ``term`` is the
    classifier's -log q_phi(y_n|x_n) and ``weight`` alpha / N_labelled: the extended objective
    of Kingma, Rezende, Mohamed & Welling (2014), eq. 9, J^alpha = J + alpha *
    E_{p~_l(x,y)}[-log q_phi(y|x)]. It is a surrogate: the trainer records ``neg_elbo``, the
    objective's own -ELBO of the same draw, and scores validation with the plain objective.

    Parameters
    ----------
    loss : str, pyro.infer.ELBO or callable
        The objective, built by :func:`make_objective` on the first call (e.g. ``"enum"``).
    term : callable
        ``term(x, *args, **kwargs) -> torch.Tensor of shape (B,)``, differentiable, nats per
        datapoint; called with the objective's batch and arguments.
    weight : float
        The factor of ``term``, >= 0.
    data_plate : str
        Name of the data plate.

    Attributes
    ----------
    neg_elbo : torch.Tensor or None
        -ELBO per datapoint of the last call (without the term), detached.

    Raises
    ------
    ValueError
        When ``weight`` is negative or not finite, or ``term`` is not callable.
    """

    surrogate = True  # the loss is not -ELBO: the history records neg_elbo beside it

    def __init__(self, loss, term, weight: float = 1.0, data_plate: str = DATA_PLATE):
        if not callable(term):
            raise ValueError(f"term must be callable, got {type(term).__name__}")
        if isinstance(weight, bool) or not (isinstance(weight, int | float) and weight >= 0):
            raise ValueError(f"weight must be a number >= 0, got {weight!r}")
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {weight!r}")
        self.loss, self.term, self.weight, self.data_plate = loss, term, float(weight), data_plate
        self.objective = None
        self.neg_elbo = None

    def __repr__(self) -> str:
        term = getattr(self.term, "__name__", self.term)
        return f"AuxiliaryTerm({self.loss!r}, {term}, weight={self.weight:g})"

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """-ELBO + weight * term per datapoint of the batch ``x``, differentiable.

        Parameters
        ----------
        model, guide : callable
            The pair, called as ``f(x, *args, **kwargs)``.
        x : torch.Tensor of shape (B, ...)
            A minibatch.
        *args, **kwargs
            Passed on to the pair and to ``term``.
        num_data : int, optional
            Size N of the data set the batch is drawn from (None: ``x`` is all of it).

        Returns
        -------
        torch.Tensor of shape ()
            Nats per datapoint.
        """
        if self.objective is None:
            self.objective = make_objective(
                self.loss, model, guide, x, *args, data_plate=self.data_plate, **kwargs
            )
        neg_elbo = self.objective(model, guide, x, *args, num_data=num_data, **kwargs)
        inner = getattr(self.objective, "neg_elbo", None)  # the objective may be a surrogate
        self.neg_elbo = (neg_elbo if inner is None else inner).detach()
        term = self.term(x, *args, **kwargs)
        if term.shape != (x.shape[0],):
            raise ValueError(
                f"term must return one value per datapoint, shape ({x.shape[0]},), got "
                f"{tuple(term.shape)}"
            )
        return neg_elbo + self.weight * term.mean()


def require_reparameterized(what: str, model, guide, x, *args, **kwargs) -> None:
    """Refuse a guide that :func:`is_fully_reparameterized` rejects, naming ``what`` needs it.

    Parameters
    ----------
    what : str
        The objective that needs reparameterized draws, e.g. "the IWAE objective", as the
        subject of the message.
    model, guide, x, *args, **kwargs
        As for :func:`is_fully_reparameterized`.

    Raises
    ------
    ValueError
        When a latent site of the guide has no ``rsample`` or is marked for enumeration.
    """
    if not is_fully_reparameterized(model, guide, x, *args, **kwargs):
        raise ValueError(
            f"{what} needs a guide whose latent sites are all reparameterized (rsample); this "
            "guide has one that is not"
        )


def make_objective(
    loss: str | ELBO | Callable, model, guide, x, *args, data_plate: str = DATA_PLATE, **kwargs
) -> Callable:
    """The objective for ``loss``, with the signature in the module docstring.

    Parameters
    ----------
    loss : str, pyro.infer.ELBO or callable
        ``"trace"`` is :class:`FastTraceELBO` when the guide is fully reparameterized (checked
        by tracing the guide once on ``x``), else Pyro's ``Trace_ELBO`` (score-function
        gradients); ``"pyro-trace"``, ``"meanfield"`` (``TraceMeanField_ELBO``, analytic KL)
        and ``"jit"`` (``JitTrace_ELBO``) are Pyro's; ``"iwae"`` is
        :class:`~pyro_vae.infer.iwae.IWAEObjective` with k = 5 particles (pass an
        ``IWAEObjective(k)`` for another k); ``"enum"`` is ``TraceEnum_ELBO`` with
        ``max_plate_nesting`` from :func:`max_plate_nesting` (discrete guide sites marked for
        enumeration are summed out). A ``pyro.infer.ELBO`` instance is
        wrapped in :class:`PyroELBO`; any other callable is taken to be an objective already.
    model, guide : callable
        The pair.
    x : torch.Tensor of shape (N, ...)
        A batch, used only to check reparameterization for ``"trace"`` and to find the plate
        nesting for ``"enum"``.
    *args, **kwargs
        Passed on to the pair for those checks.
    data_plate : str
        Name of the data plate.

    Returns
    -------
    callable
        ``objective(model, guide, x, *args, num_data=None, **kwargs) -> 0-dim tensor``,
        -ELBO per datapoint in nats.

    Raises
    ------
    ValueError
        When ``loss`` is a string other than those in :data:`LOSSES`.
    """
    if isinstance(loss, ELBO):
        return PyroELBO(loss, data_plate)
    if callable(loss):
        return loss
    if loss == "iwae":
        from pyro_vae.infer.iwae import IWAEObjective  # iwae builds on this module

        return IWAEObjective(data_plate=data_plate)
    if loss == "enum":
        nesting = max_plate_nesting(model, guide, x, *args, **kwargs)
        return PyroELBO(TraceEnum_ELBO(max_plate_nesting=nesting), data_plate)
    if loss == "trace":
        fast = is_fully_reparameterized(model, guide, x, *args, **kwargs)
        return FastTraceELBO(data_plate) if fast else PyroELBO(Trace_ELBO(), data_plate)
    elbos = {"pyro-trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "jit": JitTrace_ELBO}
    if loss not in elbos:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES} or pass a pyro ELBO")
    kwargs = {"ignore_jit_warnings": True} if loss == "jit" else {}
    return PyroELBO(elbos[loss](**kwargs), data_plate)
