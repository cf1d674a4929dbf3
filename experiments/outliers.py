"""Outliers found by -log p(x): a real-valued table, outliers injected into its held-out rows.

The use ``pyro-vae evaluate RUN --data FILE`` serves. scikit-learn's breast-cancer table (569
rows x 30 real-valued measurements, shipped with the package: no download) is split, seeded,
into a training file (80%) and a held-out file (20%); in a tenth of the held-out rows
(``--outlier-fraction``) three random columns are moved by ``--shift`` standard deviations
(of the training data), up or down. Then, through the command line:

    pyro-vae train --data train.csv --epochs E --latent 5 --hidden 64 --out RUN
    pyro-vae evaluate RUN --data heldout.csv --num-samples L

and the ROC AUC of -log p(x) as the outlier score is printed (the probability that an outlier
scores above an inlier; 0.5 is chance), beside that of a baseline with the same information,
the log-density of one Gaussian with the training data's mean and full covariance.

    python experiments/outliers.py [--shift 2]     # about 1.5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pyro_vae.cli import main as pyro_vae


def roc_auc(scores: np.ndarray, is_outlier: np.ndarray) -> float:
    """P(score of an outlier > score of an inlier), ties counting 1/2 (Mann-Whitney U / n m)."""
    out, inl = scores[is_outlier], scores[~is_outlier]
    greater = (out[:, None] > inl[None, :]).sum() + 0.5 * (out[:, None] == inl[None, :]).sum()
    return float(greater / (len(out) * len(inl)))


def make_files(folder: Path, *, fraction: float, shift: float, seed: int) -> np.ndarray:
    """train.csv and heldout.csv in ``folder``; returns which held-out rows are outliers."""
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer(as_frame=True).data
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    n_train = round(0.8 * len(table))
    train, held = table.iloc[order[:n_train]], table.iloc[order[n_train:]].copy()
    outliers = np.zeros(len(held), dtype=bool)
    outliers[rng.choice(len(held), round(fraction * len(held)), replace=False)] = True
    sd = train.std().to_numpy()
    for row in np.flatnonzero(outliers):
        columns = rng.choice(table.shape[1], 3, replace=False)
        signs = rng.choice([-1.0, 1.0], 3)
        held.iloc[row, columns] = held.iloc[row, columns].to_numpy() + signs * shift * sd[columns]
    train.to_csv(folder / "train.csv", index=False)
    held.to_csv(folder / "heldout.csv", index=False)
    return outliers


def gaussian_scores(train: pd.DataFrame, held: pd.DataFrame) -> np.ndarray:
    """-log N(x; mean, covariance) of the training data, per held-out row (up to a constant)."""
    mean, cov = train.mean().to_numpy(), np.cov(train.to_numpy(), rowvar=False)
    centred = held.to_numpy() - mean
    return 0.5 * np.einsum("ij,ij->i", centred @ np.linalg.inv(cov), centred)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outliers_run", help="folder for the files and the run")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--latent", type=int, default=5)
    p.add_argument("--hidden", default="64")
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples L")
    p.add_argument("--outlier-fraction", type=float, default=0.1)
    p.add_argument("--shift", type=float, default=2.0, help="the outliers' shift, training sds")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    outliers = make_files(folder, fraction=args.outlier_fraction, shift=args.shift, seed=args.seed)
    run = folder / "run"
    train = ["train", "--data", str(folder / "train.csv"), "--epochs", str(args.epochs)]
    train += ["--latent", str(args.latent), "--hidden", args.hidden, "--batch-size", "64"]
    train += ["--seed", str(args.seed), "--out", str(run), "--overwrite", "--quiet"]
    assert pyro_vae(train) == 0
    scores_file = run / "scores_heldout.csv"
    if scores_file.exists():  # a rerun: evaluate writes beside, never over, earlier scores
        scores_file.unlink()
    evaluate = ["evaluate", str(run), "--data", str(folder / "heldout.csv")]
    assert pyro_vae([*evaluate, "--num-samples", str(args.num_samples), "--quiet"]) == 0
    log_px = pd.read_csv(scores_file)["log_px"].to_numpy()
    held, train_table = (pd.read_csv(folder / f"{n}.csv") for n in ("heldout", "train"))
    result = {
        "rows": len(held),
        "outliers": int(outliers.sum()),
        "auc_vae": roc_auc(-log_px, outliers),
        "auc_gaussian": roc_auc(gaussian_scores(train_table, held), outliers),
    }
    print(
        f"{result['outliers']} outliers among {result['rows']} held-out rows (3 of 30 columns "
        f"moved by {args.shift:g} sd); ROC AUC of -log p(x): VAE {result['auc_vae']:.3f}, one "
        f"full-covariance Gaussian {result['auc_gaussian']:.3f}"
    )
    return result


if __name__ == "__main__":
    main()
