"""Run folders for the VAE command line: the config, the trained model, its figures.

A run folder holds ``config.json`` (data set, model -- ``"vae"``, ``"cvae"`` or ``"m2"`` --,
architecture and every option that defines the run), ``checkpoint.pt`` and
``history.json``/``.csv`` (written by :func:`pyro_vae.infer.training.loop.train`), ``figures/`` and,
after ``pyro-vae evaluate`` / ``diagnose``, their reports. This module and :mod:`pyro_vae.cli`
are the only library code that knows both the data sets and the models; ``infer`` and
``diagnostics`` stay generic.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from pyro_vae.data import DatasetSplits, load_dataset
from pyro_vae.infer.pair.params import collect_params, restore_params
from pyro_vae.infer.training.checkpoint import load_checkpoint
from pyro_vae.infer.training.run_state import CHECKPOINT_NAME
from pyro_vae.models.conditional import CVAE
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE

__all__ = [
    "CONFIG_NAME",
    "MODELS",
    "RUN_FILES",
    "Run",
    "check_writable",
    "conditional_figures",
    "evaluation_data",
    "evaluation_labels",
    "load_run",
    "read_config",
    "run_data",
    "test_images",
    "training_figures",
    "write_text_atomic",
]

CONFIG_NAME = "config.json"
# what a training run leaves, and the reports that describe it: replaced together by --overwrite
RUN_FILES = (
    CONFIG_NAME,
    CHECKPOINT_NAME,
    "history.json",
    "history.csv",
    "evaluation.json",
    "diagnostics.json",
)
# config["model"] -> the class that config["vae"] (its keyword arguments) rebuilds
MODELS = {"vae": VAE, "cvae": CVAE, "m2": M2}


@dataclass
class Run:
    """A trained run folder, rebuilt: its config, the model with trained weights, data, history.

    ``vae`` is the trained model, a :class:`VAE`, :class:`CVAE` or :class:`M2` as ``kind``
    ("vae", "cvae", "m2") says.
    """

    run_dir: Path
    config: dict
    vae: VAE | CVAE | M2
    data: DatasetSplits
    history: list[dict]
    kind: str = "vae"

    @property
    def conditional(self) -> bool:
        """Whether the pair is called with labels, ``f(x, y)`` (the CVAE)."""
        return self.kind == "cvae"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    A full disk or a crash leaves the previous file intact.

    Parameters
    ----------
    path : Path
        Destination; its folder must exist.
    text : str
        The new content.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OSError
        One line naming ``path``; the previous file is unchanged.
    """
    path = Path(path)
    try:
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=f".{path.name}.", delete=False
        ) as f:
            tmp = Path(f.name)
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        if "tmp" in locals():
            tmp.unlink(missing_ok=True)
        raise OSError(
            f"could not write {path}: {err.strerror or err}; the previous file is unchanged"
        ) from None
    return path


def check_writable(folder: Path) -> None:
    """Refuse, before any work is done, a folder that cannot be created or written to.

    Parameters
    ----------
    folder : Path
        A folder that exists or will be created (with its parents).

    Raises
    ------
    OSError
        When ``folder`` or one of its ancestors is a file, or the nearest existing ancestor is
        not writable; the message names the path.
    """
    folder = Path(folder)
    for ancestor in [folder, *folder.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise NotADirectoryError(f"{ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise PermissionError(f"cannot write to {ancestor}: permission denied")
            return


def read_config(run_dir: Path) -> dict:
    """The ``config.json`` of a run folder.

    Raises
    ------
    FileNotFoundError
        No ``config.json``: not a run folder.
    ValueError
        The file is not a JSON object with a dataset and a VAE; the message names the file.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder: no {CONFIG_NAME} (see pyro-vae train)"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); it is not a pyro-vae run config"
        ) from None
    missing = [
        key
        for key in ("dataset", "seed", "vae")
        if not isinstance(config, dict) or key not in config
    ]
    if missing:
        raise ValueError(f"{path} is not a pyro-vae run config: it lacks {', '.join(missing)}")
    return config


def run_data(config: dict) -> DatasetSplits:
    """The data a run was trained on, split the way it was (train / validation / test)."""
    return load_dataset(
        config["dataset"],
        root=config.get("root"),
        binarize=config.get("binarize"),
        seed=config["seed"],
        val_fraction=config.get("val_fraction", 0.0),  # runs written before the split had none
    )


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the data and the trained VAE of a ``pyro-vae train`` run folder.

    Parameters
    ----------
    run_dir : str or Path
        The folder given to ``pyro-vae train --out``.
    device : str or torch.device
        Where the VAE is put.

    Returns
    -------
    Run
        With the VAE in eval mode and its weights from ``checkpoint.pt``.

    Raises
    ------
    FileNotFoundError, ValueError, pyro_vae.infer.training.checkpoint.CheckpointError
        Not a run folder, an invalid config, or a missing, corrupted or foreign checkpoint.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    data = run_data(config)
    kind = config.get("model", "vae")  # runs written before the CVAE and M2 are VAEs
    if kind not in MODELS:
        raise ValueError(f"{run_dir / CONFIG_NAME} names an unknown model {kind!r}")
    vae = MODELS[kind](**config["vae"])
    # the parameters are found by running the pair (public Pyro API), then overwritten by name
    pyro.clear_param_store()
    labels = (data.test.y[:2],) if kind == "cvae" else ()
    params = collect_params(vae.model, vae.guide, data.test.x[:2], *labels)
    try:
        restore_params(params, state["params"])
    except ValueError as err:
        raise ValueError(
            f"{run_dir / CHECKPOINT_NAME} does not match {run_dir / CONFIG_NAME}: {err}"
        ) from None
    vae.to(device).eval()
    return Run(run_dir, config, vae, data, state["history"], kind)


def test_images(data: DatasetSplits, num_points: int | None = None, seed: int = 0) -> torch.Tensor:
    """The first ``num_points`` test images, as every final report scores them.

    Data binarized "dynamically" in training are judged on one fixed, seeded binarization of
    the test set, so the numbers are repeatable and every estimator sees the same binary data.

    Parameters
    ----------
    data : DatasetSplits
        The run's data.
    num_points : int, optional
        How many test images (default all).
    seed : int
        Seeds the fixed binarization of "dynamic" data.

    Returns
    -------
    torch.Tensor of shape (num_points, D)
    """
    x = data.test.x[:num_points]
    if data.test.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x


def evaluation_data(run: Run, num_points: int | None = None, seed: int = 0) -> torch.Tensor:
    """:func:`test_images` of a loaded run: what ``evaluate``/``diagnose`` score.

    Returns
    -------
    torch.Tensor of shape (num_points, D)
    """
    return test_images(run.data, num_points, seed)


def evaluation_labels(run: Run, num_points: int | None = None) -> torch.Tensor:
    """The labels of :func:`evaluation_data`: the first ``num_points`` test labels.

    Returns
    -------
    torch.Tensor of shape (num_points,)
    """
    return run.data.test.y[:num_points]


@torch.no_grad()
def training_figures(vae: VAE, data: DatasetSplits, history: list[dict], out: Path) -> list[Path]:
    """ELBO curves, test reconstructions, prior samples; the latent map and manifold when M = 2.

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
        paths.append(plots.save_manifold(vae.decode, shape, out / "manifold.png", device=device))
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
