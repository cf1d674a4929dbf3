"""A run folder: what it holds, whether it can be written, and the trained run rebuilt.

A run folder holds ``config.json`` (:mod:`pyro_vae.runs.config`), ``checkpoint.pt`` and
``history.json``/``.csv`` (written by :func:`pyro_vae.infer.training.loop.train`), ``figures/``
and, after ``pyro-vae evaluate`` / ``diagnose``, their reports. :func:`load_run` rebuilds the
model through the same path as ``train`` (:func:`pyro_vae.runs.recipes.build_model`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from pyro_vae.data import DatasetSplits
from pyro_vae.infer.pair.params import collect_params, restore_params
from pyro_vae.infer.runtime.files import remove_leftovers as remove_temporary_files
from pyro_vae.infer.training.checkpoint import load_checkpoint
from pyro_vae.infer.training.run_state import CHECKPOINT_NAME
from pyro_vae.models.conditional import CVAE
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE
from pyro_vae.runs.config import CONFIG_NAME, read_config
from pyro_vae.runs.models import DEFAULT_MODEL, MODEL_REGISTRY, ModelKind, model_kind
from pyro_vae.runs.recipes import build_model, run_data

__all__ = [
    "KEPT_IN",
    "RUN_FILES",
    "Run",
    "check_writable",
    "clear_run",
    "evaluation_data",
    "evaluation_labels",
    "existing_run_files",
    "load_run",
    "remove_leftovers",
    "test_images",
]

RUN_FILES = (
    CONFIG_NAME,
    CHECKPOINT_NAME,
    "history.json",
    "history.csv",
    "evaluation.json",
    "diagnostics.json",
    "certification.json",
    "calibration.json",
)
"""What a training run leaves, and the latest reports that describe it: replaced together by
``--overwrite`` (with every kept report, :data:`KEPT_IN`)."""

KEPT_IN = {
    "evaluate": "evaluations",
    "certify": "certifications",
    "diagnose": "diagnoses",
    "calibrate": "calibrations",
}
"""Where in a run folder each command keeps its reports, one subfolder per report, named by
its settings (:mod:`pyro_vae.runs.archive`)."""


@dataclass
class Run:
    """A trained run folder, rebuilt: its config, the model with trained weights, data, history.

    Attributes
    ----------
    run_dir : Path
        The folder.
    config : dict
        Its ``config.json``.
    vae : VAE, CVAE, M2 or another registered model
        The trained model, as ``kind`` says (in eval mode).
    data : DatasetSplits
        The data it was trained on, split as it was.
    history : list of dict
        The training history (one record per epoch).
    kind : str
        The model: a name in :data:`~pyro_vae.runs.models.MODEL_REGISTRY`.
    """

    run_dir: Path
    config: dict
    vae: VAE | CVAE | M2
    data: DatasetSplits
    history: list[dict]
    kind: str = DEFAULT_MODEL

    @property
    def entry(self) -> ModelKind:
        """The model's entry in the registry: what the reports and uses ask of it."""
        return model_kind(self.kind)

    @property
    def conditional(self) -> bool:
        """Whether the pair is called with labels, ``f(x, y)`` (the CVAE)."""
        return self.entry.conditional


