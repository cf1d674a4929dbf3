"""pPCA baseline: exact train/test log-likelihood of the closed-form MLE, checked against sklearn.

For each dataset and latent dimension M, fit pPCA by maximum likelihood (Tipping & Bishop 1999,
Bishop PRML 12.2) on the training split and report the exact log p(x) per datapoint in nats on
train and test, and bits/dim = -LL / (D ln 2). These are *continuous densities* on pixel
intensities scaled to [0, 1], so bits/dim can be negative and is not comparable with the
discrete (binarized) bits/dim of the VAE tables.

Independent check: scikit-learn's ``PCA(M).score_samples`` on the training split (exact solver
``covariance_eigh`` by default; ``--sklearn-solver full`` gives the same numbers to ~1e-10 but its
SVD of the 4000 x 784 data takes ~10x longer). sklearn divides the covariance by N - 1, the MLE
by N, so its number is compared with ours fitted with ``ddof=1`` (same N - 1 covariance); the
table shows both and their difference.

Run: ``python experiments/ppca_baseline.py`` (about half a minute on 2 CPU cores). Writes
``<out>/table.md``, ``<out>/results.json`` and, unless ``--no-figures``, PNG figures per dataset:
the mean and first principal axes as images, 2-D posterior means (M = 2) coloured by label, and
samples from the fitted model.
"""

import argparse
import math
import time
from pathlib import Path

import sklearn
import torch
from sklearn.decomposition import PCA

from pyro_vae.data import load_dataset
from pyro_vae.infer.runtime.files import write_json
from pyro_vae.infer.training.loop import train
from pyro_vae.models.ppca import PPCA, CollapsedPPCA

__all__ = ["main", "evaluate", "markdown_table"]

DEFAULT_DATASETS = ("mnist5k", "digits")
DEFAULT_LATENT_DIMS = (2, 5, 10, 20, 50)
BITS_NOTE = (
    "Continuous Gaussian density on pixels scaled to [0, 1]; LL = exact log p(x) per datapoint "
    "in nats (closed-form MLE, ddof=0); bits/dim = -LL / (D ln 2) (negative where the density "
    "exceeds 1; not comparable with discrete bits/dim). sklearn = PCA(M, svd_solver={solver!r})"
    ".score_samples on train, which uses the N-1 covariance: compared with ours fitted with "
    "ddof=1."
)


def _default_solver():
    """sklearn's exact eigh-of-covariance solver exists from 1.5; fall back to the full SVD."""
    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    return "covariance_eigh" if (major, minor) >= (1, 5) else "full"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    parser.add_argument("--latent-dims", nargs="+", type=int, default=list(DEFAULT_LATENT_DIMS))
    parser.add_argument("--out", type=Path, default=Path("runs/ppca_baseline"))
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument(
        "--sklearn-solver",
        default=_default_solver(),
        choices=["covariance_eigh", "full"],
        help="exact PCA solver for the sklearn check",
    )
    parser.add_argument(
        "--svi-check",
        default="digits",
        help="dataset on which SVI trains the collapsed model towards the MLE ('none' skips)",
    )
    return parser.parse_args(argv)


def svi_check(x_train, latent_dim=5, epochs=150, lr=0.05):
    """Train ``CollapsedPPCA`` (z integrated out) by SVI from a random start, full batch.

    The exact likelihood is its objective, so it must climb to the closed-form MLE.
    """
    target = PPCA.fit(x_train, latent_dim).log_marginal(x_train).mean().item()
    collapsed = CollapsedPPCA(x_train.shape[1], latent_dim, seed=0)
    result = train(
        collapsed.model,
        collapsed.guide,
        x_train,
        epochs=epochs,
        batch_size=x_train.shape[0],
        lr=lr,
        seed=0,
        progress=False,
        device="cpu",
    )
    learned = collapsed.to_ppca().log_marginal(x_train).mean().item()
    start = -result.history[0]["train_loss"]
    return {
        "M": latent_dim,
        "epochs": epochs,
        "start_ll": start,
        "svi_ll": learned,
        "mle_ll": target,
        "relative_gap": abs(learned - target) / abs(target),
    }


