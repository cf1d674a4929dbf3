"""Semi-supervised classification with M2 against supervised baselines on the same labels.

Every row uses the same data (statically binarized, seeded), the same labelled images
(``--labels-per-class`` per class, drawn by :func:`pyro_vae.data.labelled_split`) and the same
test points: accuracies on the whole test split, log-likelihoods on its first
``--num-points`` images:

- ``M2``: the M2 model of Kingma et al. (2014) trained by :func:`pyro_vae.infer.train`,
  unlabelled images with y summed out (``loss="enum"``), labelled ones with the classification
  term alpha * E_labelled[-log q(y|x)] (the M2 recipe of :mod:`pyro_vae.runs.recipes`, as
  ``pyro-vae train --model m2`` uses it); one row per ``--alphas`` entry, by default the paper's
  alpha = 0.1 N (N training images) and the 46 per labelled image of Pyro's SS-VAE example
  (alpha = 46 N_l), neither tuned here; the test accuracy of argmax q(y|x) and the test
  log p(x) (importance sampling, y drawn from q(y|x), ``--num-samples`` per datapoint);
- ``classifier only``: the same classifier network q(y|x) (MLP D - hidden - C), trained by
  Adam on the labelled images alone (``--classifier-steps`` full-batch steps of cross-entropy;
  nothing is tuned on the validation labels);
- ``logistic regression``: scikit-learn's ``LogisticRegression`` on the pixels of the labelled
  images (default C = 1, lbfgs);
- ``VAE``: the plain VAE with the same latent size and hidden layers, trained on every training
  image for the same epochs, for its test log p(x) next to M2's;
- ``CVAE`` (preset ``mnist5k``): the conditional VAE trained on every training image with its
  label, and its test log p(x|y) (a different quantity: the label is given).

No model choice uses the validation split: epochs are fixed. Results go to
``<out>/<preset>.json`` and ``<out>/<preset>.md``; the figures of the first M2 (and the CVAE)
-- one row of samples per class, and test images decoded under every label (Kingma et al.
2014, fig. 1) -- to ``<out>/<preset>_<model>_{class_samples,analogies,reconstructions}.png``.

Presets: ``mnist5k`` (MNIST-5k, 10 labels per class, with the CVAE) and ``fashion`` (the full
Fashion-MNIST from Debian's dataset-fashion-mnist, 100 labels per class).

Run: ``python experiments/semi_supervised.py --preset mnist5k`` (and ``--preset fashion``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_vae.data import labelled_split, load_dataset
from pyro_vae.infer.evidence.dataset import dataset_nll
from pyro_vae.infer.training.loop import train
from pyro_vae.models.conditional import CVAE
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE
from pyro_vae.nets import MLP
from pyro_vae.runs import M2_LOSS, conditional_figures, m2_alpha, m2_labelled_stream

__all__ = ["PRESETS", "main"]

PRESETS = {
    "mnist5k": dict(dataset="mnist5k", labels_per_class=10, epochs=100, cvae=True),
    "fashion": dict(dataset="fashion-mnist", labels_per_class=100, epochs=10, cvae=False),
}


def _evidence(model, guide, data, args) -> dict:
    """Test log p(x) (or log p(x|y) for a tuple ``(x, y)``) per datapoint, nats."""
    pyro.set_rng_seed(args.seed)
    nll = dataset_nll(model, guide, data, num_samples=args.num_samples, progress=not args.quiet)
    return {
        "log_px": -nll.nll,
        "log_px_stderr": nll.stderr,  # over test points
        "log_px_mc_stderr": nll.nll_mc_stderr,  # Monte Carlo, of the mean
    }


def _train(model, data, args, **options) -> tuple[dict, float]:
    pyro.clear_param_store()
    tic = time.perf_counter()
    result = train(
        model.model,
        model.guide,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.quiet,
        **options,
    )
    return result.final, time.perf_counter() - tic


def alpha_of(setting: str, num_train: int, num_labelled: int) -> float:
    """alpha of an ``--alphas`` entry: ``paper`` = 0.1 N (Kingma et al. 2014, sec. 4.1, the
    default of ``pyro-vae train --model m2``), ``pyro`` = 46 N_l (46 per labelled image:
    ``aux_loss_multiplier`` of Pyro's SS-VAE example), or a number."""
    if setting == "paper":
        return m2_alpha(num_train)
    if setting == "pyro":
        return 46.0 * num_labelled
    return float(setting)


def run_m2(data, labelled, unlabelled, test, setting, args) -> tuple[dict, M2]:
    pyro.set_rng_seed(args.seed)
    m2 = M2(data.train.data_dim, 10, args.latent, args.hidden, image_shape=data.image_shape)
    alpha = alpha_of(setting, len(data.train), len(labelled))
    # summed over the N_l labelled images, the term is alpha * E_labelled[-log q(y|x)]
    stream = m2_labelled_stream(m2, labelled, alpha)
    final, seconds = _train(m2, unlabelled, args, labelled=stream, loss=M2_LOSS)
    named = f" ({setting})" if setting in ("paper", "pyro") else ""
    row = {
        "row": f"M2, alpha = {alpha:g}{named}",
        "model": "M2",
        "alpha": alpha,
        "train_seconds": seconds,
        "train_loss": final["train_loss"],
    }
    row["accuracy"] = m2.accuracy(data.test.x, data.test.y)  # the whole test split
    row.update(_evidence(m2.model, m2.guide, test.x, args))
    return row, m2


def run_classifier(data, labelled, args) -> dict:
    """The classifier network of M2 on the labelled images alone: full-batch Adam, cross-entropy."""
    pyro.set_rng_seed(args.seed)
    net = MLP(data.train.data_dim, args.hidden, 10)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    tic = time.perf_counter()
    for _ in range(args.classifier_steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(labelled.x), labelled.y).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (net(data.test.x).argmax(-1) == data.test.y).double().mean().item()
    return {
        "row": "classifier only",
        "accuracy": accuracy,
        "train_seconds": time.perf_counter() - tic,
    }


def run_logistic_regression(labelled, test) -> dict:
    """scikit-learn's LogisticRegression (C = 1, lbfgs) on the pixels of the labelled images."""
    from sklearn.linear_model import LogisticRegression

    tic = time.perf_counter()
    fit = LogisticRegression(max_iter=2000).fit(labelled.x.numpy(), labelled.y.numpy())
    accuracy = float(np.mean(fit.predict(test.x.numpy()) == test.y.numpy()))
    return {
        "row": "logistic regression",
        "accuracy": accuracy,
        "train_seconds": time.perf_counter() - tic,
    }


def run_vae(data, test, args) -> dict:
    pyro.set_rng_seed(args.seed)
    vae = VAE(data.train.data_dim, args.latent, args.hidden, image_shape=data.image_shape)
    final, seconds = _train(vae, data.train, args)
    row = {"row": "VAE", "train_seconds": seconds, "train_loss": final["train_loss"]}
    row.update(_evidence(vae.model, vae.guide, test.x, args))
    return row


def run_cvae(data, test, args) -> tuple[dict, CVAE]:
    pyro.set_rng_seed(args.seed)
    cvae = CVAE(data.train.data_dim, 10, args.latent, args.hidden, image_shape=data.image_shape)
    final, seconds = _train(cvae, (data.train, data.train.y), args)
    row = {"row": "CVAE", "train_seconds": seconds, "train_loss": final["train_loss"]}
    row.update(_evidence(cvae.model, cvae.guide, (test.x, test.y), args))
    return row, cvae


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | labels used | test accuracy | test log p(x), nats | train s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        accuracy = f"{100 * r['accuracy']:.1f}%" if "accuracy" in r else "—"
        evidence = "—"
        if "log_px" in r:
            given = " (log p(x\\|y))" if r["row"] == "CVAE" else ""
            evidence = f"{r['log_px']:.2f} ± {r['log_px_stderr']:.2f}{given}"
        lines.append(
            f"| {r['row']} | {r['labels']} | {accuracy} | {evidence} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mnist5k")
    parser.add_argument("--labels-per-class", type=int, help="default: the preset's")
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument("--latent", type=int, default=50, help="M (Kingma et al. 2014: 50)")
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=[500], help="hidden sizes (their 500)"
    )
    parser.add_argument(
        "--alphas",
        nargs="+",
        default=["paper", "pyro"],
        help="one M2 row per alpha: paper (0.1 N), pyro (46 N_l) or a number",
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--classifier-steps", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples L")
    parser.add_argument("--num-points", type=int, default=1000, help="test points scored")
    parser.add_argument("--root", default=None, help="folder of the fashion-mnist files")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/semi_supervised"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.labels_per_class = args.labels_per_class or preset["labels_per_class"]
    args.epochs = args.epochs or preset["epochs"]
    args.hidden = tuple(args.hidden)
    return args, preset


