"""pyro-vae on your own data: train --data, evaluate --data, encode, sample; every bad file."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pyro_vae.cli import main
from pyro_vae.datafiles import load_file
from pyro_vae.runs.own_data import data_line

TINY = ["--latent", "2", "--hidden", "16", "--epochs", "2", "--quiet"]


def _snapshot(folder):
    paths = sorted(folder.rglob("*"))
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in paths}


def _table(path, n=120, d=4, seed=0, labels=False):
    """A table of correlated reals (two latent factors), with an integer label column."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    x = z @ rng.normal(size=(2, d)) * 3 + 10 + 0.3 * rng.normal(size=(n, d))
    frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(d)])
    if labels:
        frame["kind"] = (z[:, 0] > 0).astype(int)
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A 2-epoch VAE on a CSV table that no test changes (tests that change it copy it)."""
    folder = tmp_path_factory.mktemp("own")
    _table(folder / "train.csv")
    out = folder / "run"
    assert main(["train", "--data", str(folder / "train.csv"), *TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_train_on_a_csv_records_the_file_and_what_it_implied(table_run, tmp_path, capsys):
    config = json.loads((table_run / "config.json").read_text())
    record = config["data_file"]
    assert config["dataset"] == "file" and record["shape"] == [120, 4]
    assert len(record["sha256"]) == 64 and record["path"].endswith("train.csv")
    assert record["transforms"]["likelihood"] == "gaussian"
    assert len(record["transforms"]["standardize"]["mean"]) == 4
    assert config["options"]["likelihood"] == "gaussian" and config["vae"]["data_dim"] == 4
    figures = {p.name for p in (table_run / "figures").iterdir()}
    assert {"latent_map.png", "reconstructions.png", "elbo_curves.png"} <= figures
    # the decisions are said once, in one line (not --quiet)
    _table(tmp_path / "t.csv")
    out = tmp_path / "r"
    args = ["train", "--data", str(tmp_path / "t.csv"), "--epochs", "1", "--latent", "2"]
    assert main([*args, "--hidden", "8", "--out", str(out)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("data ")]
    assert len(lines) == 1, lines
    assert "gaussian likelihood, columns standardized" in lines[0]
    assert "20% of it held out as the test part" in lines[0]


def test_the_data_line_names_a_file_under_the_working_folder_as_typed(tmp_path, monkeypatch):
    _table(tmp_path / "t.csv")
    data = load_file(tmp_path / "t.csv")
    monkeypatch.chdir(tmp_path)
    assert data_line(data).startswith("data t.csv: 120 rows x 4 features"), data_line(data)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a file outside the working folder: its full path
    assert data_line(data).startswith(f"data {tmp_path / 't.csv'}: "), data_line(data)


@pytest.mark.slow
def test_evaluate_scores_a_file_in_order_and_keeps_earlier_scores(table_run, tmp_path):
    run = shutil.copytree(table_run, tmp_path / "run")
    frame = _table(tmp_path / "new.csv", n=30, seed=5)
    outliers = frame.copy()
    outliers.iloc[:5] += 40  # 40 units is over 10 sd of every column: far off the data
    outliers.to_csv(tmp_path / "new.csv", index=False)
    args = ["evaluate", str(run), "--data", str(tmp_path / "new.csv"), "--num-samples", "50"]
    assert main([*args, "--quiet"]) == 0
    scores = pd.read_csv(run / "scores_new.csv")
    assert scores["index"].tolist() == list(range(30))
    assert np.isfinite(scores["log_px"]).all() and (scores["stderr"] >= 0).all()
    # power: every injected outlier scores below every inlier
    assert scores["log_px"][:5].max() < scores["log_px"][5:].min()
    assert (run / "figures" / "scores_new.png").stat().st_size > 1000
    assert main([*args, "--quiet"]) == 0  # a second evaluation is written beside the first
    assert (run / "scores_new_2.csv").is_file() and (run / "scores_new.csv").is_file()
    assert (run / "figures" / "scores_new_2.png").is_file()
    # --overwrite replaces the run: the scores of the old model go with it
    train = ["train", "--data", str(table_run.parent / "train.csv"), *TINY, "--epochs", "1"]
    assert main([*train, "--out", str(run), "--overwrite"]) == 0
    assert not list(run.glob("scores_*.csv")) and not list(run.glob("figures/scores_*"))


@pytest.mark.slow
def test_scores_are_in_the_files_units(table_run, tmp_path):
    """A file scaled by 10 has log p(x) lower by D log 10 under a run of the scaled data."""
    frame = pd.read_csv(table_run.parent / "train.csv")
    (frame * 10).to_csv(tmp_path / "big.csv", index=False)
    out = tmp_path / "big"
    assert main(["train", "--data", str(tmp_path / "big.csv"), *TINY, "--out", str(out)]) == 0
    base = ["--num-samples", "20", "--quiet", "--seed", "3"]
    assert (
        main(["evaluate", str(table_run), "--data", str(table_run.parent / "train.csv"), *base])
        == 0
    )
    assert main(["evaluate", str(out), "--data", str(tmp_path / "big.csv"), *base]) == 0
    small = pd.read_csv(table_run / "scores_train.csv")["log_px"]
    big = pd.read_csv(out / "scores_big.csv")["log_px"]
    # both runs see the same standardized values and draw the same noise (seeded training on
    # the same z-scores, seed 3 here): only the log-Jacobian differs, 4 log 10, up to round-off
    np.testing.assert_allclose(small - big, 4 * np.log(10), atol=1e-3)


def test_encode_writes_mean_and_sd_in_the_files_order(table_run, tmp_path):
    frame = pd.read_csv(table_run.parent / "train.csv")
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.iloc[::-1].to_csv(tmp_path / "reversed.csv", index=False)
    for name in ("a", "reversed"):
        for suffix in (".npy", ".csv", ".pt"):
            out = tmp_path / f"codes_{name}{suffix}"
            args = ["encode", str(table_run), "--data", str(tmp_path / f"{name}.csv")]
            assert main([*args, "--out", str(out), "--quiet", "--batch-size", "7"]) == 0
    codes = np.load(tmp_path / "codes_a.npy")
    assert codes.shape == (120, 4) and (codes[:, 2:] > 0).all()  # 2 means, then 2 sds
    np.testing.assert_allclose(np.load(tmp_path / "codes_reversed.npy"), codes[::-1], rtol=1e-5)
    table = pd.read_csv(tmp_path / "codes_a.csv")
    assert list(table.columns) == ["z1_mean", "z2_mean", "z1_sd", "z2_sd"]
    np.testing.assert_allclose(table.to_numpy(), codes, rtol=1e-5)
    saved = torch.load(tmp_path / "codes_a.pt")
    assert torch.allclose(saved["mean"], torch.from_numpy(codes[:, :2]))


def test_sample_draws_in_the_data_units(table_run, tmp_path):
    out = tmp_path / "s.npy"
    assert main(["sample", str(table_run), "--num", "500", "--out", str(out), "--quiet"]) == 0
    draws = np.load(out)
    assert draws.shape == (500, 4)
    train = pd.read_csv(table_run.parent / "train.csv").to_numpy()
    # the standardization is undone: the draws' means sit near the data's (10 on every column,
    # sd about 3 to 8); a loose bound, 3 data sd, catches a draw left in z-score units (mean 0)
    assert (np.abs(draws.mean(0) - train.mean(0)) < 3 * train.std(0)).all()
    assert np.abs(draws.mean(0)).min() > 3
    mean = tmp_path / "m.csv"
    assert (
        main(["sample", str(table_run), "--num", "3", "--out", str(mean), "--mean", "--quiet"]) == 0
    )
    assert pd.read_csv(mean).shape == (3, 4)


def _image_folder(path, n=12, size=(8, 8), seed=0):
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (path / c).mkdir(parents=True, exist_ok=True)
        for i in range(n // 2):
            pixels = (rng.random(size) < (0.2 if c == "a" else 0.8)).astype(np.uint8) * 255
            Image.fromarray(pixels).save(path / c / f"{i}.png")
    return path


@pytest.mark.slow
def test_an_image_folder_trains_a_cvae_and_samples_a_grid(tmp_path, capsys):
    folder = _image_folder(tmp_path / "imgs", n=40)
    out = tmp_path / "run"
    args = ["train", "--data", str(folder), "--model", "cvae", *TINY, "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data_file"]["classes"] == ["a", "b"]
    assert config["data_file"]["transforms"]["likelihood"] == "bernoulli"
    assert config["vae"]["image_shape"] == [8, 8]
    assert (out / "figures" / "class_samples.png").is_file()  # images keep their shape
    samples = tmp_path / "s.npy"
    args = ["sample", str(out), "--num", "6", "--label", "1", "--out", str(samples), "--quiet"]
    assert main(args) == 0
    assert np.load(samples).shape == (6, 8, 8) and (tmp_path / "s.png").is_file()
    codes = tmp_path / "c.npy"
    assert main(["encode", str(out), "--data", str(folder), "--out", str(codes), "--quiet"]) == 0
    assert np.load(codes).shape == (40, 4)


@pytest.mark.slow
def test_m2_and_iaf_runs_encode_and_sample(tmp_path):
    _table(tmp_path / "t.csv", n=100, labels=True)
    data = ["--data", str(tmp_path / "t.csv"), "--label-column", "kind"]
    m2, iaf = tmp_path / "m2", tmp_path / "iaf"
    m2_options = ["--model", "m2", "--labels-per-class", "5", "--batch-size", "20"]
    assert main(["train", *data, *m2_options, *TINY, "--out", str(m2)]) == 0
    assert main(["train", *data, "--flows", "1", *TINY, "--out", str(iaf)]) == 0
    (tmp_path / "t.csv").rename(tmp_path / "moved.csv")  # encode and sample need the model only
    moved = ["--data", str(tmp_path / "moved.csv"), "--quiet"]
    for run in (m2, iaf):
        out = tmp_path / f"{run.name}.npy"
        assert main(["encode", str(run), *moved, "--out", str(out)]) == 0
        codes = np.load(out)
        assert codes.shape == (100, 4) and np.isfinite(codes).all() and (codes[:, 2:] > 0).all()
        samples = tmp_path / f"{run.name}_s.npy"
        assert main(["sample", str(run), "--num", "4", "--out", str(samples), "--quiet"]) == 0
        assert np.load(samples).shape == (4, 4)


def _bad_files(tmp_path):
    """name -> (train arguments, the expected message)."""
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((6, 4), np.uint8)).save(tmp_path / "mixed" / "b.png")
    files = {
        "empty.csv": "",
        "nan.csv": "a,b\n1,2\n3,nan\n",
        "words.csv": "a,b\n1,x\n2,y\n",
        "ragged.csv": "a,b,c\n1,2,3\n4,5\n",
        "labels.csv": "a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(10)),
        "tiny.csv": "a,b\n1,2\n",
        "float_labels.csv": "a,y\n1,0\n2,0.5\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {
        "unreadable": (["--data", str(tmp_path / "missing.csv")], "no such file"),
        "empty": (["--data", str(tmp_path / "empty.csv")], "holds no data"),
        "nan": (["--data", str(tmp_path / "nan.csv")], "1 NaN or inf values in 1 rows"),
        "words": (["--data", str(tmp_path / "words.csv")], "non-numeric columns b"),
        "ragged": (["--data", str(tmp_path / "ragged.csv")], "rows of unequal length"),
        "no label column": (
            ["--data", str(tmp_path / "labels.csv"), "--label-column", "y"],
            "has no label column 'y'",
        ),
        "label not integer": (
            ["--data", str(tmp_path / "float_labels.csv"), "--label-column", "y"],
            "labels must be integers",
        ),
        "mixed sizes": (["--data", str(tmp_path / "mixed")], "pass --image-size H,W"),
        "too few rows": (["--data", str(tmp_path / "tiny.csv")], "too few to hold out a test"),
        "cvae without labels": (
            ["--data", str(tmp_path / "labels.csv"), "--model", "cvae"],
            "--model cvae needs labels",
        ),
        "data and dataset": (
            ["--data", str(tmp_path / "labels.csv"), "--dataset", "digits"],
            "--dataset names a built-in data set; --data replaces it",
        ),
    }


def test_every_bad_file_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    cases = _bad_files(tmp_path)
    before = _snapshot(tmp_path)
    for name, (args, message) in cases.items():
        out = tmp_path / "runs" / name
        assert main(["train", *args, *TINY, "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (name, err)
        assert not (tmp_path / "runs").exists(), name  # no run folder created
    assert _snapshot(tmp_path) == before


def test_other_features_than_the_runs_are_refused_naming_both(table_run, tmp_path, capsys):
    frame = pd.read_csv(table_run.parent / "train.csv")
    frame.iloc[:, :3].to_csv(tmp_path / "three.csv", index=False)
    before = _snapshot(table_run)
    for command in (
        ["evaluate", str(table_run), "--data", str(tmp_path / "three.csv")],
        [
            "encode",
            str(table_run),
            "--data",
            str(tmp_path / "three.csv"),
            "--out",
            str(tmp_path / "c.npy"),
        ],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "the run was trained on 4 features; " in err and "three.csv has 3" in err, err
    assert _snapshot(table_run) == before and not (tmp_path / "c.npy").exists()


@pytest.mark.slow
def test_resume_with_other_data_is_refused_naming_the_difference(table_run, tmp_path, capsys):
    run = shutil.copytree(table_run, tmp_path / "run")
    _table(tmp_path / "other.csv", seed=9)
    before = _snapshot(run)
    args = ["train", "--out", str(run), "--resume", "--epochs", "3", "--quiet"]
    assert main([*args, "--data", str(tmp_path / "other.csv")]) == 2
    err = capsys.readouterr().err
    assert "--resume cannot change what defines the run: --data" in err and "train.csv" in err
    # the same path with other content: named by its sha256
    record = json.loads((run / "config.json").read_text())["data_file"]
    changed = tmp_path / "changed.csv"
    shutil.copy(record["path"], changed)
    config = json.loads((run / "config.json").read_text())
    config["data_file"]["path"] = config["options"]["data"] = str(changed)
    (run / "config.json").write_text(json.dumps(config))
    assert main(args) == 0  # the same content: the run continues
    with open(changed, "a") as f:
        f.write("1,2,3,4\n")
    before = _snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has changed since the run was trained on it (sha256" in err, err
    assert _snapshot(run) == before


@pytest.mark.slow
def test_a_built_in_sets_run_scores_and_encodes_a_file_of_its_images(tmp_path, capsys):
    from pyro_vae.data import load_dataset

    out = tmp_path / "digits"
    assert main(["train", "--dataset", "digits", *TINY, "--out", str(out)]) == 0
    images = load_dataset("digits", seed=0).test.x[:20]
    np.save(tmp_path / "grid.npy", images.reshape(20, 8, 8).numpy())  # images, as (N, H, W)
    np.save(tmp_path / "flat.npy", images.numpy())  # or flattened rows, as the run holds them
    for name in ("grid", "flat"):
        args = ["evaluate", str(out), "--data", str(tmp_path / f"{name}.npy")]
        assert main([*args, "--num-samples", "10", "--quiet"]) == 0
        scores = pd.read_csv(out / f"scores_{name}.csv")
        assert len(scores) == 20 and np.isfinite(scores["log_px"]).all()
        # binarized pixels under a Bernoulli: every log p(x) is below 0 and above 64 log(1/2)
        # times a margin of 3 for a 2-epoch decoder
        assert (scores["log_px"] < 0).all() and (scores["log_px"] > -3 * 64 * np.log(2)).all()
    np.save(tmp_path / "big.npy", np.zeros((3, 9, 9), np.float32))
    assert main(["evaluate", str(out), "--data", str(tmp_path / "big.npy")]) == 2
    assert "the run was trained on datapoints of shape 8x8" in capsys.readouterr().err


@pytest.mark.slow
def test_a_runs_label_column_is_read_where_a_new_file_has_it(tmp_path, capsys):
    _table(tmp_path / "t.csv", n=60, labels=True)
    out = tmp_path / "run"
    data = ["--data", str(tmp_path / "t.csv"), "--label-column", "kind"]
    assert main(["train", *data, *TINY, "--out", str(out)]) == 0
    pd.read_csv(tmp_path / "t.csv").drop(columns="kind").to_csv(tmp_path / "bare.csv", index=False)
    for name in ("t", "bare"):  # with the label column (dropped for a VAE) or without it
        codes = tmp_path / f"{name}.npy"
        args = ["encode", str(out), "--data", str(tmp_path / f"{name}.csv"), "--out", str(codes)]
        assert main([*args, "--quiet"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), np.load(tmp_path / "bare.npy"))
    # a Gaussian run's values are anything; a Bernoulli run's must lie in [0, 1]
    grey = tmp_path / "grey.npy"
    np.save(grey, np.random.default_rng(0).random((40, 3)).astype(np.float32))
    assert main(["train", "--data", str(grey), *TINY, "--out", str(tmp_path / "b")]) == 0
    np.save(tmp_path / "far.npy", np.full((2, 3), 5.0, np.float32))
    args = ["evaluate", str(tmp_path / "b"), "--data", str(tmp_path / "far.npy")]
    assert main(args) == 2
    assert "Bernoulli likelihood needs values in [0, 1]" in capsys.readouterr().err


def test_the_usage_commands_refuse_torchrun(table_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = str(tmp_path / "s.npy")
    assert main(["sample", str(table_run), "--num", "2", "--out", out]) == 2
    assert "sample runs as one process; start it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "s.npy").exists()
