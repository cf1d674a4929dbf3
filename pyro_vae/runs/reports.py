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
from pyro_vae.infer.evidence.psis import KHAT_GOOD, KHAT_OK
from pyro_vae.runs.folders import Run, evaluation_data, evaluation_labels, test_images

__all__ = [
    "IWAE_KS",
    "Evaluation",
    "evaluate_run",
    "evaluation_table",
    "final_scores",
    "iwae_ks",
    "khat_summary",
]

IWAE_KS = (1, 10, 100, 1000)
"""The k of the IWAE bounds L_k that ``evaluate`` reports by default (those up to L)."""

_KHAT_GOOD = f"good (<= {KHAT_GOOD:g})"
_KHAT_OK = f"ok ({KHAT_GOOD:g}, {KHAT_OK:g}]"
_KHAT_BAD = f"bad (> {KHAT_OK:g})"


@torch.no_grad()
def final_scores(model, data: DatasetSplits, kind: str = "vae") -> dict:
    """The scores ``train`` prints at the end: test -ELBO, and M2's test accuracy.

    Parameters
    ----------
    model : VAE, CVAE or M2
        The trained model.
    data : DatasetSplits
        Its data (the whole test split is scored).
    kind : {"vae", "cvae", "m2"}
        The model; the CVAE is scored given the test labels.

    Returns
    -------
    dict
        ``test_loss``: -ELBO per datapoint (one particle); ``accuracy``: the test accuracy
        of q(y|x) for M2, else None.
    """
    from pyro_vae.infer.evidence.importance import elbo_per_datapoint

    x = test_images(data).to(next(model.parameters()).device)
    labels = (data.test.y.to(x.device),) if kind == "cvae" else ()
    elbo = elbo_per_datapoint(model.model, model.guide, x, *labels, num_samples=1)
    accuracy = model.accuracy(x, data.test.y) if kind == "m2" else None
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
    """

    report: dict
    khat: torch.Tensor
    elbo: torch.Tensor
    log_px: torch.Tensor


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
) -> Evaluation:
    """Score a run on its test split with one importance-sampling pass.

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
        "evidence": "log p(x|y)" if run.conditional else "log p(x)",
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
    if run.kind == "m2":
        report["accuracy"] = vae.accuracy(x, y)
    return Evaluation(report, nll.khat, elbo, nll.log_px)


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
    return "\n".join(lines)
