"""Every plot function writes a valid PNG with the expected geometry, without touching pyplot."""

import math
import os
import subprocess
import sys
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae.diagnostics import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAB_BLUE, LIGHT_GREY = (31, 119, 180), (211, 211, 211)  # matplotlib's "tab:blue", "lightgrey"


def _read(path):
    """(width, height) and RGB pixels of a PNG, after checking it exists and is a valid PNG."""
    assert path.exists() and path.stat().st_size > 0, f"{path} missing or empty"
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} does not start like a PNG"
    with Image.open(path) as im:
        im.verify()  # checks the chunk checksums
    with Image.open(path) as im:
        assert im.format == "PNG", f"{path} is {im.format}, not PNG"
        return im.size, np.asarray(im.convert("RGB"))


def _figure_pixels(width_in, height_in):
    """PNG size of a figure of that many inches at the module's dpi."""
    return width_in * plots._DPI, height_in * plots._DPI


@pytest.fixture(autouse=True)
def pyplot_untouched():
    """No function may create, close or switch to a pyplot figure: the user's stay as they are."""
    sentinel = plt.figure()
    before = plt.get_fignums()
    yield
    try:
        assert plt.get_fignums() == before, f"pyplot figures {before} -> {plt.get_fignums()}"
        assert plt.gcf() is sentinel, "the current pyplot figure changed"
    finally:
        plt.close(sentinel)


