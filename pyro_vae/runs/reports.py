"""The reports of a run: the final scores of ``train``, and ``evaluate``'s report and table.

Every number is per datapoint, in nats, on the test split (one fixed binarization of a
"dynamic" run, :func:`pyro_vae.runs.folders.test_images`). ``evaluate`` scores log p(x) (log
p(x|y) with the test labels for the CVAE) by importance sampling, and from the same samples
the ELBO, the IWAE bounds L_k and PSIS k-hat, bucketed by the thresholds of
:mod:`pyro_vae.infer.evidence.psis`; ``diagnose`` reports active units, KL, the amortization
gap and the guide against NUTS (:mod:`pyro_vae.runs.diagnosis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch

from pyro_vae.data import DatasetSplits
from pyro_vae.infer.evidence.ais import AISSettings
from pyro_vae.infer.evidence.psis import KHAT_GOOD, KHAT_OK
from pyro_vae.runs.certified import choose_estimates
from pyro_vae.runs.folders import Run, evaluation_data, evaluation_labels, test_images
from pyro_vae.runs.models import DEFAULT_MODEL, model_kind

__all__ = [
    "IWAE_KS",
    "Evaluation",
    "evaluate_run",
    "evaluation_table",
    "final_scores",
    "iwae_ks",
    "khat_summary",
    "ladder_text",
]

IWAE_KS = (1, 10, 100, 1000)
"""The k of the IWAE bounds L_k that ``evaluate`` reports by default (those up to L)."""

_KHAT_GOOD = f"good (<= {KHAT_GOOD:g})"
_KHAT_OK = f"ok ({KHAT_GOOD:g}, {KHAT_OK:g}]"
_KHAT_BAD = f"bad (> {KHAT_OK:g})"


@torch.no_grad()
def final_scores(model, data: DatasetSplits, kind: str = DEFAULT_MODEL) -> dict:
    """The scores ``train`` prints at the end: test -ELBO, and M2's test accuracy.

    Parameters
    ----------
    model : VAE, CVAE or M2
        The trained model.
    data : DatasetSplits
        Its data (the whole test split is scored).
    kind : str
        The model (a name in :data:`~pyro_vae.runs.models.MODEL_REGISTRY`); a conditional
        one (the CVAE) is scored given the test labels.

    Returns
    -------
    dict
        ``test_loss``: -ELBO per datapoint (one particle); ``accuracy``: the test accuracy
        of q(y|x) for M2 on the test images as stored (grey levels for a "dynamic" run),
        else None.
    """
    from pyro_vae.infer.evidence.importance import elbo_per_datapoint

    entry = model_kind(kind)
    x = test_images(data).to(next(model.parameters()).device)
    labels = (data.test.y.to(x.device),) if entry.conditional else ()
    elbo = elbo_per_datapoint(model.model, model.guide, x, *labels, num_samples=1)
    # q(y|x) is judged on the test images as stored: for a "dynamic" run the grey levels, of
    # which its training images were random draws (one fixed draw adds noise of its own)
    accuracy = None
    if entry.reports_accuracy:
        accuracy = model.accuracy(data.test.x.to(x.device), data.test.y)
    return {"test_loss": -elbo.mean().item(), "accuracy": accuracy}


def iwae_ks(requested: list[int] | None, num_samples: int) -> list[int]:
    """The k of the IWAE bounds L_k to compute from L = ``num_samples`` importance samples.

    Parameters
    ----------
    requested : list of int or None
        The k asked for (None: those of :data:`IWAE_KS` up to L).
    num_samples : int
        L.

    Returns
    -------
    list of int
        Sorted, without repeats.

    Raises
    ------
    ValueError
        A requested k above L, naming it.
    """
    if requested is None:
        return [k for k in IWAE_KS if k <= num_samples]
    too_many = [k for k in requested if k > num_samples]
    if too_many:
        raise ValueError(
            f"--iwae-k {','.join(map(str, too_many))} exceeds --num-samples {num_samples}: "
            "L_k is computed from k of the L importance samples"
        )
    return sorted(set(requested))


def khat_summary(khat: torch.Tensor) -> dict:
    """PSIS k-hat per datapoint, counted in the buckets of :mod:`pyro_vae.infer.evidence.psis`.

    Parameters
    ----------
    khat : torch.Tensor of shape (N,)
        k-hat of each datapoint.

    Returns
    -------
    dict
        ``"good (<= 0.5)"``: k-hat <= ``KHAT_GOOD``; ``"ok (0.5, 0.7]"``: ``KHAT_GOOD`` <
        k-hat <= ``KHAT_OK``; ``"bad (> 0.7)"``: k-hat > ``KHAT_OK`` (counts; a nan k-hat is
        in none); ``"median"`` and ``"max"``.
    """
    return {
        _KHAT_GOOD: int((khat <= KHAT_GOOD).sum()),
        _KHAT_OK: int(((khat > KHAT_GOOD) & (khat <= KHAT_OK)).sum()),
        _KHAT_BAD: int((khat > KHAT_OK).sum()),
        "median": khat.median().item(),
        "max": khat.max().item(),
    }


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` computed.

    Attributes
    ----------
    report : dict
        The content of ``evaluation.json``.
    khat, elbo, log_px : torch.Tensor of shape (N,)
        Per test datapoint, from the same importance samples.
    rows : list of dict
        One row per test point: the estimator trusted, its value and error, IS and AIS k-hat
        (:func:`pyro_vae.runs.certified.choose_estimates`).
    ais_index, ais_log_px : torch.Tensor
        The points AIS scored and its values (empty with ``estimator="is"``).
    """

    report: dict
    khat: torch.Tensor
    elbo: torch.Tensor
    log_px: torch.Tensor
    rows: list | None = None
    ais_index: torch.Tensor | None = None
    ais_log_px: torch.Tensor | None = None


