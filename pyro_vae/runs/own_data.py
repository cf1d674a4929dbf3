"""A run on your own data file: ``pyro-vae train --data PATH``, and the data of later commands.

The data's decisions (likelihood, standardization, binarization:
:func:`pyro_vae.datafiles.decide_transforms`) are made once, when the run is created, and
stored in ``config.json`` under ``data_file`` with the file's path, shape and sha256; every
later command reads the file through the stored transforms (:func:`load_run_file`,
:func:`read_like_run`), and a resume on a file that changed is refused naming the difference
(:func:`check_same_data`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from pyro_vae.data import DatasetSplits, ImageData
from pyro_vae.datafiles import DataFileError, Transforms, check_like, load_file, read_file, sha256
from pyro_vae.runs.models import DEFAULT_MODEL, model_kind

__all__ = [
    "FILE_DATASET",
    "TEST_FRACTION",
    "adopt_decisions",
    "check_same_data",
    "data_line",
    "file_data_config",
    "load_run_file",
    "model_image_shape",
    "read_like_run",
    "stand_in_data",
]

FILE_DATASET = "file"
"""``config["dataset"]`` (and the ``dataset`` option) of a run on a data file."""
TEST_FRACTION = 0.2
"""The part of ``--data`` held out (seeded) as the test part when no ``--test-data`` is given."""


def file_data_config(options: Mapping) -> dict:
    """The data part of the config of a run on ``options["data"]``, before the file is read.

    Parameters
    ----------
    options : Mapping
        ``data``, ``test_data``, ``label_column``, ``image_size``, ``binarize``, ``seed``,
        ``val_fraction``.

    Returns
    -------
    dict
        ``dataset`` ``"file"``, ``root`` None, ``binarize`` as given (resolved by
        :func:`adopt_decisions`), ``seed``, ``val_fraction`` and ``data_file``: the request.
    """
    size = options.get("image_size")
    return {
        "dataset": FILE_DATASET,
        "root": None,
        "binarize": options["binarize"],
        "seed": options["seed"],
        "val_fraction": options["val_fraction"],
        "data_file": {
            "path": options["data"],
            "test": {"path": options.get("test_data")},
            "label_column": options.get("label_column"),
            "image_size": None if size is None else list(size),
            "likelihood": options.get("likelihood", "auto"),
            "model": options.get("model", DEFAULT_MODEL),
        },
    }


def load_run_file(config: Mapping) -> DatasetSplits:
    """The data of a run on a file: decided afresh for a new run, else as stored.

    Parameters
    ----------
    config : Mapping
        :func:`file_data_config`, or a stored config (``data_file`` with ``transforms`` and
        ``sha256``: the file must not have changed).

    Returns
    -------
    DatasetSplits
        With ``source``, the record :func:`adopt_decisions` stores.

    Raises
    ------
    DataFileError
        A bad file, or a stored run's file that changed or is gone.
    """
    record = config["data_file"]
    if "sha256" in record:
        check_same_data(record, record["path"], record["test"].get("path"))
    size = record.get("image_size")
    binarize = config.get("binarize")
    return load_file(
        record["path"],
        test_path=record["test"].get("path"),
        label_column=record.get("label_column"),
        image_size=None if size is None else tuple(size),
        likelihood=record.get("likelihood", "auto"),
        binarize="none" if binarize is None else binarize,
        transforms=record.get("transforms"),
        seed=config["seed"],
        test_fraction=TEST_FRACTION,
        val_fraction=config.get("val_fraction", 0.0),
        # the model's --binarize auto: fresh draws for M2
        m2=model_kind(record.get("model")).binarize == "dynamic",
    )


def check_same_data(record: Mapping, path, test_path=None) -> None:
    """Refuse data files that are not those a run was trained on (path, then content).

    Parameters
    ----------
    record : Mapping
        A stored ``data_file`` record.
    path, test_path : str or None
        The training and test files given.

    Raises
    ------
    DataFileError
        Naming the difference: another file, or the same file with other content.
    """
    pairs = [(record, path, "--data")]
    if "sha256" in record["test"]:
        pairs.append((record["test"], test_path, "--test-data"))
    for stored, given, flag in pairs:
        if str(given) != stored["path"]:
            raise DataFileError(f"{flag} {given}: the run was trained on {stored['path']}")
        try:
            digest = sha256(given)
        except OSError as err:
            raise DataFileError(f"the run's data {given} cannot be read ({err})") from None
        if digest != stored["sha256"]:
            raise DataFileError(
                f"{given} has changed since the run was trained on it (sha256 {digest[:12]}..., "
                f"the run has {stored['sha256'][:12]}...)"
            )


def adopt_decisions(options: Mapping, data_config: Mapping, data: DatasetSplits):
    """The options and data config of a new run with what the file implied filled in.

    Parameters
    ----------
    options : Mapping
        The checked options of ``train``.
    data_config : Mapping
        :func:`file_data_config` (or a built-in set's: returned unchanged).
    data : DatasetSplits
        The data loaded from it.

    Returns
    -------
    options : dict
        ``likelihood`` and ``binarize`` as decided.
    data_config : dict
        With ``binarize`` decided and ``data_file`` the full record (:func:`load_file`'s
        ``source`` with the request).

    Raises
    ------
    ValueError
        ``--model cvae`` or ``m2`` on data without labels.
    """
    if data.source is None:
        return dict(options), dict(data_config)
    source = data.source
    if model_kind(options["model"]).takes_labels and not source["labelled"]:
        raise ValueError(
            f"--model {options['model']} needs labels: {source['path']} has none (pass "
            "--label-column NAME for a .csv, save y in a .npz/.pt, or use class subfolders)"
        )
    decided = source["transforms"]
    options = {**options, "likelihood": decided["likelihood"]}
    options["binarize"] = decided["binarize"] or "none"
    record = {**data_config["data_file"], **source}
    record["test"] = {**data_config["data_file"]["test"], **source["test"]}
    record["likelihood"] = decided["likelihood"]
    return options, {**data_config, "binarize": decided["binarize"], "data_file": record}


def data_line(data: DatasetSplits) -> str | None:
    """The one line that says what a data file implied (None for a built-in set).

    Parameters
    ----------
    data : DatasetSplits

    Returns
    -------
    str or None
    """
    source = data.source
    if source is None:
        return None
    transforms = Transforms.from_json(source["transforms"])
    test = source["test"]
    held = (
        f"test data {_near(test['path'])}"
        if "path" in test and test["path"]
        else f"{test['fraction']:.0%} of it held out as the test part (seeded by --seed "
        f"{test['seed']}; pass --test-data to choose it)"
    )
    shape = "x".join(map(str, source["shape"][1:])) if source["kind"] == "image" else None
    what = (
        f"{source['shape'][0]:,} images of {shape}"
        if shape
        else f"{source['shape'][0]:,} rows x {source['shape'][1]} features"
    )
    return (
        f"data {_near(source['path'])}: {what} (sha256 {source['sha256'][:12]}...); "
        f"{transforms.said()}; {held}"
    )


def _near(path: str) -> str:
    """``path`` relative to the working folder when it lies under it, else as stored.

    The line a command prints then names ``train.csv`` as the user typed it, not the machine's
    folders (``config.json`` keeps the absolute path, for a resume from elsewhere).
    """
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def model_image_shape(data: DatasetSplits) -> tuple[int, int] | None:
    """The image shape a model takes: (H, W) of grey images, else None (tables, colour).

    Parameters
    ----------
    data : DatasetSplits

    Returns
    -------
    tuple of (int, int) or None
    """
    shape = tuple(data.image_shape)
    return shape if len(shape) == 2 else None


def read_like_run(config: Mapping, path, *, label_column=None, seed: int = 0):
    """Read a new data file as a run's data were: its checks, shape and stored transforms.

    Parameters
    ----------
    config : Mapping
        The run's config (a file run, or a built-in set: its images in [0, 1], 28x28 or 8x8).
    path : str or Path
        The new file.
    label_column : str, optional
        Its label column (default: the run's, when the file has it: else no labels).
    seed : int
        Seeds the binarization of a "static" or "dynamic" run's images.

    Returns
    -------
    x : torch.Tensor of shape (N, D)
        Transformed as the run's data.
    y : torch.Tensor of shape (N,) or None
        The file's labels.
    transforms : Transforms
        The run's (for the log-Jacobian of a standardization).

    Raises
    ------
    DataFileError
        A bad file, or one whose datapoints differ in shape from the run's ("the run was
        trained on 30 features; FILE has 29").
    """
    record = config.get("data_file")
    if record is None:  # a built-in set: images in [0, 1], the run's binarization
        likelihood = config["vae"].get("likelihood", "bernoulli")
        transforms = Transforms(likelihood, config.get("binarize"), reason="the run's images")
        shape, size = tuple(config["vae"].get("image_shape") or ()), None
    else:
        transforms = Transforms.from_json(record["transforms"])
        shape, size = tuple(record["shape"][1:]), record.get("image_size")
    optional = label_column is None and record is not None  # the run's column, if it is there
    if optional:
        label_column = record.get("label_column")
    arrays = read_file(
        path,
        label_column=label_column,
        label_optional=optional,
        image_size=None if size is None or not _is_folder(path) else tuple(size),
    )
    flat = len(arrays.shape) == 1 and arrays.shape[0] == math.prod(shape or (0,))
    if shape and not flat:  # a table of a run's flattened images is taken as they are
        check_like(arrays, shape)
    elif not shape and arrays.x.shape[1] != config["vae"]["data_dim"]:
        check_like(arrays, (config["vae"]["data_dim"],))
    x = transforms.apply(arrays.x)
    low, high = float(x.min()), float(x.max())
    if transforms.likelihood == "bernoulli" and not 0 <= low <= high <= 1:
        raise DataFileError(
            f"the run's Bernoulli likelihood needs values in [0, 1]; {arrays.path} has values "
            f"in [{low:.3g}, {high:.3g}]"
        )
    if transforms.binarize is not None:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x, arrays.y, transforms


def stand_in_data(config: Mapping) -> DatasetSplits:
    """Two zero datapoints of a run's shape: what ``encode`` and ``sample`` load a run with.

    They need the model only, not the training data (a training file may have moved, and a
    large one would be read and hashed again for nothing).

    Parameters
    ----------
    config : Mapping
        The run's config.

    Returns
    -------
    DatasetSplits
        ``train`` and ``test`` of two zeros each, labelled 0; the run's datapoint shape.
    """
    record, dim = config.get("data_file"), config["vae"]["data_dim"]
    if record is not None:
        shape = tuple(record["shape"][1:])
    else:
        shape = tuple(config["vae"].get("image_shape") or (dim,))
    part = ImageData(torch.zeros(2, dim), torch.zeros(2, dtype=torch.long), shape)
    return DatasetSplits(str(config.get("dataset")), part, part, shape, source=record)


def _is_folder(path) -> bool:
    return Path(path).expanduser().is_dir()
