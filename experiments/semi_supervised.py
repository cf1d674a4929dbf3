"""Semi-supervised classification: M2 as ``pyro-vae train --model m2`` trains it, over seeds,
against supervised baselines on the same labels.

For each seed (which also picks the labelled images, :func:`pyro_vae.data.labelled_split`,
and the validation split):

- ``M2``: ``pyro-vae train --model m2 --dataset D --labels-per-class K --epochs E --seed S``,
  the command line's defaults for ``--model m2`` plus ``--train-flags`` (one change at a time,
  e.g. ``--train-flags="--labelled-schedule joint"``); the model is the last epoch's (nothing
  is selected on test or validation labels); its test accuracy of argmax q(y|x) on the whole
  test split as ``pyro-vae train`` reports it (the images as stored: grey levels for a
  "dynamic" run) and on the binary images ``evaluate`` scores log p(x) on (one fixed, seeded
  binarization), the validation accuracy, and the test log p(x) by importance sampling (y
  drawn from q(y|x); ``--num-samples`` per image on the first ``--num-points`` test images; 0:
  not scored);
- ``classifier only``: M2's classifier network q(y|x), built as the run builds it (same
  architecture, same start weights), trained on the labelled images as stored (grey levels for
  a "dynamic" run) alone by full-batch Adam
  (``--classifier-steps`` steps of cross-entropy, lr 1e-3), and the same network with PyTorch's
  default start weights; the better of the two on the test split is the baseline M2 must beat
  (a choice in the baseline's favour); and, as a weaker baseline, the network with PyTorch's
  start on one fixed binarization of the labelled and test images (the baseline's setting
  when M2 ran on static binarized images);
- ``logistic regression``: scikit-learn's ``LogisticRegression`` (C = 1, lbfgs) on the pixels
  of the labelled images.

Each row reports the mean, standard deviation and range over seeds; ``<out>/<preset>.json``
keeps every seed's numbers, ``<out>/<preset>.md`` the table; the first seed's M2 figures
(samples per class, test images decoded under every label) go to
``<out>/<preset>_m2_{class_samples,analogies}.png``. The run folders are
``<runs>/<preset>/m2_seed<S>``; a finished one is reused with ``--reuse`` (it is not checked
against the flags: reuse only folders this script wrote with them).

Pyro's own example on the same data and labels is ``experiments/pyro_ss_vae.py``.

Presets: ``mnist5k`` (MNIST-5k, 10 labels per class, 100 epochs) and ``fashion`` (the full
Fashion-MNIST from Debian's dataset-fashion-mnist, 100 labels per class, 10 epochs).

Run: ``python experiments/semi_supervised.py --preset mnist5k --seeds 0 1 2`` (and
``--preset fashion``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_vae import cli
from pyro_vae.data import labelled_split
from pyro_vae.infer.evidence.dataset import dataset_nll
from pyro_vae.infer.runtime.files import write_json
from pyro_vae.runs import build_model, conditional_figures, load_run, test_images

__all__ = ["PRESETS", "main", "spread"]

PRESETS = {
    "mnist5k": dict(dataset="mnist5k", labels_per_class=10, epochs=100),
    "fashion": dict(dataset="fashion-mnist", labels_per_class=100, epochs=10),
}


def train_m2(seed: int, run_dir: Path, args) -> float:
    """``pyro-vae train --model m2`` for one seed (skipped for a finished run with --reuse)."""
    history = run_dir / "history.json"
    if args.reuse and history.exists() and len(json.loads(history.read_text())) == args.epochs:
        return 0.0
    argv = ["train", "--model", "m2", "--dataset", PRESETS[args.preset]["dataset"]]
    argv += ["--labels-per-class", str(args.labels_per_class), "--epochs", str(args.epochs)]
    argv += ["--seed", str(seed), "--out", str(run_dir), "--threads", str(args.threads)]
    argv += ["--overwrite", "--quiet", *shlex.split(args.train_flags)]
    if args.root is not None:
        argv += ["--root", args.root]
    tic = time.perf_counter()
    if cli.main(argv) != 0:
        raise SystemExit(f"pyro-vae {' '.join(argv)} failed")
    return time.perf_counter() - tic


def classifier_only(run, labelled, init: str, args, binary: bool = False) -> float:
    """M2's classifier network on the labelled images alone; its test accuracy.

    ``binary``: on one fixed, seeded binarization of the labelled and the test images (for a
    "dynamic" run; a "static" run's images are binary already) instead of the grey levels.
    """
    seed = run.config["options"]["seed"]
    x_l, x_test = labelled.x, run.data.test.x
    if binary and run.config["binarize"] == "dynamic":
        x_l = torch.bernoulli(x_l, generator=torch.Generator().manual_seed(seed))
        x_test = test_images(run.data, seed=seed)
    pyro.set_rng_seed(seed)
    net = build_model("m2", {**run.config["vae"], "init": init}).classifier
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(args.classifier_steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x_l), labelled.y).backward()
        optimizer.step()
    with torch.no_grad():
        return (net(x_test).argmax(-1) == run.data.test.y).double().mean().item()


def logistic_regression(labelled, test) -> float:
    """scikit-learn's LogisticRegression (C = 1, lbfgs) on the labelled pixels; test accuracy."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(max_iter=2000).fit(labelled.x.numpy(), labelled.y.numpy())
    return float(np.mean(fit.predict(test.x.numpy()) == test.y.numpy()))


def one_seed(seed: int, args) -> dict:
    """Every row's numbers for one seed."""
    run_dir = args.runs / args.preset / f"m2_seed{seed}"
    seconds = train_m2(seed, run_dir, args)
    run = load_run(run_dir)
    m2, data = run.vae, run.data
    labelled, _ = labelled_split(data.train, run.config["options"]["labels_per_class"], seed)
    row = {
        "seed": seed,
        "m2_seconds": seconds,
        "m2": m2.accuracy(data.test.x, data.test.y),  # as pyro-vae train reports it
        "m2_test_binarized": m2.accuracy(test_images(data), data.test.y),  # evaluate's images
        "m2_val": m2.accuracy(data.val.x, data.val.y),
        "classifier_same_init": classifier_only(run, labelled, run.config["vae"]["init"], args),
        "classifier_torch_init": classifier_only(run, labelled, "torch", args),
        "classifier_binary": classifier_only(run, labelled, "torch", args, binary=True),
        "logistic_regression": logistic_regression(labelled, data.test),
        "options": {
            **{
                k: run.config["options"][k]
                for k in ("alpha", "labelled_schedule", "labelled_passes", "init", "lr")
            },
            "binarize": run.config["binarize"],
        },
    }
    row["classifier_only"] = max(row["classifier_same_init"], row["classifier_torch_init"])
    if args.num_points:
        pyro.set_rng_seed(seed)
        nll = dataset_nll(m2.model, m2.guide, test_images(data, args.num_points),
                          num_samples=args.num_samples, progress=False)  # fmt: skip
        row["m2_log_px"], row["m2_log_px_stderr"] = -nll.nll, nll.stderr
    if seed == args.seeds[0]:
        for path in conditional_figures(m2, data, None, args.out / f"{args.preset}_figures"):
            path.replace(args.out / f"{args.preset}_m2_{path.name}")
        (args.out / f"{args.preset}_figures").rmdir()
    return row


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), minimum and maximum."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values)}


