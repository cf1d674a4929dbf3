"""ArviZ export, summaries and plots of per-datapoint latent posteriors.

This is the ONLY module of pyro_vae that imports arviz, so an arviz upgrade touches one file.
It sticks to calls that exist in both the 0.x and the 1.x lines (``from_dict``, ``summary``,
``plot_forest``, ``plot_pair``) and guards their differing signatures with ``_ARVIZ_1`` (the
1.x branches follow the 1.x documentation; only 0.x is tested here). PSIS k-hat is not here:
its one implementation is :func:`pyro_vae.infer.evidence.psis.pareto_khat`.

Draws come in the layout of :mod:`pyro_vae.diagnostics.posterior`:
``{site: tensor (chains, draws, N, *event_shape)}``.

Figures are drawn on axes of a :class:`matplotlib.figure.Figure` made here and passed to arviz
as ``ax=``, so pyplot's backend and its list of open figures are never touched (see
:mod:`pyro_vae.diagnostics.plots`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pyro_vae.diagnostics.plots import save_figure, to_numpy

__all__ = ["to_inference_data", "summary", "save_forest", "save_pair", "rank_ecdf_band"]

_ARVIZ_1 = int(az.__version__.split(".")[0]) >= 1


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
    """Per-datapoint posterior draws as an ``arviz.InferenceData`` (posterior group).

    Dimensions are ("chain", "draw", "datapoint", "<site>_dim"); coordinates are the datapoint
    indices and the latent names (0, 1, ... by default, so summaries label rows
    "z[datapoint, j]"). Event shapes of rank > 1 get dims "<site>_dim_k" with integer
    coordinates. Values keep their dtype.

    Parameters
    ----------
    draws : dict of str to torch.Tensor of shape ``(chains, draws, N, *event_shape)``
        As returned by :func:`pyro_vae.diagnostics.posterior.guide_draws` or
        :func:`pyro_vae.diagnostics.posterior.nuts_reference`; one common N.
    datapoint_index : sequence of int of length N, optional
        Datapoint coordinates, e.g. the rows of the data set the N datapoints came from;
        default 0, ..., N-1.
    latent_names : sequence of str, or dict of str to sequence of str, optional
        Names of the entries of a site with event shape (D,): a list for a single-site
        ``draws``, else ``{site: names}``.

    Returns
    -------
    arviz.InferenceData
        With one posterior variable per site.

    Raises
    ------
    ValueError
        If ``draws`` is empty, its sites do not share one N in the (chains, draws, N, ...)
        layout, or ``datapoint_index`` / ``latent_names`` have the wrong length.
    """
    if not draws:
        raise ValueError("draws is empty")
    arrays = {site: to_numpy(value) for site, value in draws.items()}
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

    R-hat and the bulk and tail effective sample sizes are the rank-normalized ones of
    Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), Bayesian Analysis 16(2).

    Parameters
    ----------
    idata : arviz.InferenceData
        From :func:`to_inference_data`.
    var_names : sequence of str, optional
        Sites to summarize; default all.
    hdi_prob : float, default 0.94
        Probability mass of the highest-density interval, in (0, 1).
    coords : dict, optional
        Coordinates to select, e.g. ``{"datapoint": [0, 1]}``.

    Returns
    -------
    pandas.DataFrame
        One row per scalar latent, with columns ``mean``, ``sd``, ``hdi_{lo}%``, ``hdi_{hi}%``
        (``hdi_3%`` / ``hdi_97%`` for the default 94% HDI), ``mcse_mean``, ``mcse_sd``,
        ``ess_bulk``, ``ess_tail`` and ``r_hat``.

    Raises
    ------
    ValueError
        If ``hdi_prob`` is not in (0, 1).
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


def _num_scalars(idata, var_names, coords) -> int:
    """Number of scalar variables (rows of a forest plot) after selecting ``coords``."""
    posterior = idata.posterior
    total = 0
    for name in var_names if var_names is not None else list(posterior.data_vars):
        var = posterior[name]
        var = var.sel({dim: value for dim, value in coords.items() if dim in var.dims})
        total += int(np.prod([var.sizes[d] for d in var.dims if d not in ("chain", "draw")]))
    return total


def _arviz_plots_save(plot, idatas, path, **kwargs) -> Path:
    """arviz 1.x: draw with arviz-plots and save the returned ``PlotCollection``."""
    # arviz-plots makes its figures through pyplot and takes no axes; close only the figures
    # it opened, leaving the backend and the caller's figures alone
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(dict(idatas), **kwargs).savefig(path)
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
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

    Parameters
    ----------
    idatas : dict of str to arviz.InferenceData
        A label ("guide", "NUTS") for each posterior, from :func:`to_inference_data`.
    path : str or Path
        PNG file to write; parent folders are created.
    var_names : sequence of str, optional
        Sites to draw; default all.
    coords : dict, optional
        Coordinates to select; default the first ``max_datapoints`` datapoints.
    hdi_prob : float, default 0.94
        Probability mass of the drawn highest-density intervals.
    max_datapoints : int, default 4
        Datapoints drawn when ``coords`` does not choose them.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``idatas`` is empty.
    """
    if not idatas:
        raise ValueError("idatas is empty")
    coords = _default_coords(next(iter(idatas.values())), coords, max_datapoints)
    var_names = list(var_names) if var_names is not None else None
    if _ARVIZ_1:  # arviz-plots returns a PlotCollection
        kwargs = dict(var_names=var_names, coords=coords, ci_prob=hdi_prob)
        return _arviz_plots_save(az.plot_forest, idatas, path, **kwargs)
    rows = _num_scalars(next(iter(idatas.values())), var_names, coords) * len(idatas)
    fig = Figure(figsize=(6.0, 1.0 + 0.25 * rows))
    az.plot_forest(
        list(idatas.values()),
        model_names=list(idatas),
        var_names=var_names,
        coords=coords,
        combined=True,
        hdi_prob=hdi_prob,
        ax=fig.subplots(),
    )
    return save_figure(fig, path, tight=True)


