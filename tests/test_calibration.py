"""Simulation-based calibration: exact guides pass at the stated false-alarm rate, wrong ones fail.

The pattern of BayesFlow's ``test_calibration_log_gamma_end_to_end``: run the whole check on a
pair whose exact posterior is known, many times over, and count. Repetitions are blocks of one
vectorized run: the N simulations of :func:`sbc` are independent, so R blocks of 1000 rows are R
independent runs at the default size (N = 1000, L = 99), scored one by one by
:func:`sbc_statistics`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from pairs import CATALOGUE, FactorAnalysis, GaussianMixture, case

from pyro_vae.cli import main
from pyro_vae.diagnostics.calibration import sbc
from pyro_vae.diagnostics.sbc_statistics import (
    PRIOR_LIKE,
    flatten_sites,
    holm,
    reliability,
)

N, L, ALPHA = 1000, 99, 0.05  # the defaults of pyro-vae calibrate


def _load_rates():
    """experiments/sbc_rates.py: the pPCA pair, its perturbed guides and the block scoring."""
    path = Path(__file__).resolve().parent.parent / "experiments" / "sbc_rates.py"
    spec = importlib.util.spec_from_file_location("sbc_rates", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RATES = _load_rates()


def _binomial_upper(n, p, tail=0.01):
    """Smallest k with P(X > k) <= tail for X ~ Binomial(n, p)."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if 1 - total <= tail:
            return k
    return n


# --- the exact posterior passes --------------------------------------------------------------
@pytest.mark.slow
def test_exact_posteriors_of_ppca_and_factor_analysis_pass(float64):
    ppca = RATES.ppca()
    fa = FactorAnalysis(data_dim=6, latent_dim=3)
    fa.W, fa.psi = fa.W.double(), fa.psi.double()
    for model, guide, dim in [(ppca.model, ppca.guide, 5), (fa.model, fa.exact_guide, 6)]:
        result = sbc(model, guide, torch.zeros(N, dim))
        stats = result.statistics
        assert [r["verdict"] for r in stats.rows] == ["calibrated"] * len(stats.rows)
        assert stats.joint["verdict"] == "consistent"
        for row in stats.rows:
            cover = row["coverage"]["0.9"]
            # 4 binomial standard errors: a two-sided 6e-5 chance per dimension
            assert abs(cover["value"] - cover["expected"]) < 4 * cover["se"]
            assert row["contraction"] > PRIOR_LIKE
        ranks = result.ranks["z"]
        assert ranks.shape == (N, 2 if dim == 5 else 3) and 0 <= ranks.min() <= ranks.max() <= L


@pytest.mark.slow
def test_false_alarm_rate_over_repetitions_is_within_its_stated_level(float64):
    """Measured: 9 of 200 runs flagged (0.045; pPCA, M = 2, default sizes,
    ``experiments/sbc_rates.py --reps 200``); stated: <= 0.05."""
    ppca, reps = RATES.ppca(), 60
    result = sbc(ppca.model, ppca.guide, torch.zeros(reps * N, 5))
    alarms = sum(RATES.flagged(v) for v in RATES.block_verdicts(result, reps, N))
    # Holm keeps the family-wise rate <= alpha; at alpha the count exceeds this bound with
    # probability <= 0.01 (binomial tail)
    assert alarms <= _binomial_upper(reps, ALPHA)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sd, shift, expected",
    [(0.7, 0.0, "over-confident"), (1.4, 0.0, "under-confident"), (1.0, 0.3, "biased")],
)
def test_wrong_guides_fail_with_power_at_the_default_sizes(sd, shift, expected, float64):
    """Measured: 200 of 200 runs flagged, with this verdict on every dimension, for each guide
    (the rank z-statistics are about 9 or more at N = 1000); required: power >= 0.95."""
    ppca, reps = RATES.ppca(), 10
    result = sbc(ppca.model, RATES.perturbed_guide(ppca, sd, shift), torch.zeros(reps * N, 5))
    verdicts = RATES.block_verdicts(result, reps, N)
    # at power 0.95 all 10 are flagged with probability 0.60; at the measured >= 0.985
    # (a one-sided 95% bound from 200 of 200) with 0.86; the effect is ~9 SE, so P ~ 1
    assert all(v[:-1] == [expected, expected] for v in verdicts)
    if shift == 0.0:  # the joint density rank sees a wrong width; a shift of 0.3 sd it may miss
        assert all(v[-1] != "consistent" for v in verdicts)


