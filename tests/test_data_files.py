"""pyro_vae.datafiles: every format read alike, the decisions the data imply, every bad file."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pyro_vae.data import DatasetSplits
from pyro_vae.datafiles import (
    DataFileError,
    Transforms,
    check_like,
    decide_transforms,
    load_file,
    read_file,
)


def _table(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * 5 + 2).astype(np.float32), rng.integers(0, 3, n)


def _write_every_format(tmp_path, x, y):
    """The same table (and labels) as .npy, .npz, .pt and .csv with and without a header."""
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "a.pt")
    frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(x.shape[1])]).assign(label=y)
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_csv(tmp_path / "b.csv", index=False, header=False)


def test_every_format_reads_the_same_values_and_labels(tmp_path):
    x, y = _table()
    _write_every_format(tmp_path, x, y)
    reads = {
        "npy": read_file(tmp_path / "a.npy"),
        "npz": read_file(tmp_path / "a.npz"),
        "pt": read_file(tmp_path / "a.pt"),
        "csv": read_file(tmp_path / "a.csv", label_column="label"),
        "csv without header": read_file(tmp_path / "b.csv", label_column="3"),
    }
    for name, arrays in reads.items():
        # float32 through a text file: repr of a float32 round-trips to the same value
        assert torch.equal(arrays.x, torch.from_numpy(x)), name
        assert arrays.kind == "table" and arrays.shape == (3,), name
        if name != "npy":
            assert torch.equal(arrays.y, torch.from_numpy(y)), name
    assert reads["npy"].y is None


def test_an_image_folder_keeps_shape_classes_and_colour(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "grey" / c).mkdir(parents=True)
        (tmp_path / "colour" / c).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (6, 4), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "grey" / c / f"{i}.png")
            rgb = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(tmp_path / "colour" / c / f"{i}.png")
    grey = read_file(tmp_path / "grey")
    assert grey.shape == (6, 4) and grey.x.shape == (6, 24) and grey.classes == ["cat", "dog"]
    assert grey.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0 <= grey.x.min() and grey.x.max() <= 1  # 8-bit pixels scaled to [0, 1]
    assert read_file(tmp_path / "colour").shape == (6, 4, 3)
    resized = read_file(tmp_path / "grey", image_size=(3, 2))
    assert resized.shape == (3, 2)


def test_load_file_returns_the_splits_of_the_built_in_sets(tmp_path):
    x, y = _table(n=50)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    data = load_file(tmp_path / "a.npz", seed=1, val_fraction=0.2)
    assert isinstance(data, DatasetSplits)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 10)  # 20% test, 20% val
    # the held-out test part is a seeded permutation: the same seed, the same rows
    again = load_file(tmp_path / "a.npz", seed=1, val_fraction=0.2)
    assert torch.equal(data.test.x, again.test.x)
    assert data.source["transforms"]["likelihood"] == "gaussian"
    # standardized by the training part (train + validation) alone: mean 0 and sd 1 there
    both = torch.cat([data.train.x, data.val.x])
    assert both.mean(0).abs().max() < 1e-5 and (both.std(0) - 1).abs().max() < 1e-5


def test_the_likelihood_and_transforms_follow_the_values():
    binary = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    grey = torch.tensor([[0.2, 1.0], [0.5, 0.0]])
    real = torch.tensor([[-3.0, 10.0], [2.0, 4.0]])
    t = decide_transforms(binary, "table")
    assert (t.likelihood, t.binarize, t.mean) == ("bernoulli", None, None)
    t = decide_transforms(grey, "table")
    assert (t.likelihood, t.binarize, t.mean) == ("bernoulli", None, None)  # grey levels kept
    assert decide_transforms(grey, "image").binarize == "static"  # images, as the built-in sets
    assert decide_transforms(grey, "image", m2=True).binarize == "dynamic"
    t = decide_transforms(real, "table")
    assert t.likelihood == "gaussian" and t.mean == (-0.5, 7.0)
    assert Transforms.from_json(t.to_json()) == t
    # log p(x) = log p(z) + log |dz/dx|, z = (x - mean) / sd: the log-Jacobian is -sum log sd
    assert t.log_jacobian == pytest.approx(-np.log(np.array(t.std)).sum())
    with pytest.raises(DataFileError, match="--likelihood bernoulli needs values in"):
        decide_transforms(real, "table", likelihood="bernoulli")


def _bad(path, text):
    path.write_text(text)
    return path


BAD_FILES = [
    ("empty.csv", "", {}, "holds no data"),
    ("header_only.csv", "a,b\n", {}, "holds no data"),
    ("nan.csv", "a,b\n1,2\n3,nan\n4,inf\n", {}, r"2 NaN or inf values in 2 rows \(the first in "),
    ("words.csv", "a,b,c\n1,x,2\n3,y,4\n", {}, "non-numeric columns b"),
    ("ragged.csv", "a,b,c\n1,2,3\n4,5\n", {}, "rows of unequal length"),
    ("long.csv", "a,b,c\n1,2,3\n4,5,6,7\n", {}, "rows of unequal length"),
    ("nolabel.csv", "a,b\n1,2\n3,4\n", {"label_column": "y"}, "has no label column 'y'"),
    ("float_label.csv", "a,y\n1,2\n3,0.5\n", {"label_column": "y"}, "labels must be integers"),
    ("text_label.csv", "a,y\n1,cat\n3,dog\n", {"label_column": "y"}, "is not integer"),
    ("notes.txt", "1,2\n", {}, "unknown data format '.txt'"),
    ("garbage.npy", "not an array", {}, "cannot read .*garbage.npy as .npy"),
]


@pytest.mark.parametrize("name,text,kwargs,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_every_bad_file_is_one_line_naming_it(tmp_path, name, text, kwargs, message):
    path = _bad(tmp_path / name, text)
    with pytest.raises(DataFileError, match=message) as info:
        read_file(path, **kwargs)
    assert "\n" not in str(info.value) and str(path.name) in str(info.value)


def test_nan_names_the_first_row(tmp_path):
    x = np.zeros((10, 2), dtype=np.float32)
    x[6, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(
        DataFileError, match=r"1 NaN or inf values in 1 rows \(the first in data row 7\)"
    ):
        read_file(tmp_path / "x.npy")


def test_images_of_mixed_sizes_need_an_image_size(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "imgs" / "b.png")
    with pytest.raises(DataFileError, match="2 sizes .*pass --image-size H,W"):
        read_file(tmp_path / "imgs")
    assert read_file(tmp_path / "imgs", image_size=(4, 4)).shape == (4, 4)


def test_a_feature_count_unlike_the_runs_is_named(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 29), np.float32))
    with pytest.raises(DataFileError, match=r"the run was trained on 30 features; .*x.npy has 29"):
        check_like(read_file(tmp_path / "x.npy"), (30,))
    check_like(read_file(tmp_path / "x.npy"), (29,))  # the same shape passes


def test_a_npz_without_x_names_what_it_holds(tmp_path):
    np.savez(tmp_path / "a.npz", data=np.zeros((3, 2)))
    with pytest.raises(DataFileError, match="no array 'x' \\(it holds: data\\)"):
        read_file(tmp_path / "a.npz")


def test_a_test_file_unlike_the_training_file_is_named(tmp_path):
    np.save(tmp_path / "train.npy", np.zeros((10, 30), np.float32))
    np.save(tmp_path / "test.npy", np.zeros((4, 29), np.float32))
    with pytest.raises(DataFileError, match=r"train.npy has 30 features; .*test.npy has 29"):
        load_file(tmp_path / "train.npy", test_path=tmp_path / "test.npy")
    np.save(tmp_path / "test.npy", np.ones((4, 30), np.float32))
    data = load_file(tmp_path / "train.npy", test_path=tmp_path / "test.npy")
    assert (len(data.train), len(data.test)) == (10, 4)  # nothing held out of train.npy
    assert data.source["test"]["shape"] == [4, 30] and len(data.source["test"]["sha256"]) == 64