def evaluate_run(
    run: Run,
    *,
    num_samples: int,
    ks: list[int],
    num_points: int | None = None,
    batch_size: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    estimator: str = "is",
    ais: AISSettings | None = None,
) -> Evaluation:
    """Score a run on its test split with one importance-sampling pass (and AIS where asked).

    Its weights give log p(x), the ELBO and every L_k; a conditional run is scored with the
    test labels, log p(x|y); M2 also by the test accuracy of q(y|x). Under torchrun the rows
    are sharded and gathered (every rank holds the result).

    Parameters
    ----------
    run : Run
        A loaded run (:func:`pyro_vae.runs.folders.load_run`).
    num_samples : int
        Importance samples L per datapoint.
    ks : list of int
        The k of the IWAE bounds (:func:`iwae_ks`).
    num_points : int, optional
        The first test points (default all).
    batch_size : int
        Datapoints per chunk.
    seed : int
        Seeds every draw (and the fixed binarization of a "dynamic" run).
    device : str or torch.device
        Where the data go (the model's device).
    progress : bool
        A progress bar.
    estimator : {"is", "ais", "auto"}
        Which log p(x) to trust per point (:mod:`pyro_vae.runs.certified`): importance
        sampling, AIS everywhere, or AIS where the IS k-hat is above 0.7.
    ais : AISSettings, optional
        The AIS settings (default: :class:`~pyro_vae.infer.evidence.ais.AISSettings`).

    Returns
    -------
    Evaluation
    """
    from pyro_vae.infer.evidence.dataset import dataset_nll
    from pyro_vae.infer.evidence.importance import iwae_from_log_weights

    pyro.set_rng_seed(seed)
    vae = run.vae
    x = evaluation_data(run, num_points, seed).to(device)
    y = evaluation_labels(run, num_points).to(device)
    n, dim = x.shape
    nll = dataset_nll(
        vae.model,
        vae.guide,
        (x, y) if run.conditional else x,
        num_samples=num_samples,
        batch_size=batch_size,
        progress=progress,
        return_log_weights=True,
    )
    elbo = nll.log_weights.mean(1)
    iwae = {}
    for k in ks:
        bound = iwae_from_log_weights(nll.log_weights, k)
        iwae[str(k)] = (bound.mean().item(), bound.std().item() / math.sqrt(n))
    report = {
        "run_dir": str(run.run_dir),
        "model": run.kind,
        "evidence": run.entry.evidence_label,
        "split": "test",
        "num_points": n,
        "num_samples": num_samples,
        "nll": nll.nll,
        "nll_stderr": nll.stderr,
        "nll_bits_per_dim": nll.nll / (dim * math.log(2)),
        "max_mc_stderr": nll.mc_stderr.max().item(),
        "elbo": elbo.mean().item(),
        "elbo_stderr": elbo.std().item() / math.sqrt(n),
        "gap": -nll.nll - elbo.mean().item(),
        "iwae": iwae,
        "khat": khat_summary(nll.khat),
    }
    if run.entry.reports_accuracy:  # on the images as stored, as train's final line
        report["accuracy"] = vae.accuracy(run.data.test.x[:n].to(x.device), y)
    chosen = choose_estimates(run, x, y, nll, estimator, ais or AISSettings(), progress)
    report["trusted"] = chosen["summary"]
    report["ladder"] = evidence_ladder(report)
    return Evaluation(
        report,
        nll.khat,
        elbo,
        nll.log_px,
        chosen["rows"],
        chosen["ais_index"],
        chosen["ais_log_px"],
    )


