"""The figures of a run folder: after training, evaluation and diagnosis.

matplotlib (and ArviZ) are imported only when a figure is drawn, so that the command line
starts fast.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pyro_vae.data import DatasetSplits
from pyro_vae.models.base import LatentGaussianModel
from pyro_vae.models.conditional import CVAE
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE
from pyro_vae.runs.models import model_kind

__all__ = [
    "MANIFOLD_PRIOR_DRAWS",
    "conditional_figures",
    "diagnosis_figures",
    "certification_figure",
    "evaluation_figures",
    "run_figures",
    "table_figures",
    "training_figures",
]

MANIFOLD_PRIOR_DRAWS = 10_000
"""Draws z ~ p(z) whose quantiles lay ``manifold.png``'s grid for a prior other than N(0, I)
(the standard error of a 5% quantile from 10,000 draws of N(0, 1) is
sqrt(0.05 * 0.95 / 10^4) / phi(1.645) = 0.02)."""


@torch.no_grad()
def training_figures(vae: VAE, data: DatasetSplits, history: list[dict], out: Path) -> list[Path]:
    """ELBO curves, test reconstructions, prior samples; the latent map and manifold when M = 2.

    The samples are decoded draws from the model's own prior (``vae.sample``); the manifold's
    grid lies on N(0, 1)'s quantiles, or on those of draws from a prior other than N(0, I).

    Parameters
    ----------
    vae : VAE
        The trained VAE.
    data : DatasetSplits
        Its data; the figures show test images.
    history : list of dict
        The training history (one record per epoch).
    out : Path
        The figures folder (created).

    Returns
    -------
    list of Path
        The files written.
    """
    from pyro_vae.diagnostics import plots  # matplotlib only when figures are drawn

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(vae.parameters()).device
    shape = data.image_shape
    x = data.test.x[:10].to(device)  # one row of originals above one of reconstructions
    paths = [
        plots.save_history_plot(history, out / "elbo_curves.png"),
        plots.save_side_by_side(
            x,
            vae.reconstruct(x),
            shape,
            out / "reconstructions.png",
            title="test digits (top) and reconstructions",
        ),
        plots.save_image_grid(
            vae.sample(64), shape, out / "samples.png", title="decoded draws z ~ p(z)"
        ),
    ]
    if vae.latent_dim == 2:
        codes = vae.code(data.test.x.to(device))
        title = "test flow codes z_K(mu(x))" if vae.flows else "test means E_q[z|x]"
        paths.append(plots.save_latent_map(codes, data.test.y, out / "latent_map.png", title=title))
        # a learned prior (VampPrior): the grid spans its own draws' quantiles, not N(0, 1)'s
        standard = type(vae).prior is LatentGaussianModel.prior
        draws = None if standard else vae.sample_prior(MANIFOLD_PRIOR_DRAWS)
        paths.append(
            plots.save_manifold(
                vae.decode, shape, out / "manifold.png", device=device, prior_draws=draws
            )
        )
    return paths


@torch.no_grad()
def conditional_figures(
    model: CVAE | M2, data: DatasetSplits, history: list[dict] | None, out: Path
) -> list[Path]:
    """ELBO curves, reconstructions, samples per class and analogies of a CVAE or M2.

    ``class_samples.png``: 10 draws z ~ p(z) decoded under every label, one row per class
    (the same 10 codes in every row). ``analogies.png``: the first 10 test images (left
    column), each encoded with its label, z = mu_phi(x, y), and decoded under every label
    0..C-1 (Kingma et al. 2014, fig. 1).

    Parameters
    ----------
    model : CVAE or M2
        The trained model.
    data : DatasetSplits
        Its data; the figures show test images.
    history : list of dict or None
        The training history (None: no ``elbo_curves.png``).
    out : Path
        The figures folder (created).

    Returns
    -------
    list of Path
        The files written.
    """
    from pyro_vae.diagnostics import plots  # matplotlib only when figures are drawn

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    shape, num_classes = data.image_shape, model.num_classes
    x, y = data.test.x[:10].to(device), data.test.y[:10].to(device)
    analogies = model.analogies(x, y)  # (10, C, D)
    rows = torch.cat([x[:, None, :], analogies], dim=1).reshape(-1, x.shape[1])
    curves = [plots.save_history_plot(history, out / "elbo_curves.png")] if history else []
    return [
        *curves,
        plots.save_side_by_side(
            x,
            model.reconstruct(x, y),
            shape,
            out / "reconstructions.png",
            title="test digits (top) and reconstructions given their labels",
        ),
        plots.save_image_grid(
            model.sample_per_class(10),
            shape,
            out / "class_samples.png",
            nrow=10,
            title=f"z ~ p(z) decoded under labels 0..{num_classes - 1} (one row per class)",
        ),
        plots.save_image_grid(
            rows,
            shape,
            out / "analogies.png",
            nrow=num_classes + 1,
            title=f"test image (left), its code decoded under labels 0..{num_classes - 1}",
        ),
    ]


def run_figures(
    model: VAE | CVAE | M2, kind: str, data: DatasetSplits, history: list[dict], out: Path
) -> list[Path]:
    """The figures of a trained run: :func:`conditional_figures` for a model that takes labels
    (:attr:`~pyro_vae.runs.models.ModelKind.takes_labels`), else :func:`training_figures`.

    Parameters
    ----------
    model : VAE, CVAE, M2 or another registered model
        The trained model.
    kind : str
        Which: a name in :data:`~pyro_vae.runs.models.MODEL_REGISTRY`.
    data : DatasetSplits
        Its data.
    history : list of dict
        The training history.
    out : Path
        The figures folder (created).

    Returns
    -------
    list of Path
        The files written.
    """
    if len(data.image_shape) != 2:  # a table (or colour images): no grey image grids
        return table_figures(model, kind, data, history, out)
    if model_kind(kind).takes_labels:
        return conditional_figures(model, data, history, out)
    return training_figures(model, data, history, out)


@torch.no_grad()
def table_figures(model, kind: str, data: DatasetSplits, history, out: Path) -> list[Path]:
    """ELBO curves, the latent map and observed-vs-reconstructed values of data not images.

    ``latent_map.png``: the test points' codes, the first two latent dimensions (their first
    two principal components when M > 2), coloured by label when the data have labels;
    ``reconstructions.png``: each feature's observed value against its reconstruction
    E[x | z = code], on the test points (the first 12 features).

    Parameters
    ----------
    model : VAE, CVAE, M2 or another registered model
    kind : str
        A name in :data:`~pyro_vae.runs.models.MODEL_REGISTRY`: a model that takes labels
        codes the points given theirs.
    data : DatasetSplits
    history : list of dict or None
    out : Path
        The figures folder (created).

    Returns
    -------
    list of Path
    """
    from pyro_vae.diagnostics import plots, table_plots  # matplotlib only when drawn

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    x, y = data.test.x[:2000].to(device), data.test.y[:2000].to(device)
    labels = (y,) if model_kind(kind).takes_labels else ()
    codes = model.code(x, *labels)
    plane = table_plots.principal_components(codes)
    what = "first two principal components of" if codes.shape[1] > 2 else ""
    labelled = data.source is None or data.source.get("labelled")
    paths = [plots.save_history_plot(history, out / "elbo_curves.png")] if history else []
    paths.append(
        plots.save_latent_map(
            plane,
            y if labelled else None,
            out / "latent_map.png",
            title=f"test points: {what} the codes".replace(":  ", ": "),
        )
    )
    paths.append(
        table_plots.save_reconstruction_scatter(
            x,
            model.reconstruct(x, *labels),
            out / "reconstructions.png",
            title="test points: observed against reconstructed, per feature",
        )
    )
    return paths


def evaluation_figures(evaluation, out: Path) -> list[Path]:
    """``khat.png``, ``elbo_vs_logpx.png`` and, where AIS ran, ``ais_vs_is.png``.

    Parameters
    ----------
    evaluation : pyro_vae.runs.reports.Evaluation
        Per test datapoint: k-hat, the ELBO and log p(x) of the same importance samples, and
        the AIS values of the points it scored.
    out : Path
        The figures folder (it must exist).

    Returns
    -------
    list of Path
        The files written.
    """
    from pyro_vae.diagnostics import plots  # matplotlib only when figures are drawn

    out, e = Path(out), evaluation
    written = [
        plots.save_khat_plot(e.khat, out / "khat.png"),
        plots.save_elbo_vs_logpx(e.elbo, e.log_px, out / "elbo_vs_logpx.png"),
    ]
    if e.ais_index is not None and len(e.ais_index):
        difference = e.ais_log_px - e.log_px[e.ais_index]
        written.append(plots.save_ais_vs_is(e.khat[e.ais_index], difference, out / "ais_vs_is.png"))
    return written


def certification_figure(report: dict, out: Path) -> Path:
    """``bdmc.png``: the mean BDMC bounds of ``certify``'s report against T.

    Parameters
    ----------
    report : dict
        :func:`pyro_vae.runs.certified.certify_run`'s report.
    out : Path
        The figures folder (it must exist).

    Returns
    -------
    Path
        The file written.
    """
    from pyro_vae.diagnostics import plots  # matplotlib only when figures are drawn

    runs = report["runs"]
    return plots.save_bdmc_sandwich(
        [r["num_steps"] for r in runs],
        [r["lower"][0] for r in runs],
        [r["upper"][0] for r in runs],
        Path(out) / "bdmc.png",
    )


def diagnosis_figures(
    idatas: dict,
    kl: torch.Tensor | None,
    variances: torch.Tensor,
    out: Path,
) -> list[Path]:
    """Forest and pair plots of the guide against NUTS; the KL per latent dimension.

    Parameters
    ----------
    idatas : dict
        ``{"guide": InferenceData, "NUTS": InferenceData}``.
    kl : torch.Tensor of shape (M,) or None
        KL per latent dimension (None for a flow guide or a prior that does not factorize: no
        ``kl_per_dimension.png``).
    variances : torch.Tensor of shape (M,)
        Activity Cov_x E_q[z_j] per dimension.
    out : Path
        The figures folder (created).

    Returns
    -------
    list of Path
        The files written.
    """
    from pyro_vae.diagnostics import arviz_io, plots  # ArviZ only when figures are drawn

    out = Path(out)
    paths = [
        arviz_io.save_forest(idatas, out / "forest_guide_vs_nuts.png"),
        arviz_io.save_pair(idatas, out / "pair_guide_vs_nuts.png"),
    ]
    if kl is not None:
        paths.append(
            plots.save_kl_per_dimension(kl, out / "kl_per_dimension.png", variances=variances)
        )
    return paths
