"""Figures for data that are not images: tables of features, and scores of a data file.

- :func:`save_reconstruction_scatter`: observed against reconstructed values, one panel per
  feature (the first 12), instead of the image grids of :mod:`pyro_vae.diagnostics.plots`;
- :func:`save_score_histogram`: the per-point log p(x) of a file against the training data's.

The latent map of a table is :func:`pyro_vae.diagnostics.plots.save_latent_map` of the first two
latent dimensions (or their principal components, :func:`principal_components`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_vae.diagnostics.plots import save_figure, to_numpy

__all__ = ["principal_components", "save_reconstruction_scatter", "save_score_histogram"]

MAX_PANELS = 12


def principal_components(z: torch.Tensor, k: int = 2) -> torch.Tensor:
    """The projection of codes ``z`` on their first ``k`` principal components.

    Parameters
    ----------
    z : torch.Tensor of shape (N, M)
    k : int

    Returns
    -------
    torch.Tensor of shape (N, k)
        ``z`` itself when M <= k.
    """
    if z.shape[1] <= k:
        return z
    centred = z - z.mean(0)
    _, _, v = torch.linalg.svd(centred.double(), full_matrices=False)
    return (centred.double() @ v[:k].T).to(z.dtype)


def save_reconstruction_scatter(observed, reconstructed, path, names=None, title=None) -> Path:
    """Observed against reconstructed value per feature, one panel each (the first 12).

    Parameters
    ----------
    observed, reconstructed : torch.Tensor or array_like of shape (N, D)
    path : str or Path
        PNG file to write.
    names : list of str, optional
        Feature names (default ``x1``, ``x2``, ...).
    title : str, optional

    Returns
    -------
    Path
    """
    obs, rec = to_numpy(observed, np.float64), to_numpy(reconstructed, np.float64)
    d = min(obs.shape[1], MAX_PANELS)
    ncol = min(d, 4)
    nrow = math.ceil(d / ncol)
    fig = Figure(figsize=(2.6 * ncol, 2.4 * nrow + 0.4))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for j, ax in enumerate(axes):
        if j >= d:
            ax.set_axis_off()
            continue
        ax.scatter(obs[:, j], rec[:, j], s=4, alpha=0.5)
        low, high = min(obs[:, j].min(), rec[:, j].min()), max(obs[:, j].max(), rec[:, j].max())
        ax.plot([low, high], [low, high], color="grey", lw=0.8)  # perfect reconstruction
        ax.set_title(names[j] if names else f"x{j + 1}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.supxlabel("observed", fontsize=8)
    fig.supylabel("reconstructed", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, tight=True)


def save_score_histogram(scores, reference, path, title=None) -> Path:
    """Histograms of per-point log p(x): a file's against the training data's.

    Parameters
    ----------
    scores : torch.Tensor or array_like of shape (N,)
        The file's log p(x), nats.
    reference : torch.Tensor or array_like of shape (R,)
        The training points', nats.
    path : str or Path
    title : str, optional

    Returns
    -------
    Path
    """
    s, r = to_numpy(scores, np.float64), to_numpy(reference, np.float64)
    both = np.concatenate([s[np.isfinite(s)], r[np.isfinite(r)]])
    bins = np.linspace(both.min(), both.max(), 40) if both.size else 10
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.hist(r, bins=bins, alpha=0.5, density=True, label=f"training data ({len(r)} points)")
    ax.hist(s, bins=bins, alpha=0.5, density=True, label=f"scored file ({len(s)} points)")
    ax.set_xlabel("log p(x), nats per datapoint")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, tight=True)
