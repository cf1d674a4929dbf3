"""The VampPrior against N(0, I): MNIST-5k test NLL by AIS, and draws from the learned prior.

Tomczak & Welling (2018, Table 2) report a lower test NLL on statically binarized MNIST with
the VampPrior than with the standard normal prior, for the same encoder and decoder. Here the
784-400-20 Bernoulli VAE of ``experiments/ablation.py`` and ``experiments/bench_dreg.py`` is
trained on MNIST-5k (static binarization, 4,500 training images, the validation split carved
from them) with each prior: ``vae`` (p(z) = N(0, I)) and ``vamp`` (the VampPrior with
``--pseudo-inputs`` K = 50, :class:`~pyro_vae.models.vamp.VampVAE`; its docstring says why
50), the same networks and seeds, for ``--epochs`` (100) and ``--seeds`` 0 1 2, on the ELBO.
Each is scored by the test NLL from annealed importance sampling
(:func:`~pyro_vae.infer.ais_evidence`, Wu et al.'s settings unless ``--chains`` or
``--ais-steps`` say otherwise, on ``--num-points`` test images); the table gives the mean ±
sd over seeds. The last VampVAE trained also gives ``vamp_prior_samples.png``: the decoded
means of 64 draws z ~ p(z) from its learned prior.

Run on a quiet machine (hours on a CPU): ``python experiments/bench_vamp.py --out
results/vamp``. Rows are appended to ``<out>/nll.json`` as they finish (a rerun skips them),
the table is ``<out>/nll.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pyro
import torch

from pyro_vae.data import load_dataset
from pyro_vae.diagnostics.plots import save_image_grid
from pyro_vae.infer import AISSettings, ais_evidence, train
from pyro_vae.infer.runtime.files import write_json
from pyro_vae.models import VAE, VampVAE

__all__ = ["PRIORS", "main", "nll_rows"]

PRIORS = ("vae", "vamp")


def _build(prior: str, data_dim: int, args) -> VAE:
    """The 784-400-20 Bernoulli VAE, with the standard normal prior or the VampPrior."""
    if prior == "vamp":
        return VampVAE(data_dim, latent_dim=20, hidden=(400,), pseudo_inputs=args.pseudo_inputs)
    return VAE(data_dim, latent_dim=20, hidden=(400,))


def _nll_row(prior: str, seed: int, data, args) -> tuple[dict, VAE]:
    pyro.clear_param_store()  # one model's parameters only: the next takes the same names
    pyro.set_rng_seed(seed)
    vae = _build(prior, data.train.data_dim, args)
    train(vae.model, vae.guide, data.train.x[: args.train_points], val_data=data.val.x,
          epochs=args.epochs, seed=seed, progress=not args.quiet)  # fmt: skip
    pyro.set_rng_seed(seed)
    settings = AISSettings(num_chains=args.chains, num_steps=args.ais_steps)
    result = ais_evidence(vae.model, vae.guide, data.test.x[: args.num_points], settings=settings,
                          progress=not args.quiet)  # fmt: skip
    row = {"prior": prior, "pseudo_inputs": _pseudo_inputs(prior, args), "seed": seed}
    return {**row, "nll": -result.log_px.mean().item()}, vae


def _pseudo_inputs(prior: str, args) -> int | None:
    """K of a row: the VampPrior's, none for N(0, I)."""
    return args.pseudo_inputs if prior == "vamp" else None


def _table(rows: list[dict], args) -> list[str]:
    lines = ["| prior | test NLL (AIS), nats | seeds |", "|---|---|---|"]
    for prior in PRIORS:
        k = _pseudo_inputs(prior, args)
        nll = [r["nll"] for r in rows if r["prior"] == prior and r["pseudo_inputs"] == k]
        sd = statistics.stdev(nll) if len(nll) > 1 else float("nan")
        name = "N(0, I)" if k is None else f"VampPrior, K = {k}"
        mean = statistics.mean(nll) if nll else float("nan")
        lines.append(f"| {name} | {mean:.2f} ± {sd:.2f} | {len(nll)} |")
    return lines


def nll_rows(args) -> list[dict]:
    """The MNIST-5k rows, appended to ``<out>/nll.json`` as each finishes; the table of mean ±
    sd over seeds to ``<out>/nll.md``; the last VampVAE's prior draws to
    ``<out>/vamp_prior_samples.png`` (when this run trained one)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "nll.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    data = load_dataset("mnist5k", binarize="static", seed=0, val_fraction=0.1)
    vamp = None
    for prior in PRIORS:
        for seed in args.seeds:
            key = {"prior": prior, "pseudo_inputs": _pseudo_inputs(prior, args), "seed": seed}
            if any(all(r[n] == v for n, v in key.items()) for r in rows):
                continue
            row, vae = _nll_row(prior, seed, data, args)
            rows.append(row)
            write_json(path, rows)
            vamp = vae if prior == "vamp" else vamp
    if vamp is not None:
        torch.manual_seed(0)
        save_image_grid(vamp.sample(64), data.train.image_shape, out / "vamp_prior_samples.png",
                        nrow=8, title="decoded draws z ~ VampPrior")  # fmt: skip
    lines = _table(rows, args)
    (out / "nll.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100, help="training epochs (ELBO)")
    parser.add_argument("--pseudo-inputs", type=int, default=50, help="K of the VampPrior")
    parser.add_argument("--train-points", type=int, default=None, help="(default all)")
    parser.add_argument("--num-points", type=int, default=1000, help="test images for AIS")
    parser.add_argument("--chains", type=int, default=AISSettings.num_chains, help="AIS chains")
    parser.add_argument("--ais-steps", type=int, default=AISSettings.num_steps, help="AIS T")
    parser.add_argument("--out", default="results/vamp", help="the results folder")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    return nll_rows(args)


if __name__ == "__main__":
    main()