def evidence_ladder(report: dict) -> list:
    """ELBO, L_k, IS, AIS: [name, mean over the test points] in the order they should rise.

    Every entry is a stochastic lower bound of log p(x) (Burda et al. 2015; Grosse et al.
    2015), averaged over the same test points; the last, when AIS ran, is the trusted mean
    (AIS on every point, or IS where its k-hat is at most 0.7 and AIS elsewhere). The order
    ELBO <= L_k <= IS holds exactly (the same weights), IS <= AIS only when AIS has enough
    steps and chains: :func:`ladder_text` prints where it fails.
    """
    ladder = [["ELBO", report["elbo"]]]
    ladder += [[f"L_{k}", mean] for k, (mean, _) in report["iwae"].items() if k != "1"]
    ladder.append([f"IS (L = {report['num_samples']})", -report["nll"]])
    trusted = report.get("trusted", {})
    if trusted.get("ais"):
        name = "AIS" if trusted["estimator"] == "ais" else "IS where k-hat <= 0.7, else AIS"
        ladder.append([name, -trusted["nll"]])
    return ladder


def ladder_text(report: dict) -> str:
    """The ladder as printed: ``<=`` where the numbers hold it, ``>`` and the step named where not.

    Parameters
    ----------
    report : dict
        An :attr:`Evaluation.report` with its ``"ladder"`` (and ``"trusted"``, when AIS ran).

    Returns
    -------
    str
        E.g. ``"ELBO -98.10 <= L_10 -97.20 <= IS (L = 100) -96.90 > AIS -97.40 (AIS below IS:
        T too small (--ais-steps))"``.
    """
    ladder = report["ladder"]
    text, broken = f"{ladder[0][0]} {ladder[0][1]:.2f}", []
    for (low_name, low), (name, value) in zip(ladder[:-1], ladder[1:], strict=True):
        holds = value >= low
        text += f" {'<=' if holds else '>'} {name} {value:.2f}"
        if not holds:
            broken.append(_violated_step(report, low_name, name))
    return text + "".join(f" ({b})" for b in broken)


def _violated_step(report: dict, low_name: str, name: str) -> str:
    """Why ``name`` fell below ``low_name``, the rung under it."""
    short = name.split(" ")[0]
    if short not in ("AIS", "IS") or not low_name.startswith("IS"):
        return f"{short} below {low_name.split(' ')[0]}: round-off of the same weights"
    diff, se = report["trusted"]["ais"]["mean_ais_minus_is"]
    if -diff <= 2 * se:  # nan se (one point) is no evidence of noise
        return f"AIS below IS by {-diff:.3f} ± {se:.3f} nats: within 2 standard errors"
    return "AIS below IS: T too small (--ais-steps) or too few chains (--ais-chains)"