def evaluate(name, x_train, x_test, latent_dim, sklearn_solver="covariance_eigh"):
    """One table row: exact train/test LL (nats/datapoint), bits/dim and the sklearn check."""
    D = x_train.shape[1]
    ppca = PPCA.fit(x_train, latent_dim)
    ll_train = ppca.log_marginal(x_train).mean().item()
    ll_test = ppca.log_marginal(x_test).mean().item()
    ours_ddof1 = PPCA.fit(x_train, latent_dim, ddof=1).log_marginal(x_train).mean().item()
    x_np = x_train.numpy()
    sklearn_ll = PCA(latent_dim, svd_solver=sklearn_solver).fit(x_np).score_samples(x_np).mean()
    return {
        "dataset": name,
        "D": D,
        "M": latent_dim,
        "n_train": x_train.shape[0],
        "n_test": x_test.shape[0],
        "sigma2": ppca.sigma2.item(),
        "train_ll": ll_train,
        "test_ll": ll_test,
        "train_bpd": -ll_train / (D * math.log(2)),
        "test_bpd": -ll_test / (D * math.log(2)),
        "sklearn_train_ll_ddof1": float(sklearn_ll),
        "ours_train_ll_ddof1": ours_ddof1,
        "abs_diff": abs(float(sklearn_ll) - ours_ddof1),
    }


def markdown_table(rows):
    """The results as a markdown table (log-likelihoods in nats per datapoint)."""
    head = (
        "| dataset | D | M | sigma^2 | train LL (nats) | test LL (nats) | train bits/dim "
        "| test bits/dim | sklearn train LL (N-1) | ours ddof=1 train LL | abs diff |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['D']} | {r['M']} | {r['sigma2']:.4g} | {r['train_ll']:.3f} "
            f"| {r['test_ll']:.3f} | {r['train_bpd']:.4f} | {r['test_bpd']:.4f} "
            f"| {r['sklearn_train_ll_ddof1']:.6f} | {r['ours_train_ll_ddof1']:.6f} "
            f"| {r['abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def save_figures(name, splits, x_train, x_test, latent_dims, out):
    """Principal axes as images, the M = 2 posterior-mean map, samples; returns the paths."""
    from pyro_vae.diagnostics.plots import save_image_grid, save_latent_map

    shape = splits.image_shape
    top = PPCA.fit(x_train, max(latent_dims))
    n_axes = min(15, top.latent_dim)
    axes = top.W[:, :n_axes].T
    axes = 0.5 + 0.5 * axes / axes.abs().amax(1, keepdim=True)  # each axis scaled into [0, 1]
    paths = [
        save_image_grid(
            torch.cat([(top.b / top.b.max())[None], axes]),
            shape,
            out / f"{name}_mean_and_axes.png",
            nrow=8,
            title=f"{name}: mean (/ max), then W[:, 1..{n_axes}] (M={top.latent_dim}; grey = 0)",
        )
    ]
    two = PPCA.fit(x_train, 2)
    paths.append(
        save_latent_map(
            two.posterior(x_test).mean,
            splits.test.y,
            out / f"{name}_latent_m2.png",
            title=f"{name}: posterior means E[z|x], M=2, test set",
        )
    )
    torch.manual_seed(0)
    samples = top.sample(64).clamp(0, 1)
    paths.append(
        save_image_grid(
            samples,
            shape,
            out / f"{name}_samples.png",
            nrow=8,
            title=f"{name}: x ~ p(x), pPCA M={top.latent_dim} (clipped to [0, 1])",
        )
    )
    return paths


def main(argv=None):
    """Fit, evaluate, print and save the table; returns the rows as a list of dicts."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, figures = [], []
    for name in args.datasets:
        tic = time.perf_counter()
        splits = load_dataset(name)
        x_train, x_test = splits.train.x.double(), splits.test.x.double()
        D = x_train.shape[1]
        dims = [m for m in args.latent_dims if 1 <= m < D]
        skipped = sorted(set(args.latent_dims) - set(dims))
        if skipped:
            print(f"{name}: skipping latent dims {skipped} (need 1 <= M < D={D})")
        rows += [evaluate(name, x_train, x_test, m, args.sklearn_solver) for m in dims]
        if dims and not args.no_figures:
            figures += save_figures(name, splits, x_train, x_test, dims, args.out)
        print(f"{name}: {len(dims)} fits in {time.perf_counter() - tic:.1f} s")
    table = markdown_table(rows)
    print()
    print(table)
    print()
    note = BITS_NOTE.format(solver=args.sklearn_solver)
    print(note)
    (args.out / "table.md").write_text(f"{table}\n\n{note}\n")
    write_json(args.out / "results.json", rows)
    if args.svi_check != "none":
        x = load_dataset(args.svi_check).train.x.double()
        svi = svi_check(x)
        print(
            f"\nSVI on the collapsed pPCA ({args.svi_check}, M={svi['M']}, random start, "
            f"full-batch Adam, {svi['epochs']} epochs): train LL {svi['start_ll']:.3f} -> "
            f"{svi['svi_ll']:.4f} nats/datapoint; closed-form MLE {svi['mle_ll']:.4f} "
            f"(relative gap {svi['relative_gap']:.3%})"
        )
        write_json(args.out / "svi_check.json", svi)
    for path in figures:
        print(f"figure: {path}")
    print(f"table: {args.out / 'table.md'}")
    return rows


if __name__ == "__main__":
    main()
