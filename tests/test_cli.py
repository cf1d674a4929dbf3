"""The pyro-vae command line end to end, on a tiny run."""

import json

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.runs import evaluation_data, load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = [
        "train",
        "--epochs",
        "2",
        "--latent",
        "2",
        "--hidden",
        "32",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    return out


def test_train_leaves_checkpoint_history_and_figures(run_dir, capsys):
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["val_loss"] < history[0]["val_loss"] < 543, history
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    expected = {
        "elbo_curves.png",
        "reconstructions.png",
        "samples.png",
        "latent_map.png",
        "manifold.png",
    }
    assert expected <= figures, figures
    assert all((run_dir / "figures" / name).stat().st_size > 1000 for name in expected)


def test_resume_continues_where_it_stopped(run_dir, capsys):
    argv = [
        "train",
        "--epochs",
        "3",
        "--latent",
        "2",
        "--hidden",
        "32",
        "--out",
        str(run_dir),
        "--resume",
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "epoch 3" in printed and "epoch 1 " not in printed, printed
    assert len(json.loads((run_dir / "history.json").read_text())) == 3


def test_evaluate_prints_nll_gap_iwae_and_khat(run_dir, capsys):
    argv = [
        "evaluate",
        str(run_dir),
        "--num-samples",
        "200",
        "--num-points",
        "50",
        "--iwae-k",
        "1,10,100",
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert "NLL = -log p(x)" in printed and "PSIS k-hat" in printed
    # ELBO <= L_1 <= L_10 <= L_100 <= log p(x), with 1 nat of slack for Monte Carlo noise
    iwae = [report["iwae"][k][0] for k in ("1", "10", "100")]
    assert report["elbo"] - 1.0 < iwae[0] < iwae[1] < iwae[2] <= -report["nll"] + 1.0, (
        iwae,
        report,
    )
    assert report["gap"] > 0, report
    assert sum(v for k, v in report["khat"].items() if "(" in k) == 50


def test_diagnose_writes_report_and_figures(run_dir, capsys):
    argv = [
        "diagnose",
        str(run_dir),
        "--num-points",
        "200",
        "--gap-points",
        "5",
        "--gap-steps",
        "30",
        "--nuts-points",
        "1",
        "--chains",
        "2",
        "--warmup",
        "30",
        "--draws",
        "30",
        "--quiet",
    ]
    assert main(argv) == 0
    report = json.loads((run_dir / "diagnostics.json").read_text())
    assert 0 <= report["active_units"] <= 2 and len(report["kl_per_dim"]) == 2
    assert abs(sum(report["kl_per_dim"]) - report["kl_total"]) < 1e-6
    for name in ("forest_guide_vs_nuts.png", "pair_guide_vs_nuts.png", "kl_per_dimension.png"):
        assert (run_dir / "figures" / name).stat().st_size > 1000
    assert "active units" in capsys.readouterr().out


def test_missing_run_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_bad_hidden_sizes_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--hidden", "400,abc"])
    assert "--hidden" in capsys.readouterr().err


def test_dynamic_runs_are_evaluated_on_one_fixed_binarization(tmp_path, capsys):
    out = tmp_path / "dynamic"
    argv = ["train", "--epochs", "1", "--latent", "2", "--hidden", "16", "--binarize", "dynamic"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    a, b = evaluation_data(run, 100, seed=0), evaluation_data(run, 100, seed=0)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, evaluation_data(run, 100, seed=1))
    evaluate = ["evaluate", str(out), "--num-samples", "20", "--num-points", "20", "--iwae-k", "1"]
    assert main([*evaluate, "--quiet"]) == 0
