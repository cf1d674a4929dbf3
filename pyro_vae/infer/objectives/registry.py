"""The loss registry: every built-in loss by name, and ``make_objective``.

One table, :data:`LOSS_REGISTRY`, name -> :class:`Loss` (how to build it, the settings it
takes, one help line), read by :func:`make_objective`, the run recipes and option checks
(:mod:`pyro_vae.runs.losses`, which maps the command line's options to the settings), the
command line's choices and help, and the tests' sweeps. Settings are plain keyword arguments
of the loss (``num_particles``, ``annealing``, ``free_bits``): nothing here knows an option
of the command line.

To add a loss: a module with its :class:`~pyro_vae.infer.objectives.base.Objective` and one
entry below (docs/design.md, "Adding a loss").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pyro_vae.infer.objectives.base import Objective, as_objective
from pyro_vae.infer.objectives.dreg import DReGObjective
from pyro_vae.infer.objectives.elbo import FastTraceELBO, PyroELBO
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.objectives.kl_control import KLControlledELBO
from pyro_vae.infer.objectives.stl import STLObjective
from pyro_vae.infer.pair.layout import is_fully_reparameterized, max_plate_nesting
from pyro_vae.infer.pair.particles import PairBatch
from pyro_vae.infer.pair.sites import DATA_PLATE

__all__ = ["LOSSES", "LOSS_REGISTRY", "Loss", "LossChoice", "losses_taking", "make_objective"]


@dataclass(frozen=True)
class Loss:
    """One registered loss.

    Attributes
    ----------
    build : callable
        ``build(pair, **settings) -> Objective``, with ``pair`` a
        :class:`~pyro_vae.infer.pair.particles.PairBatch` holding the pair and a first batch
        (for what a loss reads off the pair: reparameterization, plate nesting; its layout is
        None) and ``settings`` a subset of :attr:`settings`.
    help : str
        One line for the command line's help.
    settings : tuple of str
        The keyword settings ``build`` takes.
    """

    build: Callable[..., Objective]
    help: str
    settings: tuple[str, ...] = ()


def _trace(pair: PairBatch, annealing=None, free_bits: float = 0.0) -> Objective:
    if annealing is not None or free_bits:
        return KLControlledELBO(annealing, free_bits, pair.data_plate)
    fast = is_fully_reparameterized(pair.model, pair.guide, pair.x, *pair.args, **pair.kwargs)
    return FastTraceELBO(pair.data_plate) if fast else PyroELBO(Trace_ELBO(), pair.data_plate)


def _enum(pair: PairBatch) -> Objective:
    nesting = max_plate_nesting(pair.model, pair.guide, pair.x, *pair.args, **pair.kwargs)
    return PyroELBO(TraceEnum_ELBO(max_plate_nesting=nesting), pair.data_plate)


def _pyro(elbo: type[ELBO], **arguments) -> Callable[[PairBatch], Objective]:
    """``build`` for one of Pyro's ELBOs."""
    return lambda pair: PyroELBO(elbo(**arguments), pair.data_plate)


def _constructed(objective: type[Objective]) -> Callable[..., Objective]:
    """``build`` for an objective constructed from its settings and the data plate alone."""
    return lambda pair, **settings: objective(data_plate=pair.data_plate, **settings)


LOSS_REGISTRY: dict[str, Loss] = {
    "trace": Loss(
        _trace,
        "our fast Trace_ELBO (Pyro's where a guide site has no rsample)",
        ("annealing", "free_bits"),
    ),
    "pyro-trace": Loss(_pyro(Trace_ELBO), "Pyro's Trace_ELBO"),
    "meanfield": Loss(_pyro(TraceMeanField_ELBO), "Pyro's TraceMeanField_ELBO (analytic KL)"),
    "jit": Loss(_pyro(JitTrace_ELBO, ignore_jit_warnings=True), "Pyro's JitTrace_ELBO"),
    "iwae": Loss(
        _constructed(IWAEObjective),
        "the importance-weighted bound of k particles (Burda et al. 2015)",
        ("num_particles",),
    ),
    "enum": Loss(_enum, "Pyro's TraceEnum_ELBO, discrete guide sites summed out"),
    "iwae-dreg": Loss(
        _constructed(DReGObjective),
        "the IWAE bound, doubly reparameterized guide gradient (Tucker et al. 2018)",
        ("num_particles",),
    ),
    "stl": Loss(
        _constructed(STLObjective),
        "the ELBO, sticking-the-landing guide gradient (Roeder et al. 2017)",
    ),
}
"""Every built-in loss: name -> :class:`Loss`."""

