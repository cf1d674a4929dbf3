"""A run ready to train: its model, objective and streams, made in the order that repeats a run.

:func:`training_recipe` turns the checked options of ``pyro-vae train`` and the run's data into
a :class:`TrainingRecipe` (the recipes of :mod:`pyro_vae.runs.recipes`), whose
:meth:`~TrainingRecipe.train` calls :func:`~pyro_vae.infer.train` with the options' settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pyro

from pyro_vae.data import DatasetSplits
from pyro_vae.infer.training.loop import TrainResult, train
from pyro_vae.models.conditional import CVAE
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE
from pyro_vae.runs.config import write_config
from pyro_vae.runs.models import model_kind
from pyro_vae.runs.recipes import (
    TrainingStreams,
    build_model,
    m2_alpha,
    m2_labelled_stream,
    model_arguments,
    training_objective,
    training_streams,
)

__all__ = [
    "COMPILE_CHOICES",
    "TRAINING_STEP",
    "StepPath",
    "TrainingRecipe",
    "training_recipe",
    "training_step_line",
    "training_step_record",
]

COMPILE_CHOICES = {"auto": "auto", "on": True, "off": False}
"""``--compile`` -> the ``compile`` setting of :func:`~pyro_vae.infer.train`."""

TRAINING_STEP = "training_step"
"""The key of ``config.json`` that records the path the training step took: ``{"path":
"compiled" or "eager", "reason": ...}`` (:func:`training_step_record`)."""


@dataclass(frozen=True)
class StepPath:
    """The path of a run's training step, compiled or eager: said, recorded, kept by a resume.

    A new run (or a resume of a run whose ``config.json`` has no record) records the path
    :func:`~pyro_vae.infer.train` decides in ``config[TRAINING_STEP]`` (a new run writes it at
    once; a resume with its resume record, at its first epoch); a resume of a run that has one
    takes that path again (``kept``), whatever ``--compile auto`` would decide now.

    Attributes
    ----------
    config : dict
        The run's config, as the command will write it.
    done : int
        The epochs done before (0 for a new run).
    say : callable
        ``print``, or one that prints nothing (``--quiet``, other ranks).
    write_to : Path or None
        The run folder, where this process writes ``config.json`` (None: another rank does).
    kept : dict or None
        The record of the run being resumed, whose path the resume takes (:meth:`of`).
    """

    config: dict
    done: int
    say: Callable
    write_to: Path | None
    kept: dict | None = None

    @classmethod
    def of(cls, config: dict, done: int, say: Callable, write_to: Path | None) -> StepPath:
        """The path of a run with this ``config``: a resume (``done`` > 0) keeps its record."""
        return cls(config, done, say, write_to, config.get(TRAINING_STEP) if done else None)

    def on_start(self, decision) -> None:
        """``train``'s ``on_start``: record the decision (unless kept) and say the path."""
        if self.kept is None:
            record = training_step_record(decision, self.config["options"], self.done)
            self.config[TRAINING_STEP] = record
            if not self.done and self.write_to is not None:
                write_config(self.write_to, self.config)
        self.say(training_step_line(self.config[TRAINING_STEP], kept=self.kept is not None))