ROWS = {
    "m2": "M2, the command line's defaults",
    "classifier_only": "classifier only (the better start of the two)",
    "classifier_same_init": "classifier only, M2's start weights",
    "classifier_torch_init": "classifier only, PyTorch's start weights",
    "classifier_binary": "classifier only, PyTorch's start weights, binarized images",
    "logistic_regression": "logistic regression on pixels",
}


def markdown_table(summary: dict, num_seeds: int) -> str:
    lines = [
        f"| model | test accuracy, mean ± sd over {num_seeds} seeds | range |",
        "|---|---|---|",
    ]
    for key, name in ROWS.items():
        s = summary[key]
        lines.append(
            f"| {name} | {100 * s['mean']:.1f}% ± {100 * s['sd']:.1f} "
            f"| {100 * s['min']:.1f}-{100 * s['max']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mnist5k")
    parser.add_argument("--labels-per-class", type=int, help="default: the preset's")
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-flags", default="", help="more flags for pyro-vae train")
    parser.add_argument("--classifier-steps", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples L")
    parser.add_argument("--num-points", type=int, default=1000, help="test points scored")
    parser.add_argument("--root", default=None, help="folder of the fashion-mnist files")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="keep finished run folders")
    parser.add_argument("--out", type=Path, default=Path("runs/semi_supervised"), help="results")
    parser.add_argument("--runs", type=Path, default=Path("runs/semi_supervised"), help="runs")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.labels_per_class = args.labels_per_class or preset["labels_per_class"]
    args.epochs = args.epochs or preset["epochs"]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [one_seed(seed, args) for seed in args.seeds]
    keys = [*ROWS, "m2_val", "m2_test_binarized"]
    summary = {key: spread([s[key] for s in seeds]) for key in keys}
    if args.num_points:
        summary["m2_log_px"] = spread([s["m2_log_px"] for s in seeds])
    setup = {k: v for k, v in vars(args).items() if k not in ("out", "runs", "root", "reuse")}
    result = {"setup": setup, "summary": summary, "seeds": seeds}
    write_json(args.out / f"{args.preset}.json", result)
    table = markdown_table(summary, len(seeds))
    (args.out / f"{args.preset}.md").write_text(table)
    print(table, end="")
    if args.num_points:
        s = summary["m2_log_px"]
        print(f"M2 test log p(x): {s['mean']:.2f} nats (range {s['min']:.2f} to {s['max']:.2f})")
    return result


if __name__ == "__main__":
    main()
