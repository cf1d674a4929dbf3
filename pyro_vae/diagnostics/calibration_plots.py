"""Figures of simulation-based calibration: rank ECDFs with bands, coverage, reliability.

- :func:`save_sbc_ecdf`: per latent dimension (up to 20, most miscalibrated first) the ECDF of
  its ranks minus the uniform CDF, inside the simultaneous 95% band of Säilynoja, Bürkner &
  Vehtari (2022) (:func:`pyro_vae.diagnostics.arviz_io.rank_ecdf_band`). An over-confident
  dimension dips below 0 and comes back (a U of ranks), an under-confident one rises and comes
  back, a biased one leans to one side.
- :func:`save_coverage`: the coverage of the central 50/80/90/95% intervals of every dimension
  against the nominal level, with the binomial 2-SE band of an exact guide.
- :func:`save_reliability`: the reliability diagram of a discrete q(y|x) (Guo et al. 2017).

Built with matplotlib's object API, like :mod:`pyro_vae.diagnostics.plots`.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from pyro_vae.diagnostics.arviz_io import rank_ecdf_band
from pyro_vae.diagnostics.plots import save_figure, to_numpy
from pyro_vae.diagnostics.sbc_statistics import COVERAGE_LEVELS, SBCStatistics

__all__ = [
    "MAX_PANELS",
    "miscalibration_order",
    "save_coverage",
    "save_reliability",
    "save_sbc_ecdf",
]

MAX_PANELS = 20


def miscalibration_order(stats: SBCStatistics) -> list[int]:
    """Dimension indices, most miscalibrated first: smallest corrected p-value, then the
    largest ECDF deviation."""

    def key(j):
        row = stats.rows[j]
        return (row["p_min"], -row["ecdf_max_diff"])

    return sorted(range(len(stats.rows)), key=key)


def save_sbc_ecdf(stats: SBCStatistics, path, max_panels: int = MAX_PANELS):
    """ECDF of each dimension's ranks minus uniform, inside the simultaneous 95% band.

    Parameters
    ----------
    stats : SBCStatistics
        From :func:`pyro_vae.diagnostics.calibration.sbc`.
    path : str or Path
        PNG to write.
    max_panels : int, default 20
        Most miscalibrated dimensions drawn (:func:`miscalibration_order`).

    Returns
    -------
    Path
    """
    ranks = np.rint(to_numpy(stats.fractional) * (stats.num_draws + 1) - 0.5).astype(int)
    n, num_draws = ranks.shape[0], stats.num_draws
    fractions, lower, upper = rank_ecdf_band(n, num_draws)
    order = miscalibration_order(stats)[:max_panels]
    cols = min(5, max(1, len(order)))
    rows = max(1, math.ceil(len(order) / cols))
    fig = Figure(figsize=(2.6 * cols, 2.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(order) :]:
        ax.set_visible(False)
    for ax, j in zip(axes.flat, order, strict=False):
        counts = np.bincount(ranks[:, j], minlength=num_draws + 1)[:num_draws]
        ecdf = np.cumsum(counts) / n
        ax.fill_between(fractions, lower, upper, color="0.85", step="mid", label="95% band")
        ax.step(
            fractions, ecdf - fractions, where="mid", color="C3" if _flagged(stats, j) else "C0"
        )
        ax.axhline(0.0, color="0.4", lw=0.6)
        ax.set_title(f"{stats.rows[j]['name']}: {stats.rows[j]['verdict']}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.supxlabel("fractional rank of the truth among the guide draws")
    fig.supylabel("ECDF - uniform")
    fig.suptitle(f"SBC: {n} simulations, {num_draws} guide draws each", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _flagged(stats: SBCStatistics, j: int) -> bool:
    return stats.rows[j]["verdict"] not in ("calibrated", "prior-like")


def save_coverage(stats: SBCStatistics, path):
    """Coverage of the central intervals per dimension against the nominal level.

    Parameters
    ----------
    stats : SBCStatistics
        From :func:`pyro_vae.diagnostics.calibration.sbc`.
    path : str or Path
        PNG to write.

    Returns
    -------
    Path
    """
    levels = np.array(COVERAGE_LEVELS)
    fig = Figure(figsize=(5.0, 4.4))
    ax = fig.subplots()
    first = stats.rows[0]["coverage"] if stats.rows else None
    if first is not None:
        expected = np.array([first[str(c)]["expected"] for c in levels])
        se = np.array([first[str(c)]["se"] for c in levels])
        ax.fill_between(
            levels, expected - 2 * se, expected + 2 * se, color="0.85", label="exact guide, ±2 SE"
        )
    for j, row in enumerate(stats.rows):
        values = [row["coverage"][str(c)]["value"] for c in levels]
        color = "C3" if _flagged(stats, j) else "C0"
        ax.plot(levels, values, marker="o", ms=3, lw=0.8, alpha=0.7, color=color)
    ax.plot([0.45, 1.0], [0.45, 1.0], color="0.4", lw=0.8, ls="--", label="nominal")
    ax.plot([], [], color="C3", label="flagged dimension")
    ax.plot([], [], color="C0", label="other dimension")
    ax.set_xlabel("nominal level of the central interval")
    ax.set_ylabel("coverage of the truth (simulated)")
    ax.set_title("coverage per latent dimension")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_reliability(report: dict, path, title: str = "q(y|x)"):
    """Reliability diagram: accuracy against confidence per bin, with the ECE.

    Parameters
    ----------
    report : dict
        :func:`pyro_vae.diagnostics.sbc_statistics.reliability`'s result.
    path : str or Path
        PNG to write.
    title : str
        What was judged.

    Returns
    -------
    Path
    """
    bins = [b for b in report["bins"] if b["count"]]
    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.subplots()
    width = report["bins"][0]["upper"] - report["bins"][0]["lower"]
    ax.bar(
        [b["lower"] for b in bins],
        [b["accuracy"] for b in bins],
        width=width,
        align="edge",
        color="C0",
        edgecolor="white",
        label="accuracy",
    )
    ax.plot(
        [b["confidence"] for b in bins],
        [b["confidence"] for b in bins],
        "o",
        color="C3",
        ms=3,
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence max_y q(y|x)")
    ax.set_ylabel("accuracy on simulated data")
    ax.set_title(f"{title}: accuracy {report['accuracy']:.3f}, ECE {report['ece']:.3f}")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)
