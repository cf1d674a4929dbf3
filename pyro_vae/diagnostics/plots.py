"""Matplotlib figures for judging a latent variable model, saved as PNG files.

Every function takes plain arrays or tensors (no model objects), writes one PNG and returns the
path it wrote (a :class:`pathlib.Path`). Figures are built with matplotlib's object API
(:class:`matplotlib.figure.Figure`), never with ``pyplot``: importing this module or calling
its functions neither switches the backend nor adds to pyplot's list of open figures, so
they work on a headless machine and inside a notebook alike (docs/design.md, "Layout").

- :func:`tile_images`: images tiled into one array (``torchvision.utils.make_grid``'s layout).
- :func:`save_image_grid`: a tiled grid of images, values in [0, 1].
- :func:`save_side_by_side`: originals above their reconstructions.
- :func:`save_history_plot`: training curve, -ELBO per datapoint in nats.
- :func:`save_latent_map`: 2-D latent codes coloured by label.
- :func:`save_manifold`: the learned 2-D manifold (Kingma & Welling 2014, Fig. 4).
- :func:`save_khat_plot`: PSIS k-hat per datapoint (Vehtari et al. 2024, thresholds
  ``KHAT_GOOD`` and ``KHAT_OK`` of :mod:`pyro_vae.infer.evidence.psis`).
- :func:`save_elbo_vs_logpx`: ELBO against importance-sampled log p(x), nats per datapoint.
- :func:`save_ais_vs_is`: AIS minus importance-sampled log p(x) per datapoint against its k-hat.
- :func:`save_bdmc_sandwich`: the BDMC bounds on log p(x) against the number of AIS steps.
- :func:`save_kl_per_dimension`: KL(q(z_j|x) || p(z_j)) per latent unit, inactive units grey.
- :func:`save_figure`, :func:`to_numpy`: the PNG writer and array conversion that every figure
  here and in :mod:`pyro_vae.diagnostics.arviz_io` uses.

Size: one short function per figure, each with its full parameter docstring (more than half of
the lines); they share the layout constants and the two helpers above, and every caller knows
them as ``plots.save_*``, so they stay in one module rather than in several of half the size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from pyro_vae.infer.evidence.psis import KHAT_GOOD, KHAT_OK

__all__ = [
    "tile_images",
    "save_image_grid",
    "save_side_by_side",
    "save_history_plot",
    "save_latent_map",
    "save_manifold",
    "save_khat_plot",
    "save_elbo_vs_logpx",
    "save_kl_per_dimension",
    "save_figure",
    "to_numpy",
]

_DPI = 100  # pixels per inch of every PNG written here
_INCH_PER_IMAGE = 0.6  # figure size per tiled image, so the PNG keeps the grid's aspect ratio
_PAD = 1  # white pixels between (and around) tiled images


# --------------------------------------------------------------------------------------------
# arrays in, PNG files out (shared with arviz_io)
# --------------------------------------------------------------------------------------------
def to_numpy(a, dtype=None) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a numpy array.

    Parameters
    ----------
    a : torch.Tensor or array_like
        The values.
    dtype : numpy dtype, optional
        Converts (e.g. ``np.float64``); ``None`` keeps the input's dtype (bfloat16, which numpy
        lacks, becomes float32).

    Returns
    -------
    numpy.ndarray
    """
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = (a.float() if a.dtype == torch.bfloat16 else a).numpy()
    return np.asarray(a, dtype=dtype)