def test_a_guide_equal_to_the_prior_is_flagged_by_contraction(float64):
    ppca = RATES.ppca()

    stats = sbc(ppca.model, RATES.prior_guide, torch.zeros(N, 5)).statistics
    # ranks alone pass it (z_n ~ p(z) and the draws too); contraction ~ 0 +- sqrt(2 / N)
    assert [r["verdict"] for r in stats.rows] == ["prior-like", "prior-like"]
    assert all(abs(r["contraction"]) < 3 * math.sqrt(2 / N) for r in stats.rows)


# --- the catalogue ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CATALOGUE, ids=str)
def test_sbc_runs_on_every_pair_or_refuses_with_its_reason(case):
    pair = case.make()
    guide = case.exact_guide(pair) if case.exact_guide else pair.guide
    if case.refusal is not None:
        error, match = case.refusal
        with pytest.raises(error, match=match):
            sbc(pair.model, guide, pair.x, *pair.args, num_draws=9)
        return
    if not case.latent:
        with pytest.raises(ValueError, match="has no latent"):
            sbc(pair.model, guide, pair.x, *pair.args, num_draws=9)
        return
    if case.name == "m2-labelled":  # y observed beside x: nothing to simulate y from
        with pytest.raises(ValueError, match="exactly one observed site"):
            sbc(pair.model, guide, pair.x, *pair.args, num_draws=9)
        return
    result = sbc(pair.model, guide, pair.x, *pair.args, num_draws=9, chunk_size=4)
    n = pair.x.shape[0]
    assert result.density_ranks.shape == (n,)
    for name, ranks in result.ranks.items():
        assert ranks.shape[0] == n and 0 <= ranks.min() and ranks.max() <= 9, name
    names, _ = flatten_sites(result.ranks)
    assert len(result.statistics.rows) == len(names)
    if not case.continuous:  # discrete latents: reliability, no ranks
        assert result.ranks == {} and result.discrete
    for d in result.discrete.values():
        assert 0 <= d["reliability"]["ece"] <= 1
        assert torch.allclose(d["probs"].sum(-1), torch.ones(n, dtype=d["probs"].dtype))


def test_discrete_guide_reliability_is_good_with_the_exact_posterior(float64):
    pair = GaussianMixture(exact=True)
    result = sbc(pair.model, pair.guide, torch.zeros(N))
    rel = result.discrete["y"]["reliability"]
    # the exact p(y|x) is calibrated: ECE is its sampling noise, ~ sqrt(1 / N) per bin
    assert rel["ece"] < 0.05
    post = pair.posterior(result.x).max(-1).values.mean().item()
    # accuracy of the Bayes classifier = its mean confidence, within 4 binomial SEs
    assert abs(rel["accuracy"] - post) < 4 * math.sqrt(0.25 / N)


def test_m2_ranks_z_at_the_true_label():
    pair = case("m2-unlabelled").make()
    result = sbc(pair.model, pair.guide, pair.x, num_draws=9)
    assert set(result.ranks) == {"z"} and set(result.discrete) == {"y"}
    assert result.discrete["y"]["probs"].shape == (pair.x.shape[0], 10)


# --- the statistics themselves ---------------------------------------------------------------
def test_holm_matches_a_hand_computation():
    p = torch.tensor([0.01, 0.04, 0.03, 0.005], dtype=torch.float64)
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> cummax
    expected = torch.tensor([0.03, 0.06, 0.06, 0.02], dtype=torch.float64)
    assert torch.allclose(holm(p), expected)


