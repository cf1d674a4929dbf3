"""The checks of ``pyro-vae train``'s options, and of a resume against the stored run.

Both run before anything is written: an option that does not apply to the model, options that
cannot go together, or a ``--resume`` that would change what defines the run is refused in one
line naming the options as the command spells them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from pyro_vae.infer.training.checkpoint import load_checkpoint
from pyro_vae.infer.training.run_state import CHECKPOINT_NAME
from pyro_vae.runs.config import (
    CONFIG_NAME,
    DOWNLOADABLE,
    RUN_OPTIONS,
    option_flag,
    read_config,
    stored_value,
    with_added_options,
)
from pyro_vae.runs.losses import check_loss_options
from pyro_vae.runs.models import check_model_options
from pyro_vae.runs.own_data import FILE_DATASET, check_same_data

__all__ = ["check_data_options", "check_options", "check_resume"]


def check_resume(
    options: Mapping, given: Iterable[str], run_dir: str | Path
) -> tuple[dict, dict, int]:
    """Check a ``--resume`` against the stored run before anything is written.

    Options not given take their stored values (``epochs`` and ``patience`` too); a given
    run-defining option that differs is refused, naming every difference.

    Parameters
    ----------
    options : Mapping
        The options of the command line.
    given : iterable of str
        The names of the options written on the command line.
    run_dir : str or Path
        The run folder to continue.

    Returns
    -------
    options : dict
        ``options`` with the stored run's values filled in.
    config : dict
        The stored config.
    done : int
        Epochs the run has done.

    Raises
    ------
    FileNotFoundError
        No checkpoint to continue, or no ``config.json``.
    ValueError
        An invalid config, a change of what defines the run, or ``--epochs`` that adds none.
    pyro_vae.infer.training.checkpoint.CheckpointError
        A damaged checkpoint.
    """
    given, run_dir = set(given), Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    if not checkpoint_path.is_file():
        raise FileNotFoundError(
            f"--resume: there is no checkpoint {checkpoint_path} to continue; "
            "train without --resume to start a run there"
        )
    config = read_config(run_dir)
    stored = config.get("options")
    if isinstance(stored, dict):
        stored = with_added_options(stored)
    if not isinstance(stored, dict) or any(name not in stored for name in RUN_OPTIONS):
        raise ValueError(f"{run_dir / CONFIG_NAME} records no options of pyro-vae train to resume")
    differences = [
        f"{option_flag(name)} {stored_value(options[name])} (the run has {stored[name]})"
        for name in RUN_OPTIONS
        if name in given and stored_value(options[name]) != stored[name]
    ]
    if differences:
        raise ValueError(
            "--resume cannot change what defines the run: "
            + ", ".join(differences)
            + "; train into another --out, or pass --overwrite instead of --resume to replace it"
        )
    options = dict(options)
    for name in RUN_OPTIONS:
        options[name] = tuple(stored[name]) if name == "hidden" else stored[name]
    for name in ("epochs", "patience"):  # the target and the stopping rule carry over
        if name not in given:
            options[name] = stored[name]
    if "data_file" in config:  # the same file, with the same content
        record = config["data_file"]
        check_same_data(record, options["data"], record["test"].get("path"))
    done = int(load_checkpoint(checkpoint_path)["epoch"])  # also refuses a damaged checkpoint
    if options["epochs"] <= done:
        raise ValueError(
            f"the run in {run_dir} has done {done} epochs; --epochs {options['epochs']} adds none "
            f"(pass --epochs {done + 10}, say, to train on)"
        )
    return options, config, done


def check_options(options: Mapping, given: Iterable[str]) -> dict:
    """Refuse options that do not apply to the model or cannot apply together; fill in the
    model's (:func:`~pyro_vae.runs.models.check_model_options`).

    Parameters
    ----------
    options : Mapping
        The options of ``pyro-vae train`` (after :func:`check_resume` on a resume).
    given : iterable of str
        The names of the options written on the command line.

    Returns
    -------
    dict
        ``options``, for ``--model m2`` with ``loss = "enum"``, ``labels_per_class``
        :data:`~pyro_vae.runs.config.M2_LABELS_PER_CLASS` and, on a new run, the
        :data:`~pyro_vae.runs.config.M2_DEFAULTS` unless given (the model's entry:
        :data:`~pyro_vae.runs.models.MODEL_REGISTRY`).

    Raises
    ------
    ValueError
        Naming the first option that does not apply, ``--download`` without ``--root``, or
        ``--patience`` without validation data (``--val-fraction 0``).
    """
    given = set(given)
    options = check_data_options(dict(options), given)
    options = check_model_options(options, given)
    _check_objective_options(options, given)
    if "patience" in given and not options["val_fraction"]:  # a resume has the stored fraction
        raise ValueError(
            f"--patience {options['patience']} stops on the validation -ELBO, but "
            "--val-fraction 0 holds out no validation data; pass --val-fraction 0.1 (say) or "
            "drop --patience"
        )
    if options.get("download") and options["root"] is None and options["dataset"] in DOWNLOADABLE:
        raise ValueError(
            f"--download needs --root, the folder torchvision downloads {options['dataset']} into"
        )
    return options


def check_data_options(options: dict, given: set[str]) -> dict:
    """``--data`` or ``--dataset``, the options each takes; ``--likelihood auto`` of a set.

    Parameters
    ----------
    options : dict
        The options of ``train``.
    given : set of str
        The options written.

    Returns
    -------
    dict
        ``dataset`` ``"file"`` with ``--data``; a built-in set's ``likelihood`` ``"auto"`` is
        ``"bernoulli"`` (a file's is decided from its values once it is read).

    Raises
    ------
    ValueError
        Options of a data file without ``--data``, or of a built-in set with it.
    """
    if options.get("data") is None:
        for name in ("test_data", "label_column", "image_size"):
            if options.get(name) is not None:
                raise ValueError(f"{option_flag(name)} applies to --data PATH, your own data")
        if options["likelihood"] == "auto":
            options["likelihood"] = "bernoulli"  # the built-in sets are images in [0, 1]
        return options
    for name in ("dataset", "root", "download"):
        if name in given and options.get(name) not in (None, False, FILE_DATASET):
            raise ValueError(f"{option_flag(name)} names a built-in data set; --data replaces it")
    options["dataset"] = FILE_DATASET
    return options


def _check_objective_options(options: Mapping, given: set[str]) -> None:
    if "anneal_epochs" not in given and options["anneal_epochs"] is None:
        orphans = [n for n in ("anneal_start", "anneal_cycles") if n in given]
        if orphans:
            raise ValueError(
                f"{option_flag(orphans[0])} needs --anneal-epochs (the length of the rise)"
            )
    check_loss_options(options, given)