def save_pair(
    idatas: Mapping[str, object],
    path,
    var_names: Sequence[str] | None = None,
    coords=None,
    max_dims: int = 4,
) -> Path:
    """Pair (scatter) plot of the latents of one datapoint, the posteriors overlaid in colour.

    Marginal densities on the diagonal, scatter plots of every pair of scalar latents below it.

    Parameters
    ----------
    idatas : dict of str to arviz.InferenceData
        A label ("guide", "NUTS") for each posterior, from :func:`to_inference_data`.
    path : str or Path
        PNG file to write; parent folders are created.
    var_names : sequence of str, optional
        Sites to draw; default all.
    coords : dict, optional
        Coordinates to select; default the first datapoint and its first ``max_dims``
        latent dimensions.
    max_dims : int, default 4
        Latent dimensions drawn when ``coords`` does not choose them.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``idatas`` is empty or the selection has fewer than two scalar latents.
    """
    if not idatas:
        raise ValueError("idatas is empty")
    coords = _default_coords(next(iter(idatas.values())), coords, 1, max_dims)
    var_names = list(var_names) if var_names is not None else None
    if _ARVIZ_1:
        kwargs = dict(var_names=var_names, coords=coords)
        return _arviz_plots_save(az.plot_pair, idatas, path, **kwargs)
    num = _num_scalars(next(iter(idatas.values())), var_names, coords)
    if num < 2:
        raise ValueError(f"a pair plot needs at least 2 scalar latents, the selection has {num}")
    fig = Figure(figsize=(max(5.0, 2.2 * num), max(5.0, 2.2 * num)))
    ax = fig.subplots(num, num, sharex="col", squeeze=False)
    for j in range(num):  # scatter panels of one row share the y variable
        for i in range(1, j):
            ax[j, i].sharey(ax[j, 0])
    if num == 2:  # the rotated marginal of z_2 sits right of the scatter plot
        ax[1, 1].sharey(ax[1, 0])
    handles = []
    for k, (name, idata) in enumerate(idatas.items()):
        color = f"C{k}"
        az.plot_pair(
            idata,
            var_names=var_names,
            coords=coords,
            kind="scatter",
            marginals=True,
            ax=ax,
            scatter_kwargs={"color": color, "alpha": 0.3},
            marginal_kwargs={"color": color},
        )
        handles.append(Line2D([], [], color=color, marker="o", linestyle="", label=name))
    fig.legend(handles=handles, loc="upper right")
    return save_figure(fig, path, tight=True)


def rank_ecdf_band(num_ranks: int, num_draws: int, prob: float = 0.95):
    """Simultaneous ``prob`` band of the ECDF of N uniform ranks on {0, ..., L}, minus uniform.

    The band of Säilynoja, Bürkner & Vehtari (2022), computed by ArviZ's
    ``ecdf_confidence_band(method="optimized")`` (what ``plot_ecdf(..., difference=True,
    confidence_bands=True)`` draws). At the rank values r = 0, ..., L - 1 the count of ranks
    <= r of a discrete uniform is distributed as that of a continuous uniform sample at
    (r + 1) / (L + 1), so the continuous band evaluated there is exact.

    Parameters
    ----------
    num_ranks : int
        N, ranks per dimension.
    num_draws : int
        L, so ranks take the L + 1 values 0..L.
    prob : float, default 0.95
        Probability that a uniform ECDF stays inside the whole band.

    Returns
    -------
    fractions, lower, upper : numpy.ndarray of shape (L,)
        (r + 1) / (L + 1), and the band's edges minus that uniform CDF.
    """
    # imported here: the 0.x location (the only line tested); 1.x moved the band elsewhere
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    fractions = np.arange(1, num_draws + 1) / (num_draws + 1)
    lower, upper = ecdf_confidence_band(
        num_ranks, np.arange(num_draws), fractions, prob=prob, method="optimized"
    )
    return fractions, lower - fractions, upper - fractions
