"""``diagnose``'s report: active units, KL, the amortization gap, the guide against NUTS.

All on the run's test split (:func:`pyro_vae.runs.folders.evaluation_data`); a conditional
run's pair is called with the test labels, ``f(x, y)``. :func:`diagnose_run` computes,
:func:`diagnosis_text` says it, :func:`save_diagnosis` writes ``diagnostics.json`` and the
ArviZ summaries (the figures: :func:`pyro_vae.runs.figures.diagnosis_figures`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from pyro_vae.infer.runtime.files import write_json
from pyro_vae.runs.folders import Run, evaluation_data, evaluation_labels

__all__ = ["Diagnosis", "diagnose_run", "diagnosis_text", "save_diagnosis"]


@dataclass(frozen=True)
class Diagnosis:
    """What ``diagnose`` computed.

    Attributes
    ----------
    report : dict
        The content of ``diagnostics.json``.
    summaries : dict
        ``{"guide": DataFrame, "NUTS": DataFrame}``: ArviZ summaries of the posterior draws.
    idatas : dict
        ``{"guide": InferenceData, "NUTS": InferenceData}``.
    kl : torch.Tensor of shape (M,) or None
        KL per latent dimension (None for a flow guide or a prior that does not factorize).
    variances : torch.Tensor of shape (M,)
        Activity Cov_x E_q[z_j] per dimension.
    num_points, gap_points, nuts_points : int
        The test points of the units and KL, of the gap, and of the NUTS comparison.
    """

    report: dict
    summaries: dict
    idatas: dict
    kl: torch.Tensor | None
    variances: torch.Tensor
    num_points: int
    gap_points: int
    nuts_points: int
    kl_skipped: str = ""
    """Why ``kl`` is None (a flow guide, a prior that does not factorize); empty otherwise."""


def diagnose_run(
    run: Run,
    *,
    num_points: int | None = 1000,
    gap_points: int = 20,
    gap_steps: int = 300,
    nuts_points: int = 2,
    chains: int = 2,
    warmup: int = 200,
    draws: int = 300,
    seed: int = 0,
    progress: bool = True,
) -> Diagnosis:
    """Posterior diagnostics of a trained run on its test split.

    Parameters
    ----------
    run : Run
        A loaded run (:func:`pyro_vae.runs.folders.load_run`).
    num_points : int, optional
        The first test points, for active units and KL (None: all).
    gap_points : int
        The first test points of the amortization gap.
    gap_steps : int
        Per-datapoint guide steps of the gap.
    nuts_points : int
        The first test points compared with NUTS.
    chains, warmup, draws : int
        NUTS (and guide) chains, NUTS warm-up steps, draws per chain.
    seed : int
        Seeds every draw.
    progress : bool
        Progress bars.

    Returns
    -------
    Diagnosis

    Raises
    ------
    ValueError
        ``gap_points`` or ``nuts_points`` above the test points, before anything is computed.
    """
    from pyro_vae.diagnostics import arviz_io
    from pyro_vae.diagnostics.latent import (
        active_units,
        amortization_gap,
        kl_per_dimension,
        latent_kl,
    )

    pyro.set_rng_seed(seed)
    vae = run.vae
    x = evaluation_data(run, num_points, seed)
    # a conditional pair gets the test labels: every tool is called f(x, y)
    y = (evaluation_labels(run, num_points),) if run.conditional else ()
    if gap_points > len(x) or nuts_points > len(x):
        raise ValueError(
            f"--gap-points {gap_points} and --nuts-points {nuts_points} must not "
            f"exceed --num-points {len(x)}"
        )
    active, variances = active_units(vae.guide, x, *y)
    # a flow guide or a mixture prior does not factorize: the KL has no per-unit split, only
    # a Monte Carlo total
    skipped = _kl_skipped(vae)
    kl = kl_per_dimension(vae.model, vae.guide, x, *y) if not skipped else None
    kl_total = kl.sum().item() if kl is not None else latent_kl(vae.model, vae.guide, x).mean()
    gap_rows = slice(0, gap_points)
    gap = amortization_gap(
        vae.model,
        vae.guide,
        x[gap_rows],
        *(t[gap_rows] for t in y),
        num_steps=gap_steps,
        progress=progress,
    )
    idatas = _guide_and_nuts(vae, x, y, nuts_points, chains, warmup, draws, seed, progress)
    summaries = {name: arviz_io.summary(idata) for name, idata in idatas.items()}
    report = {
        "split": "test",
        "active_units": active,
        "latent_dim": vae.latent_dim,
        "activity_per_dim": variances.tolist(),
        "kl_per_dim": kl.tolist() if kl is not None else None,
        "kl_total": float(kl_total),
        "amortization_gap": gap["mean_amortization_gap"],
        "elbo_amortized": gap["mean_elbo_amortized"],
        "elbo_optimized": gap["mean_elbo_optimized"],
        "max_r_hat_nuts": float(summaries["NUTS"]["r_hat"].max()),
    }
    return Diagnosis(
        report, summaries, idatas, kl, variances, len(x), gap_points, nuts_points, skipped
    )


def _kl_skipped(vae) -> str:
    """Why ``vae``'s KL has no split by latent dimension, or "" when it has one.

    Parameters
    ----------
    vae : torch.nn.Module
        A run's model.

    Returns
    -------
    str
        "a flow guide ..." (``flows`` > 0), "the prior p(z) ..." (``prior_factorizes`` False,
        the VampPrior's mixture), or "".
    """
    if getattr(vae, "flows", 0):
        return "a flow guide has no per-dimension KL"
    if not getattr(vae, "prior_factorizes", True):
        return "the prior p(z) does not factorize over dimensions: no per-dimension KL"
    return ""


def _guide_and_nuts(vae, x, y, nuts_points, chains, warmup, draws, seed, progress) -> dict:
    """Guide draws and a NUTS reference on the first ``nuts_points`` points, as ArviZ data."""
    from pyro_vae.diagnostics import arviz_io
    from pyro_vae.diagnostics.posterior import guide_draws, nuts_reference

    index = list(range(nuts_points))
    y_index = tuple(t[index] for t in y)
    guide = guide_draws(vae.guide, x[index], *y_index, num_chains=chains, num_draws=draws)
    nuts = nuts_reference(
        vae.model,
        x[index],
        *y_index,
        num_chains=chains,
        num_warmup=warmup,
        num_samples=draws,
        seed=seed,
        progress=progress,
    )
    guide = {name: d for name, d in guide.items() if name in nuts}  # M2: NUTS sums y out
    return {
        "guide": arviz_io.to_inference_data(guide, index),
        "NUTS": arviz_io.to_inference_data(nuts, index),
    }


def diagnosis_text(diagnosis: Diagnosis) -> str:
    """The lines ``diagnose`` prints.

    Parameters
    ----------
    diagnosis : Diagnosis
        From :func:`diagnose_run`.

    Returns
    -------
    str
        Lines without a final newline.
    """
    report, kl = diagnosis.report, diagnosis.kl
    guide_sum, nuts_sum = diagnosis.summaries["guide"], diagnosis.summaries["NUTS"]
    mean_abs = (guide_sum["mean"] - nuts_sum["mean"]).abs().mean()
    sd_ratio = (guide_sum["sd"] / nuts_sum["sd"]).median()
    kl_text = (
        "by dimension: " + " ".join(f"{v:.2f}" for v in kl.tolist())
        if kl is not None
        else f"Monte Carlo total ({diagnosis.kl_skipped or 'no per-dimension KL'})"
    )
    lines = [
        f"test split, {diagnosis.num_points} datapoints:",
        f"active units (Cov_x E_q[z_j] > 0.01): {report['active_units']} of {report['latent_dim']}",
        f"KL(q(z|x) || p(z)): {report['kl_total']:.3f} nats/datapoint; {kl_text}",
        f"amortization gap on {diagnosis.gap_points} test points: "
        f"{report['amortization_gap']:.3f} nats/datapoint (ELBO amortized "
        f"{report['elbo_amortized']:.3f}, optimized per datapoint {report['elbo_optimized']:.3f})",
        f"guide vs NUTS on {diagnosis.nuts_points} test points: mean |difference of posterior "
        f"means| {mean_abs:.3f}, median sd ratio guide/NUTS {sd_ratio:.3f}, "
        f"NUTS max R-hat {report['max_r_hat_nuts']:.3f}",
    ]
    return "\n".join(lines)


def save_diagnosis(diagnosis: Diagnosis, run_dir: str | Path, kept_in: str = "") -> list[Path]:
    """Write ``diagnostics.json`` and ``posterior_summary_{guide,nuts}.csv`` into ``run_dir``.

    Parameters
    ----------
    diagnosis : Diagnosis
        From :func:`diagnose_run`.
    run_dir : str or Path
        The folder (``diagnose`` gives the report's own, :mod:`pyro_vae.runs.archive`).
    kept_in : str
        That folder, relative to the run folder, recorded in ``diagnostics.json`` (if given).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    OSError
        One line naming the file that could not be written.
    """
    run_dir = Path(run_dir)
    report = {**diagnosis.report, **({"kept_in": kept_in} if kept_in else {})}
    paths = [write_json(run_dir / "diagnostics.json", report)]
    for name, table in diagnosis.summaries.items():
        path = run_dir / f"posterior_summary_{name.lower()}.csv"
        table.to_csv(path)
        paths.append(path)
    return paths