def save_figure(fig: Figure, path, *, tight: bool = False) -> Path:
    """Save ``fig`` as a PNG at ``path`` (parent folders created) and return the path.

    A :class:`~matplotlib.figure.Figure` made without pyplot needs no closing: nothing but the
    caller refers to it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : str or Path
        PNG file to write.
    tight : bool, default False
        Crop the PNG to the drawn content (``bbox_inches="tight"``).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight" if tight else None)
    return path


def _as_images(images, image_shape: Sequence[int]) -> torch.Tensor:
    """Images ``(n, D)`` or ``(n, H, W)`` as a float tensor ``(n, H, W)`` on the CPU."""
    if len(image_shape) != 2:
        raise ValueError(f"image_shape must be (H, W), got {tuple(image_shape)}")
    h, w = (int(s) for s in image_shape)
    arr = torch.as_tensor(to_numpy(images, np.float64))
    if arr.dim() not in (2, 3) or arr.shape[0] == 0:
        raise ValueError(
            f"images must have shape (n, D) or (n, H, W) with n > 0, got {tuple(arr.shape)}"
        )
    if arr[0].numel() != h * w:
        raise ValueError(
            f"each image has {arr[0].numel()} values but image_shape {(h, w)} needs {h * w}"
        )
    return arr.reshape(-1, h, w)


def _show_grid(ax, grid: torch.Tensor) -> None:
    ax.imshow(grid.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def tile_images(images, image_shape, nrow: int | None = None) -> torch.Tensor:
    """Tile images row by row into one grey-scale array, as ``torchvision.utils.make_grid``.

    Images are separated and surrounded by 1 pixel of white (1.0); unused cells of the last
    row are white too. Written here rather than called: importing torchvision.utils starts
    torch._dynamo, about 2 s of every command that draws a figure (``pyro-vae train``).

    Parameters
    ----------
    images : torch.Tensor or array_like of shape (n, D) or (n, H, W)
        Images (flattened or not), values in [0, 1]; ``D = H * W``.
    image_shape : tuple of int
        ``(H, W)``.
    nrow : int, optional
        Images per row, as in ``make_grid``; default ``ceil(sqrt(n))``, at most ``n``.

    Returns
    -------
    torch.Tensor of shape (rows * (H + 1) + 1, ncol * (W + 1) + 1)
        The tiled float64 image, ``ncol = min(nrow, n)`` and ``rows = ceil(n / ncol)``.

    Raises
    ------
    ValueError
        If ``image_shape`` is not ``(H, W)``, the images do not have ``H * W`` values each,
        there are none, or ``nrow < 1``.
    """
    imgs = _as_images(images, image_shape)
    ncol = int(nrow) if nrow is not None else math.ceil(math.sqrt(len(imgs)))
    if ncol < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow}")
    n, h, w = imgs.shape
    ncol = min(ncol, n)
    rows = math.ceil(n / ncol)
    cells = torch.ones(rows * ncol, h + _PAD, w + _PAD, dtype=imgs.dtype)
    cells[:n, :h, :w] = imgs  # each image with its white right and bottom border
    grid = cells.reshape(rows, ncol, h + _PAD, w + _PAD).permute(0, 2, 1, 3)
    grid = grid.reshape(rows * (h + _PAD), ncol * (w + _PAD))
    return torch.nn.functional.pad(grid, (_PAD, 0, _PAD, 0), value=1.0)  # top, left border


def save_image_grid(images, image_shape, path, nrow=None, title=None) -> Path:
    """Save a grid of grey-scale images, tiled by :func:`tile_images`.

    Parameters
    ----------
    images : torch.Tensor or array_like of shape (n, D) or (n, H, W)
        Images with values in [0, 1] (values outside are clipped by the colour map).
    image_shape : tuple of int
        ``(H, W)``.
    path : str or Path
        PNG file to write; parent folders are created.
    nrow : int, optional
        Images per row (as in ``torchvision.utils.make_grid``); default ``ceil(sqrt(n))``.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        As :func:`tile_images`.
    """
    grid = tile_images(images, image_shape, nrow)
    scale = _INCH_PER_IMAGE / int(image_shape[1])  # inches per pixel
    extra = 0.4 if title else 0.0  # inches above the grid for the title
    fig = Figure(figsize=(grid.shape[1] * scale, grid.shape[0] * scale + extra))
    ax = fig.add_axes((0.0, 0.0, 1.0, grid.shape[0] * scale / (grid.shape[0] * scale + extra)))
    _show_grid(ax, grid)
    if title:
        fig.suptitle(title, y=0.99, va="top", fontsize=9)
    return save_figure(fig, path)


def save_side_by_side(originals, reconstructions, image_shape, path, title=None) -> Path:
    """Save originals (top) above their reconstructions (bottom), 10 images per row at most.

    Parameters
    ----------
    originals : torch.Tensor or array_like of shape (n, D) or (n, H, W)
        Data images, values in [0, 1].
    reconstructions : torch.Tensor or array_like of shape (n, D) or (n, H, W)
        Their reconstructions, same ``n``, values in [0, 1].
    image_shape : tuple of int
        ``(H, W)``.
    path : str or Path
        PNG file to write; parent folders are created.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If the two sets differ in size, or as :func:`tile_images`.
    """
    top = _as_images(originals, image_shape)
    bottom = _as_images(reconstructions, image_shape)
    if len(top) != len(bottom):
        raise ValueError(f"got {len(top)} originals but {len(bottom)} reconstructions")
    ncol = min(len(top), 10)
    grids = [tile_images(top, image_shape, ncol), tile_images(bottom, image_shape, ncol)]
    scale = _INCH_PER_IMAGE / top.shape[2]
    width = grids[0].shape[1] * scale + 0.3  # room for the row labels
    height = 2 * grids[0].shape[0] * scale + (0.4 if title else 0.1)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(2, 1)
    for ax, grid, label in zip(axes, grids, ("original", "reconstruction"), strict=True):
        _show_grid(ax, grid)
        ax.set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    return save_figure(fig, path)


def save_manifold(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    image_shape,
    path,
    n=20,
    device=None,
    prior_draws=None,
) -> Path:
    """Save the learned manifold of a model with a 2-D latent space (Kingma & Welling 2014, Fig. 4).

    Linearly spaced coordinates in (0.05, 0.95) are mapped through the inverse CDF of N(0, 1),
    so each grid cell covers equal prior probability; the ``n * n`` codes are decoded with
    ``decode_fn`` and tiled with ``z_1`` increasing to the right and ``z_2`` upwards. For a
    prior that is not N(0, I) (the VampPrior), ``prior_draws`` gives draws from it, and each
    axis takes their own marginal quantiles at the same levels instead.

    Parameters
    ----------
    decode_fn : callable
        Maps codes, a torch.Tensor of shape (n * n, 2), to images, a torch.Tensor of shape
        (n * n, D) or (n * n, H, W) with values in [0, 1] (e.g. ``vae.decode``); called under
        ``torch.no_grad()``.
    image_shape : tuple of int
        ``(H, W)``.
    path : str or Path
        PNG file to write; parent folders are created.
    n : int, default 20
        Grid points per axis.
    device : str or torch.device, optional
        Device of the codes passed to ``decode_fn`` (default: CPU).
    prior_draws : torch.Tensor of shape (S, 2), optional
        Draws z ~ p(z) whose per-axis quantiles lay the grid (default: N(0, 1)'s).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``n < 1`` or the decoded images do not match ``image_shape``.
    """
    if int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    n = int(n)
    u = torch.linspace(0.05, 0.95, n, dtype=torch.get_default_dtype())
    if prior_draws is None:
        coords1 = coords2 = torch.distributions.Normal(0.0, 1.0).icdf(u)
    else:  # (n, 2): the quantiles of each axis
        coords1, coords2 = torch.quantile(prior_draws.detach().cpu().to(u.dtype), u, dim=0).T
    z2, z1 = torch.meshgrid(coords2.flip(0), coords1, indexing="ij")  # top row = largest z_2
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1).to(device or "cpu")
    with torch.no_grad():
        images = decode_fn(z)
    return save_image_grid(images, image_shape, path, nrow=n)


# --------------------------------------------------------------------------------------------
# curves and scatter plots
# --------------------------------------------------------------------------------------------
def save_history_plot(history, path) -> Path:
    """Save a training curve: -ELBO per datapoint (nats) against epoch.

    Parameters
    ----------
    history : list of dict
        One dict per epoch with keys ``epoch``, ``train_loss`` and optionally ``val_loss``
        (``None`` or missing where there was no validation that epoch).
    path : str or Path
        PNG file to write; parent folders are created.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``history`` is empty or its entries lack ``epoch`` or ``train_loss``.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    missing = [k for k in ("epoch", "train_loss") if k not in history[0]]
    if missing:
        raise ValueError(f"history entries need keys 'epoch' and 'train_loss', missing {missing}")
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], "o-", label="train")
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val, strict=True), "s--", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO per datapoint (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def save_latent_map(z2d, labels, path, title=None) -> Path:
    """Save a scatter plot of 2-D latent codes coloured by label.

    Parameters
    ----------
    z2d : torch.Tensor or array_like of shape (N, 2)
        Codes (e.g. encoder means, or a 2-D projection of them).
    labels : torch.Tensor or array_like of shape (N,), or None
        Up to 20 distinct integer labels get a legend; other labels (many classes, or real
        values) get a colour bar; ``None`` draws every code in one colour.
    path : str or Path
        PNG file to write; parent folders are created.
    title : str, optional
        Axes title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``z2d`` is not of shape (N, 2) or ``labels`` has not N entries.
    """
    z = to_numpy(z2d, np.float64)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"z2d must have shape (N, 2), got {z.shape}; project it to 2-D first")
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.6)
    else:
        lab = to_numpy(labels, np.float64).reshape(-1)
        if lab.shape[0] != z.shape[0]:
            raise ValueError(f"got {z.shape[0]} codes but {lab.shape[0]} labels")
        classes = np.unique(lab)
        if len(classes) <= 20 and np.all(classes == np.round(classes)):
            cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
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
    return save_figure(fig, path)


