"""ArviZ export, summaries and plots of per-datapoint latent posteriors.

This is the ONLY module of pyro_vae that imports arviz, so an arviz upgrade touches one file.
It sticks to calls that exist in both the 0.x and the 1.x lines (``from_dict``, ``summary``,
``plot_forest``, ``plot_pair``, ``psislw``) and guards their differing signatures with
``_ARVIZ_1`` (the 1.x branches follow the 1.x documentation; only 0.x is tested here).

Draws come in the layout of :mod:`pyro_vae.diagnostics.posterior`:
``{site: tensor (chains, draws, N, *event_shape)}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import torch

__all__ = ["to_inference_data", "summary", "save_forest", "save_pair", "psis_khat"]

_ARVIZ_1 = int(az.__version__.split(".")[0]) >= 1


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _site_dims(site: str, arr: np.ndarray, names) -> tuple[list[str], dict[str, list]]:
    """ArviZ dims and coords of one site of shape (chains, draws, N, *event_shape)."""
    event_shape = arr.shape[3:]
    if len(event_shape) == 0:
        return ["datapoint"], {}
    if len(event_shape) == 1:
        dim = f"{site}_dim"
        # integer coordinates by default, so ArviZ labels read "z[datapoint, j]"
        labels = list(names) if names is not None else list(range(arr.shape[3]))
        if len(labels) != arr.shape[3]:
            raise ValueError(f"{len(labels)} latent names for site {site!r} of size {arr.shape[3]}")
        return ["datapoint", dim], {dim: labels}
    dims = [f"{site}_dim_{k}" for k in range(len(event_shape))]
    return ["datapoint", *dims], {d: list(range(n)) for d, n in zip(dims, event_shape, strict=True)}


def to_inference_data(
    draws: Mapping[str, torch.Tensor],
    datapoint_index: Sequence[int] | None = None,
    latent_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
):
    """Draws ``{site: (chains, draws, N, *event_shape)}`` -> ``az.InferenceData`` (posterior group).

    Dimensions are ("chain", "draw", "datapoint", "<site>_dim"); coordinates are the datapoint
    indices (``datapoint_index``, default 0..N-1) and latent names (0, 1, ... by default, so
    summaries label rows "z[datapoint, j]"; ``latent_names`` is a list for a single-site dict,
    or ``{site: list}``).
    Event shapes of rank > 1 get dims "<site>_dim_k" with integer coordinates.
    """
    if not draws:
        raise ValueError("draws is empty")
    arrays = {site: _numpy(value) for site, value in draws.items()}
    sizes = {arr.shape[2] if arr.ndim >= 3 else None for arr in arrays.values()}
    if None in sizes or len(sizes) != 1:
        shapes = {site: arr.shape for site, arr in arrays.items()}
        raise ValueError(f"expected (chains, draws, N, ...) with one common N, got {shapes}")
    if latent_names is not None and not isinstance(latent_names, Mapping):
        if len(arrays) != 1:
            raise ValueError("pass latent_names as {site: names} when draws has several sites")
        latent_names = {next(iter(arrays)): latent_names}
    num_n = sizes.pop()
    index = list(range(num_n)) if datapoint_index is None else [int(i) for i in datapoint_index]
    if len(index) != num_n:
        raise ValueError(f"datapoint_index has {len(index)} entries for {num_n} datapoints")
    coords, dims = {"datapoint": index}, {}
    for site, arr in arrays.items():
        dims[site], site_coords = _site_dims(site, arr, (latent_names or {}).get(site))
        coords.update(site_coords)
    if _ARVIZ_1:
        return az.from_dict({"posterior": arrays}, coords=coords, dims=dims)
    return az.from_dict(posterior=arrays, coords=coords, dims=dims)


def summary(idata, var_names: Sequence[str] | None = None, hdi_prob: float = 0.94, coords=None):
    """``az.summary`` with fixed column names, unrounded.

    Returns a ``pandas.DataFrame``, one row per scalar latent, with columns ``mean``, ``sd``,
    ``hdi_{lo}%``, ``hdi_{hi}%`` (``hdi_3%``/``hdi_97%`` for the default 94% HDI), ``mcse_mean``,
    ``mcse_sd``, ``ess_bulk``, ``ess_tail`` and ``r_hat`` (Vehtari et al. 2021 rank-normalized).
    """
    if not 0.0 < hdi_prob < 1.0:
        raise ValueError(f"hdi_prob must lie in (0, 1), got {hdi_prob}")
    var_names = list(var_names) if var_names is not None else None
    lo, hi = f"hdi_{100 * (1 - hdi_prob) / 2:g}%", f"hdi_{100 * (1 + hdi_prob) / 2:g}%"
    if not _ARVIZ_1:
        return az.summary(
            idata, var_names=var_names, hdi_prob=hdi_prob, coords=coords, round_to="none"
        )
    table = az.summary(idata, var_names=var_names, coords=coords, ci_kind="hdi", ci_prob=hdi_prob)
    renames = {}
    for col in table.columns:
        if col.startswith("hdi") and col.endswith("_lb"):
            renames[col] = lo
        elif col.startswith("hdi") and col.endswith("_ub"):
            renames[col] = hi
    return pd.DataFrame(table).rename(columns=renames)


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (figures are only saved)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _default_coords(idata, coords, max_datapoints: int, max_dims: int | None = None) -> dict:
    """Restrict to the first datapoints (and latent dims) unless the caller chose coords."""
    coords = dict(coords or {})
    posterior = idata.posterior
    if "datapoint" not in coords:
        coords["datapoint"] = list(posterior["datapoint"].values[:max_datapoints])
    if max_dims is not None:
        for dim in posterior.dims:
            if dim.endswith("_dim") and dim not in coords:
                coords[dim] = list(posterior[dim].values[:max_dims])
    return coords


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def save_forest(
    idatas: Mapping[str, object],
    path,
    var_names: Sequence[str] | None = None,
    coords=None,
    hdi_prob: float = 0.94,
    max_datapoints: int = 4,
) -> Path:
    """Forest plot (posterior mean and HDI per latent) of several posteriors, e.g. guide vs NUTS.

    ``idatas`` maps a label ("guide", "NUTS") to an InferenceData from :func:`to_inference_data`.
    Without ``coords`` only the first ``max_datapoints`` datapoints are drawn. Returns ``path``.
    """
    if not idatas:
        raise ValueError("idatas is empty")
    plt = _pyplot()
    coords = _default_coords(next(iter(idatas.values())), coords, max_datapoints)
    var_names = list(var_names) if var_names is not None else None
    if _ARVIZ_1:  # arviz-plots returns a PlotCollection
        pc = az.plot_forest(dict(idatas), var_names=var_names, coords=coords, ci_prob=hdi_prob)
        pc.savefig(path)
        plt.close("all")
        return Path(path)
    axes = az.plot_forest(
        list(idatas.values()),
        model_names=list(idatas),
        var_names=var_names,
        coords=coords,
        combined=True,
        hdi_prob=hdi_prob,
    )
    return _save(np.ravel(axes)[0].figure, path)


def save_pair(
    idatas: Mapping[str, object],
    path,
    var_names: Sequence[str] | None = None,
    coords=None,
    max_dims: int = 4,
) -> Path:
    """Pair (scatter) plot of the latents of one datapoint, the posteriors overlaid in colour.

    Without ``coords`` the first datapoint and its first ``max_dims`` latent dimensions are
    drawn (a pair plot needs at least two scalar variables). Returns ``path``.
    """
    if not idatas:
        raise ValueError("idatas is empty")
    plt = _pyplot()
    coords = _default_coords(next(iter(idatas.values())), coords, 1, max_dims)
    var_names = list(var_names) if var_names is not None else None
    if _ARVIZ_1:
        pc = az.plot_pair(dict(idatas), var_names=var_names, coords=coords)
        pc.savefig(path)
        plt.close("all")
        return Path(path)
    ax, handles = None, []
    for i, (name, idata) in enumerate(idatas.items()):
        color = f"C{i}"
        ax = az.plot_pair(
            idata,
            var_names=var_names,
            coords=coords,
            kind="scatter",
            marginals=True,
            ax=ax,
            scatter_kwargs={"color": color, "alpha": 0.3},
            marginal_kwargs={"color": color},
        )
        handles.append(plt.Line2D([], [], color=color, marker="o", linestyle="", label=name))
    fig = np.ravel(ax)[0].figure
    fig.legend(handles=handles, loc="upper right")
    return _save(fig, path)


def psis_khat(log_weights) -> torch.Tensor:
    """Pareto k-hat of importance log weights (Vehtari et al. 2024, PSIS), via ``az.psislw``.

    ``log_weights``: (..., L) tensor or array, samples on the last axis. Returns a float64
    tensor of shape (...,): k-hat < 0.7 means the importance-sampling estimate is reliable.
    """
    lw = _numpy(log_weights).astype(np.float64)
    if lw.ndim < 1 or lw.shape[-1] < 2:
        raise ValueError(f"need at least 2 log weights on the last axis, got shape {lw.shape}")
    _, khat = az.psislw(lw, 1.0)
    return torch.as_tensor(np.asarray(khat, dtype=np.float64))
