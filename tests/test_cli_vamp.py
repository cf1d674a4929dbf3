"""``pyro-vae train --model vamp``: the VampPrior through the registry, and every tool of a run
that honours its learned prior (samples, the manifold, the KL report)."""

import json

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.data import load_dataset
from pyro_vae.models.vamp import VampVAE
from pyro_vae.runs.figures import MANIFOLD_PRIOR_DRAWS

TINY = ["--dataset", "digits", "--latent", "2", "--hidden", "8", "--epochs", "1", "--quiet"]


@pytest.mark.slow  # one training run with its figures, then evaluate, sample, encode, diagnose
def test_a_vamp_run_trains_evaluates_samples_encodes_and_diagnoses(tmp_path, monkeypatch, capsys):
    drawn = []  # every draw z ~ p(z) the run's tools ask the VampPrior for
    sample_prior = VampVAE.sample_prior

    def spy(self, n):
        drawn.append(n)
        return sample_prior(self, n)

    monkeypatch.setattr(VampVAE, "sample_prior", spy)
    out = tmp_path / "run"
    argv = ["train", "--model", "vamp", "--pseudo-inputs", "5", *TINY, "--compile", "off"]
    assert main([*argv, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "vamp" and config["vae"]["pseudo_inputs"] == 5
    assert config["options"]["pseudo_inputs"] == 5
    # figures/samples.png (64 draws) and the manifold's grid (its quantiles) are VampPrior draws
    assert drawn == [64, MANIFOLD_PRIOR_DRAWS], drawn
    assert {"samples.png", "manifold.png"} <= {p.name for p in (out / "figures").iterdir()}
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "10", "--num-points", "5"]) == 0
    assert "log p(x)" in capsys.readouterr().out
    samples = tmp_path / "s.npy"
    assert main(["sample", str(out), "--num", "3", "--out", str(samples), "--quiet"]) == 0
    assert np.load(samples).shape == (3, 8, 8) and drawn[-1] == 3  # sample draws p(z) too
    np.save(tmp_path / "x.npy", load_dataset("digits", seed=0).test.x[:4].numpy())
    codes = tmp_path / "codes.npy"
    argv = ["encode", str(out), "--data", str(tmp_path / "x.npy"), "--out", str(codes)]
    assert main([*argv, "--quiet"]) == 0
    assert np.load(codes).shape == (4, 4)  # mean and sd of z, M = 2
    argv = ["diagnose", str(out), "--num-points", "20", "--gap-points", "2", "--gap-steps", "2"]
    argv += ["--nuts-points", "1", "--chains", "1", "--warmup", "3", "--draws", "3"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "the prior p(z) does not factorize over dimensions: no per-dimension KL" in said
    report = json.loads((out / "diagnostics.json").read_text())
    assert report["kl_per_dim"] is None and np.isfinite(report["kl_total"])
    assert not (out / "figures" / "kl_per_dimension.png").exists()


REFUSALS = {
    "--pseudo-inputs applies to --model vamp, not --model vae": ["--pseudo-inputs", "5"],
    "--flows applies to --model vae, not --model vamp": ["--model", "vamp", "--flows", "2"],
    "--pseudo-inputs 0 must be a positive integer": ["--model", "vamp", "--pseudo-inputs", "0"],
}


def test_the_vamp_options_are_refused_in_one_line_with_nothing_written(tmp_path, capsys):
    for message, extra in REFUSALS.items():
        assert main(["train", *TINY, *extra, "--out", str(tmp_path / "run")]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not any(tmp_path.iterdir())
