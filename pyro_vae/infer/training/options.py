"""What ``train`` is asked to do: the loop's settings, and an optional labelled second stream.

:class:`TrainOptions` groups the settings of the loop (the way pythae's trainer takes a training
config), validated once when it is made; ``train(..., epochs=5, lr=1e-3)`` builds one from
keyword arguments, so simple calls stay simple. :class:`LabelledStream` is the second data set
of semi-supervised training, with its own batch size and objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyro_vae.infer.compile.policy import check_request
from pyro_vae.infer.pair.sites import DATA_PLATE

__all__ = ["SCHEDULES", "LabelledStream", "TrainOptions", "check_count"]


def check_count(name: str, value, least: int) -> None:
    """Refuse ``value`` unless it is an int >= ``least`` (bools refused), naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


@dataclass(frozen=True)
class TrainOptions:
    """The settings of :func:`~pyro_vae.infer.training.loop.train`'s loop.

    Attributes
    ----------
    epochs : int
        Epochs to reach (counting those of a resumed checkpoint).
    batch_size : int
        Datapoints per step (the last batch of an epoch may be smaller, unless the objective
        works on one batch shape only).
    lr : float
        Adam's learning rate.
    loss : str, LossChoice, pyro.infer.ELBO or callable
        The objective, see :func:`pyro_vae.infer.objectives.registry.make_objective`; e.g.
        ``"iwae"``, ``LossChoice("iwae-dreg", {"num_particles": 50})``, an
        :class:`~pyro_vae.infer.objectives.iwae.IWAEObjective` or a
        :class:`~pyro_vae.infer.objectives.kl_control.KLControlledELBO` (KL annealing, free
        bits). Its schedule gets t, the epochs done (fractional), before every step; a resumed
        run recomputes t from its epoch, so the schedule continues exactly.
    clip_norm : float, optional
        Global gradient-norm clipping.
    lr_schedule : callable, optional
        ``f(optimizer) -> torch LR scheduler``, stepped once per epoch.
    patience : int, optional
        Stop after this many epochs without a better validation loss. Without ``val_data`` it
        watches the training loss instead (the data being fitted, not held-out data), so
        :func:`~pyro_vae.infer.training.loop.train` warns (``UserWarning``) and goes on;
        ``pyro-vae train`` refuses ``--patience`` with ``--val-fraction 0``.
    seed : int, optional
        Seeds Pyro, torch, NumPy and Python before anything is drawn. Networks built before
        the call drew their initial weights already: seed before building them too
        (``pyro.set_rng_seed``), as ``pyro-vae train`` does, for a run that repeats bit for bit.
    device : str or torch.device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
    compile : {"auto", True, False}
        Run each step as one compiled graph
        (:class:`~pyro_vae.infer.training.compiled_step.CompiledSVIStep`); ``"auto"`` is
        resolved once by :func:`pyro_vae.infer.compile.policy.resolve`: a run of at least
        :data:`~pyro_vae.infer.compile.policy.AUTO_MIN_STEPS` steps (epochs x batches, so a
        resume with the same ``epochs`` decides the same) whose step nothing blocks (a labelled
        stream, a gradient all-reduce, Pyro's JIT; a KL schedule is a graph input). Compiled
        and eager runs agree to float rounding, not bit for bit.
    data_plate : str
        Name of the data plate.
    progress : bool
        A tqdm bar per epoch and one line per finished epoch.
    tags : dict, optional
        Constant columns added to every history record.

    Raises
    ------
    ValueError
        When ``epochs`` is not an int >= 0, ``batch_size`` not an int >= 1, ``patience`` not a
        positive int or None, or ``compile`` not "auto", True or False.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    loss: object = "trace"
    clip_norm: float | None = None
    lr_schedule: Callable | None = None
    patience: int | None = None
    seed: int | None = None
    device: str | torch.device = "auto"
    compile: object = "auto"
    data_plate: str = DATA_PLATE
    progress: bool = True
    tags: dict | None = None

    def __post_init__(self):
        check_count("epochs", self.epochs, 0)
        check_count("batch_size", self.batch_size, 1)
        if self.patience is not None and (
            isinstance(self.patience, bool)
            or not isinstance(self.patience, int)
            or self.patience < 1
        ):
            raise ValueError(f"patience must be a positive int or None, got {self.patience!r}")
        check_request(self.compile)

    @classmethod
    def build(cls, options: TrainOptions | None, settings: dict) -> TrainOptions:
        """``options`` (default: all defaults) with the keyword ``settings`` replacing fields.

        Raises
        ------
        TypeError
            For a setting that is not a field, naming it and the fields.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - fields)
        if unknown:
            raise TypeError(
                f"train() got unknown option(s) {unknown}; the options are {sorted(fields)}"
            )
        return dataclasses.replace(options or cls(), **settings)


