"""The files ``evaluate --data``, ``encode`` and ``sample`` write.

Arrays by the suffix of ``--out`` (``.npy``, ``.csv`` with a header, ``.pt``), the per-point
scores as CSV, and a PNG grid of images written with PIL (grey or colour), each through the
package's one atomic write, and never over an earlier evaluation's files
(:func:`pyro_vae.runs.usage.free_name`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import torch

from pyro_vae.infer.runtime.files import atomic_write

__all__ = ["OUT_SUFFIXES", "check_out", "save_png_grid", "write_columns", "write_scores"]

OUT_SUFFIXES = (".npy", ".csv", ".pt")


def check_out(path) -> Path:
    """``--out``, refused unless it ends in .npy, .csv or .pt and its folder exists.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Path

    Raises
    ------
    ValueError, FileNotFoundError
    """
    path = Path(path)
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(f"--out {path}: name a .npy, .csv or .pt file")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--out {path}: the folder {path.parent} does not exist")
    return path


def write_columns(path, columns: dict, header: list[str] | None = None) -> Path:
    """Write named arrays of N rows to ``path`` by its suffix.

    ``.pt``: a dict of tensors; ``.npy``: one array, the columns side by side (N, sum of
    widths), or the one array as it is; ``.csv``: a header line (``header``) and N rows.

    Parameters
    ----------
    path : Path
        Checked by :func:`check_out`.
    columns : dict of str -> torch.Tensor of shape (N, ...)
    header : list of str, optional
        The CSV column names (default: ``name_1``, ``name_2``, ...).

    Returns
    -------
    Path
    """
    path = Path(path)
    tensors = {k: v.detach().cpu() for k, v in columns.items()}
    suffix = path.suffix.lower()
    if suffix == ".pt":
        return atomic_write(path, lambda f: torch.save(tensors, f), binary=True)
    flat = [v.reshape(v.shape[0], -1).numpy() for v in tensors.values()]
    table = flat[0] if len(flat) == 1 else np.concatenate(flat, axis=1)
    if suffix == ".npy":
        array = next(iter(tensors.values())).numpy() if len(flat) == 1 else table
        return atomic_write(path, lambda f: np.save(f, array), binary=True)
    if header is None:
        header = [
            f"{k}_{j + 1}" for k, v in zip(tensors, flat, strict=True) for j in range(v.shape[1])
        ]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(table.tolist())
    return atomic_write(path, lambda f: f.write(text.getvalue()), binary=False)


def write_scores(path, rows: list[dict]) -> Path:
    """The per-point scores as CSV: index, log_px, stderr, estimator, is_khat.

    A value that is not finite (a k-hat that could not be fitted) is written as an empty cell.

    Parameters
    ----------
    path : Path
    rows : list of dict

    Returns
    -------
    Path
    """
    names = ["index", "log_px", "stderr", "estimator", "is_khat"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(row[n]) for n in names])
    return atomic_write(path, lambda f: f.write(text.getvalue()), binary=False)


def _cell(value):
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return value


def save_png_grid(images: torch.Tensor, path, ncol: int = 10) -> Path:
    """A PNG grid of images in [0, 1], grey (N, H, W) or colour (N, H, W, C), one pixel apart.

    Parameters
    ----------
    images : torch.Tensor of shape (N, H, W) or (N, H, W, C)
    path : Path
    ncol : int
        Images per row.

    Returns
    -------
    Path
    """
    from PIL import Image  # only when a grid is drawn

    x = images.detach().cpu().clamp(0, 1).numpy()
    n, h, w = x.shape[:3]
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    grid = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, *x.shape[3:]), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = x[i]
    if grid.ndim == 3 and grid.shape[2] == 1:
        grid = grid[..., 0]
    image = Image.fromarray((grid * 255).round().astype(np.uint8))
    return atomic_write(path, lambda f: image.save(f, format="PNG"), binary=True)
