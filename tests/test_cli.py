"""The pyro-vae command line end to end, on tiny runs: results, repeatability, resume, failures."""

import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch

import pyro_vae.infer.training.loop
from pyro_vae import __version__
from pyro_vae.cli import build_parser, main
from pyro_vae.infer.compile.policy import AUTO_MIN_STEPS
from pyro_vae.infer.evidence.dataset import dataset_nll
from pyro_vae.infer.objectives.registry import losses_taking
from pyro_vae.infer.runtime.distributed import PeerLostError
from pyro_vae.infer.training.checkpoint import load_checkpoint
from pyro_vae.runs import evaluation_data, load_run

TINY = ["--latent", "2", "--hidden", "32", "--quiet"]


def _train(out, *extra):
    return main(["train", "--epochs", "2", *TINY, "--out", str(out), *extra])


def _timeless(history):
    """A history without its wall-clock columns, the only ones that may differ between runs."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_s")} for r in history]


def _snapshot(folder):
    """Every file and folder under ``folder``, a file with its bytes: to prove a failed command
    changed nothing (and left no empty folder behind)."""
    paths = sorted(folder.rglob("*"))
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in paths}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-epoch run that no test changes (tests that change a run work on a copy)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert _train(out) == 0
    return out


@pytest.fixture
def run_copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def test_train_leaves_checkpoint_history_config_and_figures(run_dir):
    history = json.loads((run_dir / "history.json").read_text())
    assert [(r["epoch"], r["segment"]) for r in history] == [(1, 0), (2, 0)]
    # the validation curve falls; 543 nats = 784 log 2, the -ELBO of a decoder that ignores z
    assert history[1]["val_loss"] < history[0]["val_loss"] < 543, history
    config = json.loads((run_dir / "config.json").read_text())
    assert config["val_fraction"] == 0.1 and config["resumes"] == []
    # the path the step took, beside the "auto" asked for: 2 epochs of ceil(3,600 / 128) steps
    assert config["options"]["compile"] == "auto"
    assert config["training_step"] == {"path": "eager", "reason": "auto: 58 steps < 2,000"}
    assert config["options"]["latent"] == 2 and config["options"]["hidden"] == [32]
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    expected = {"elbo_curves.png", "reconstructions.png", "samples.png", "latent_map.png"}
    assert expected | {"manifold.png"} <= figures, figures
    # 1000 bytes: an empty 1x1 PNG is about 100; every real figure here is above 10 kB
    assert all((run_dir / "figures" / name).stat().st_size > 1000 for name in expected)


@pytest.mark.slow
def test_a_seed_repeats_a_run_exactly(run_dir, tmp_path):
    # the same command as the module's run (its seed written out: 0, the default), in another
    # process state (after whatever tests ran before): the same run, bit for bit
    assert _train(tmp_path / "a", "--seed", "0") == 0
    a, b = (json.loads((r / "history.json").read_text()) for r in (tmp_path / "a", run_dir))
    assert _timeless(a) == _timeless(b)
    pa, pb = (load_checkpoint(r / "checkpoint.pt")["params"] for r in (tmp_path / "a", run_dir))
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert _train(tmp_path / "c", "--seed", "4") == 0
    pc = load_checkpoint(tmp_path / "c" / "checkpoint.pt")["params"]
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


@pytest.mark.slow
@pytest.mark.parametrize("records_say", ["compiling pays", "compiling does not pay"])
def test_the_same_command_after_another_runs_records_gives_the_same_run(
    records_say, tmp_path, monkeypatch
):
    # the flip, both ways, on the command itself: 11 steps (digits, 1 epoch) run eagerly
    # by the rule, whatever the records say; with the rule at 5 steps, compiled (the captured
    # graph as it is, no inductor), whatever they say
    monkeypatch.setattr(
        "pyro_vae.infer.training.compiled_step.compile_graph", lambda graph, inputs, device: graph
    )
    costs = dict(compile_seconds=1e-3, compiled_step_seconds=0.0, eager_step_seconds=1.0)
    if records_say == "compiling does not pay":
        monkeypatch.setattr("pyro_vae.infer.compile.policy.AUTO_MIN_STEPS", 5)
        costs = dict(compile_seconds=1e3, compiled_step_seconds=1.0, eager_step_seconds=1.0)
    command = ["train", "--dataset", "digits", "--epochs", "1", *TINY, "--out"]
    records = tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv("PYRO_VAE_STEP_COSTS", str(records))
    # alone: a machine with no records (the folder is empty); the run leaves its record
    assert main([*command, str(tmp_path / "alone")]) == 0
    (record,) = records.iterdir()
    record.write_text(json.dumps(costs))  # another run's history: it says the other path pays
    assert main([*command, str(tmp_path / "after")]) == 0
    after, alone = (
        json.loads((tmp_path / r / "history.json").read_text()) for r in ("after", "alone")
    )
    assert _timeless(after) == _timeless(alone)
    pa, pb = (load_checkpoint(tmp_path / r / "checkpoint.pt")["params"] for r in ("after", "alone"))
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    path = "eager" if records_say == "compiling pays" else "compiled"
    for run in ("after", "alone"):
        config = json.loads((tmp_path / run / "config.json").read_text())
        assert config["training_step"]["path"] == path, config["training_step"]


@pytest.mark.slow
def test_a_resume_takes_the_path_its_run_recorded(run_copy, capsys, monkeypatch):
    # were the rule decided again, 3 epochs (87 steps) would now compile: the run's path holds
    monkeypatch.setattr("pyro_vae.infer.compile.policy.AUTO_MIN_STEPS", 80)
    monkeypatch.setattr(  # were it compiled after all, cheaply (no inductor)
        "pyro_vae.infer.training.compiled_step.compile_graph", lambda graph, inputs, device: graph
    )
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "3"]) == 0
    said = "training step: eager (kept from the run's start: auto: 58 steps < 2,000)"
    assert said in capsys.readouterr().out.splitlines()
    config = json.loads((run_copy / "config.json").read_text())
    assert config["training_step"] == {"path": "eager", "reason": "auto: 58 steps < 2,000"}
    # a run written before the record: the rule decides now, and says so, once
    monkeypatch.setattr("pyro_vae.infer.compile.policy.AUTO_MIN_STEPS", AUTO_MIN_STEPS)
    del config["training_step"]
    (run_copy / "config.json").write_text(json.dumps(config))
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "4"]) == 0
    reason = (
        "auto: 116 steps < 2,000; decided at the resume from epoch 3 (config.json did not "
        "record the path taken before)"
    )
    assert f"training step: eager ({reason})" in capsys.readouterr().out.splitlines()
    config = json.loads((run_copy / "config.json").read_text())
    assert config["training_step"] == {"path": "eager", "reason": reason}


@pytest.mark.slow
def test_resume_continues_bit_identically_and_records_itself(run_copy, tmp_path, capsys):
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "3", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and printed.out.count("\n") == 1, printed  # --quiet: the result
    assert printed.out.startswith("after 3 epochs"), printed.out
    history = json.loads((run_copy / "history.json").read_text())
    assert [(r["epoch"], r["segment"]) for r in history] == [(1, 0), (2, 0), (3, 1)]
    config = json.loads((run_copy / "config.json").read_text())
    assert config["resumes"] == [{"from_epoch": 2, "changed": {"epochs": [2, 3]}}]
    # the same three epochs without the interruption
    straight = tmp_path / "straight"
    assert main(["train", "--epochs", "3", *TINY, "--out", str(straight)]) == 0
    again = json.loads((straight / "history.json").read_text())
    drop = lambda h: [{k: v for k, v in r.items() if k != "segment"} for r in _timeless(h)]  # noqa: E731
    assert drop(history) == drop(again)
    p1, p2 = (load_checkpoint(r / "checkpoint.pt")["params"] for r in (run_copy, straight))
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


def test_evaluate_scores_the_test_split_in_one_pass(run_copy, capsys):
    argv = ["evaluate", str(run_copy), "--num-samples", "200", "--num-points", "50"]
    assert main([*argv, "--iwae-k", "1,10,100", "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run_copy / "evaluation.json").read_text())
    assert report["split"] == "test" and "test split: 50 datapoints" in printed
    assert "NLL = -log p(x)" in printed and "PSIS k-hat" in printed
    # one set of weights serves all: L_1 is the ELBO, and ELBO <= L_10 <= L_100 <= log p(x)
    # holds exactly by Jensen on nested groups of the same weights (1e-4: float32 round-off)
    iwae = [report["iwae"][k][0] for k in ("1", "10", "100")]
    assert iwae[0] == pytest.approx(report["elbo"], abs=1e-4)
    assert iwae[0] <= iwae[1] + 1e-4 and iwae[1] <= iwae[2] + 1e-4, iwae
    assert iwae[2] <= -report["nll"] + 1e-4, (iwae, report["nll"])
    assert sum(v for k, v in report["khat"].items() if "(" in k) == 50
    assert (run_copy / "figures" / "khat.png").stat().st_size > 1000


AIS_FAST = ["--ais-chains", "4", "--ais-steps", "5", "--ais-leapfrog", "2"]


def test_evaluate_auto_rescores_the_unreliable_points_by_ais(run_copy, capsys):
    argv = ["evaluate", str(run_copy), "--num-samples", "50", "--num-points", "8"]
    assert main([*argv, "--estimator", "auto", *AIS_FAST, "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run_copy / "evaluation.json").read_text())
    rows, trusted = report["points"], report["trusted"]
    assert len(rows) == 8 and trusted["estimator"] == "auto"
    # AIS exactly where the IS k-hat is above 0.7, IS elsewhere
    assert [r["estimator"] for r in rows] == ["ais" if r["is_khat"] > 0.7 else "is" for r in rows]
    assert trusted["points_by_estimator"]["ais"] == sum(r["is_khat"] > 0.7 for r in rows)
    assert trusted["nll"] == pytest.approx(-sum(r["log_px"] for r in rows) / 8, rel=1e-6)
    names = [name for name, _ in report["ladder"]]
    assert names[0] == "ELBO" and names[-2].startswith("IS") and "ladder" in printed
    if trusted["points_by_estimator"]["ais"]:
        assert report["trusted"]["ais"]["settings"]["num_steps"] == 5
        assert (run_copy / "figures" / "ais_vs_is.png").stat().st_size > 1000


def test_one_chain_of_one_step_certifies_nothing_and_breaks_the_ladder_visibly(run_copy, capsys):
    argv = ["evaluate", str(run_copy), "--num-samples", "50", "--num-points", "6", "--quiet"]
    argv += ["--estimator", "ais", "--ais-chains", "1", "--ais-steps", "1", "--ais-leapfrog", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((run_copy / "evaluation.json").read_text())
    assert report["trusted"]["certified"]["ais"] == 0
    assert "not certified by AIS: 1 AIS chain per point, fewer than the 8" in printed
    # T = 1 with one chain is one importance sample: far below IS of L = 50 on average
    (is_name, is_value), (_, ais_value) = report["ladder"][-2:]
    assert ais_value < is_value and f"> AIS {ais_value:.2f}" in printed, printed
    assert "<= AIS" not in printed and "AIS below IS: T too small (--ais-steps)" in printed


def test_chains_that_cannot_fit_are_refused_in_one_line(run_copy, capsys):
    before = _snapshot(run_copy)
    argv = ["evaluate", str(run_copy), "--num-samples", "10", "--num-points", "2", "--quiet"]
    assert main([*argv, "--estimator", "ais", "--ais-chains", "100000000"]) == 2
    err = capsys.readouterr().err
    # 1e8 + 4 pilot chains x (8 x 2 latent + 2 x 784 pixels) x 4 bytes = 590 GiB at least
    assert err.count("\n") == 1 and "AIS needs at least 590.1 GiB (100000004 chains" in err, err
    assert "use fewer chains (--ais-chains)" in err
    assert _snapshot(run_copy) == before  # nothing written
    # the N x L log weights evaluate keeps for the IWAE bounds: 2 x 1e11 x 4 bytes = 745 GiB
    assert main([*argv[:2], "--num-samples", "100000000000", "--num-points", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "keeping the log weights needs at least 745.1 GiB" in err
    assert _snapshot(run_copy) == before


def test_certify_writes_the_bdmc_sandwich_for_each_t(run_copy, capsys):
    argv = ["certify", str(run_copy), "--num-points", "4", "--steps", "3,6", *AIS_FAST[:2]]
    assert main([*argv, "--ais-leapfrog", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run_copy / "certification.json").read_text())
    assert [r["num_steps"] for r in report["runs"]] == [3, 6] and "| T |" in printed
    for r in report["runs"]:  # upper - lower, both finite
        assert r["gap"] == pytest.approx(r["upper"][0] - r["lower"][0], rel=1e-6, abs=1e-6)
    assert (run_copy / "figures" / "bdmc.png").stat().st_size > 1000


def test_default_iwae_ks_stop_at_the_number_of_samples(run_copy):
    argv = ["evaluate", str(run_copy), "--num-samples", "50", "--num-points", "10", "--quiet"]
    assert main(argv) == 0
    assert list(json.loads((run_copy / "evaluation.json").read_text())["iwae"]) == ["1", "10"]


@pytest.mark.slow
def test_diagnose_writes_report_and_figures(run_copy, capsys):
    argv = ["diagnose", str(run_copy), "--num-points", "200", "--gap-points", "5"]
    argv += ["--gap-steps", "30", "--nuts-points", "1", "--chains", "2", "--warmup", "30"]
    assert main([*argv, "--draws", "30", "--quiet"]) == 0
    report = json.loads((run_copy / "diagnostics.json").read_text())
    assert 0 <= report["active_units"] <= 2 and len(report["kl_per_dim"]) == 2
    assert abs(sum(report["kl_per_dim"]) - report["kl_total"]) < 1e-6  # float32 sum of 2
    for name in ("forest_guide_vs_nuts.png", "pair_guide_vs_nuts.png", "kl_per_dimension.png"):
        assert (run_copy / "figures" / name).stat().st_size > 1000
    assert "active units" in capsys.readouterr().out


@pytest.mark.slow
def test_dynamic_runs_are_evaluated_on_one_fixed_binarization(tmp_path):
    out = tmp_path / "dynamic"
    assert main(["train", "--epochs", "1", *TINY, "--binarize", "dynamic", "--out", str(out)]) == 0
    run = load_run(out)
    a, b = evaluation_data(run, 100, seed=0), evaluation_data(run, 100, seed=0)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, evaluation_data(run, 100, seed=1))
    evaluate = ["evaluate", str(out), "--num-samples", "20", "--num-points", "20", "--iwae-k", "1"]
    assert main([*evaluate, "--quiet"]) == 0


def test_overwrite_replaces_a_run(run_copy):
    (run_copy / "evaluation.json").write_text("{}")  # a report of the run being replaced
    (run_copy / "evaluations" / "is-L10").mkdir(parents=True)  # and one kept by its settings
    (run_copy / "evaluations" / "is-L10" / "evaluation.json").write_text("{}")
    argv = ["train", "--epochs", "1", "--latent", "3", "--hidden", "16", "--quiet"]
    assert main([*argv, "--out", str(run_copy), "--overwrite"]) == 0
    assert not (run_copy / "evaluation.json").exists()
    assert not (run_copy / "evaluations").exists()
    assert len(json.loads((run_copy / "history.json").read_text())) == 1
    assert json.loads((run_copy / "config.json").read_text())["vae"]["latent_dim"] == 3


def test_help_shows_a_line_and_a_default_for_every_option(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "--threads" in text and "(default: 1)" in text, text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--epochs EPOCHS       epochs to reach (default: 10)" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert (
        exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"pyro-vae {__version__}"
    )


@pytest.mark.slow
def test_flow_annealing_and_free_bits_are_stored_and_rebuilt(tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["--flows", "2", "--anneal-epochs", "2", "--free-bits", "0.1"]
    assert _train(out, *extra) == 0
    options = json.loads((out / "config.json").read_text())["options"]
    assert (options["flows"], options["anneal_epochs"], options["free_bits"]) == (2, 2.0, 0.1)
    history = json.loads((out / "history.json").read_text())
    assert history[0]["kl_weight"] < 1 and history[0]["train_objective"] != history[0]["train_loss"]
    run = load_run(out)
    assert run.vae.flows == 2  # evaluate and diagnose rebuild the flow guide
    # a resume keeps the schedule without being told it again
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
    resumed = json.loads((out / "history.json").read_text())
    assert resumed[:2] == history and resumed[2]["kl_weight"] == 1.0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "20", "--num-points", "10", "--quiet"]) == 0
    assert "NLL = -log p(x)" in capsys.readouterr().out
    argv = ["diagnose", str(out), "--num-points", "50", "--gap-points", "2", "--gap-steps", "5"]
    argv += ["--nuts-points", "1", "--chains", "1", "--warmup", "5", "--draws", "5", "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "diagnostics.json").read_text())
    # a flow guide has no per-dimension KL; its total is estimated by Monte Carlo
    assert report["kl_per_dim"] is None and report["kl_total"] > 0, report
    assert "Monte Carlo total" in capsys.readouterr().out


def test_download_reaches_the_data_loader(tmp_path, monkeypatch, capsys):
    asked = []

    def load_dataset(name, **kwargs):
        asked.append(kwargs)
        raise ValueError("stopped before any download")

    monkeypatch.setattr("pyro_vae.runs.recipes.load_dataset", load_dataset)
    argv = ["train", "--dataset", "mnist", "--root", str(tmp_path / "data"), "--quiet"]
    assert main([*argv, "--download", "--out", str(tmp_path / "a")]) == 2
    assert main([*argv, "--out", str(tmp_path / "b")]) == 2
    assert [a["download"] for a in asked] == [True, False]
    assert asked[0]["root"] == str(tmp_path / "data")
    assert "stopped before any download" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing written: the data come before the folder


@pytest.mark.parametrize("loss", losses_taking("num_particles"))  # iwae, iwae-dreg
def test_iwae_loss_trains_from_the_command_line(tmp_path, loss):
    assert _train(tmp_path / "run", "--loss", loss, "--iwae-k", "3") == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    # the bound L_3 lies above the ELBO of the same draws: the objective is below -ELBO
    assert all(r["train_objective"] < r["train_loss"] for r in history), history


# --- every failure: exit 2, one line on stderr, nothing on disk changed -------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _never(*args, **kwargs):
    raise AssertionError("the command computed before checking it could write its results")


_FDOPEN = os.fdopen


class _FullDisk:
    """A binary file on a full disk: every write fails with ENOSPC, which torch.save reports as
    "[enforce fail at inline_container.cc:...] unexpected pos" (what a real full disk gives)."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def _fdopen_on_a_full_disk(fd, mode="r", *args, **kwargs):
    file = _FDOPEN(fd, mode, *args, **kwargs)
    return _FullDisk(file) if "b" in mode else file  # the checkpoint; config.json gets written