SCHEDULES = ("alternate", "joint")
"""How a labelled stream enters the steps (:class:`LabelledStream`'s ``schedule``)."""


@dataclass(frozen=True)
class LabelledStream:
    """A second, labelled data set for semi-supervised training, and how it enters the steps.

    ``schedule="alternate"`` (the default), the training loop of Pyro's SS-VAE example: an
    epoch is one pass over the first stream and ``passes`` over the labelled one, the labelled
    batches spread evenly among the unlabelled ones, and every batch takes steps of its own.
    An unlabelled batch takes one step on ``loss``; a labelled batch one step per part of its
    objective (:meth:`~pyro_vae.infer.objectives.base.Objective.step_parts`: for M2, -ELBO
    with y given, then the classification term), each loss times B_l / B, so that every
    datapoint of either stream weighs the same per step. Over an epoch the steps sum to the
    union's loss sum_n loss_n / B, each labelled datapoint counted ``passes`` times (see
    :meth:`~pyro_vae.infer.training.svi.SVIStep.step_labelled`).

    ``schedule="joint"``: every step takes a batch of each stream and minimizes the loss of
    their union per datapoint, (N * loss(batch) + N_l * labelled_loss(batch_l)) / (N + N_l),
    each stream scaled for its own minibatch (see
    :meth:`~pyro_vae.infer.training.svi.SVIStep.step`); an epoch is one pass over the first
    stream, the labelled batches drawn from fresh permutations one after the other.

    "alternate" is the default because it gives the classifier q(y|x) steps of its own on the
    labelled images, where "joint" dilutes the labelled gradient by N_l / (N + N_l) in every
    step, and because its ``passes`` can give the labels as many steps as the unlabelled
    images get, which is what lifted M2 above its supervised baselines (docs/results/
    semi_supervised.md).

    Attributes
    ----------
    data : tuple
        ``(x_l, *extras_l)``, in the forms ``train``'s ``data`` takes.
    batch_size : int, optional
        Datapoints of the labelled stream per step (default ``min(batch_size, N_l)``).
    loss : str, pyro.infer.ELBO or callable, optional
        Its objective (default: the first stream's), e.g. an
        :class:`~pyro_vae.infer.objectives.auxiliary.AuxiliaryTerm` with a classification term.
    schedule : {"alternate", "joint"}
        As above.
    passes : int or "auto"
        Passes over the labelled stream per epoch in the "alternate" schedule, each a fresh
        permutation, all spread evenly among the unlabelled batches: ``passes=k`` counts
        every labelled datapoint k times in the epoch's loss. ``"auto"`` (the default) takes
        as many labelled batches as unlabelled ones, max(1, round(T / T_l)) passes for T
        unlabelled and T_l labelled batches per pass (:meth:`resolve_passes`): with few
        labels one pass is one labelled step among many (100 labels in batches of 200
        beside 3,500 unlabelled images: one step in 19), and the classifier q(y|x) is
        starved of labels (docs/results/semi_supervised.md).
    """

    data: object
    batch_size: int | None = None
    loss: object = None
    schedule: str = "alternate"
    passes: int | str = "auto"

    def __post_init__(self):
        if self.batch_size is not None:
            check_count("labelled batch_size", self.batch_size, 1)
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown labelled schedule {self.schedule!r}; choose one of {list(SCHEDULES)}"
            )
        if self.passes != "auto":
            check_count("labelled passes", self.passes, 1)
        if self.passes not in ("auto", 1) and self.schedule != "alternate":
            raise ValueError(
                f"labelled passes={self.passes} needs the alternate schedule: the "
                f"{self.schedule!r} schedule takes a labelled batch in every step"
            )

    def resolve_passes(self, num_batches: int, num_batches_l: int) -> int:
        """The passes of an epoch: ``passes``, or for "auto" max(1, round(T / T_l)).

        Parameters
        ----------
        num_batches, num_batches_l : int
            Batches of the first stream per epoch, T, and of one pass over this one, T_l.

        Returns
        -------
        int
            1 in the "joint" schedule.
        """
        if self.schedule != "alternate":
            return 1
        if self.passes == "auto":
            return max(1, round(num_batches / num_batches_l))
        return self.passes

    @classmethod
    def of(cls, labelled) -> LabelledStream | None:
        """``labelled`` itself, a tuple ``(x_l, *extras_l)`` wrapped, or None."""
        if labelled is None or isinstance(labelled, cls):
            return labelled
        return cls(labelled)
