"""Which evidence to trust: AIS beside importance sampling in ``evaluate``, and ``certify``.

``evaluate --estimator`` chooses per test point: ``is`` keeps the importance-sampled log p(x)
(Burda et al. 2015), ``ais`` replaces it by annealed importance sampling from the guide
(:func:`pyro_vae.infer.evidence.ais.ais_evidence`) on every point, and ``auto`` runs AIS only
where the importance weights' PSIS k-hat is above ``KHAT_OK`` (0.7), the points whose IS value
is unreliable. A point counts as *certified* by IS when its k-hat is at most 0.7, by AIS when
its chains agree: the effective sample size of the chain weights is at least half the chains
(``AIS_MIN_RELATIVE_ESS``; with tens of chains a Pareto k-hat of the chain weights cannot be
fitted, it is reported but infinite). ``certify`` draws data from the run's own model and runs
bidirectional Monte Carlo (:func:`pyro_vae.infer.evidence.bdmc.bdmc`) at several T: the gap
between its bounds is how far AIS at those settings can be from the truth on such data.
"""

from __future__ import annotations

import math
import time

import pyro
import torch

from pyro_vae.infer.evidence.ais import AISSettings, ais_evidence
from pyro_vae.infer.evidence.bdmc import bdmc, simulate_data
from pyro_vae.infer.evidence.psis import KHAT_OK
from pyro_vae.runs.folders import Run, evaluation_data, evaluation_labels

__all__ = [
    "AIS_MIN_RELATIVE_ESS",
    "ESTIMATORS",
    "certification_table",
    "certify_run",
    "choose_estimates",
    "refuse_ais",
]

ESTIMATORS = ("is", "ais", "auto")
AIS_MIN_RELATIVE_ESS = 0.5  # of the chains: no one chain (or two) carries the estimate


def refuse_ais(run: Run, estimator: str) -> None:
    """Refuse AIS for a run whose model has a discrete latent (M2's unobserved label)."""
    if estimator != "is" and run.kind == "m2":
        raise ValueError(
            f"--estimator {estimator}: M2's label y is a discrete latent and AIS moves "
            "continuous latents only; use --estimator is"
        )


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    se = values.std().item() / math.sqrt(n) if n > 1 else math.nan
    return values.mean().item(), se


def choose_estimates(run, x, y, is_result, estimator, settings, progress) -> dict:
    """Per-point values of the chosen estimator, the AIS part and the summary for the report.

    Parameters
    ----------
    run : Run
        The loaded run.
    x, y : torch.Tensor
        The scored test points and their labels.
    is_result : NLLResult
        The importance-sampling pass over ``x``.
    estimator : {"is", "ais", "auto"}
        What to trust (module docstring).
    settings : AISSettings
        The AIS settings.
    progress : bool
        A progress bar.

    Returns
    -------
    dict
        ``"summary"`` (for ``evaluation.json``), ``"rows"`` (one dict per point), and
        ``"ais_index"``, ``"ais_log_px"`` (the points AIS scored, for the figure).
    """
    khat, log_px, stderr = is_result.khat, is_result.log_px.clone(), is_result.mc_stderr.clone()
    index = torch.arange(len(x), device=x.device)
    if estimator == "auto":
        index = index[~(khat <= KHAT_OK)]  # nan k-hat counts as unreliable
    elif estimator == "is":
        index = index[:0]
    used = ["is"] * len(x)
    ais_khat, ais_ess = torch.full_like(khat, math.nan), torch.full_like(khat, math.nan)
    summary = {"estimator": estimator}
    if len(index):
        vae, labels = run.vae, (y[index],) if run.conditional else ()
        start = time.perf_counter()
        ais = ais_evidence(
            vae.model,
            vae.guide,
            x[index],
            *labels,
            settings=settings,
            progress=progress,
            compile="auto",
        )
        seconds = time.perf_counter() - start
        log_px[index], stderr[index], ais_khat[index] = ais.log_px, ais.stderr, ais.khat
        ais_ess[index] = ais.ess / settings.num_chains
        for i in index.tolist():
            used[i] = "ais"
        difference = ais.log_px - is_result.log_px[index]
        summary["ais"] = {
            "settings": {k: v for k, v in settings.__dict__.items()},
            "num_points": len(index),
            "mean_ais_minus_is": _mean_se(difference),
            "max_ais_minus_is": difference.max().item(),
            "mean_accept_rate": ais.accept_rate.mean().item(),
            "seconds": seconds,
        }
    chosen_ais = torch.tensor([u == "ais" for u in used], device=x.device)
    certified_is = int(((khat <= KHAT_OK) & ~chosen_ais).sum())
    certified_ais = int(((ais_ess >= AIS_MIN_RELATIVE_ESS) & chosen_ais).sum())
    summary.update(
        nll=-log_px.mean().item(),
        nll_stderr=_mean_se(log_px)[1],
        points_by_estimator={"is": used.count("is"), "ais": used.count("ais")},
        certified={"is": certified_is, "ais": certified_ais, "of": len(x)},
    )
    is_values = (is_result.log_px, khat)
    rows = _point_rows(used, log_px, stderr, is_values, ais_khat, ais_ess)
    ais_log_px = log_px[index]
    return {"summary": summary, "rows": rows, "ais_index": index, "ais_log_px": ais_log_px}


