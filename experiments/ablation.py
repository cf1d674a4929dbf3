"""Ablation: what IAF guides, KL annealing, free bits and IWAE training each do to a VAE.

Every row trains a Bernoulli VAE from the same seed on the same data for the same epochs and
then scores the same test points with the same estimators:

- test NLL = -log p(x) by importance sampling (L samples per datapoint; standard error over
  datapoints), the test ELBO (mean log weight of the same draws) and the gap log p(x) - ELBO;
- KL = E_q[log q(z|x) - log p(z)] per datapoint (Monte Carlo, 10 draws), active units
  (Cov_x E_q[z_u|x] > 0.01, Burda et al. 2015) and the fraction of test points whose PSIS k-hat
  is below 0.7 (where the importance-sampled evidence is reliable);
- training seconds (wall clock, one thread unless --threads says otherwise).

Presets (``--preset``): ``mnist5k`` (the 784-400-20 VAE, 100 epochs), ``collapse`` (the
tanh 784-200-200-50 net of Burda et al. 2015, where the plain ELBO leaves units inactive) and
``fashion`` (full
Fashion-MNIST from Debian's dataset-fashion-mnist, 10 epochs). ``--rows`` picks rows by name;
``--epochs``, ``--num-samples`` and ``--num-points`` shrink a run. Results are appended to
``<out>/<preset>.json`` row by row (a rerun skips rows already there unless ``--fresh``), then
``<out>/<preset>.md`` (the table) and ``<out>/<preset>.png`` (NLL and k-hat per row) are
written.

Run: ``python experiments/ablation.py --preset mnist5k`` (and ``collapse``, ``fashion``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.data import load_dataset
from pyro_vae.diagnostics.latent import active_units, latent_kl
from pyro_vae.infer.evidence.dataset import dataset_nll
from pyro_vae.infer.runtime.files import write_json
from pyro_vae.infer.training.loop import train
from pyro_vae.models.vae import VAE
from pyro_vae.runs import training_objective

__all__ = ["PRESETS", "ROWS", "main"]

ANNEAL_EPOCHS = 10  # the KL weight rises from 0 to 1 over the first 10 epochs
FREE_BITS = 0.25  # nats per latent dimension (Kingma et al. 2016 try 0.125-2 per group)

# row name -> how it differs from the Gaussian-guide VAE trained on the ELBO
ROWS = {
    "gaussian": {},
    "+ annealing": {"anneal": True},
    "+ free bits": {"free_bits": FREE_BITS},
    "+ annealing + free bits": {"anneal": True, "free_bits": FREE_BITS},
    "IAF K=2": {"flows": 2},
    "IAF K=4": {"flows": 4},
    "IWAE k=5": {"iwae": 5},
    "IWAE k=50": {"iwae": 50},
    "IAF K=4 + IWAE k=5": {"flows": 4, "iwae": 5},
    "IAF K=4 + annealing + free bits": {"flows": 4, "anneal": True, "free_bits": FREE_BITS},
}

PRESETS = {
    "mnist5k": dict(
        dataset="mnist5k",
        latent=20,
        hidden=(400,),
        epochs=100,
        rows=[
            "gaussian",
            "+ annealing",
            "+ free bits",
            "IAF K=2",
            "IAF K=4",
            "IWAE k=5",
            "IWAE k=50",
            "IAF K=4 + IWAE k=5",
            "IAF K=4 + annealing + free bits",
        ],
    ),
    # the architecture of Burda et al. (2015) for MNIST (tanh, 200-200, 50 latents), where the
    # plain ELBO leaves many units inactive (a 64-latent ReLU 400 net kept 59 of 64 active here)
    "collapse": dict(
        dataset="mnist5k",
        latent=50,
        hidden=(200, 200),
        activation="tanh",
        epochs=100,
        rows=["gaussian", "+ annealing", "+ free bits", "+ annealing + free bits", "IWAE k=5"],
    ),
    "fashion": dict(
        dataset="fashion-mnist",
        latent=20,
        hidden=(400,),
        epochs=10,
        rows=[
            "gaussian",
            "+ annealing",
            "+ free bits",
            "IAF K=4",
            "IWAE k=5",
            "IAF K=4 + IWAE k=5",
        ],
    ),
}


def objective(spec: dict):
    """The training loss of a row: the objective recipe of ``pyro-vae train`` for its options."""
    if "iwae" in spec:
        return training_objective({"loss": "iwae", "iwae_k": spec["iwae"]})
    anneal_epochs = ANNEAL_EPOCHS if spec.get("anneal") else None
    return training_objective(
        {"anneal_epochs": anneal_epochs, "free_bits": spec.get("free_bits", 0.0)}
    )


def run_row(name: str, preset: dict, data, args) -> dict:
    """Train one row from seed 0 and score it on the test points."""
    spec = ROWS[name]
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    vae = VAE(
        data.train.data_dim,
        latent_dim=preset["latent"],
        hidden=preset["hidden"],
        activation=preset.get("activation", "relu"),
        flows=spec.get("flows", 0),
    )
    tic = time.perf_counter()
    result = train(
        vae.model,
        vae.guide,
        data.train,
        val_data=data.val,
        epochs=args.epochs or preset["epochs"],
        loss=objective(spec),
        seed=args.seed,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - tic
    x = data.test.x[: args.num_points]
    pyro.set_rng_seed(args.seed)
    nll = dataset_nll(
        vae.model,
        vae.guide,
        x,
        num_samples=args.num_samples,
        return_log_weights=True,
        progress=not args.quiet,
    )
    elbo = nll.log_weights.mean(1)
    active, _ = active_units(vae.guide, x, num_samples=100)
    return {
        "row": name,
        "nll": nll.nll,
        "nll_stderr": nll.stderr,
        "elbo": elbo.mean().item(),
        "gap": (nll.log_px - elbo).mean().item(),
        "kl": latent_kl(vae.model, vae.guide, x).mean().item(),
        "active_units": active,
        "latent_dim": preset["latent"],
        "khat_below_0.7": (nll.khat < 0.7).float().mean().item(),
        "train_seconds": seconds,
        "val_elbo": -result.final["val_loss"],
        "epochs": result.epochs_run,
    }


def markdown_table(rows: list[dict], preset: str, args) -> str:
    lines = [
        "| configuration | test NLL | test ELBO | gap | KL | active units | k-hat < 0.7 "
        "| train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} | {r['elbo']:.2f} "
            f"| {r['gap']:.2f} | {r['kl']:.2f} | {r['active_units']}/{r['latent_dim']} "
            f"| {100 * r['khat_below_0.7']:.1f}% | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 0.45 * len(rows) + 1.5))
    nll_ax, khat_ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    y = list(range(len(rows)))[::-1]
    nll_ax.errorbar(
        [r["nll"] for r in rows], y, xerr=[r["nll_stderr"] for r in rows], fmt="o", capsize=3
    )
    nll_ax.set_yticks(y, [r["row"] for r in rows])
    nll_ax.set_xlabel("test NLL, nats/datapoint (± s.e. over test points)")
    reliable = [100 * r["khat_below_0.7"] for r in rows]
    khat_ax.barh(y, reliable)
    khat_ax.set_xlabel("test points with PSIS k-hat < 0.7 (%)")
    khat_ax.set_xlim(0, max(10.0, 1.2 * max(reliable)))  # the few percent stay visible
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mnist5k")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), help="default: the preset's")
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument("--num-samples", type=int, default=5000, help="importance samples L")
    parser.add_argument("--num-points", type=int, default=1000, help="test points scored")
    parser.add_argument("--root", default=None, help="folder of the fashion-mnist files")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--fresh", action="store_true", help="recompute rows already saved")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    names = args.rows or preset["rows"]
    data = load_dataset(
        preset["dataset"], root=args.root, binarize="static", seed=args.seed, val_fraction=0.1
    )
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / f"{args.preset}.json"
    saved = {} if args.fresh or not store.exists() else json.loads(store.read_text())
    for name in names:
        if name in saved:
            continue
        saved[name] = run_row(name, preset, data, args)
        saved[name]["setup"] = {
            "dataset": preset["dataset"],
            "sizes": data.sizes(),
            "epochs": args.epochs or preset["epochs"],
            "num_samples": args.num_samples,
            "num_points": min(args.num_points, data.test.x.shape[0]),
            "threads": args.threads,
        }
        write_json(store, saved)  # row by row: a crash keeps the rest
        print(markdown_table([saved[name]], args.preset, args).splitlines()[-1], flush=True)
    rows = [saved[name] for name in names]
    table = markdown_table(rows, args.preset, args)
    (args.out / f"{args.preset}.md").write_text(table)
    setup = rows[0]["setup"]
    title = (
        f"{setup['dataset']}, latent {preset['latent']}, {setup['epochs']} epochs; "
        f"L = {setup['num_samples']} on {setup['num_points']} test points"
    )
    figure(rows, args.out / f"{args.preset}.png", title)
    print(f"{title}\n{table}", end="")
    if not all(math.isfinite(r["nll"]) for r in rows):
        raise SystemExit("a row's NLL is not finite")
    return rows


if __name__ == "__main__":
    main()
