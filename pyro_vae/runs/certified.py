"""Which evidence to trust: AIS beside importance sampling in ``evaluate``, and ``certify``.

``evaluate --estimator`` chooses per test point: ``is`` keeps the importance-sampled log p(x)
(Burda et al. 2015), ``ais`` replaces it by annealed importance sampling from the guide
(:func:`pyro_vae.infer.evidence.ais.ais_evidence`) on every point, and ``auto`` runs AIS only
where the importance weights' PSIS k-hat is above ``KHAT_OK`` (0.7), the points whose IS value
is unreliable. A point counts as *certified* by IS when its k-hat is at most 0.7, and by AIS
when at least ``AIS_MIN_CHAINS`` (8) chains ran and the standard error of its estimate over
them is at most ``AIS_MAX_STDERR`` (0.1 nats). Either can fail: with fewer chains no point is
certified (the report says why), and a wide spread across chains is a failed point. A model
with a discrete latent (M2's label) is scored by AIS with the label enumerated
(:func:`pyro_vae.infer.evidence.enumerated.enumerated_ais`). ``certify`` draws data from the
run's own model and runs bidirectional Monte Carlo (:func:`pyro_vae.infer.evidence.bdmc.bdmc`)
at several T: the gap between its bounds is how far AIS at those settings can be from the truth
on such data, on average (the bounds hold in expectation; one point's may cross).
"""

from __future__ import annotations

import math
import time

import pyro
import torch

from pyro_vae.infer.evidence.ais import AISSettings
from pyro_vae.infer.evidence.bdmc import simulate_data
from pyro_vae.infer.evidence.enumerated import discrete_site, enumerated_ais, enumerated_bdmc
from pyro_vae.infer.evidence.psis import KHAT_OK
from pyro_vae.runs.folders import Run, evaluation_data, evaluation_labels

__all__ = [
    "AIS_FALSE_PASS",
    "AIS_MAX_STDERR",
    "AIS_MIN_CHAINS",
    "ESTIMATORS",
    "ais_certified",
    "certification_table",
    "certify_run",
    "choose_estimates",
]

ESTIMATORS = ("is", "ais", "auto")
AIS_MAX_STDERR = 0.1
"""Nats: the largest standard error over the chains of a point certified by AIS."""
AIS_MIN_CHAINS = 8
"""Chains below which AIS certifies nothing: the spread of fewer chains misses heavy tails.

A *false pass* is a certified point with ``|AIS - exact|`` > ``AIS_FALSE_PASS`` (3 x the largest
standard error). Measured on the test catalogue's pairs with an exact log p(x) and a guide that
is not exact (11 pairs, 76 points at each T, seed 0; ``python experiments/ais_certification.py``:
T = 1, 3, 10, 30, 5 leapfrog steps): S = 8 certified 48 points and none falsely, S = 16 63 and none;
``--leapfrog 2 --steps 1 3``: S = 8 certified 19 with 1 false pass (a heavy-tailed point whose
error was 0.98 nats at a standard error of 0.096). Pooled, 1 false pass in 130 certified points
(0.8%; below 4% at 95% confidence). The standard error alone, without the minimum of chains,
passed 16 wrong points of 57 at S = 2 and 2 of 38 at S = 4: hence 8.
"""
AIS_FALSE_PASS = 3 * AIS_MAX_STDERR