def _point_rows(used, log_px, stderr, is_values, ais_khat, ais_ess) -> list[dict]:
    """One row per test point for ``evaluation.json``."""
    is_log_px, is_khat = is_values
    return [
        {
            "index": i,
            "estimator": used[i],
            "log_px": log_px[i].item(),
            "stderr": stderr[i].item(),
            "is_log_px": is_log_px[i].item(),
            "is_khat": is_khat[i].item(),
            "ais_khat": ais_khat[i].item(),
            "ais_relative_ess": ais_ess[i].item(),
        }
        for i in range(len(used))
    ]


def certify_run(
    run: Run,
    *,
    num_points: int,
    steps: list[int],
    settings: AISSettings,
    seed: int = 0,
    device="cpu",
    progress: bool = True,
) -> dict:
    """BDMC on ``num_points`` datapoints drawn from the run's model, at each T in ``steps``.

    The data are drawn for the shape (and, for the CVAE, the labels) of the first test points:
    z ~ p(z), x ~ p(x | z). Returns the report: per T the mean lower and upper bounds, the mean
    gap and its largest value, the acceptance rate and the seconds taken.
    """
    refuse_ais(run, "ais")
    pyro.set_rng_seed(seed)
    vae = run.vae
    template = evaluation_data(run, num_points, seed).to(device)
    labels = (evaluation_labels(run, num_points).to(device),) if run.conditional else ()
    simulated = simulate_data(vae.model, template, *labels)
    rows = []
    for num_steps in steps:
        t_settings = AISSettings(**{**settings.__dict__, "num_steps": num_steps})
        start = time.perf_counter()
        result = bdmc(
            vae.model,
            vae.guide,
            simulated,
            *labels,
            settings=t_settings,
            compile="auto",
            progress=progress,
        )
        rows.append(
            {
                "num_steps": num_steps,
                "lower": _mean_se(result.lower),
                "upper": _mean_se(result.upper),
                "gap": result.gap.mean().item(),
                "max_gap": result.gap.max().item(),
                "accept_rate": result.accept_rate.mean().item(),
                "seconds": time.perf_counter() - start,
            }
        )
    return {
        "run_dir": str(run.run_dir),
        "model": run.kind,
        "evidence": "log p(x|y)" if run.conditional else "log p(x)",
        "data": f"{num_points} datapoints simulated from the model (z ~ p(z), x ~ p(x|z))",
        "settings": {k: v for k, v in settings.__dict__.items() if k != "num_steps"},
        "runs": rows,
    }


def certification_table(report: dict) -> str:
    """The markdown table ``certify`` prints (lines without a final newline)."""
    s = report["settings"]
    lines = [
        f"BDMC on {report['data']}: {s['num_chains']} chains, {s['num_leapfrog']} leapfrog "
        f"steps, {s['schedule']} schedule; bounds on {report['evidence']}, nats per datapoint",
        "",
        "| T | lower (forward AIS) | upper (reverse AIS) | mean gap | largest gap | accept | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['num_steps']} | {r['lower'][0]:.3f} ± {r['lower'][1]:.3f} | "
            f"{r['upper'][0]:.3f} ± {r['upper'][1]:.3f} | {r['gap']:.3f} | {r['max_gap']:.3f} "
            f"| {r['accept_rate']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)