@dataclass(frozen=True)
class TrainingRecipe:
    """A run ready to train: its model, objective, streams and the options that made them.

    Attributes
    ----------
    model : VAE, CVAE or M2
        Freshly built from the seeded RNG.
    loss : str or Objective
        The objective of the first stream (:func:`training_objective`).
    streams : TrainingStreams
        The data; for M2 the labelled stream carries its classification term.
    options : dict
        The options, M2's ``alpha`` filled in (:func:`m2_alpha`).
    """

    model: VAE | CVAE | M2
    loss: object
    streams: TrainingStreams
    options: dict

    def step_path(self, config: dict, done: int, say: Callable, write_to) -> StepPath:
        """The :class:`StepPath` of this run, for :meth:`train` (:meth:`StepPath.of`)."""
        return StepPath.of(config, done, say, write_to)

    @property
    def num_labelled(self) -> int | None:
        """N_l, the number of images of the labelled stream (None without one)."""
        labelled = self.streams.labelled
        return None if labelled is None else len(labelled.data[0])

    def train(self, out_dir, resume=False, on_epoch_end=None, tags=None, path=None) -> TrainResult:
        """Train the model with the options' settings, writing into ``out_dir``.

        Parameters
        ----------
        out_dir : str or Path
            The run folder (checkpoint, history).
        resume : bool
            Continue from its checkpoint.
        on_epoch_end : callable, optional
            Called with each epoch's record (see :func:`~pyro_vae.infer.train`).
        tags : dict, optional
            Constant columns of every history record.
        path : StepPath, optional
            Says and records the path the training step takes; a resume of a run that
            recorded one takes it again instead of deciding ``--compile`` anew.

        Returns
        -------
        TrainResult

        Raises
        ------
        OSError, ValueError, CheckpointError, TrainingDivergedError
            As :func:`~pyro_vae.infer.train`.
        """
        options = self.options
        kept = path.kept if path is not None else None
        kept_path = kept is not None and kept["path"] == "compiled"
        pyro.clear_param_store()  # the model's parameters are registered afresh by train
        return train(
            self.model.model,
            self.model.guide,
            self.streams.data,
            val_data=self.streams.val_data,
            labelled=self.streams.labelled,
            epochs=options["epochs"],
            batch_size=options["batch_size"],
            lr=options["lr"],
            loss=self.loss,
            device=options["device"],
            seed=options["seed"],
            clip_norm=options["clip_norm"],
            patience=options["patience"],
            out_dir=out_dir,
            resume=resume,
            progress=not options["quiet"],
            on_epoch_end=on_epoch_end,
            tags=tags,
            compile=COMPILE_CHOICES[options["compile"]] if kept is None else kept_path,
            on_start=path.on_start if path is not None else None,
        )


def training_step_record(decision, options: Mapping, done: int) -> dict:
    """The :data:`TRAINING_STEP` record of the path a run's training step took.

    Parameters
    ----------
    decision : CompileDecision
        The path :func:`~pyro_vae.infer.train` took (its ``on_start`` argument).
    options : Mapping
        The run's options (``compile`` as given: "auto", "on" or "off").
    done : int
        The epochs done before (a resume of a run whose ``config.json`` has no record: the
        path is decided now, by the same rule, and the record says so).

    Returns
    -------
    dict
        ``{"path": "compiled" or "eager", "reason": ...}``, e.g. ``{"path": "eager",
        "reason": "auto: 1,170 steps < 2,000"}``.
    """
    reason, given = decision.reason, options["compile"]
    if given != "auto":  # "compile=True" -> "--compile on", a fallback's reason kept
        reason = f"--compile {given}" + reason.removeprefix(f"compile={COMPILE_CHOICES[given]}")
    elif done:
        reason += (
            f"; decided at the resume from epoch {done} (config.json did not record the path "
            "taken before)"
        )
    return {"path": "compiled" if decision.compile else "eager", "reason": reason}


def training_step_line(record: dict, kept: bool) -> str:
    """The line ``pyro-vae train`` says the path with: "training step: eager (auto: 1,170
    steps < 2,000)"; ``kept``: a resume took the path its run recorded."""
    reason = f"kept from the run's start: {record['reason']}" if kept else record["reason"]
    return f"training step: {record['path']} ({reason})"


def training_recipe(options: Mapping, data: DatasetSplits) -> TrainingRecipe:
    """The model, objective and streams of a run, in the order that makes a seed repeat a run.

    The streams first (they refuse too many labels per class before anything is drawn), then
    ``pyro.set_rng_seed(options["seed"])`` and the networks, then the objective and, for M2,
    alpha and the labelled stream's loss.

    Parameters
    ----------
    options : Mapping
        The checked options of ``pyro-vae train`` (:func:`pyro_vae.runs.checks.check_options`).
    data : DatasetSplits
        The run's data (:func:`~pyro_vae.runs.recipes.run_data`).

    Returns
    -------
    TrainingRecipe

    Raises
    ------
    ValueError
        More labels per class than some class has, or arguments a model refuses.
    """
    options = dict(options)
    streams = training_streams(options, data)
    pyro.set_rng_seed(options["seed"])  # before the networks are initialised: runs repeat
    model = build_model(options["model"], model_arguments(options, data))
    loss = training_objective(options)
    if model_kind(options["model"]).semi_supervised:
        images = streams.labelled.data[0]
        options["alpha"] = m2_alpha(len(images), options["alpha"])
        schedule = options["labelled_schedule"]
        passes = options["labelled_passes"]
        labelled = m2_labelled_stream(model, images, options["alpha"], schedule, passes)
        streams = replace(streams, labelled=labelled)
    return TrainingRecipe(model, loss, streams, options)
