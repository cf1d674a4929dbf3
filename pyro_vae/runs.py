"""Run folders for the VAE command line: the config, the trained model, its figures.

A run folder holds ``config.json`` (data set and architecture), ``checkpoint.pt`` and
``history.json``/``.csv`` (written by :func:`pyro_vae.infer.train.train`) and ``figures/``.
This module and :mod:`pyro_vae.cli` are the only library code that knows both the data sets and
the VAE; ``infer`` and ``diagnostics`` stay generic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.data import DatasetSplits, load_dataset
from pyro_vae.diagnostics import plots
from pyro_vae.infer.checkpoint import load_checkpoint
from pyro_vae.infer.train import CHECKPOINT_NAME
from pyro_vae.models.vae import VAE

__all__ = ["Run", "evaluation_data", "load_run", "save_config", "training_figures"]

CONFIG_NAME = "config.json"


@dataclass
class Run:
    run_dir: Path
    config: dict
    vae: VAE
    data: DatasetSplits
    history: list[dict]


def save_config(run_dir: Path, config: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_NAME
    path.write_text(json.dumps(config, indent=1))
    return path


def _vae_state_dict(params: dict) -> dict:
    """Param-store names ``"encoder$$$net.0.weight"`` -> module keys ``"encoder.net.0.weight"``."""
    return {name.replace("$$$", "."): value for name, value in params.items()}


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the data and the trained VAE of a ``pyro-vae train`` run folder."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder: no {CONFIG_NAME} (see pyro-vae train)"
        )
    config = json.loads(config_path.read_text())
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    vae = VAE(**config["vae"])
    vae.load_state_dict(_vae_state_dict(state["params"]))
    vae.to(device).eval()
    data = load_dataset(
        config["dataset"],
        root=config.get("root"),
        binarize=config.get("binarize"),
        seed=config["seed"],
    )
    return Run(run_dir, config, vae, data, state["history"])


def evaluation_data(run: Run, num_points: int | None = None, seed: int = 0) -> torch.Tensor:
    """The first ``num_points`` test images as scored by ``evaluate``/``diagnose``.

    A run trained on dynamically binarized data is judged on one fixed, seeded binarization of
    the test set, so the numbers are repeatable and every estimator sees the same binary data.
    """
    x = run.data.test.x[:num_points]
    if run.data.test.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x


@torch.no_grad()
def training_figures(vae: VAE, data: DatasetSplits, history: list[dict], out: Path) -> list[Path]:
    """ELBO curves, test reconstructions, prior samples; the latent map and manifold when M = 2."""
    out.mkdir(parents=True, exist_ok=True)
    device = next(vae.parameters()).device
    shape = data.image_shape
    x = data.test.x[:16].to(device)
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
        loc, _ = vae.encode(data.test.x.to(device))
        paths.append(
            plots.save_latent_map(
                loc, data.test.y, out / "latent_map.png", title="test means E_q[z|x]"
            )
        )
        paths.append(plots.save_manifold(vae.decode, shape, out / "manifold.png", device=device))
    return paths
