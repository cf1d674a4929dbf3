"""The uses of a trained run: score a file, encode a file, sample from the model.

- :func:`score_file` (``pyro-vae evaluate RUN --data PATH``): per-point log p(x) by importance
  sampling (and AIS with ``--estimator``), in the file's order, with its Monte Carlo standard
  error and k-hat, in the file's own units (a standardized table's log-Jacobian added back), and
  the same scores of the run's first training points, for the histogram that compares them;
- :func:`encode_file` (``pyro-vae encode``): the guide's posterior mean and standard deviation
  of z per point (exact for a Gaussian guide, from guide draws for an IAF guide or M2 without
  labels);
- :func:`sample_run` (``pyro-vae sample``): draws z ~ p(z) through the decoder, the mean
  E[x|z] or a draw of x, in the data's own units and shape.

Every file is read through the run's stored transforms
(:func:`~pyro_vae.runs.own_data.read_like_run`), in chunks of ``batch_size`` points, with a
progress bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.diagnostics.posterior import guide_draws
from pyro_vae.infer.evidence.ais import AISSettings
from pyro_vae.infer.evidence.dataset import dataset_nll
from pyro_vae.infer.evidence.psis import KHAT_OK
from pyro_vae.models.labelled import concat, one_hot
from pyro_vae.runs.certified import choose_estimates
from pyro_vae.runs.folders import Run
from pyro_vae.runs.own_data import read_like_run

__all__ = [
    "ENCODE_DRAWS",
    "REFERENCE_POINTS",
    "Scores",
    "encode_file",
    "free_name",
    "sample_run",
    "score_file",
    "scores_summary",
]

REFERENCE_POINTS = 500
"""Training points scored beside a file, for the histogram that compares the two."""
ENCODE_DRAWS = 200
"""Guide draws per point where the posterior mean and sd have no closed form (IAF, M2's y)."""


@dataclass(frozen=True)
class Scores:
    """What ``evaluate --data`` computed.

    Attributes
    ----------
    rows : list of dict
        One per point of the file, in its order: ``index``, ``log_px`` (nats, the file's
        units), ``stderr``, ``estimator``, ``is_khat``.
    log_px : torch.Tensor of shape (N,)
        The file's values.
    reference : torch.Tensor of shape (R,)
        The same of the run's first R training points.
    log_jacobian : float
        Added to every value (a standardized table's, else 0).
    """

    rows: list
    log_px: torch.Tensor
    reference: torch.Tensor
    log_jacobian: float


def _labels_for(run: Run, y, label, n: int, device, what: str):
    """The labels a conditional model needs: ``--label``, else the file's, else a refusal."""
    if not run.entry.takes_labels:  # a VAE takes no labels, whatever the file holds
        return None
    if label is not None:
        return torch.full((n,), int(label), dtype=torch.long, device=device)
    if y is not None:
        return y.to(device)
    if run.entry.conditional:
        raise ValueError(
            f"a conditional run {what} given labels: pass --label K, or give the file labels"
        )
    return None


def score_file(
    run: Run,
    path,
    *,
    num_samples: int,
    batch_size: int = 100,
    seed: int = 0,
    device="cpu",
    progress: bool = True,
    estimator: str = "is",
    ais: AISSettings | None = None,
) -> Scores:
    """Per-point log p(x) of a file's points (log p(x|y) for a CVAE, with the file's labels).

    Parameters
    ----------
    run : Run
        A loaded run.
    path : str or Path
        The data file.
    num_samples : int
        Importance samples L per point.
    batch_size : int
        Points per chunk.
    seed : int
        Seeds every draw.
    device : str or torch.device
        The model's device.
    progress : bool
        Progress bars.
    estimator : {"is", "ais", "auto"}
        As ``evaluate --estimator`` (:mod:`pyro_vae.runs.certified`).
    ais : AISSettings, optional

    Returns
    -------
    Scores

    Raises
    ------
    ValueError
        A bad file, one unlike the run's data, a CVAE's file without labels.
    """
    x, y, transforms = read_like_run(run.config, path, seed=seed)
    x = x.to(device)
    y = _labels_for(run, y, None, x.shape[0], device, "scores log p(x|y)")
    pyro.set_rng_seed(seed)
    vae = run.vae
    columns = (x, y) if run.conditional else x
    nll = dataset_nll(
        vae.model,
        vae.guide,
        columns,
        num_samples=num_samples,
        batch_size=batch_size,
        progress=progress,
    )
    labels = y if y is not None else torch.zeros(x.shape[0], dtype=torch.long, device=device)
    chosen = choose_estimates(run, x, labels, nll, estimator, ais or AISSettings(), progress)
    shift = transforms.log_jacobian
    rows = [
        {
            "index": r["index"],
            "log_px": r["log_px"] + shift,
            "stderr": r["stderr"],
            "estimator": r["estimator"],
            "is_khat": r["is_khat"],
        }
        for r in chosen["rows"]
    ]
    reference = _reference_scores(run, num_samples, batch_size, seed, device, progress) + shift
    log_px = torch.tensor([r["log_px"] for r in rows], dtype=torch.float64)
    return Scores(rows, log_px, reference, shift)


def _reference_scores(run: Run, num_samples, batch_size, seed, device, progress) -> torch.Tensor:
    """IS log p(x) of the run's first :data:`REFERENCE_POINTS` training points."""
    train = run.data.train
    x = train.x[:REFERENCE_POINTS]
    if train.binarize == "dynamic":  # one fixed draw, as the test images are scored
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    x = x.to(device)
    columns = (x, train.y[: len(x)].to(device)) if run.conditional else x
    nll = dataset_nll(
        run.vae.model,
        run.vae.guide,
        columns,
        num_samples=num_samples,
        batch_size=batch_size,
        progress=progress,
    )
    return nll.log_px.double().cpu()


def free_name(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``stem_2``, ``stem_3``... : never an earlier file.

    Parameters
    ----------
    folder : Path
    stem, suffix : str

    Returns
    -------
    Path
    """
    path, k = Path(folder) / f"{stem}{suffix}", 2
    while path.exists():
        path, k = Path(folder) / f"{stem}_{k}{suffix}", k + 1
    return path


@torch.no_grad()
def encode_file(
    run: Run, path, *, label=None, batch_size: int = 10000, device="cpu", progress=True, seed=0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior mean and standard deviation of z per point of a file, in its order.

    Exact for a Gaussian q(z|x) (q(z|x, y) of the CVAE and of M2 given labels); from
    :data:`ENCODE_DRAWS` guide draws for an IAF guide and for M2 without labels (its q(z|x)
    is a mixture over y ~ q(y|x)).

    Parameters
    ----------
    run : Run
        A loaded run.
    path : str or Path
        The data file.
    label : int, optional
        The label of every point (CVAE, M2); default the file's labels.
    batch_size : int
        Points per chunk.
    device : str or torch.device
    progress : bool
    seed : int
        Seeds the guide draws (and the binarization of a binarized run's images).

    Returns
    -------
    mean, sd : torch.Tensor of shape (N, M)
        On the CPU.

    Raises
    ------
    ValueError
        A bad file, one unlike the run's data, a CVAE's file without labels.
    """
    x, y, _ = read_like_run(run.config, path, seed=seed)
    y = _labels_for(run, y, label, x.shape[0], "cpu", "encodes")
    pyro.set_rng_seed(seed)
    means, sds = [], []
    for start in tqdm(range(0, x.shape[0], batch_size), disable=not progress, desc="encode"):
        xb = x[start : start + batch_size].to(device)
        yb = None if y is None else y[start : start + batch_size].to(device)
        mean, sd = _posterior_moments(run, xb, yb)
        means.append(mean.cpu())
        sds.append(sd.cpu())
    return torch.cat(means), torch.cat(sds)


def _posterior_moments(run: Run, x, y):
    vae = run.vae
    takes_labels = run.entry.takes_labels
    if not takes_labels and vae.flow is None:
        return vae.encode(x)
    if takes_labels and y is not None:  # q(z|x, y) = N(mu, diag sigma^2)
        return vae.encoder(concat(x, one_hot(y, vae.num_classes, x)))
    args = () if y is None else (y,)
    z = guide_draws(vae.guide, x, *args, num_chains=1, num_draws=ENCODE_DRAWS)["z"][0]
    return z.mean(0), z.std(0)


@torch.no_grad()
def sample_run(
    run: Run,
    num: int,
    *,
    mean: bool = False,
    label=None,
    batch_size=10000,
    device="cpu",
    seed=0,
    progress=True,
) -> torch.Tensor:
    """``num`` draws z ~ p(z) through the decoder, in the data's units and shape.

    z comes from the model's own prior (``sample_prior``: N(0, I), or a learned one such as
    the VampPrior), drawn before the labels of a labelled model.

    Parameters
    ----------
    run : Run
        A loaded run.
    num : int
        How many.
    mean : bool
        E[x|z] instead of a draw x ~ p(x|z).
    label : int, optional
        The label y of every draw (CVAE, M2); default y ~ uniform over the classes.
    batch_size : int
        Draws per chunk.
    device : str or torch.device
    seed : int
    progress : bool

    Returns
    -------
    torch.Tensor of shape (num, *shape)
        A table's rows in its own units (the standardization undone), images (H, W[, C]).

    Raises
    ------
    ValueError
        ``label`` outside the run's classes.
    """
    vae = run.vae
    classes = vae.num_classes if run.entry.takes_labels else None
    if label is not None and (classes is None or label >= classes):
        what = f"labels 0..{classes - 1}" if classes else "no labels"
        raise ValueError(f"--label {label}: the {run.kind} run has {what}")
    pyro.set_rng_seed(seed)
    draws = []
    for start in tqdm(range(0, num, batch_size), disable=not progress, desc="sample"):
        n = min(batch_size, num - start)
        z = vae.sample_prior(n).to(device)  # the model's p(z): a learned prior too
        if classes is None:
            params = vae.decoder(z)
        else:
            y = torch.randint(classes, (n,), device=device) if label is None else None
            y = torch.full((n,), label, device=device) if y is None else y
            params = vae.decoder(concat(z, one_hot(y, classes, z)))
        x = vae.likelihood.mean(params) if mean else vae.likelihood(params).sample()
        draws.append(x.cpu())
    x = torch.cat(draws)
    record = run.config.get("data_file")
    if record is not None and record["transforms"].get("standardize"):
        standard = record["transforms"]["standardize"]
        x = x * torch.tensor(standard["std"]) + torch.tensor(standard["mean"])
    return x.reshape(num, *run.data.image_shape).float()


def scores_summary(scores: Scores) -> dict:
    """Mean and standard error of the file's and the reference's log p(x), k-hat counts."""
    n = scores.log_px.numel()
    khat = torch.tensor([r["is_khat"] for r in scores.rows])
    return {
        "mean": scores.log_px.mean().item(),
        "stderr": scores.log_px.std().item() / math.sqrt(n) if n > 1 else math.nan,
        "unreliable": int((~(khat <= KHAT_OK)).sum()),
        "reference_mean": scores.reference.mean().item(),
    }