def check_writable(folder: str | Path) -> None:
    """Refuse, before any work is done, a folder that cannot be created or written to.

    Parameters
    ----------
    folder : str or Path
        A folder that exists or will be created (with its parents).

    Raises
    ------
    OSError
        When ``folder`` or one of its ancestors is a file, or the nearest existing ancestor is
        not writable; the message names the path.
    """
    folder = Path(folder)
    for ancestor in [folder, *folder.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise NotADirectoryError(f"{ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise PermissionError(f"cannot write to {ancestor}: permission denied")
            return


def existing_run_files(run_dir: str | Path) -> list[str]:
    """The :data:`RUN_FILES` present in ``run_dir``.

    Parameters
    ----------
    run_dir : str or Path
        A folder (it need not exist).

    Returns
    -------
    list of str
        Their names, in the order of :data:`RUN_FILES`.
    """
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def clear_run(run_dir: str | Path) -> None:
    """Create ``run_dir`` and remove the run in it: its :data:`RUN_FILES`, figures and reports.

    The reports kept in their own folders (``evaluations/`` ..., :data:`KEPT_IN`) and the
    ``scores_*.csv`` of ``evaluate --data`` describe the run being replaced, so they go with it.

    Parameters
    ----------
    run_dir : str or Path
        The folder a new run (or ``--overwrite``) is about to write.

    Raises
    ------
    OSError
        When the folder cannot be created or a file cannot be removed.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(run_dir)
    names = existing_run_files(run_dir)
    scores = run_dir.glob("scores_*.csv")  # evaluate --data's, of the run being replaced
    for path in [*(run_dir / n for n in names), *run_dir.glob("figures/*.png"), *scores]:
        path.unlink()
    for folder in KEPT_IN.values():
        if (run_dir / folder).is_dir():
            shutil.rmtree(run_dir / folder)


def remove_leftovers(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files that writes of :data:`RUN_FILES` killed mid-way left.

    A write killed by ``kill -9`` or a power cut leaves ``.NAME.*.tmp`` beside ``NAME``
    (:func:`pyro_vae.infer.runtime.files.atomic_write`); the next run or resume removes it.

    Parameters
    ----------
    run_dir : str or Path
        A run folder (it need not exist).

    Returns
    -------
    list of Path
        The files removed.
    """
    return remove_temporary_files(run_dir, RUN_FILES)


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", data: DatasetSplits | None = None
) -> Run:
    """Rebuild the data and the trained model of a ``pyro-vae train`` run folder.

    Parameters
    ----------
    run_dir : str or Path
        The folder given to ``pyro-vae train --out``.
    device : str or torch.device
        Where the model is put.
    data : DatasetSplits, optional
        Data to hold instead of the run's own (which are read again when None): a stand-in
        for a command that needs only the model (:func:`pyro_vae.runs.own_data.stand_in_data`).

    Returns
    -------
    Run
        With the model in eval mode and its weights from ``checkpoint.pt``.

    Raises
    ------
    FileNotFoundError, ValueError, pyro_vae.infer.training.checkpoint.CheckpointError
        Not a run folder, an invalid config, or a missing, corrupted or foreign checkpoint.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    data = run_data(config) if data is None else data
    kind = config.get("model", DEFAULT_MODEL)  # runs written before the CVAE and M2 are VAEs
    if kind not in MODEL_REGISTRY:
        raise ValueError(f"{run_dir / CONFIG_NAME} names an unknown model {kind!r}")
    trained_on = config["vae"].get("data_dim")
    if trained_on is not None and trained_on != data.test.data_dim:  # an edited config.json
        raise ValueError(
            f"the run in {run_dir} was trained on {trained_on}-dimensional data, but its "
            f"{CONFIG_NAME} names dataset {config['dataset']} ({data.test.data_dim} pixels "
            "per image): was it edited?"
        )
    vae = build_model(kind, config["vae"])
    # the parameters are found by running the pair (public Pyro API), then overwritten by name
    pyro.clear_param_store()
    labels = (data.test.y[:2],) if model_kind(kind).conditional else ()
    params = collect_params(vae.model, vae.guide, data.test.x[:2], *labels)
    try:
        restore_params(params, state["params"])
    except ValueError as err:
        raise ValueError(
            f"{run_dir / CHECKPOINT_NAME} does not match {run_dir / CONFIG_NAME}: {err}"
        ) from None
    vae.to(device).eval()
    return Run(run_dir, config, vae, data, state["history"], kind)


def test_images(data: DatasetSplits, num_points: int | None = None, seed: int = 0) -> torch.Tensor:
    """The first ``num_points`` test images, as every final report scores them.

    Data binarized "dynamically" in training are judged on one fixed, seeded binarization of
    the test set, so the numbers are repeatable and every estimator sees the same binary data.

    Parameters
    ----------
    data : DatasetSplits
        The run's data.
    num_points : int, optional
        How many test images (default all).
    seed : int
        Seeds the fixed binarization of "dynamic" data.

    Returns
    -------
    torch.Tensor of shape (num_points, D)
    """
    x = data.test.x[:num_points]
    if data.test.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x


def evaluation_data(run: Run, num_points: int | None = None, seed: int = 0) -> torch.Tensor:
    """:func:`test_images` of a loaded run: what ``evaluate``/``diagnose`` score.

    Parameters
    ----------
    run : Run
        A loaded run.
    num_points : int, optional
        How many test images (default all).
    seed : int
        Seeds the fixed binarization of "dynamic" data.

    Returns
    -------
    torch.Tensor of shape (num_points, D)
    """
    return test_images(run.data, num_points, seed)


def evaluation_labels(run: Run, num_points: int | None = None) -> torch.Tensor:
    """The labels of :func:`evaluation_data`: the first ``num_points`` test labels.

    Parameters
    ----------
    run : Run
        A loaded run.
    num_points : int, optional
        How many (default all).

    Returns
    -------
    torch.Tensor of shape (num_points,)
    """
    return run.data.test.y[:num_points]
