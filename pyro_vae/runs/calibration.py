"""``pyro-vae calibrate``: simulation-based calibration of a trained run's guide.

Data are simulated from the run's own model, N = ``--num-simulations`` of them: z ~ p(z),
x ~ p(x | z) for the VAE; for the CVAE x ~ p(x | z, y) at the test labels (cycled when N is
larger than the test split); for M2 y ~ p(y), z ~ p(z), x ~ p(x | y, z). The guide then draws
L = ``--num-draws`` latents per x (:func:`pyro_vae.diagnostics.calibration.sbc`); the report
gives per latent dimension the coverage of the central 90% interval, the smallest
Holm-corrected p-value of its rank tests, the z-score's mean and sd, the contraction and the
verdict, and for M2 the reliability of q(y|x) on the simulated data. ``calibration.json`` is
strict JSON (non-finite numbers written as null).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from pyro_vae.diagnostics.calibration import SBCResult, sbc
from pyro_vae.infer.evidence.weights import check_positive
from pyro_vae.infer.runtime.files import write_json
from pyro_vae.runs.folders import Run, evaluation_labels

__all__ = [
    "Calibration",
    "check_calibration_options",
    "calibrate_run",
    "calibration_table",
    "save_calibration",
]

MIN_DRAWS = 9  # fewer guide draws leave too few rank values to bin (RANK_BINS) or cover 95%


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` computed: the SBC result and its JSON-ready report."""

    result: SBCResult
    report: dict


def check_calibration_options(num_simulations, num_draws) -> None:
    """Refuse settings SBC cannot judge, in one line, before anything is loaded."""
    check_positive(num_simulations=num_simulations, num_draws=num_draws)
    if num_draws < MIN_DRAWS:
        raise ValueError(
            f"--num-draws {num_draws}: at least {MIN_DRAWS} guide draws are needed for the "
            "ranks to say anything (the default is 99)"
        )
    if num_simulations < 20:
        raise ValueError(
            f"--num-simulations {num_simulations}: at least 20 simulations are needed to test "
            "the ranks (the default is 1000)"
        )


def _template(run: Run, num_simulations: int, device) -> tuple[torch.Tensor, tuple]:
    """A zero batch of N rows shaped like the test images (it only sets the shape), and the
    CVAE's labels: the test labels, cycled to N."""
    x = torch.zeros(num_simulations, run.data.test.data_dim, device=device)
    if not run.conditional:
        return x, ()
    labels = evaluation_labels(run)
    index = torch.arange(num_simulations) % labels.shape[0]
    return x, (labels[index].to(device),)


def calibrate_run(
    run: Run, *, num_simulations=1000, num_draws=99, seed=0, device="cpu", progress=True
) -> Calibration:
    """SBC of a loaded run's guide on data simulated from its model.

    Parameters
    ----------
    run : Run
        A loaded run (on ``device``).
    num_simulations : int
        N, simulated datapoints.
    num_draws : int
        L, guide draws per simulation.
    seed : int
        Seeds the simulation and the draws.
    device : str or torch.device
        Where the data are simulated.
    progress : bool
        A progress bar.

    Returns
    -------
    Calibration
    """
    check_calibration_options(num_simulations, num_draws)
    pyro.set_rng_seed(seed)
    x, labels = _template(run, num_simulations, device)
    start = time.perf_counter()
    result = sbc(run.vae.model, run.vae.guide, x, *labels, num_draws=num_draws, progress=progress)
    seconds = time.perf_counter() - start
    stats = result.statistics
    what = run.entry.simulated
    report = {
        "run_dir": str(run.run_dir),
        "model": run.kind,
        "simulations": num_simulations,
        "num_draws": num_draws,
        "data": f"{num_simulations} datapoints simulated from the model ({what})",
        "seed": seed,
        "alpha": stats.alpha,
        "summary": stats.summary(),
        "dimensions": stats.rows,
        "joint_density_rank": stats.joint,
        "reliability": {name: d["reliability"] for name, d in result.discrete.items()},
        "seconds": seconds,
    }
    return Calibration(result, report)


def calibration_table(report: dict) -> str:
    """The markdown table ``calibrate`` prints, one row per latent dimension, then the summary."""
    lines = [
        f"SBC on {report['data']}, {report['num_draws']} guide draws each; p-values "
        f"Holm-corrected over all tests (family-wise false-alarm rate {report['alpha']:g})",
        "",
        "| dimension | coverage 90% | p (Holm) | z mean | z sd | contraction | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["dimensions"]:
        cover = row["coverage"]["0.9"]
        lines.append(
            f"| {row['name']} | {cover['value']:.3f} ± {cover['se']:.3f} | "
            f"{row['p_min']:.3g} | {row['z_mean']:+.2f} | {row['z_sd']:.2f} | "
            f"{row['contraction']:.2f} | {row['verdict']} |"
        )
    for name, rel in report["reliability"].items():
        lines.append(
            f"\nq({name}|x) on simulated data: accuracy {rel['accuracy']:.4f}, expected "
            f"calibration error {rel['ece']:.4f}, -log q({name}|x) {rel['nll']:.3f} nats"
        )
    lines.append("")
    lines.append(report["summary"])
    return "\n".join(lines)


def save_calibration(calibration: Calibration, folder, kept_in: str | None = None) -> list[Path]:
    """Write ``calibration.json`` and the figures into ``folder``; returns the paths written.

    ``kept_in``: the report's folder relative to the run folder, recorded in the JSON (the
    latest report is copied to the top of the run folder, :mod:`pyro_vae.runs.archive`).
    """
    from pyro_vae.diagnostics import calibration_plots as plots  # matplotlib, ArviZ: only here

    folder = Path(folder)
    report = {**calibration.report, "kept_in": kept_in} if kept_in else calibration.report
    written = [write_json(folder / "calibration.json", report)]
    stats = calibration.result.statistics
    if stats.rows:
        written.append(plots.save_sbc_ecdf(stats, folder / "sbc_ecdf.png"))
        written.append(plots.save_coverage(stats, folder / "coverage.png"))
    for name, d in calibration.result.discrete.items():
        written.append(
            plots.save_reliability(d["reliability"], folder / "reliability.png", f"q({name}|x)")
        )
    return written