def ais_certified(stderr: torch.Tensor, num_chains: int) -> tuple[torch.Tensor, str | None]:
    """Which AIS estimates are certified, and why none can be (or None).

    Parameters
    ----------
    stderr : torch.Tensor of shape (N,)
        Each estimate's standard error over the chains (nan for one chain).
    num_chains : int
        S.

    Returns
    -------
    certified : torch.Tensor of bool, shape (N,)
        S >= ``AIS_MIN_CHAINS`` and stderr <= ``AIS_MAX_STDERR``.
    reason : str or None
        Why no point can be certified (too few chains), else None.
    """
    if num_chains < AIS_MIN_CHAINS:
        reason = (
            f"{num_chains} AIS chain{'s' * (num_chains != 1)} per point, fewer than the "
            f"{AIS_MIN_CHAINS} a certification needs (--ais-chains {AIS_MIN_CHAINS} or more)"
        )
        return torch.zeros_like(stderr, dtype=torch.bool), reason
    return stderr <= AIS_MAX_STDERR, None


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
    chosen_ais = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    chosen_ais[index] = True
    ais_khat, ais_ess = torch.full_like(khat, math.nan), torch.full_like(khat, math.nan)
    ais_ok = torch.zeros_like(chosen_ais)
    summary, reason = {"estimator": estimator}, None
    if len(index):
        is_part = is_result.log_px[index]
        ais, summary["ais"] = _ais_pass(run, x[index], y[index], is_part, settings, progress)
        log_px[index], stderr[index], ais_khat[index] = ais.log_px, ais.stderr, ais.khat
        ais_ess[index] = ais.ess / settings.num_chains
        ais_ok[index], reason = ais_certified(ais.stderr, settings.num_chains)
    used = ["ais" if c else "is" for c in chosen_ais.tolist()]
    summary.update(
        nll=-log_px.mean().item(),
        nll_stderr=_mean_se(log_px)[1],
        points_by_estimator={"is": used.count("is"), "ais": used.count("ais")},
        certified={
            "is": int(((khat <= KHAT_OK) & ~chosen_ais).sum()),
            "ais": int(ais_ok.sum()),
            "of": len(x),
            "ais_criterion": f"standard error over >= {AIS_MIN_CHAINS} chains <= "
            f"{AIS_MAX_STDERR:g} nats",
            "ais_not_possible": reason,
        },
    )
    is_values = (is_result.log_px, khat)
    rows = _point_rows(used, log_px, stderr, is_values, ais_khat, ais_ess)
    for row, ok in zip(rows, ais_ok.tolist(), strict=True):
        row["ais_certified"] = ok
    return {"summary": summary, "rows": rows, "ais_index": index, "ais_log_px": log_px[index]}


def _ais_pass(run, x, y, is_log_px, settings, progress):
    """AIS on the points ``x`` (a discrete latent enumerated), and its summary."""
    vae, labels = run.vae, (y,) if run.conditional else ()
    start = time.perf_counter()
    ais = enumerated_ais(
        vae.model, vae.guide, x, *labels, settings=settings, progress=progress, compile="auto"
    )
    difference = ais.log_px - is_log_px
    site = discrete_site(vae.guide, x, *labels)
    return ais, {
        "settings": dict(settings.__dict__),
        "enumerated": None if site is None else f"{site.name} ({len(site.support)} values)",
        "num_points": len(x),
        "mean_ais_minus_is": _mean_se(difference),
        "max_ais_minus_is": difference.max().item(),
        "mean_accept_rate": ais.accept_rate.mean().item(),
        "seconds": time.perf_counter() - start,
    }


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
    z ~ p(z), x ~ p(x | z) (M2's label among the latents, enumerated by
    :func:`~pyro_vae.infer.evidence.enumerated.enumerated_bdmc`). Returns the report: per T
    the mean lower and upper bounds, the mean gap and its largest value, the acceptance rate
    and the seconds taken. The bounds hold in expectation: averaged over points they sandwich
    log p(x), while on a single point lower may exceed upper by Monte Carlo error.
    """
    pyro.set_rng_seed(seed)
    vae = run.vae
    template = evaluation_data(run, num_points, seed).to(device)
    labels = (evaluation_labels(run, num_points).to(device),) if run.conditional else ()
    simulated = simulate_data(vae.model, template, *labels)
    rows = []
    for num_steps in steps:
        t_settings = AISSettings(**{**settings.__dict__, "num_steps": num_steps})
        start = time.perf_counter()
        result = enumerated_bdmc(
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
        "evidence": run.entry.evidence_label,
        "data": f"{num_points} datapoints simulated from the model (z ~ p(z), x ~ p(x|z))",
        "settings": {k: v for k, v in settings.__dict__.items() if k != "num_steps"},
        "runs": rows,
    }


def certification_table(report: dict) -> str:
    """The markdown table ``certify`` prints (lines without a final newline)."""
    s = report["settings"]
    lines = [
        f"BDMC on {report['data']}: {s['num_chains']} chains, {s['num_leapfrog']} leapfrog "
        f"steps, {s['schedule']} schedule; bounds on {report['evidence']}, nats per datapoint, "
        "that hold in expectation (on one point lower may exceed upper)",
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