FAILURES = {
    # name: (argv with {run} {file} {empty} placeholders, part of the message, patches)
    "device tpu": (
        ["train", "--device", "tpu", "--out", "{empty}/new"],
        "unknown device 'tpu'",
        {},
    ),
    "absent cuda": (
        ["train", "--device", "cuda", "--out", "{empty}/new"],
        "torch sees no CUDA device",
        {"torch.cuda.is_available": lambda: False},
    ),
    "out empty": (["train", "--out", ""], "--out must name a run folder", {}),
    "out blank": (["train", "--out", "  "], "--out must name a run folder", {}),
    "out is a file": (["train", "--out", "{file}"], "is a file, not a folder", {}),
    "out under a file": (["train", "--out", "{file}/run"], "is a file, not a folder", {}),
    "out not writable": (
        ["train", "--out", "{empty}/new"],
        "permission denied",
        {"pyro_vae.runs.folders.os.access": lambda *a, **k: False},
    ),
    "run exists": (["train", "--out", "{run}"], "already holds a run", {}),
    "resume without checkpoint": (
        ["train", "--out", "{empty}", "--resume"],
        "no checkpoint",
        {},
    ),
    "resume changes the run": (
        ["train", "--out", "{run}", "--resume", "--latent", "5", "--lr", "0.01"],
        "--latent 5 (the run has 2), --lr 0.01 (the run has 0.001)",
        {},
    ),
    "resume to fewer epochs": (
        ["train", "--out", "{run}", "--resume", "--epochs", "1"],
        "has done 2 epochs",
        {},
    ),
    "resume and overwrite": (
        ["train", "--out", "{run}", "--resume", "--overwrite"],
        "pass one",
        {},
    ),
    "disk full on resume": (
        ["train", "--out", "{run}", "--resume", "--epochs", "3"],
        "no space left on device writing checkpoint",
        {"torch.save": _enospc},
    ),
    "disk full on a new run": (  # the folders this command created go; {empty} stays
        ["train", "--epochs", "1", *TINY, "--out", "{empty}/new/run"],
        "no space left on device writing checkpoint {empty}/new/run/checkpoint.pt; none was "
        "written; removed {empty}/new, which this command had created",
        {"pyro_vae.infer.runtime.files.os.fdopen": _fdopen_on_a_full_disk},
    ),
    "no mnist files": (
        ["train", "--dataset", "mnist", "--root", "{empty}/none", "--out", "{empty}/new"],
        "'mnist' not found in",
        {},
    ),
    "mnist files not found tells the options": (
        ["train", "--dataset", "mnist", "--root", "{empty}/none", "--out", "{empty}/new"],
        "; pass --download to let torchvision fetch it into",
        {},
    ),
    "mnist without root": (
        ["train", "--dataset", "mnist", "--out", "{empty}/new"],
        "'mnist' not found: no root folder was given and it has no default folder; pass --root",
        {},
    ),
    "device meta": (
        ["train", "--device", "meta", "--out", "{empty}/new"],
        "device 'meta' holds shapes without values and cannot compute",
        {},
    ),
    "patience without validation data": (
        ["train", "--val-fraction", "0", "--patience", "2", "--out", "{empty}/new"],
        "--patience 2 stops on the validation -ELBO, but --val-fraction 0 holds out no",
        {},
    ),
    "patience on a resume without validation data": (
        ["train", "--out", "{run}", "--resume", "--epochs", "3", "--patience", "2"],
        "--val-fraction 0 holds out no validation data",
        {"config": {"val_fraction": 0.0}},
    ),
    "config names another dataset": (
        ["evaluate", "{run}"],
        "was trained on 784-dimensional data, but its config.json names dataset digits (64 "
        "pixels per image): was it edited?",
        {"config": {"dataset": "digits"}},
    ),
    "download without root": (
        ["train", "--dataset", "mnist", "--download", "--out", "{empty}/new"],
        "--download needs --root",
        {},
    ),
    "epochs 0": (["train", "--epochs", "0"], "--epochs: expected a positive integer", {}),
    "batch size 0": (["train", "--batch-size", "0"], "--batch-size: expected a positive", {}),
    "lr 0": (["train", "--lr", "0"], "--lr: expected a positive number", {}),
    "latent 0": (["train", "--latent", "0"], "--latent: expected a positive integer", {}),
    "val fraction 1": (["train", "--val-fraction", "1"], "expected a fraction in [0, 1)", {}),
    "hidden abc": (["train", "--hidden", "400,abc"], "--hidden", {}),
    "iwae k 0": (["evaluate", "{run}", "--iwae-k", "0"], "--iwae-k: positive integers", {}),
    "iwae k above L": (
        ["evaluate", "{run}", "--num-samples", "100", "--iwae-k", "1,1000"],
        "--iwae-k 1000 exceeds --num-samples 100",
        {},
    ),
    "num samples 0": (["evaluate", "{run}", "--num-samples", "0"], "--num-samples: expected", {}),
    "not a run folder": (["evaluate", "{empty}"], "is not a run folder", {}),
    "config not json": (["evaluate", "{run}"], "config.json is not valid JSON", {"config": b"{"}),
    "checkpoint of random bytes": (
        ["evaluate", "{run}"],
        "corrupted or not a checkpoint",
        {"checkpoint": bytes(range(256)) * 4},
    ),
    "evaluate cannot write": (
        ["evaluate", "{run}", "--num-samples", "10"],
        "permission denied",
        {"pyro_vae.runs.folders.os.access": lambda *a, **k: False, "dataset_nll": _never},
    ),
    "disk full writing the report": (
        ["evaluate", "{run}", "--num-samples", "10", "--num-points", "5", "--quiet"],
        "no space left on device writing {run}/evaluations/is-L10-n5-b100-seed0-epoch2/"
        "evaluation.json; none was written",
        {"pyro_vae.infer.runtime.files.os.replace": _enospc},
    ),
    "free bits negative": (["train", "--free-bits", "-1"], "--free-bits: expected a number", {}),
    "flows negative": (["train", "--flows", "-2"], "--flows: expected a non-negative", {}),
    "anneal epochs 0": (["train", "--anneal-epochs", "0"], "--anneal-epochs: expected", {}),
    "train iwae k 0": (["train", "--loss", "iwae", "--iwae-k", "0"], "--iwae-k: expected", {}),
    "anneal start alone": (
        ["train", "--out", "{empty}/new", "--anneal-start", "0.2"],
        "--anneal-start needs --anneal-epochs",
        {},
    ),
    "iwae k without iwae": (
        ["train", "--out", "{empty}/new", "--iwae-k", "50"],
        "--iwae-k sets the particles of --loss iwae",
        {},
    ),
    "free bits with iwae": (
        ["train", "--out", "{empty}/new", "--loss", "iwae", "--free-bits", "0.5"],
        "--free-bits reshapes the single-sample ELBO",
        {},
    ),
    "resume changes the objective": (
        ["train", "--out", "{run}", "--resume", "--epochs", "3", "--anneal-epochs", "2"],
        "--anneal-epochs 2.0 (the run has None)",
        {},
    ),
    "labels per class above a class": (
        ["train", "--model", "m2", "--labels-per-class", "500", "--out", "{empty}/new"],
        "500 labels per class asked for, but class 0 has only 386 training images",
        {},
    ),
    "labels per class without m2": (
        ["train", "--model", "cvae", "--labels-per-class", "10", "--out", "{empty}/new"],
        "--labels-per-class applies to --model m2, not --model cvae",
        {},
    ),
    "alpha without m2": (
        ["train", "--alpha", "3", "--out", "{empty}/new"],
        "--alpha applies to --model m2, not --model vae",
        {},
    ),
    "m2 with another loss": (
        ["train", "--model", "m2", "--loss", "trace", "--out", "{empty}/new"],
        "--model m2 sums the label out exactly with --loss enum",
        {},
    ),
    "flows on a cvae": (
        ["train", "--model", "cvae", "--flows", "2", "--out", "{empty}/new"],
        "--flows applies to --model vae, not --model cvae",
        {},
    ),
    "conv m2": (
        ["train", "--model", "m2", "--arch", "conv", "--out", "{empty}/new"],
        "--arch conv applies to --model vae",
        {},
    ),
    "unknown model": (["train", "--model", "m3"], "invalid choice: 'm3'", {}),
    "resume changes the model": (
        ["train", "--out", "{run}", "--resume", "--epochs", "3", "--model", "cvae"],
        "--model cvae (the run has vae)",
        {},
    ),
    "certify steps with an empty item": (
        ["certify", "{run}", "--steps", "10,,20"],
        "argument --steps: an empty item in '10,,20'",
        {},
    ),
    "certify steps decreasing": (
        ["certify", "{run}", "--steps", "50,5"],
        "argument --steps: give T in increasing order, like 5,50, not '50,5'",
        {},
    ),
    "certify steps repeated": (
        ["certify", "{run}", "--steps", "5,5"],
        "argument --steps: T 5 is repeated in '5,5': give each T once",
        {},
    ),
    "diagnose gap points": (
        ["diagnose", "{run}", "--num-points", "5", "--gap-points", "20"],
        "must not exceed --num-points 5",
        {},
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_every_failure_is_one_line_exit_2_and_changes_nothing(
    case, run_copy, tmp_path, capsys, monkeypatch
):
    argv, message, patches = FAILURES[case]
    world = {"run": run_copy, "file": tmp_path / "afile", "empty": tmp_path / "empty"}
    world["file"].write_text("not a folder")
    world["empty"].mkdir()
    for target, replacement in patches.items():
        if target == "config" and isinstance(replacement, dict):  # values edited by hand
            config = json.loads((run_copy / "config.json").read_text())
            config.update(replacement)
            config["options"].update(replacement)
            (run_copy / "config.json").write_text(json.dumps(config, indent=1))
        elif target == "config":
            (run_copy / "config.json").write_bytes(replacement)
        elif target == "checkpoint":
            (run_copy / "checkpoint.pt").write_bytes(replacement)
        elif target == "dataset_nll":
            monkeypatch.setattr("pyro_vae.infer.evidence.dataset.dataset_nll", replacement)
        else:
            monkeypatch.setattr(target, replacement)
    before = _snapshot(tmp_path)
    argv = [a.format(**world) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exit_info:  # argparse's own refusals exit from parse_args
        status = exit_info.code
    monkeypatch.undo()
    out, err = capsys.readouterr()
    if case == "disk full writing the report":  # the tables come out before the write fails
        assert "NLL = -log p(x)" in out, out
    assert status == 2, (status, err)
    assert err.count("\n") == 1 and message.format(**world) in err, err
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before


# --- stopped mid-run: Ctrl-C, a lost torchrun rank, a write killed mid-way ----------------------


def _stop_in_epoch(monkeypatch, epoch, error):
    """Raise ``error`` in the middle of epoch ``epoch`` (after its first steps would run)."""
    run_epoch = pyro_vae.infer.training.loop.run_epoch

    def stopping(svi, stream, stream_l, batching, number):
        if number == epoch:
            raise error
        return run_epoch(svi, stream, stream_l, batching, number)

    monkeypatch.setattr("pyro_vae.infer.training.loop.run_epoch", stopping)


def test_ctrl_c_keeps_the_last_complete_epoch_and_says_how_to_continue(
    run_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    _stop_in_epoch(monkeypatch, 2, KeyboardInterrupt())
    assert _train(out) == 130  # 128 + SIGINT, the shell's status of a Ctrl-C
    err = capsys.readouterr().err
    assert err == (
        f"pyro-vae train: interrupted after epoch 1; continue with: pyro-vae train --out {out} "
        "--resume\n"
    )
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # whole, and nothing after it
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    # the command it names finishes the run as if it had never stopped
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    history = json.loads((out / "history.json").read_text())
    expected = json.loads((run_dir / "history.json").read_text())
    assert _timeless(history) == [{**r, "segment": r["epoch"] - 1} for r in _timeless(expected)]


def test_ctrl_c_before_the_first_epoch_removes_the_new_run(tmp_path, capsys, monkeypatch):
    _stop_in_epoch(monkeypatch, 1, KeyboardInterrupt())
    assert _train(tmp_path / "new" / "run") == 130
    err = capsys.readouterr().err
    assert err == (
        "pyro-vae train: interrupted before the first epoch finished; "
        f"removed {tmp_path / 'new'}, which this command had created\n"
    )
    assert not any(tmp_path.iterdir())


def _sigterm_in_epoch(monkeypatch, epoch):
    """Send this process SIGTERM, as ``kill`` would, in the middle of epoch ``epoch``."""
    run_epoch = pyro_vae.infer.training.loop.run_epoch

    def terminated(svi, stream, stream_l, batching, number):
        if number == epoch:
            signal.raise_signal(signal.SIGTERM)  # Python runs the handler before returning
        return run_epoch(svi, stream, stream_l, batching, number)

    monkeypatch.setattr("pyro_vae.infer.training.loop.run_epoch", terminated)


@pytest.mark.parametrize("epoch", [1, 2])
def test_sigterm_stops_train_as_ctrl_c_does_and_restores_the_handler(
    epoch, tmp_path, capsys, monkeypatch
):
    # a handler of the test's own: were the command's not installed, SIGTERM lands here
    # instead of killing the test process, and the test fails on ``unhandled``
    unhandled = []
    previous = signal.signal(signal.SIGTERM, lambda *frame: unhandled.append(frame))
    out = tmp_path / "new" / "run"
    _sigterm_in_epoch(monkeypatch, epoch)
    try:
        status = _train(out)
    finally:
        ours = signal.signal(signal.SIGTERM, previous)
    assert not unhandled and ours is not previous and ours.__name__ == "<lambda>"  # restored
    assert status == 143  # 128 + SIGTERM, the shell's status of a process it terminated
    err = capsys.readouterr().err
    if epoch == 1:  # a new run that saved no epoch is removed, as after Ctrl-C
        assert err == (
            "pyro-vae train: terminated (SIGTERM) before the first epoch finished; "
            f"removed {tmp_path / 'new'}, which this command had created\n"
        )
        assert not any(tmp_path.iterdir())
        return
    assert err == (
        f"pyro-vae train: terminated (SIGTERM) after epoch 1; continue with: pyro-vae train "
        f"--out {out} --resume\n"
    )
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_a_second_sigterm_does_not_cut_the_removal_of_a_new_run(tmp_path, capsys, monkeypatch):
    # torchrun sends SIGTERM to a rank that is already stopping; the folder goes whole
    rmtree = shutil.rmtree

    def signalled_rmtree(path, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # ignored while the run is being removed
        rmtree(path, *args, **kwargs)

    unhandled = []
    previous = signal.signal(signal.SIGTERM, lambda *frame: unhandled.append(frame))
    monkeypatch.setattr("pyro_vae.runs.progress.shutil.rmtree", signalled_rmtree)
    _sigterm_in_epoch(monkeypatch, 1)
    try:
        assert _train(tmp_path / "new" / "run") == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not unhandled
    assert capsys.readouterr().err.endswith(
        f"removed {tmp_path / 'new'}, which this command had created\n"
    )
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_killed_train_says_what_it_kept_and_continues(tmp_path):
    # a real ``kill`` from outside, in whatever the process is doing after its first epoch
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pyro_vae.cli", "train", *TINY, "--epochs", "1000"]
    command += ["--compile", "off", "--out", str(out)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "history.json").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no epoch saved in 120 s"
        time.sleep(0.05)
    process.terminate()  # SIGTERM
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    epoch = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert err.splitlines()[-1] == (  # after torch's warnings, if any
        f"pyro-vae train: terminated (SIGTERM) after epoch {epoch}; continue with: "
        f"pyro-vae train --out {out} --resume"
    )
    argv = ["train", "--out", str(out), "--resume", "--epochs", str(epoch + 1), "--quiet"]
    assert main(argv) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, epoch + 2))


def test_ctrl_c_on_a_resume_leaves_the_run_as_it_was(run_copy, capsys, monkeypatch):
    before = _snapshot(run_copy)
    _stop_in_epoch(monkeypatch, 3, KeyboardInterrupt())
    argv = ["train", "--out", str(run_copy), "--resume", "--epochs", "3", "--quiet"]
    assert main(argv) == 130
    assert capsys.readouterr().err.startswith("pyro-vae train: interrupted after epoch 2; ")
    assert _snapshot(run_copy) == before


def test_a_lost_torchrun_rank_is_one_line_and_the_run_keeps_its_epochs(
    tmp_path, capsys, monkeypatch
):
    # what average_gradients raises on a surviving rank when gloo loses its peer
    # (tests/test_distributed.py kills a real rank to check that translation)
    lost = PeerLostError(
        "rank 0 of 2 lost another process of the job during the gradient all-reduce (gloo: "
        "Connection reset by peer): that process stopped, and its own error says why"
    )
    _stop_in_epoch(monkeypatch, 2, lost)
    out = tmp_path / "run"
    assert _train(out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.endswith(
        f"(gloo: Connection reset by peer): that process stopped, and its own error says why; "
        f"{out} holds epoch 1; continue with: pyro-vae train --out {out} --resume\n"
    ), err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_a_resume_removes_temporary_files_of_a_write_killed_mid_way(run_copy):
    # kill -9 during atomic_write leaves its temporary file beside the file it replaces
    leftovers = [run_copy / ".checkpoint.pt.k9x1.tmp", run_copy / ".config.json.k9x2.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "3", "--quiet"]) == 0
    assert not any(path.exists() for path in leftovers)
    assert not list(run_copy.glob(".*.tmp"))


def test_a_pyro_error_is_one_line_without_the_trace_table(run_copy, capsys, monkeypatch):
    def load_run(*args, **kwargs):
        def model():
            pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
            raise ValueError("x must have shape (N, 64), got (2, 784)")

        pyro.poutine.trace(model).get_trace()  # Pyro appends "Trace Shapes: ..." to the error

    monkeypatch.setattr("pyro_vae.cli.load_run", load_run)
    assert main(["evaluate", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert err == "pyro-vae evaluate: error: x must have shape (N, 64), got (2, 784)\n"


# --- the conditional VAE and M2 through train, evaluate, diagnose, resume ------------------------


@pytest.mark.slow
def test_cvae_run_is_scored_with_the_test_labels_and_draws_class_figures(tmp_path, capsys):
    out = tmp_path / "cvae"
    assert _train(out, "--model", "cvae") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "cvae" and config["vae"]["num_classes"] == 10
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"class_samples.png", "analogies.png", "elbo_curves.png"} <= figures, figures
    capsys.readouterr()
    argv = ["evaluate", str(out), "--num-samples", "20", "--num-points", "12", "--quiet"]
    assert main(argv) == 0
    assert "NLL = -log p(x|y)" in capsys.readouterr().out
    report = json.loads((out / "evaluation.json").read_text())
    assert report["evidence"] == "log p(x|y)" and report["num_points"] == 12
    # the evaluation is log p(x|y) of the test labels: the library, seeded as evaluate seeds
    # (--seed 0), draws the same particles and gives the same number, bit for bit
    run = load_run(out)
    x, y = evaluation_data(run, 12), run.data.test.y[:12]
    scored = {}
    for name, labels in (("test labels", y), ("other labels", (y + 1) % 10)):
        pyro.set_rng_seed(0)
        nll = dataset_nll(run.vae.model, run.vae.guide, (x, labels), num_samples=20,
                          progress=False, return_log_weights=True).nll  # fmt: skip
        scored[name] = nll
    assert scored["test labels"] == report["nll"], (scored, report["nll"])
    assert scored["other labels"] != report["nll"], scored
    argv = ["diagnose", str(out), "--num-points", "12", "--gap-points", "2", "--gap-steps", "3"]
    argv += ["--warmup", "3", "--draws", "3", "--quiet"]
    assert main(argv) == 0
    assert json.loads((out / "diagnostics.json").read_text())["latent_dim"] == 2


@pytest.fixture(scope="module")
def m2_dir(tmp_path_factory):
    """A 2-epoch M2 run (3 labels per class) that no test changes, and what training printed."""
    out = tmp_path_factory.mktemp("m2") / "m2"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _train(out, "--model", "m2", "--labels-per-class", "3") == 0
    return out, printed.getvalue()


@pytest.mark.slow
def test_m2_run_trains_evaluates_diagnoses_and_resumes(m2_dir, tmp_path):
    out, printed = shutil.copytree(m2_dir[0], tmp_path / "m2"), m2_dir[1]
    assert "test accuracy of q(y|x)" in printed, printed
    options = json.loads((out / "config.json").read_text())["options"]
    # Pyro's SS-VAE example: alpha = 46 N_l, N_l = 30 labelled images
    assert options["loss"] == "enum" and options["alpha"] == pytest.approx(46 * 30)
    assert options["labelled_schedule"] == "alternate" and options["init"] == "small"
    assert options["labels_per_class"] == 3
    argv = ["evaluate", str(out), "--num-samples", "20", "--num-points", "12", "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["evidence"] == "log p(x)" and 0 <= report["accuracy"] <= 1
    # the advice of a plain evaluate holds for M2: AIS sums its label out by enumeration
    assert main([*argv, "--estimator", "auto", *AIS_FAST]) == 0
    trusted = json.loads((out / "evaluation.json").read_text())["trusted"]
    assert trusted["points_by_estimator"]["ais"] == report["khat"]["bad (> 0.7)"]
    assert main(["certify", str(out), "--num-points", "3", "--steps", "3", *AIS_FAST[:2],
                 "--ais-leapfrog", "2", "--quiet"]) == 0  # fmt: skip
    assert json.loads((out / "certification.json").read_text())["model"] == "m2"
    argv = ["diagnose", str(out), "--num-points", "12", "--gap-points", "2", "--gap-steps", "3"]
    argv += ["--warmup", "3", "--draws", "3", "--quiet"]
    assert main(argv) == 0
    # resume: the stored model, labels and alpha come back; one more epoch is appended
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]


@pytest.mark.slow
def test_m2_resume_equals_an_uninterrupted_run(m2_dir, tmp_path):
    argv = ["train", "--epochs", "1", *TINY, "--model", "m2", "--labels-per-class", "3"]
    assert main([*argv, "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--out", str(tmp_path / "split"), "--resume", "--epochs", "2"]) == 0
    # the uninterrupted run: the module's 2-epoch run of the same command
    full, split = (load_checkpoint(r / "checkpoint.pt") for r in (m2_dir[0], tmp_path / "split"))
    for name, value in full["params"].items():
        assert torch.equal(value, split["params"][name]), f"{name} differs after resuming"


def test_certify_help_shows_its_default_steps_as_typed(capsys):
    with pytest.raises(SystemExit):
        main(["certify", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "(default: 10,100,1000)" in flat and "[10," not in flat, flat


def test_help_states_each_default_once():
    from pyro_vae.cli_parser import build_parser

    for command in ("train", "evaluate", "diagnose"):
        text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
        flat = " ".join(text.split())
        assert "(default: None)" not in flat, command
        # a help text that states its default ("(default 10)") gets no second one
        assert not re.search(r"\(default [^)]*\) \(default:", flat), f"{command}: said twice"


# --- nothing lost to a later command; strict JSON -------------------------------------------------


def _files(folder):
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_smaller_evaluate_keeps_the_larger_one(run_copy, capsys):
    evaluate = ["evaluate", str(run_copy), "--iwae-k", "1"]
    assert main([*evaluate, "--num-samples", "100", "--num-points", "40"]) == 0
    large = run_copy / "evaluations" / "is-L100-n40-b100-seed0-k1-epoch2"
    kept = _files(large)
    assert {p.name for p in kept} == {"evaluation.json", "khat.png", "elbo_vs_logpx.png"}
    assert main([*evaluate, "--num-samples", "10", "--num-points", "10"]) == 0
    printed = capsys.readouterr().out
    small = run_copy / "evaluations" / "is-L10-n10-b100-seed0-k1-epoch2"
    assert f"wrote {small}/: evaluation.json" in printed, printed
    assert _files(large) == kept  # the larger evaluation, bit for bit
    # the top of the run folder shows the latest, and says where it is kept
    latest = json.loads((run_copy / "evaluation.json").read_text())
    assert latest["num_points"] == 10 and latest["kept_in"] == "evaluations/" + small.name
    assert (run_copy / "evaluation.json").read_bytes() == (small / "evaluation.json").read_bytes()
    for name in ("khat.png", "elbo_vs_logpx.png"):
        assert (run_copy / "figures" / name).read_bytes() == (small / name).read_bytes()


def test_the_same_evaluate_twice_is_bit_identical(run_copy):
    evaluate = ["evaluate", str(run_copy), "--num-samples", "20", "--num-points", "8", "--quiet"]
    assert main(evaluate) == 0
    first = _files(run_copy / "evaluations")
    assert main(evaluate) == 0
    assert _files(run_copy / "evaluations") == first and len({p.parts[0] for p in first}) == 1


@pytest.mark.slow
def test_an_evaluation_after_a_resume_keeps_the_earlier_models(run_copy):
    evaluate = ["evaluate", str(run_copy), "--num-samples", "10", "--num-points", "4", "--quiet"]
    assert main(evaluate) == 0
    earlier = _files(run_copy / "evaluations")
    assert _train(run_copy, "--resume", "--epochs", "3") == 0  # another model: epoch 3
    assert main(evaluate) == 0
    now = _files(run_copy / "evaluations")
    assert {p: now[p] for p in earlier} == earlier
    assert sorted({p.parts[0] for p in now}) == [
        "is-L10-n4-b100-seed0-epoch2",
        "is-L10-n4-b100-seed0-epoch3",
    ]


def test_a_later_estimator_leaves_no_stale_figure_on_top(run_copy):
    evaluate = ["evaluate", str(run_copy), "--num-samples", "10", "--num-points", "3", "--quiet"]
    assert main([*evaluate, "--estimator", "ais", *AIS_FAST]) == 0
    ais = run_copy / "evaluations" / "ais-L10-n3-b100-seed0-S4-T5-K2-sigmoid-epoch2"
    assert (ais / "ais_vs_is.png").exists() and (run_copy / "figures" / "ais_vs_is.png").exists()
    assert main(evaluate) == 0  # an IS evaluation draws no ais_vs_is.png: none shows on top
    assert not (run_copy / "figures" / "ais_vs_is.png").exists()
    assert (ais / "ais_vs_is.png").exists()


def _without_seconds(report):
    """A certify report without the seconds each T took, the only field that may differ."""
    runs = [{k: v for k, v in r.items() if k != "seconds"} for r in report["runs"]]
    return {**report, "runs": runs}


@pytest.mark.slow
def test_certify_keeps_each_setting_and_repeats_itself(run_copy):
    certify = ["certify", str(run_copy), "--num-points", "3", *AIS_FAST[:2], "--ais-leapfrog", "2"]
    assert main([*certify, "--steps", "3,6", "--quiet"]) == 0
    first = run_copy / "certifications" / "n3-T3,6-seed0-S4-K2-sigmoid-epoch2"
    kept = _files(first)
    assert main([*certify, "--steps", "4", "--quiet"]) == 0
    assert _files(first) == kept  # a later certify keeps the first
    assert json.loads((run_copy / "certification.json").read_text())["runs"][0]["num_steps"] == 4
    assert main([*certify, "--steps", "3,6", "--quiet"]) == 0  # the first command again
    again = _files(first)
    assert again[Path("bdmc.png")] == kept[Path("bdmc.png")]
    reports = [json.loads(files[Path("certification.json")]) for files in (kept, again)]
    assert _without_seconds(reports[0]) == _without_seconds(reports[1])


@pytest.mark.slow
def test_diagnose_keeps_each_setting_and_repeats_itself(run_copy):
    diagnose = ["diagnose", str(run_copy), "--num-points", "20", "--gap-points", "2"]
    diagnose += ["--gap-steps", "3", "--nuts-points", "1", "--chains", "1", "--warmup", "5"]
    diagnose += ["--draws", "5", "--quiet"]
    assert main(diagnose) == 0
    folder = run_copy / "diagnoses" / "n20-gap2x3-nuts1-c1-w5-d5-seed0-epoch2"
    kept = _files(folder)
    assert main([*diagnose, "--seed", "1"]) == 0
    assert _files(folder) == kept  # a later diagnose keeps the first
    assert json.loads((run_copy / "diagnostics.json").read_text())["kept_in"].endswith(
        "seed1-epoch2"
    )
    assert main(diagnose) == 0
    assert _files(folder) == kept  # the same command: the same files, bit for bit


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def test_every_json_a_run_writes_is_strict(run_copy):
    out = run_copy  # a tiny train's folder: config.json, history.json
    # one point: its standard errors are NaN, and its IS row has no AIS k-hat (NaN)
    evaluate = ["evaluate", str(out), "--num-samples", "10", "--num-points", "1", "--quiet"]
    assert main(evaluate) == 0
    certify = ["certify", str(out), "--num-points", "1", "--steps", "2", "--quiet"]
    assert main([*certify, *AIS_FAST[:2], "--ais-leapfrog", "1"]) == 0
    written = sorted(out.rglob("*.json"))
    assert len(written) == 6, written  # config, history, 2 reports each kept and on top
    for path in written:
        json.loads(path.read_text(), parse_constant=_refuse_constant)
    report = json.loads((out / "evaluation.json").read_text())
    assert report["nll_stderr"] is None and report["points"][0]["ais_khat"] is None