def evaluation_table(report: dict) -> str:
    """The markdown tables ``evaluate`` prints.

    Parameters
    ----------
    report : dict
        An :attr:`Evaluation.report`.

    Returns
    -------
    str
        Lines without a final newline.
    """
    r = report
    lines = [
        f"{r['split']} split: {r['num_points']} datapoints, L = {r['num_samples']} importance "
        "samples each; the ELBO and every L_k are computed from the same samples",
        "",
        "| quantity (per datapoint, nats) | value | standard error |",
        "|---|---|---|",
        f"| NLL = -{r.get('evidence', 'log p(x)')} (importance sampling) | {r['nll']:.3f} "
        f"| {r['nll_stderr']:.3f} |",
        f"| NLL in bits/dim | {r['nll_bits_per_dim']:.4f} | |",
        f"| ELBO | {r['elbo']:.3f} | {r['elbo_stderr']:.3f} |",
        f"| gap log p(x) - ELBO | {r['gap']:.3f} | |",
        f"| largest Monte Carlo standard error of one log p(x) | {r['max_mc_stderr']:.4f} | |",
        "",
        "| k | IWAE bound L_k | standard error |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {mean:.3f} | {se:.3f} |" for k, (mean, se) in r["iwae"].items()]
    if "accuracy" in r:
        lines += ["", f"test accuracy of the classifier q(y|x): {r['accuracy']:.4f}"]
    kh = r["khat"]
    lines += [
        "",
        f"PSIS k-hat: {kh[_KHAT_GOOD]} good (<= {KHAT_GOOD:g}), {kh[_KHAT_OK]} ok "
        f"({KHAT_GOOD:g}-{KHAT_OK:g}], {kh[_KHAT_BAD]} unreliable (> {KHAT_OK:g}); "
        f"median {kh['median']:.3f}, max {kh['max']:.3f}",
    ]
    return "\n".join(lines + _trusted_lines(r))


def _trusted_lines(r: dict) -> list[str]:
    """The lines on which number to trust: AIS beside IS, and the points each certifies."""
    t = r.get("trusted")
    if t is None:  # a report written before AIS existed
        return []
    c, lines = t["certified"], [""]
    ais = t.get("ais")
    if ais:
        s = ais["settings"]
        diff, se = ais["mean_ais_minus_is"]
        lines += [
            f"AIS ({s['num_chains']} chains, T = {s['num_steps']}, {s['num_leapfrog']} leapfrog "
            f"steps, {s['schedule']}"
            + (f", once per value of {ais['enumerated']}" if ais.get("enumerated") else "")
            + f") on {ais['num_points']} points: AIS - IS = {diff:.3f} ± "
            f"{se:.3f} nats on average (largest {ais['max_ais_minus_is']:.2f}), acceptance "
            f"{ais['mean_accept_rate']:.2f}, {ais['seconds']:.0f} s",
        ]
    criterion = c.get("ais_criterion", "chain ESS >= S / 2")  # a report of an older version
    lines += [
        "ladder (mean log p(x), nats): " + ladder_text(r),
        f"trusted ({t['estimator']}): NLL = {t['nll']:.3f} ± {t['nll_stderr']:.3f} from "
        f"{t['points_by_estimator']['is']} IS and {t['points_by_estimator']['ais']} AIS values; "
        f"certified: {c['is']} by IS (k-hat <= {KHAT_OK:g}), {c['ais']} by AIS ({criterion}), "
        f"of {c['of']}",
    ]
    if ais and c.get("ais_not_possible"):
        lines.append(f"not certified by AIS: {c['ais_not_possible']}")
    if t["estimator"] == "is" and c["is"] < c["of"]:
        lines.append(
            f"{c['of'] - c['is']} points have unreliable IS values: --estimator auto rescores "
            "them by annealed importance sampling"
        )
    return lines