def save_khat_plot(khat, path) -> Path:
    """Save PSIS k-hat per datapoint with the reference lines ``KHAT_GOOD`` and ``KHAT_OK``.

    Thresholds of Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance
    sampling", JMLR 25(72), as :mod:`pyro_vae.infer.evidence.psis` defines them: k-hat <=
    ``KHAT_GOOD`` (0.5), the importance weights have finite variance; up to ``KHAT_OK`` (0.7),
    usable but slower to converge; > ``KHAT_OK``, the importance-sampled log p(x) of that point
    is unreliable. The estimates come from :func:`pyro_vae.infer.evidence.psis.pareto_khat`.

    Parameters
    ----------
    khat : torch.Tensor or array_like of shape (N,)
        Pareto shape estimates, one per datapoint.
    path : str or Path
        PNG file to write; parent folders are created.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``khat`` is empty.
    """
    k = to_numpy(khat, np.float64).reshape(-1)
    if k.size == 0:
        raise ValueError("khat is empty: nothing to plot")
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.scatter(np.arange(k.size), k, s=6, alpha=0.7)
    ax.axhline(KHAT_GOOD, color="tab:orange", ls="--", lw=1, label=f"{KHAT_GOOD}")
    ax.axhline(KHAT_OK, color="tab:red", ls="--", lw=1, label=f"{KHAT_OK}")
    above = float(np.mean(k > KHAT_OK))
    ax.set_title(f"PSIS k-hat: {100 * above:.1f}% of datapoints above {KHAT_OK}", fontsize=9)
    ax.set_xlabel("datapoint")
    ax.set_ylabel("k-hat")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def save_elbo_vs_logpx(elbo, log_px, path) -> Path:
    """Save a scatter of the ELBO against log p(x) per datapoint (nats), with the line y = x.

    Points lie on or below the line since ELBO <= log p(x); the vertical distance is the
    gap KL(q(z|x) || p(z|x)) (Kingma & Welling 2019, eq. 2.8).

    Parameters
    ----------
    elbo : torch.Tensor or array_like of shape (N,)
        ELBO per datapoint in nats.
    log_px : torch.Tensor or array_like of shape (N,)
        log p(x) estimates per datapoint in nats.
    path : str or Path
        PNG file to write; parent folders are created.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If the two are empty or of different lengths.
    """
    e, lp = to_numpy(elbo, np.float64).reshape(-1), to_numpy(log_px, np.float64).reshape(-1)
    if e.shape != lp.shape or e.size == 0:
        raise ValueError(
            f"elbo and log_px must be non-empty and of equal length: {e.shape}, {lp.shape}"
        )
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.scatter(lp, e, s=6, alpha=0.6)
    lo, hi = float(min(e.min(), lp.min())), float(max(e.max(), lp.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel("log p(x) (nats per datapoint)")
    ax.set_ylabel("ELBO (nats per datapoint)")
    ax.set_title(f"mean gap log p(x) - ELBO = {float(np.mean(lp - e)):.2f} nats", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def save_ais_vs_is(khat, difference, path) -> Path:
    """Save AIS minus importance-sampled log p(x) per datapoint against the IS k-hat (nats).

    Both estimates are stochastic lower bounds of log p(x); a point above 0 is one whose
    importance-sampled value AIS moved up, typically where k-hat > ``KHAT_OK`` says the
    importance weights are unreliable.

    Parameters
    ----------
    khat : torch.Tensor or array_like of shape (N,)
        PSIS k-hat of the importance weights of each datapoint.
    difference : torch.Tensor or array_like of shape (N,)
        AIS log p(x) minus IS log p(x), nats.
    path : str or Path
        PNG file to write; parent folders are created.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If the two are empty or of different lengths.
    """
    k, d = to_numpy(khat, np.float64).reshape(-1), to_numpy(difference, np.float64).reshape(-1)
    if k.shape != d.shape or k.size == 0:
        raise ValueError(
            f"khat and difference must be non-empty, equal length: {k.shape}, {d.shape}"
        )
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.scatter(np.clip(k, -1, 5), d, s=6, alpha=0.6)
    ax.axhline(0.0, color="k", lw=1)
    ax.axvline(KHAT_OK, color="tab:red", ls="--", lw=1, label=f"k-hat {KHAT_OK}")
    ax.set_xlabel("PSIS k-hat of the importance weights (clipped to [-1, 5])")
    ax.set_ylabel("AIS - IS log p(x) (nats)")
    ax.set_title(f"mean AIS - IS = {float(np.mean(d)):.2f} nats over {d.size} points", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def save_bdmc_sandwich(steps, lower, upper, path) -> Path:
    """Save the mean BDMC bounds on log p(x) against the number of AIS steps T (log axis).

    Parameters
    ----------
    steps : sequence of int
        T of each run.
    lower, upper : sequence of float
        Mean forward (stochastic lower) and reverse (stochastic upper) bounds, nats.
    path : str or Path
        PNG file to write; parent folders are created.

    Returns
    -------
    Path
        ``path``.
    """
    t = np.asarray(steps, dtype=np.float64)
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(t, hi, "o-", label="upper (reverse AIS from the true z)")
    ax.plot(t, lo, "o-", label="lower (forward AIS from the guide)")
    ax.fill_between(t, lo, hi, alpha=0.2)
    ax.set_xscale("log")
    # a tick at each T run, written as an integer: the log axis's own minor labels
    # (2x10^0, 3x10^0, ...) overlap when the T lie within a decade or two
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(t, [f"{int(v)}" for v in t])
    if len(t) > 4:  # many T: slanted labels need less room each
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("AIS steps T")
    ax.set_ylabel("mean log p(x) bound (nats)")
    ax.set_title(f"BDMC gap at T = {int(t[-1])}: {float(hi[-1] - lo[-1]):.2f} nats", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def save_kl_per_dimension(kl, path, variances=None, threshold: float = 0.01) -> Path:
    """Bar chart of KL(q(z_j|x) || p(z_j)) per latent unit j (nats, mean over datapoints).

    With ``variances`` (A_j = Cov_x E_q[z_j | x], Burda, Grosse & Salakhutdinov 2015, sec. 5.2,
    as returned by :func:`pyro_vae.diagnostics.latent.active_units`) the inactive units,
    A_j <= ``threshold``, are drawn grey.

    Parameters
    ----------
    kl : torch.Tensor or array_like of shape (D_z,)
        KL per latent unit in nats, e.g. from
        :func:`pyro_vae.diagnostics.latent.kl_per_dimension`.
    path : str or Path
        PNG file to write; parent folders are created.
    variances : torch.Tensor or array_like of shape (D_z,), optional
        Activity A_j of each unit.
    threshold : float, default 0.01
        Activity above which a unit counts as active (Burda et al. 2015).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``kl`` is empty or ``variances`` has not ``D_z`` entries.
    """
    kl = to_numpy(kl, np.float64).reshape(-1)
    if kl.size == 0:
        raise ValueError("kl is empty: nothing to plot")
    colors = ["tab:blue"] * len(kl)
    if variances is not None:
        active = to_numpy(variances, np.float64).reshape(-1) > threshold
        if active.shape != kl.shape:
            raise ValueError(f"got {kl.size} KL values but {active.size} variances")
        colors = ["tab:blue" if a else "lightgrey" for a in active]
    fig = Figure(figsize=(max(4.0, 0.3 * len(kl) + 2), 3.2))
    ax = fig.subplots()
    ax.bar(np.arange(len(kl)), kl, color=colors)
    ax.set_xlabel("latent dimension j")
    ax.set_ylabel("KL per datapoint (nats)")
    title = "KL(q(z_j|x) || p(z_j))"
    ax.set_title(title + (" (grey: inactive unit)" if variances is not None else ""), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