def main(argv=None) -> list[dict]:
    args, preset = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(
        preset["dataset"], root=args.root, binarize="static", seed=args.seed, val_fraction=0.1
    )
    labelled, unlabelled = labelled_split(data.train, args.labels_per_class, seed=args.seed)
    test = data.test.subset(torch.arange(min(args.num_points, len(data.test))))
    args.out.mkdir(parents=True, exist_ok=True)
    rows, models = [], {}
    for setting in args.alphas:
        row, m2 = run_m2(data, labelled, unlabelled, test, setting, args)
        rows.append(row)
        if "m2" not in models:  # the figures show the first M2
            models["m2"] = m2
    rows.append(run_classifier(data, labelled, args))
    rows.append(run_logistic_regression(labelled, data.test))
    rows.append(run_vae(data, test, args))
    if preset["cvae"]:
        cvae_row, models["cvae"] = run_cvae(data, test, args)
        rows.append(cvae_row)
    for row in rows:
        row["labels"] = {"CVAE": "all", "VAE": "none"}.get(row["row"], len(labelled))
    setup = {
        "dataset": preset["dataset"],
        "sizes": data.sizes(),
        "labels_per_class": args.labels_per_class,
        "labelled": len(labelled),
        "epochs": args.epochs,
        "latent": args.latent,
        "hidden": list(args.hidden),
        "batch_size": args.batch_size,
        "alphas": [r["alpha"] for r in rows if r.get("model") == "M2"],
        "classifier_steps": args.classifier_steps,
        "num_samples": args.num_samples,
        "num_points": len(test),  # of log p(x)
        "accuracy_points": len(data.test),
        "threads": args.threads,
    }
    (args.out / f"{args.preset}.json").write_text(
        json.dumps({"setup": setup, "rows": rows}, indent=1)
    )
    table = markdown_table(rows)
    (args.out / f"{args.preset}.md").write_text(table)
    for name, model in models.items():
        folder = args.out / f"{args.preset}_{name}"
        for path in conditional_figures(model, data, None, folder):
            path.replace(args.out / f"{args.preset}_{name}_{path.name}")
        folder.rmdir()
    print(json.dumps(setup), table, sep="\n", end="")
    if not all(math.isfinite(r.get("log_px", 0.0)) for r in rows):
        raise SystemExit("a row's log p(x) is not finite")
    return rows


if __name__ == "__main__":
    main()