@pytest.mark.slow
def test_import_and_saving_switch_no_backend(tmp_path):
    """Under a non-Agg backend, importing and plotting leave matplotlib's backend as it was."""
    script = textwrap.dedent(
        f"""
        import matplotlib
        b = matplotlib.get_backend()
        import pyro_vae.cli, pyro_vae.diagnostics.plots, pyro_vae.diagnostics.arviz_io
        assert matplotlib.get_backend() == b, (b, matplotlib.get_backend())
        import torch
        from pyro_vae.diagnostics import arviz_io, plots
        plots.save_image_grid(torch.rand(4, 6), (2, 3), {str(tmp_path / "g.png")!r})
        draws = {{"z": torch.randn(2, 20, 1, 2)}}
        idatas = {{"a": arviz_io.to_inference_data(draws)}}
        arviz_io.save_pair(idatas, {str(tmp_path / "p.png")!r})
        arviz_io.save_forest(idatas, {str(tmp_path / "f.png")!r})
        import matplotlib.pyplot as plt
        assert matplotlib.get_backend() == b, (b, matplotlib.get_backend())
        assert plt.get_fignums() == [], plt.get_fignums()
        print(b)
        """
    )
    env = dict(os.environ, MPLBACKEND="svg", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "svg", done.stdout  # the backend really was not Agg
    for name in ("g.png", "p.png", "f.png"):
        _read(tmp_path / name)


@pytest.mark.parametrize("nrow", [None, 5, 12], ids=["square", "nrow5", "nrow-above-n"])
@pytest.mark.parametrize("flat", [True, False], ids=["flat", "2d"])
def test_tile_images_geometry_and_content(nrow, flat):
    n, (h, w) = 10, (3, 4)
    images = torch.rand(n, h * w) if flat else torch.rand(n, h, w)
    grid = plots.tile_images(images, (h, w), nrow=nrow)
    # ceil(sqrt(10)) = 4 images per row by default; nrow = 12 > n leaves one row of 10
    ncol = {None: 4, 5: 5, 12: 10}[nrow]
    rows = -(-n // ncol)
    assert grid.shape == (rows * (h + 1) + 1, ncol * (w + 1) + 1), grid.shape
    tiles = images.reshape(n, h, w).double()
    for i in range(rows * ncol):
        r, c = divmod(i, ncol)
        cell = grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w]
        expected = tiles[i] if i < n else torch.ones(h, w)  # unused cells are white
        assert torch.equal(cell, expected), f"tile {i} (row {r}, column {c}) differs"
    padding = torch.ones_like(grid, dtype=torch.bool)
    padding[1:, 1:].view(rows, h + 1, ncol, w + 1)[:, :h, :, :w] = False
    assert (grid[padding] == 1.0).all(), "padding is not white"


def test_tile_images_rejects_bad_input():
    with pytest.raises(ValueError, match="image_shape"):
        plots.tile_images(torch.rand(4, 15), (4, 4))
    with pytest.raises(ValueError, match="nrow"):
        plots.tile_images(torch.rand(4, 16), (4, 4), nrow=0)
    with pytest.raises(ValueError, match="n > 0"):
        plots.tile_images(torch.rand(0, 16), (4, 4))


@pytest.mark.parametrize("nrow", [None, 5], ids=["square", "nrow5"])
def test_image_grid_png_has_the_grid_geometry(tmp_path, nrow):
    n, (h, w) = 10, (3, 4)
    images = torch.rand(n, h * w)
    images[0] = 0.0  # first tile black
    path = plots.save_image_grid(images, (h, w), tmp_path / "sub" / "g.png", nrow=nrow)
    assert path == tmp_path / "sub" / "g.png"
    (width, height), px = _read(path)
    grid_h, grid_w = plots.tile_images(images, (h, w), nrow=nrow).shape
    inch_per_px = plots._INCH_PER_IMAGE / w
    want_w, want_h = _figure_pixels(grid_w * inch_per_px, grid_h * inch_per_px)
    # matplotlib rounds figsize x dpi to whole pixels: at most 1 pixel off
    assert abs(width - want_w) <= 1 and abs(height - want_h) <= 1, (width, height, want_w, want_h)
    # the centre of the first (black) tile is black; the last padding row is white. 30 and 225
    # leave room for anti-aliasing at tile edges (measured: exactly 0 and 255)
    cy, cx = int(height * (1 + h / 2) / grid_h), int(width * (1 + w / 2) / grid_w)
    assert px[cy, cx].max() < 30, f"pixel at first tile {px[cy, cx]}"
    assert px[-1].min() > 225, f"bottom padding row min {px[-1].min()}"


def test_image_grid_title_adds_height(tmp_path):
    plain = _read(plots.save_image_grid(torch.rand(4, 16), (4, 4), tmp_path / "p.png"))[0]
    titled = _read(plots.save_image_grid(torch.rand(4, 16), (4, 4), tmp_path / "t.png", title="x"))
    # the title gets 0.4 inch above the grid, same width (1 pixel of rounding either way)
    assert titled[0][0] == plain[0], (titled[0], plain)
    assert abs(titled[0][1] - plain[1] - 0.4 * plots._DPI) <= 1, (titled[0], plain)


def test_side_by_side(tmp_path):
    orig, rec = torch.rand(4, 12), torch.rand(4, 3, 4)
    (width, height), _ = _read(
        plots.save_side_by_side(orig, rec, (3, 4), tmp_path / "s.png", title="t")
    )
    # two grids of 1 x 4 tiles, each 21 x 5 px at 0.15 inch per px, + 0.3 inch for the row
    # labels and 0.4 inch for the title: 3.45 x 1.9 inches (1 pixel of rounding either way)
    assert abs(width - 345) <= 1 and abs(height - 190) <= 1, (width, height)
    with pytest.raises(ValueError, match="reconstructions"):
        plots.save_side_by_side(orig, rec[:3], (3, 4), tmp_path / "bad.png")


def test_history_plot(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 200.0, "val_loss": None},
        {"epoch": 2, "train_loss": 150.0, "val_loss": 160.0},
        {"epoch": 3, "train_loss": 120.0},
    ]
    (width, height), _ = _read(plots.save_history_plot(history, tmp_path / "h.png"))
    assert (width, height) == _figure_pixels(5, 3.5), (width, height)  # figsize (5, 3.5)
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
    (width, height), px = _read(
        plots.save_latent_map(torch.randn(30, 2), labels, tmp_path / "l.png", title="z")
    )
    assert (width, height) == _figure_pixels(5.5, 5), (width, height)  # figsize (5.5, 5)
    assert (px.min(-1) < 200).mean() > 0.01, "almost nothing drawn"  # axes, labels, 30 points
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plots.save_latent_map(torch.randn(30, 3), None, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="labels"):
        plots.save_latent_map(torch.randn(30, 2), torch.arange(29), tmp_path / "bad.png")


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
    # the same float32 computation on both sides: equal up to round-off (eps 1.2e-7, |z| < 2)
    assert torch.allclose(z[:n, 0], grid, atol=1e-6), z[:n, 0]  # first row: z_1 increasing
    assert torch.allclose(z[::n, 1], grid.flip(0), atol=1e-6), z[::n, 1]  # z_2 decreasing
    # an n x n grid of 3 x 4 tiles with 1 px padding: 21 x 17 px at 0.15 inch per px
    assert abs(width - 315) <= 1 and abs(height - 255) <= 1, (width, height)
    with pytest.raises(ValueError, match="positive"):
        plots.save_manifold(decode_fn, (3, 4), tmp_path / "bad.png", n=0)
    # a prior other than N(0, I) (a learned one): each axis takes its draws' own quantiles
    draws = torch.stack([torch.arange(101.0), -2.0 * torch.arange(101.0)], dim=-1)
    plots.save_manifold(decode_fn, (3, 4), tmp_path / "p.png", n=n, prior_draws=draws)
    levels = torch.linspace(0.05, 0.95, n) * 100  # the draws' quantiles: 100 u and -200 (1 - u)
    assert torch.allclose(seen[-1][:n, 0], levels, atol=1e-4), seen[-1][:n, 0]
    assert torch.allclose(seen[-1][::n, 1], -2 * levels, atol=1e-4), seen[-1][::n, 1]


