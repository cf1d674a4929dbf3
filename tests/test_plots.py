"""Every plot function writes a readable, non-empty PNG with the expected geometry and closes it."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae.diagnostics import plots


def _read(path):
    """(width, height) and RGB pixels of a PNG, after checking it exists and is non-empty."""
    assert path.exists() and path.stat().st_size > 0, f"{path} missing or empty"
    with Image.open(path) as im:
        assert im.format == "PNG", f"{path} is {im.format}, not PNG"
        return im.size, np.asarray(im.convert("RGB"))


@pytest.fixture(autouse=True)
def no_open_figures():
    """Each function must close the figure it opened."""
    plt.close("all")
    yield
    assert plt.get_fignums() == [], f"figures left open: {plt.get_fignums()}"


def test_agg_backend():
    assert matplotlib.get_backend().lower() == "agg", matplotlib.get_backend()


@pytest.mark.parametrize("nrow", [None, 5], ids=["square", "nrow5"])
@pytest.mark.parametrize("flat", [True, False], ids=["flat", "2d"])
def test_image_grid_aspect_and_content(tmp_path, nrow, flat):
    n, (h, w) = 10, (3, 4)
    images = torch.rand(n, h * w) if flat else torch.rand(n, h, w)
    images[0] = 0.0  # first tile black
    path = plots.save_image_grid(images, (h, w), tmp_path / "sub" / "g.png", nrow=nrow)
    (width, height), px = _read(path)
    ncol = 4 if nrow is None else 5  # ceil(sqrt(10)) = 4 images per row by default
    rows = -(-n // ncol)
    expected = (ncol * (w + 1) + 1) / (rows * (h + 1) + 1)  # tiles plus 1-pixel padding
    assert abs(width / height - expected) < 0.03 * expected, (width, height, expected)
    # the centre of the first (black) tile is black; the last padding row is white
    cy, cx = (
        int(height * (1 + h / 2) / (rows * (h + 1) + 1)),
        int(width * (1 + w / 2) / (ncol * (w + 1) + 1)),
    )
    assert px[cy, cx].max() < 30, f"pixel at first tile {px[cy, cx]}"
    assert px[-1].min() > 225, f"bottom padding row min {px[-1].min()}"


def test_image_grid_title_and_bad_shape(tmp_path):
    (width, height), _ = _read(
        plots.save_image_grid(torch.rand(4, 16), (4, 4), tmp_path / "t.png", title="x")
    )
    assert height > 0.5 * width, (width, height)  # room for the title on a 2x2 grid
    with pytest.raises(ValueError, match="image_shape"):
        plots.save_image_grid(torch.rand(4, 15), (4, 4), tmp_path / "bad.png")


def test_side_by_side(tmp_path):
    orig, rec = torch.rand(4, 12), torch.rand(4, 3, 4)
    (width, height), _ = _read(
        plots.save_side_by_side(orig, rec, (3, 4), tmp_path / "s.png", title="t")
    )
    # one row of 4 tiles (21 x 4 px) above one row: wider than tall
    assert 1.2 < width / height < 3.5, (width, height)
    with pytest.raises(ValueError, match="reconstructions"):
        plots.save_side_by_side(orig, rec[:3], (3, 4), tmp_path / "bad.png")


def test_history_plot(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 200.0, "val_loss": None},
        {"epoch": 2, "train_loss": 150.0, "val_loss": 160.0},
        {"epoch": 3, "train_loss": 120.0},
    ]
    (width, height), _ = _read(plots.save_history_plot(history, tmp_path / "h.png"))
    assert width > height, (width, height)
    with pytest.raises(ValueError, match="empty"):
        plots.save_history_plot([], tmp_path / "e.png")
    with pytest.raises(ValueError, match="train_loss"):
        plots.save_history_plot([{"epoch": 1}], tmp_path / "e.png")


@pytest.mark.parametrize(
    "labels",
    [torch.arange(30) % 3, np.random.default_rng(0).random(30), None],
    ids=["classes", "continuous", "none"],
)
def test_latent_map(tmp_path, labels):
    (width, height), _ = _read(
        plots.save_latent_map(torch.randn(30, 2), labels, tmp_path / "l.png", title="z")
    )
    assert 0.8 < width / height < 1.5, (width, height)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plots.save_latent_map(torch.randn(30, 3), None, tmp_path / "bad.png")


def test_manifold_grid_is_gaussian_icdf(tmp_path):
    """Codes are Normal(0,1).icdf(linspace(0.05, 0.95, n)) per axis; z_2 decreases down rows."""
    n, seen = 4, []

    def decode_fn(z):
        seen.append(z.clone())
        return torch.sigmoid(z[:, :1]).expand(-1, 12)  # brightness grows with z_1

    (width, height), _ = _read(plots.save_manifold(decode_fn, (3, 4), tmp_path / "m.png", n=n))
    z = seen[0]
    assert z.shape == (n * n, 2), z.shape
    grid = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n, dtype=z.dtype))
    assert torch.allclose(z[:n, 0], grid, atol=1e-6), z[:n, 0]  # first row: z_1 increasing
    assert torch.allclose(z[::n, 1], grid.flip(0), atol=1e-6), z[::n, 1]  # z_2 decreasing
    expected = (n * 5 + 1) / (n * 4 + 1)
    assert abs(width / height - expected) < 0.03 * expected, (width, height, expected)


def test_khat_plot(tmp_path):
    (width, height), _ = _read(
        plots.save_khat_plot(torch.tensor([0.1, 0.6, 0.9, 0.3]), tmp_path / "k.png")
    )
    assert width > height, (width, height)


def test_elbo_vs_logpx(tmp_path):
    log_px = -torch.rand(20) * 10 - 90
    (width, height), _ = _read(
        plots.save_elbo_vs_logpx(log_px - torch.rand(20), log_px, tmp_path / "e.png")
    )
    assert abs(width / height - 1.0) < 0.05, (width, height)
    with pytest.raises(ValueError, match="equal length"):
        plots.save_elbo_vs_logpx(log_px[:3], log_px, tmp_path / "bad.png")