def test_reliability_matches_a_hand_computation():
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.35, 0.65]])
    truth = torch.tensor([0, 1, 1, 1])
    rel = reliability(probs, truth)
    # bin 0.9-1.0: confidence 0.95, accuracy 0.5; bin 0.6-0.7: 0.65 and 1.0
    assert rel["accuracy"] == pytest.approx(0.75)
    assert rel["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_draws": 0}, "num_draws"), ({"alpha": 1.5}, "alpha"), ({"chunk_size": 0}, "chunk")],
)
def test_bad_settings_are_refused_in_one_line(kwargs, match):
    ppca = RATES.ppca()
    with pytest.raises(ValueError, match=match):
        sbc(ppca.model, ppca.guide, torch.zeros(10, 5, dtype=torch.float64), **kwargs)


# --- the command -----------------------------------------------------------------------------
def _refuse_constant(token):
    raise ValueError(f"{token} in calibration.json: not strict JSON")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sbc") / "run"
    argv = ["train", "--epochs", "1", "--latent", "2", "--hidden", "32", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_calibrate_prints_its_table_and_writes_strict_json_and_figures(vae_run, capsys):
    argv = ["calibrate", str(vae_run), "--num-simulations", "100", "--num-draws", "19"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| z[0] |" in printed and "| z[1] |" in printed and "2 latent dimensions" in printed
    report = json.loads((vae_run / "calibration.json").read_text(), parse_constant=_refuse_constant)
    assert [r["name"] for r in report["dimensions"]] == ["z[0]", "z[1]"]
    assert report["simulations"] == 100 and report["reliability"] == {}
    for name in ("sbc_ecdf.png", "coverage.png"):  # a real figure is over 10 kB
        assert (vae_run / "figures" / name).stat().st_size > 1000
    kept = vae_run / "calibrations" / "n100-L19-seed0-epoch1"  # kept under its settings
    assert report["kept_in"] == "calibrations/n100-L19-seed0-epoch1"
    assert (kept / "calibration.json").read_bytes() == (vae_run / "calibration.json").read_bytes()
    # a smaller calibration later keeps the first one, and is the latest on top
    assert main([*argv[:3], "50", "--num-draws", "19", "--quiet"]) == 0
    assert json.loads((kept / "calibration.json").read_text()) == report
    latest = json.loads((vae_run / "calibration.json").read_text())
    assert latest["simulations"] == 50 and latest["kept_in"] == "calibrations/n50-L19-seed0-epoch1"
    argv = ["diagnose", str(vae_run), "--num-points", "20", "--gap-points", "2"]
    argv += ["--gap-steps", "3", "--nuts-points", "1", "--chains", "1", "--warmup", "3"]
    assert main([*argv, "--draws", "3"]) == 0
    assert f"pyro-vae calibrate {vae_run}" in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "options, match",
    [
        (["--num-draws", "3"], "--num-draws 3"),
        (["--num-simulations", "5"], "--num-simulations 5"),
        ([], "config.json"),  # not a run folder
    ],
)
def test_bad_calibrate_settings_fail_in_one_line_and_write_nothing(
    tmp_path, capsys, options, match
):
    assert main(["calibrate", str(tmp_path), *options]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_calibrate_on_m2_reports_the_reliability_of_its_classifier(tmp_path, capsys):
    out = tmp_path / "m2"
    argv = ["train", "--epochs", "1", "--latent", "2", "--hidden", "32", "--quiet"]
    assert main([*argv, "--model", "m2", "--labels-per-class", "3", "--out", str(out)]) == 0
    argv = ["calibrate", str(out), "--num-simulations", "60", "--num-draws", "19", "--quiet"]
    assert main(argv) == 0
    assert "q(y|x) on simulated data: accuracy" in capsys.readouterr().out
    report = json.loads((out / "calibration.json").read_text(), parse_constant=_refuse_constant)
    rel = report["reliability"]["y"]
    assert 0 <= rel["ece"] <= 1 and sum(b["count"] for b in rel["bins"]) == 60
    assert len(report["dimensions"]) == 2  # z ranked at the true y
    assert (out / "figures" / "reliability.png").stat().st_size > 1000


def test_the_rates_script_runs_at_a_tiny_size(capsys):
    argv = ["--reps", "2", "--num-simulations", "60", "--num-draws", "9", "--guides", "exact"]
    results = RATES.main([*argv, "sd0.7"])
    assert set(results) == {"exact", "sd0.7"} and results["sd0.7"]["flagged"] <= 2
    assert "| sd0.7 |" in capsys.readouterr().out
