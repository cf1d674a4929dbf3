"""DReG against IWAE: the encoder gradient's signal-to-noise ratio in k, and MNIST-5k AIS NLL.

Rainforth et al. (2018, Fig. 1): the IWAE gradient of the inference network gets noisier
relative to its mean as k grows (its SNR falls like 1/sqrt(k)), while the model's gets
cleaner; the doubly reparameterized gradient (DReG, Tucker et al. 2018) removes the score term
responsible, so its SNR must not fall with k.

Two parts:

- ``snr`` (the default, seconds on a quiet machine): a small Bernoulli VAE (64-32-4) on
  scikit-learn's digits (binarized; no download), trained on the ELBO for ``--train-epochs``
  (200), then frozen. For each k and each estimator (``iwae``, ``iwae-dreg``),
  ``--draws`` gradients of the same batch at fresh draws; per parameter,
  SNR = |mean| / standard deviation over the draws; reported: the median over the
  encoder's (and, for reference, the decoder's) parameters. The model gradient of the two is
  the same estimator (tests/test_path_gradients.py), so only the encoder's differs.
- ``nll`` (hours on a CPU): the 784-400-20 VAE of ``experiments/ablation.py`` on MNIST-5k,
  trained with ``--loss iwae`` and ``--loss iwae-dreg`` at k = 5 and 50 for ``--epochs``
  (100), ``--seeds`` 0 1 2, then the test NLL by annealed importance sampling
  (:func:`~pyro_vae.infer.ais_evidence`, Wu et al.'s settings unless ``--chains`` or
  ``--ais-steps`` say otherwise, ``--num-points`` test images): mean ± sd over seeds per row.

Run: ``python experiments/bench_dreg.py`` (SNR table), and on a quiet machine
``python experiments/bench_dreg.py --part nll --out results/dreg`` (the NLL table; rows are
appended to ``<out>/nll.json`` as they finish, and a rerun skips them).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pyro
import torch

from pyro_vae.data import load_dataset
from pyro_vae.infer import AISSettings, LossChoice, ais_evidence, make_objective, train
from pyro_vae.models.vae import VAE

__all__ = ["encoder_snr", "main", "nll_rows"]

ESTIMATORS = ("iwae", "iwae-dreg")


def _gradient_draws(vae, objective, x, draws: int, names: list[str]) -> torch.Tensor:
    """``draws`` gradients of the objective at fresh draws, flattened: shape (draws, P)."""
    params = dict(vae.named_parameters())
    leaves = [params[n] for n in names]
    rows = []
    for _ in range(draws):
        loss = objective(vae.model, vae.guide, x)
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, leaves)]))
    return torch.stack(rows)


def _median_snr(grads: torch.Tensor) -> float:
    """The median over parameters of |mean| / sd over draws (parameters that never move, such
    as a ReLU unit that is always off, are left out)."""
    mean, sd = grads.mean(0), grads.std(0)
    moving = sd > 0
    return (mean[moving].abs() / sd[moving]).median().item()


def encoder_snr(args) -> list[dict]:
    """The SNR table: one row per (estimator, k)."""
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    data = load_dataset("digits", binarize="static", seed=args.seed)
    vae = VAE(data.train.data_dim, latent_dim=args.latent, hidden=(args.hidden,))
    train(vae.model, vae.guide, data.train.x, epochs=args.train_epochs, progress=False)
    x = data.train.x[: args.batch]
    names = [n for n, _ in vae.named_parameters()]
    parts = {
        "encoder": [n for n in names if n.startswith("encoder")],
        "decoder": [n for n in names if n.startswith("decoder")],
    }
    rows = []
    for k in args.ks:
        for loss in ESTIMATORS:
            objective = make_objective(LossChoice(loss, {"num_particles": k}), vae.model,
                                       vae.guide, x)  # fmt: skip
            row = {"loss": loss, "k": k}
            for part, part_names in parts.items():
                pyro.set_rng_seed(args.seed + k)  # the same draws for both estimators
                grads = _gradient_draws(vae, objective, x, args.draws, part_names)
                row[f"{part}_snr"] = _median_snr(grads)
            rows.append(row)
            print(f"| {loss} | {k} | {row['encoder_snr']:.3f} | {row['decoder_snr']:.3f} |")
    return rows


def _nll_row(loss: str, k: int, seed: int, data, args) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = VAE(data.train.data_dim, latent_dim=20, hidden=(400,))
    choice = LossChoice(loss, {"num_particles": k})
    train(vae.model, vae.guide, data.train.x[: args.train_points], val_data=data.val.x,
          epochs=args.epochs, loss=choice, seed=seed, progress=not args.quiet)  # fmt: skip
    pyro.set_rng_seed(seed)
    settings = AISSettings(num_chains=args.chains, num_steps=args.ais_steps)
    result = ais_evidence(vae.model, vae.guide, data.test.x[: args.num_points], settings=settings,
                          progress=not args.quiet)  # fmt: skip
    return {"loss": loss, "k": k, "seed": seed, "nll": -result.log_px.mean().item()}


def nll_rows(args) -> list[dict]:
    """The MNIST-5k rows, appended to ``<out>/nll.json`` as each finishes; the table of mean ±
    sd over seeds is written to ``<out>/nll.md``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "nll.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    data = load_dataset("mnist5k", binarize="static", seed=0, val_fraction=0.1)
    for k in args.nll_ks:
        for loss in ESTIMATORS:
            for seed in args.seeds:
                if any(r["loss"] == loss and r["k"] == k and r["seed"] == seed for r in rows):
                    continue
                rows.append(_nll_row(loss, k, seed, data, args))
                path.write_text(json.dumps(rows, indent=1))
    lines = ["| loss | k | test NLL (AIS), nats | seeds |", "|---|---|---|---|"]
    for k in args.nll_ks:
        for loss in ESTIMATORS:
            nll = [r["nll"] for r in rows if r["loss"] == loss and r["k"] == k]
            sd = statistics.stdev(nll) if len(nll) > 1 else float("nan")
            lines.append(f"| {loss} | {k} | {statistics.mean(nll):.2f} ± {sd:.2f} | {len(nll)} |")
    (out / "nll.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("snr", "nll"), default="snr")
    parser.add_argument("--seed", type=int, default=0, help="snr: the seed of everything")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 50], help="snr: the k")
    parser.add_argument("--draws", type=int, default=100, help="snr: gradient draws per row")
    parser.add_argument("--batch", type=int, default=32, help="snr: datapoints in the batch")
    parser.add_argument("--latent", type=int, default=4, help="snr: latent dimensions")
    parser.add_argument("--hidden", type=int, default=32, help="snr: hidden units")
    parser.add_argument("--train-epochs", type=int, default=200, help="snr: ELBO epochs first")
    parser.add_argument("--nll-ks", type=int, nargs="+", default=[5, 50], help="nll: the k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="nll: seeds")
    parser.add_argument("--epochs", type=int, default=100, help="nll: training epochs")
    parser.add_argument("--train-points", type=int, default=None, help="nll: (default all)")
    parser.add_argument("--num-points", type=int, default=1000, help="nll: test images")
    parser.add_argument("--chains", type=int, default=AISSettings.num_chains, help="nll: AIS")
    parser.add_argument("--ais-steps", type=int, default=AISSettings.num_steps, help="nll: AIS T")
    parser.add_argument("--out", default="results/dreg", help="nll: the results folder")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.part == "nll":
        return nll_rows(args)
    print("| loss | k | encoder SNR (median) | decoder SNR (median) |\n|---|---|---|---|")
    return encoder_snr(args)


if __name__ == "__main__":
    main()
