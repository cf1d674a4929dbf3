"""Matplotlib figures for judging a latent variable model, saved as PNG files.

Every function takes plain arrays or tensors (no model objects), writes one PNG, closes its
figure and returns the path it wrote (a :class:`pathlib.Path`). The Agg backend is selected on
import, so the functions work on a headless machine.

- :func:`save_image_grid`: a tiled grid of images, values in [0, 1].
- :func:`save_side_by_side`: originals above their reconstructions.
- :func:`save_history_plot`: training curve, -ELBO per datapoint in nats.
- :func:`save_latent_map`: 2-D latent codes coloured by label.
- :func:`save_manifold`: the learned 2-D manifold (Kingma & Welling 2014, Fig. 4).
- :func:`save_khat_plot`: PSIS k-hat per datapoint (Vehtari et al. 2015, thresholds 0.5, 0.7).
- :func:`save_elbo_vs_logpx`: ELBO against importance-sampled log p(x), nats per datapoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = [
    "save_image_grid",
    "save_side_by_side",
    "save_history_plot",
    "save_latent_map",
    "save_manifold",
    "save_khat_plot",
    "save_elbo_vs_logpx",
    "save_kl_per_dimension",
]

_INCH_PER_IMAGE = 0.6  # figure size per tiled image, so the PNG keeps the grid's aspect ratio


def _to_numpy(a) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a float numpy array."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _save(fig, path) -> Path:
    """Save ``fig`` to ``path`` (parent folders created), close it and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _as_images(images, image_shape: Sequence[int]) -> np.ndarray:
    """Images ``(n, D)`` or ``(n, H, W)`` as an array ``(n, H, W)``, checking ``H * W == D``."""
    if len(image_shape) != 2:
        raise ValueError(f"image_shape must be (H, W), got {tuple(image_shape)}")
    h, w = (int(s) for s in image_shape)
    arr = _to_numpy(images)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0:
        raise ValueError(f"images must have shape (n, D) or (n, H, W) with n > 0, got {arr.shape}")
    if arr[0].size != h * w:
        raise ValueError(
            f"each image has {arr[0].size} values but image_shape {(h, w)} needs {h * w}"
        )
    return arr.reshape(-1, h, w)


def _tile(images: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
    """Tile ``(n, H, W)`` images into one ``(rows*(H+pad)+pad, ncol*(W+pad)+pad)`` array.

    Unused cells and the padding are white (1.0), images fill row by row.
    """
    n, h, w = images.shape
    nrow = math.ceil(n / ncol)
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad))
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = img
    return grid


def _show_grid(ax, grid: np.ndarray) -> None:
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)


def save_image_grid(images, image_shape, path, nrow=None, title=None) -> Path:
    """Save a grid of images.

    Args:
        images: ``(n, D)`` flattened or ``(n, H, W)`` images with values in [0, 1]
            (values outside are clipped by the colour map).
        image_shape: ``(H, W)``.
        path: PNG file to write.
        nrow: images per row (as in ``torchvision.utils.make_grid``); default ``ceil(sqrt(n))``.
        title: optional figure title.
    """
    imgs = _as_images(images, image_shape)
    ncol = int(nrow) if nrow is not None else math.ceil(math.sqrt(len(imgs)))
    if ncol < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow}")
    ncol = min(ncol, len(imgs))
    grid = _tile(imgs, ncol)
    scale = _INCH_PER_IMAGE / imgs.shape[2]  # inches per pixel
    extra = 0.4 if title else 0.0
    fig = plt.figure(figsize=(grid.shape[1] * scale, grid.shape[0] * scale + extra))
    ax = fig.add_axes((0.0, 0.0, 1.0, grid.shape[0] * scale / (grid.shape[0] * scale + extra)))
    _show_grid(ax, grid)
    if title:
        fig.suptitle(title, y=0.99, va="top", fontsize=9)
    return _save(fig, path)


def save_side_by_side(originals, reconstructions, image_shape, path, title=None) -> Path:
    """Save originals (top row(s)) above their reconstructions (bottom row(s)).

    Args:
        originals, reconstructions: ``(n, D)`` or ``(n, H, W)``, same ``n``, values in [0, 1].
        image_shape: ``(H, W)``.
        path: PNG file to write.
        title: optional figure title.
    """
    top = _as_images(originals, image_shape)
    bottom = _as_images(reconstructions, image_shape)
    if len(top) != len(bottom):
        raise ValueError(f"got {len(top)} originals but {len(bottom)} reconstructions")
    ncol = min(len(top), 10)
    grids = [_tile(top, ncol), _tile(bottom, ncol)]
    scale = _INCH_PER_IMAGE / top.shape[2]
    width = grids[0].shape[1] * scale + 0.3  # room for the row labels
    height = 2 * grids[0].shape[0] * scale + (0.4 if title else 0.1)
    fig, axes = plt.subplots(2, 1, figsize=(width, height))
    for ax, grid, label in zip(axes, grids, ("original", "reconstruction"), strict=True):
        _show_grid(ax, grid)
        ax.set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    return _save(fig, path)