def test_khat_plot(tmp_path):
    (width, height), _ = _read(
        plots.save_khat_plot(torch.tensor([0.1, 0.6, 0.9, 0.3]), tmp_path / "k.png")
    )
    assert (width, height) == _figure_pixels(6, 3.5), (width, height)  # figsize (6, 3.5)
    with pytest.raises(ValueError, match="empty"):
        plots.save_khat_plot(torch.tensor([]), tmp_path / "bad.png")


def test_elbo_vs_logpx(tmp_path):
    log_px = -torch.rand(20) * 10 - 90
    (width, height), _ = _read(
        plots.save_elbo_vs_logpx(log_px - torch.rand(20), log_px, tmp_path / "e.png")
    )
    assert (width, height) == _figure_pixels(4.5, 4.5), (width, height)  # figsize (4.5, 4.5)
    with pytest.raises(ValueError, match="equal length"):
        plots.save_elbo_vs_logpx(log_px[:3], log_px, tmp_path / "bad.png")


def _count(px, rgb):
    """Number of pixels of exactly that colour."""
    return int((px == np.array(rgb, dtype=px.dtype)).all(-1).sum())


def test_kl_per_dimension_greys_inactive_units(tmp_path):
    # a bar is thousands of pixels of one flat colour (measured: >= 8000 per colour drawn);
    # anti-aliased text edges hit light grey by chance a dozen times (measured: 13)
    bar, stray = 1000, 100
    kl = torch.tensor([0.8, 0.6, 1.5, 0.4])
    _, px = _read(plots.save_kl_per_dimension(kl, tmp_path / "k.png"))
    assert _count(px, TAB_BLUE) > bar and _count(px, LIGHT_GREY) < stray
    # units 1 and 3 have activity below the default threshold 0.01 (Burda et al. 2015)
    variances = torch.tensor([0.5, 0.001, 0.2, 0.0])
    _, px = _read(plots.save_kl_per_dimension(kl, tmp_path / "kv.png", variances=variances))
    assert _count(px, TAB_BLUE) > bar and _count(px, LIGHT_GREY) > bar
    with pytest.raises(ValueError, match="variances"):
        plots.save_kl_per_dimension(kl, tmp_path / "bad.png", variances=variances[:3])


@pytest.mark.parametrize("steps", [[3, 6], [10, 100, 1000], [10, 20, 30, 50, 100, 200, 1000]])
def test_bdmc_sandwich_labels_each_t_once_without_overlap(tmp_path, monkeypatch, steps):
    drawn = []
    save = plots.save_figure

    def keep(fig, path, **kwargs):
        drawn.append(fig)
        return save(fig, path, **kwargs)

    monkeypatch.setattr(plots, "save_figure", keep)
    lower = [-100.0 + math.log(t) for t in steps]
    upper = [-97.0 - math.log(t) / 2 for t in steps]
    _read(plots.save_bdmc_sandwich(steps, lower, upper, tmp_path / "bdmc.png"))
    (ax,) = drawn[0].axes
    labels = [t for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
    # one label per T run, as an integer: not the log axis's minor labels (2x10^1, 3x10^1...)
    assert [t.get_text() for t in labels] == [str(t) for t in steps]
    boxes = [t.get_window_extent() for t in labels]  # the renderer of the saved PNG
    for left, right in zip(boxes[:-1], boxes[1:], strict=True):
        assert left.x1 <= right.x0, (steps, left, right)  # no two labels overlap