LOSSES = tuple(LOSS_REGISTRY)
"""The names of the built-in losses."""


def losses_taking(setting: str) -> tuple[str, ...]:
    """The names of the losses that take ``setting`` (e.g. ``"num_particles"``)."""
    return tuple(name for name, loss in LOSS_REGISTRY.items() if setting in loss.settings)


@dataclass(frozen=True)
class LossChoice:
    """A registered loss by name, with settings: built by :func:`make_objective` on a pair.

    What a run's options ask for (``LossChoice("iwae-dreg", {"num_particles": 50})``) before a
    pair exists; ``train(..., loss=choice)`` takes it like a loss name.

    Raises
    ------
    ValueError
        An unknown name, or a setting the loss does not take.
    """

    name: str
    settings: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in LOSS_REGISTRY:
            raise ValueError(
                f"unknown loss {self.name!r}; choose one of {LOSSES} or pass a pyro ELBO"
            )
        takes = LOSS_REGISTRY[self.name].settings
        for setting in self.settings:
            if setting not in takes:
                raise ValueError(
                    f"loss {self.name!r} takes no setting {setting!r}; it takes "
                    f"{', '.join(takes) or 'none'}"
                )

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{self.name}({settings})"


def make_objective(
    loss: str | LossChoice | ELBO | Callable,
    model,
    guide,
    x,
    *args,
    data_plate: str = DATA_PLATE,
    **kwargs,
) -> Objective:
    """The objective for ``loss``, called as ``objective(model, guide, x, *args, num_data=None,
    **kwargs)`` (:mod:`~pyro_vae.infer.objectives.base`).

    Parameters
    ----------
    loss : str, LossChoice, pyro.infer.ELBO or callable
        A name in :data:`LOSSES` (built with its default settings), a :class:`LossChoice`
        (with its settings): ``"trace"`` is :class:`~pyro_vae.infer.objectives.elbo.FastTraceELBO`
        when the guide is fully reparameterized (checked by tracing the guide once on ``x``),
        else Pyro's ``Trace_ELBO``, and with ``annealing`` or ``free_bits`` a
        :class:`~pyro_vae.infer.objectives.kl_control.KLControlledELBO`; ``"iwae"`` (k = 5
        particles by default), ``"iwae-dreg"`` and ``"stl"`` are
        :class:`~pyro_vae.infer.objectives.iwae.IWAEObjective`,
        :class:`~pyro_vae.infer.objectives.dreg.DReGObjective` and
        :class:`~pyro_vae.infer.objectives.stl.STLObjective`; ``"enum"`` is
        ``TraceEnum_ELBO`` with ``max_plate_nesting`` found by tracing the pair; the others
        are Pyro's (see :data:`LOSS_REGISTRY`). A ``pyro.infer.ELBO`` instance is wrapped in
        :class:`~pyro_vae.infer.objectives.elbo.PyroELBO`; an
        :class:`~pyro_vae.infer.objectives.base.Objective` is set up on ``x``
        (:meth:`~pyro_vae.infer.objectives.base.Objective.setup`) and returned; any other
        callable is wrapped by :func:`~pyro_vae.infer.objectives.base.as_objective`.
    model, guide : callable
        The pair.
    x : torch.Tensor of shape (N, ...)
        A batch, for what a loss reads off the pair (reparameterization, plate nesting).
    *args, **kwargs
        Passed on to the pair for those checks.
    data_plate : str
        Name of the data plate.

    Returns
    -------
    Objective

    Raises
    ------
    ValueError
        When ``loss`` is a string other than those in :data:`LOSSES`, or a setting does not
        apply to it.
    """
    if isinstance(loss, ELBO):
        return PyroELBO(loss, data_plate)
    if isinstance(loss, str):
        loss = LossChoice(loss)
    if isinstance(loss, LossChoice):
        pair = PairBatch(model, guide, x, args, kwargs, None, data_plate)
        return LOSS_REGISTRY[loss.name].build(pair, **loss.settings)
    if callable(loss):
        objective = as_objective(loss)
        objective.setup(model, guide, x, *args, **kwargs)
        return objective
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES} or pass a pyro ELBO")