def save_history_plot(history, path) -> Path:
    """Save a training curve: -ELBO per datapoint (nats) against epoch.

    Args:
        history: list of dicts with keys ``epoch``, ``train_loss`` and optionally ``val_loss``
            (``None`` or missing where there was no validation that epoch).
        path: PNG file to write.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    missing = [k for k in ("epoch", "train_loss") if k not in history[0]]
    if missing:
        raise ValueError(f"history entries need keys 'epoch' and 'train_loss', missing {missing}")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], "o-", label="train")
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val, strict=True), "s--", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO per datapoint (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def save_latent_map(z2d, labels, path, title=None) -> Path:
    """Save a scatter plot of 2-D latent codes coloured by label.

    Args:
        z2d: ``(N, 2)`` codes (e.g. encoder means, or a 2-D projection of them).
        labels: ``(N,)`` labels or ``None``. Up to 20 distinct integer labels get a legend;
            other labels (many classes, or real values) get a colour bar.
        path: PNG file to write.
        title: optional axes title.
    """
    z = _to_numpy(z2d)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"z2d must have shape (N, 2), got {z.shape}; project it to 2-D first")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.6)
    else:
        lab = _to_numpy(labels).reshape(-1)
        if lab.shape[0] != z.shape[0]:
            raise ValueError(f"got {z.shape[0]} codes but {lab.shape[0]} labels")
        classes = np.unique(lab)
        if len(classes) <= 20 and np.all(classes == np.round(classes)):
            cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
            for i, c in enumerate(classes):
                m = lab == c
                ax.scatter(z[m, 0], z[m, 1], s=4, alpha=0.6, color=cmap(i), label=str(int(c)))
            ax.legend(markerscale=3, fontsize=7, loc="best", title="label")
        else:
            sc = ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.6, c=lab, cmap="viridis")
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def save_manifold(
    decode_fn: Callable[[torch.Tensor], torch.Tensor], image_shape, path, n=20, device=None
) -> Path:
    """Save the learned manifold of a model with a 2-D latent space (Kingma & Welling 2014, Fig. 4).

    Linearly spaced coordinates in (0.05, 0.95) are mapped through the inverse CDF of N(0, 1),
    so each grid cell covers equal prior probability; the ``n * n`` codes are decoded with
    ``decode_fn`` and tiled with ``z_1`` increasing to the right and ``z_2`` upwards.

    Args:
        decode_fn: maps codes ``(n * n, 2)`` to images ``(n * n, D)`` with values in [0, 1]
            (e.g. ``vae.decode``); called under ``torch.no_grad()``.
        image_shape: ``(H, W)``.
        path: PNG file to write.
        n: grid points per axis.
        device: device of the codes passed to ``decode_fn`` (default: CPU).
    """
    if int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    n = int(n)
    u = torch.linspace(0.05, 0.95, n, dtype=torch.get_default_dtype())
    coords = torch.distributions.Normal(0.0, 1.0).icdf(u)
    z2, z1 = torch.meshgrid(coords.flip(0), coords, indexing="ij")  # top row = largest z_2
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1).to(device or "cpu")
    with torch.no_grad():
        images = decode_fn(z)
    return save_image_grid(images, image_shape, path, nrow=n)


def save_khat_plot(khat, path) -> Path:
    """Save PSIS k-hat per datapoint with the reference lines 0.5 and 0.7 (Vehtari et al.).

    k-hat < 0.5: importance weights have finite variance; 0.5-0.7: usable but slower to
    converge; > 0.7: the importance-sampled log p(x) for that point is unreliable.

    Args:
        khat: ``(N,)`` Pareto shape estimates, one per datapoint.
        path: PNG file to write.
    """
    k = _to_numpy(khat).reshape(-1)
    if k.size == 0:
        raise ValueError("khat is empty: nothing to plot")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(np.arange(k.size), k, s=6, alpha=0.7)
    ax.axhline(0.5, color="tab:orange", ls="--", lw=1, label="0.5")
    ax.axhline(0.7, color="tab:red", ls="--", lw=1, label="0.7")
    above = float(np.mean(k > 0.7))
    ax.set_title(f"PSIS k-hat: {100 * above:.1f}% of datapoints above 0.7", fontsize=9)
    ax.set_xlabel("datapoint")
    ax.set_ylabel("k-hat")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def save_elbo_vs_logpx(elbo, log_px, path) -> Path:
    """Save a scatter of the ELBO against log p(x) per datapoint (nats), with the line y = x.

    Points lie on or below the line since ELBO <= log p(x); the vertical distance is the
    gap KL(q(z|x) || p(z|x)) (Kingma & Welling 2019, eq. 2.8).

    Args:
        elbo: ``(N,)`` ELBO per datapoint in nats.
        log_px: ``(N,)`` log p(x) estimates per datapoint in nats.
        path: PNG file to write.
    """
    e, lp = _to_numpy(elbo).reshape(-1), _to_numpy(log_px).reshape(-1)
    if e.shape != lp.shape or e.size == 0:
        raise ValueError(
            f"elbo and log_px must be non-empty and of equal length: {e.shape}, {lp.shape}"
        )
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(lp, e, s=6, alpha=0.6)
    lo, hi = float(min(e.min(), lp.min())), float(max(e.max(), lp.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel("log p(x) (nats per datapoint)")
    ax.set_ylabel("ELBO (nats per datapoint)")
    ax.set_title(f"mean gap log p(x) - ELBO = {float(np.mean(lp - e)):.2f} nats", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def save_kl_per_dimension(kl, path, variances=None, threshold: float = 0.01) -> Path:
    """Bar chart of KL(q(z_j|x) || p(z_j)) per latent dimension (nats, mean over datapoints).

    With ``variances`` (Cov_x E_q[z_j], Burda et al. 2015) inactive units are drawn grey.
    """
    kl = _to_numpy(kl).ravel()
    colors = ["tab:blue"] * len(kl)
    if variances is not None:
        active = _to_numpy(variances).ravel() > threshold
        colors = ["tab:blue" if a else "lightgrey" for a in active]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * len(kl) + 2), 3.2))
    ax.bar(np.arange(len(kl)), kl, color=colors)
    ax.set_xlabel("latent dimension j")
    ax.set_ylabel("KL per datapoint (nats)")
    title = "KL(q(z_j|x) || p(z_j))"
    ax.set_title(title + (" (grey: inactive unit)" if variances is not None else ""))
    return _save(fig, path)
