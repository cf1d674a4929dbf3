"""Your own data: one loader for arrays, tables and image folders -> :class:`DatasetSplits`.

:func:`load_file` reads a file the way the built-in sets are read (:mod:`pyro_vae.data`), so a
script and ``pyro-vae train --data PATH`` see the same tensors:

- ``.npy``: one array (N, D), (N, H, W) or (N, H, W, C), memory-mapped while it is read;
- ``.npz``: arrays ``x`` and optionally ``y`` (integer labels);
- ``.pt``: a tensor, or a dict with ``x`` and optionally ``y`` (read with ``weights_only``);
- ``.csv``: numeric columns, with or without a header line (read by pandas), the labels in
  ``label_column`` (a name, or a 0-based column number for a file without a header);
- a folder of PNG/JPEG images, one subfolder per class as torchvision's ``ImageFolder`` (or the
  images directly in it, unlabelled); grey or colour, all of one size unless ``image_size``.

Tables are vectors (``image_shape == (D,)``); images keep their shape, ``(H, W)`` or
``(H, W, C)``, for the figures; 8-bit images are scaled to [0, 1].

**What the data imply** is decided once, from the training part, by :func:`decide_transforms`
and stored (:class:`Transforms`): the likelihood (``"auto"``: binary values -> Bernoulli; grey
levels in [0, 1] -> Bernoulli on the grey levels; any other reals -> Gaussian), the
standardization of a real-valued table's columns (Gaussian likelihood: (x - mean) / sd, the
training part's mean and sd), and the binarization of images (as the built-in sets: "static"
for a Bernoulli likelihood). Every later use of a run applies the stored transforms.

Every bad file is refused in one line (:class:`DataFileError`, a ``ValueError``): unreadable or
empty, NaN or inf (the count and the first row), non-numeric CSV columns (named), rows of
unequal length, a label column missing or not integer, images of mixed sizes without
``image_size``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data import DatasetSplits, ImageData, validation_split
from pyro_vae.datafiles.errors import DataFileError
from pyro_vae.datafiles.images import image_files, read_image_folder
from pyro_vae.datafiles.tables import read_csv
from pyro_vae.datafiles.transforms import Transforms, decide_transforms

__all__ = [
    "FileArrays",
    "SUFFIXES",
    "check_like",
    "load_file",
    "read_file",
    "sha256",
]

SUFFIXES = (".npy", ".npz", ".pt", ".csv")
"""The file formats :func:`read_file` reads (and a folder of images)."""


@dataclass(frozen=True)
class FileArrays:
    """The raw content of one data file.

    Attributes
    ----------
    x : torch.Tensor of shape (N, D)
        float32 values, flattened per datapoint (8-bit images scaled to [0, 1]).
    y : torch.Tensor of shape (N,) or None
        Integer labels, when the file has them.
    shape : tuple of int
        One datapoint's shape: ``(D,)`` for a table, ``(H, W)`` or ``(H, W, C)`` for images.
    path : Path
        The file (absolute).
    sha256 : str
        Of the file's bytes (of every image's bytes, in order, for a folder).
    kind : {"table", "image"}
        What the datapoints are.
    classes : list of str
        An image folder's class names (label c is ``classes[c]``); else empty.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    shape: tuple
    path: Path
    sha256: str
    kind: str
    classes: list = field(default_factory=list)

    @property
    def described(self) -> str:
        """E.g. ``"569 rows x 30 features"`` or ``"300 images of 28x28"``."""
        n = self.x.shape[0]
        if self.kind == "table":
            return f"{n:,} rows x {self.shape[0]} features"
        size = "x".join(map(str, self.shape[:2]))
        colour = f", {self.shape[2]} channels" if len(self.shape) == 3 else ""
        return f"{n:,} images of {size}{colour}"


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (of a folder's images, in sorted order), hex.

    Parameters
    ----------
    path : str or Path
        A file or a folder of images.

    Returns
    -------
    str
    """
    digest, path = hashlib.sha256(), Path(path)
    files = image_files(path) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def read_file(path, *, label_column=None, image_size=None, label_optional=False) -> FileArrays:
    """Read a data file (module docstring) into checked tensors.

    Parameters
    ----------
    path : str or Path
        ``.npy``, ``.npz``, ``.pt``, ``.csv`` or a folder of images.
    label_column : str or int, optional
        The CSV column of integer labels (a name, or a 0-based number without a header).
    image_size : tuple of (int, int), optional
        (H, W): every image is resized to it (images of mixed sizes need it).
    label_optional : bool
        ``label_column`` is a run's: a file without it (or not a .csv) has no labels.

    Returns
    -------
    FileArrays

    Raises
    ------
    DataFileError
        One line: a missing, unreadable or empty file, an unknown format, NaN or inf values,
        non-numeric columns, ragged rows, a bad label column, images of mixed sizes.
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise DataFileError(f"{path}: no such file or folder")
    if label_optional and path.suffix.lower() != ".csv":
        label_column = None
    if label_column is not None and path.suffix.lower() != ".csv":
        raise DataFileError(f"{path}: --label-column applies to a .csv file")
    if image_size is not None and not path.is_dir():
        raise DataFileError(f"{path}: --image-size applies to a folder of images")
    if path.is_dir():
        x, y, shape, classes = read_image_folder(path, image_size)
        kind = "image"
    else:
        x, y, classes = *_read_array_file(path, label_column, label_optional), []
        shape = tuple(x.shape[1:])
        kind = "table" if len(shape) == 1 else "image"
        if kind == "image" and x.dtype == np.uint8:
            x = x / np.float32(255)  # 8-bit pixels -> [0, 1]
    if x.ndim < 2 or x.shape[0] == 0 or math.prod(x.shape[1:]) == 0:
        raise DataFileError(f"{path} holds no data (array of shape {tuple(x.shape)})")
    if kind == "image" and len(shape) == 3 and shape[2] not in (1, 3, 4):
        raise DataFileError(f"{path}: images of shape {shape} must have 1, 3 or 4 channels")
    # a copy: the memory map is read once, into memory torch may write to
    x = _finite(path, np.array(x, dtype=np.float32).reshape(x.shape[0], -1))
    return FileArrays(
        torch.from_numpy(x), _labels(path, y, x.shape[0]), shape, path, sha256(path), kind, classes
    )


def _finite(path: Path, x: np.ndarray) -> np.ndarray:
    """``x``, refused when it holds NaN or inf: the count and the first row (from 1)."""
    bad = ~np.isfinite(x)
    if bad.any():
        rows = bad.any(axis=1)
        first = int(np.argmax(rows)) + 1
        raise DataFileError(
            f"{path} holds {int(bad.sum())} NaN or inf values in {int(rows.sum())} rows (the "
            f"first in data row {first}); remove or fill them"
        )
    return x


def _labels(path: Path, y, n: int) -> torch.Tensor | None:
    """Labels as long (N,), refused unless integer-valued and non-negative."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.shape != (n,):
        raise DataFileError(f"{path}: labels y of shape {y.shape} do not match {n} datapoints")
    if y.dtype.kind not in "iub":
        bad = ~(np.isfinite(y.astype(np.float64)) & (np.round(y) == y))
        if bad.any():
            first = int(np.argmax(bad))
            raise DataFileError(
                f"{path}: labels must be integers; data row {first + 1} has {y[first].item()!r}"
            )
    if n and y.min() < 0:
        raise DataFileError(f"{path}: labels must be non-negative, got {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


def _read_array_file(path: Path, label_column, label_optional):
    """(x, y) of a .npy, .npz, .pt or .csv file as numpy arrays (x may be memory-mapped)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataFileError(
            f"{path}: unknown data format {suffix or '(no suffix)'!r}; use "
            f"{', '.join(SUFFIXES)} or a folder of images"
        )
    if suffix == ".csv":
        return read_csv(path, label_column, label_optional)
    try:
        if suffix == ".npy":
            content = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                content = {k: npz[k] for k in npz.files}
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # every reader has its own errors: one line naming the file
        reason = " ".join(str(err).split())[:200]
        raise DataFileError(f"cannot read {path} as {suffix}: {reason}") from None
    return _split_content(path, content)


def _split_content(path: Path, content):
    """(x, y) of what np.load / torch.load returned: an array or a mapping with x (and y)."""
    if isinstance(content, dict):
        if "x" not in content:
            keys = ", ".join(map(str, content)) or "none"
            raise DataFileError(f"{path} has no array 'x' (it holds: {keys}); save x (and y)")
        x, y = content["x"], content.get("y")
    else:
        x, y = content, None
    x, y = (v.numpy() if isinstance(v, torch.Tensor) else v for v in (x, y))
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iufb":
        raise DataFileError(f"{path}: x must be a numeric array, got {type(x).__name__}")
    if x.ndim == 1:
        raise DataFileError(f"{path}: x of shape {x.shape} has one dimension; save it as (N, D)")
    return x, y


def check_like(arrays: FileArrays, shape: tuple, what: str = "the run was trained on") -> None:
    """Refuse data whose datapoints differ in shape from those of a run (or a training file).

    Parameters
    ----------
    arrays : FileArrays
        The new data.
    shape : tuple of int
        The shape of one training datapoint.
    what : str
        Who had ``shape``, for the message.

    Raises
    ------
    DataFileError
        "the run was trained on 30 features; FILE has 29".
    """
    shape = tuple(shape)
    if tuple(arrays.shape) == shape:
        return
    if len(shape) == 1 and len(arrays.shape) == 1:
        raise DataFileError(f"{what} {shape[0]} features; {arrays.path} has {arrays.shape[0]}")
    raise DataFileError(
        f"{what} datapoints of shape {'x'.join(map(str, shape))}; {arrays.path} has "
        f"{'x'.join(map(str, arrays.shape))}" + (" (pass --image-size)" if len(shape) > 1 else "")
    )


def load_file(
    path,
    *,
    test_path=None,
    label_column=None,
    image_size=None,
    likelihood="auto",
    binarize="auto",
    transforms: Transforms | dict | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    m2: bool = False,
) -> DatasetSplits:
    """Load a data file as train / validation / test parts, transformed as the data imply.

    Parameters
    ----------
    path : str or Path
        The training data (module docstring).
    test_path : str or Path, optional
        The test data; without it a seeded ``test_fraction`` of ``path`` is held out.
    label_column : str or int, optional
        The CSV column of labels (for both files).
    image_size : tuple of (int, int), optional
        (H, W) to resize every image to.
    likelihood, binarize : str
        As :func:`decide_transforms` (ignored when ``transforms`` is given).
    transforms : Transforms or dict, optional
        Stored transforms (a run's) to apply instead of deciding them.
    seed : int
        Seeds the test and validation splits and the "static" binarization.
    test_fraction : float
        In (0, 1): the part of ``path`` held out as the test part without ``test_path``.
    val_fraction : float
        In [0, 1): the part of the training part held out for validation.
    m2 : bool
        For M2 (its default binarization is dynamic).

    Returns
    -------
    DatasetSplits
        ``name`` the file's name, ``image_shape`` one datapoint's shape, ``source`` the record
        a run stores: ``path``, ``shape``, ``sha256``, ``kind``, ``labelled``, ``test`` (the
        same of the test file, or the fraction held out) and ``transforms``.

    Raises
    ------
    DataFileError
        A bad file (:func:`read_file`), a test file unlike the training file, too few rows.
    """
    train = read_file(path, label_column=label_column, image_size=image_size)
    n = train.x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if test_path is not None:
        test = read_file(test_path, label_column=label_column, image_size=image_size)
        check_like(test, train.shape, f"{train.path} has")
        if (test.y is None) != (train.y is None):
            raise DataFileError(f"{train.path} and {test.path}: one has labels, the other not")
        x_tr, y_tr, x_te, y_te = train.x, train.y, test.x, test.y
        held = {"path": str(test.path), "shape": [len(test.x), *test.shape], "sha256": test.sha256}
    else:
        n_test = round(test_fraction * n)
        if not 0 < n_test < n:
            raise DataFileError(
                f"{train.path} has {n} datapoints: too few to hold out a test part; pass a "
                "test file"
            )
        te, tr = perm[:n_test], perm[n_test:]
        x_tr, x_te = train.x[tr], train.x[te]
        y_tr, y_te = (None, None) if train.y is None else (train.y[tr], train.y[te])
        held = {"fraction": test_fraction, "seed": seed, "rows": n_test}
    if isinstance(transforms, dict):
        transforms = Transforms.from_json(transforms)
    if transforms is None:
        transforms = decide_transforms(x_tr, train.kind, likelihood, binarize, m2)
    parts = [_part(x, y, train.shape, transforms) for x, y in ((x_tr, y_tr), (x_te, y_te))]
    if transforms.binarize == "static":
        generator = torch.Generator().manual_seed(seed)
        for part in parts:
            part.x = torch.bernoulli(part.x, generator=generator)
    source = {
        "path": str(train.path),
        "shape": [n, *train.shape],  # the file's: N, then one datapoint's
        "sha256": train.sha256,
        "kind": train.kind,
        "labelled": train.y is not None,
        "classes": train.classes,
        "test": held,
        "transforms": transforms.to_json(),
    }
    val, part_train = validation_split(parts[0], val_fraction, seed)
    return DatasetSplits(train.path.name, part_train, parts[1], train.shape, val, source)


def _part(x, y, shape, transforms: Transforms) -> ImageData:
    """One part: standardized values, labels (zeros when the file has none)."""
    y = torch.zeros(x.shape[0], dtype=torch.long) if y is None else y
    return ImageData(transforms.apply(x), y, shape, transforms.binarize, bounded=False)
