"""The ``pyro-vae`` command: train a VAE, then ask how good it is.

    pyro-vae train --dataset mnist5k --epochs 10 --out runs/vae
    pyro-vae evaluate runs/vae --num-samples 5000
    pyro-vae diagnose runs/vae

Every log-likelihood, ELBO and NLL printed is per datapoint, in nats.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae.data import DATASETS, DEFAULT_DATASET, load_dataset
from pyro_vae.infer.checkpoint import CheckpointError
from pyro_vae.infer.devices import resolve_device
from pyro_vae.infer.objectives import LOSSES
from pyro_vae.infer.train import TrainingDivergedError, train
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.vae import VAE
from pyro_vae.nets import ACTIVATIONS, ARCHS
from pyro_vae.runs import evaluation_data, load_run, save_config, training_figures

__all__ = ["main"]


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden takes sizes like 400 or 512,256, not {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden needs positive sizes, got {text!r}")
    return sizes


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1))


# --- train -------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    resolve_device(args.device)  # fail before loading data when the device is absent
    binarize = args.binarize
    if binarize == "auto":  # Bernoulli pixels need binary data; a Gaussian keeps intensities
        binarize = "static" if args.likelihood == "bernoulli" else None
    binarize = None if binarize == "none" else binarize
    data = load_dataset(
        args.dataset, root=args.root, download=args.download, binarize=binarize, seed=args.seed
    )
    vae = VAE(
        data.train.data_dim,
        latent_dim=args.latent,
        hidden=args.hidden,
        likelihood=args.likelihood,
        activation=args.activation,
        arch=args.arch,
        image_shape=data.image_shape,
    )
    out = Path(args.out)
    config = {
        "dataset": args.dataset,
        "root": args.root,
        "binarize": binarize,
        "seed": args.seed,
        "vae": {**vae.config, "hidden": list(args.hidden)},
        "train": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "loss", "device")},
    }
    save_config(out, config)
    print(
        f"training a {args.likelihood} VAE {data.train.data_dim}-{'-'.join(map(str, args.hidden))}-"
        f"{args.latent} on {args.dataset} ({len(data.train)} train, {len(data.test)} test) -> {out}"
    )
    pyro.clear_param_store()
    result = train(
        vae.model,
        vae.guide,
        data.train,
        val_data=data.test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=args.loss,
        device=args.device,
        seed=args.seed,
        clip_norm=args.clip_norm,
        patience=args.patience,
        out_dir=out,
        resume=args.resume,
        progress=not args.quiet,
        on_epoch_end=(lambda r: print(_epoch_line(r), flush=True)) if args.quiet else None,
    )
    figures = training_figures(vae, data, result.history, out / "figures")
    final = result.final
    print(
        f"test -ELBO {final['val_loss']:.2f} nats/datapoint "
        f"({final['val_loss'] / (data.train.data_dim * math.log(2)):.4f} bits/dim) after "
        f"{final['epoch']} epochs"
    )
    print(f"figures in {out / 'figures'}: {', '.join(p.name for p in figures)}")
    print(f"next: pyro-vae evaluate {out}    (log p(x) by importance sampling)")
    return 0


def _epoch_line(record: dict) -> str:
    return (
        f"epoch {record['epoch']}  train -ELBO {record['train_loss']:.3f}  "
        f"val -ELBO {record['val_loss']:.3f} nats/datapoint  {record['seconds']:.1f} s  "
        f"{record['examples_per_s']:.0f} examples/s"
    )


# --- evaluate ----------------------------------------------------------------------------------


def cmd_evaluate(args) -> int:
    from pyro_vae.diagnostics import plots
    from pyro_vae.infer.evidence import dataset_nll, elbo_per_datapoint, iwae_bound

    device = resolve_device(args.device)
    pyro.set_rng_seed(args.seed)
    run = load_run(args.run_dir, device=device)
    vae = run.vae
    x = evaluation_data(run, args.num_points, args.seed).to(device)
    n, dim = x.shape
    nll = dataset_nll(
        vae.model,
        vae.guide,
        x,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    elbo = torch.cat(
        [
            elbo_per_datapoint(vae.model, vae.guide, xb, num_samples=args.elbo_samples)
            for xb in x.split(args.batch_size)
        ]
    )
    ks = [k for k in args.iwae_k if k <= args.num_samples]
    iwae = {}
    for k in ks:
        estimates = max(1, min(100, args.num_samples // k))
        bound = torch.cat(
            [
                iwae_bound(vae.model, vae.guide, xb, k, num_estimates=estimates)
                for xb in x.split(args.batch_size)
            ]
        )
        iwae[k] = (bound.mean().item(), bound.std().item() / math.sqrt(n))
    khat = nll.khat
    report = {
        "run_dir": str(run.run_dir),
        "num_points": n,
        "num_samples": args.num_samples,
        "nll": nll.nll,
        "nll_stderr": nll.stderr,
        "nll_bits_per_dim": nll.nll / (dim * math.log(2)),
        "max_mc_stderr": nll.mc_stderr.max().item(),
        "elbo": elbo.mean().item(),
        "elbo_stderr": elbo.std().item() / math.sqrt(n),
        "gap": -nll.nll - elbo.mean().item(),
        "iwae": {str(k): v for k, v in iwae.items()},
        "khat": {
            "good (<= 0.5)": int((khat <= 0.5).sum()),
            "ok (0.5, 0.7]": int(((khat > 0.5) & (khat <= 0.7)).sum()),
            "bad (> 0.7)": int((khat > 0.7).sum()),
            "median": khat.median().item(),
            "max": khat.max().item(),
        },
    }
    print(_evaluation_table(report))
    figures = Path(run.run_dir) / "figures"
    plots.save_khat_plot(khat, figures / "khat.png")
    plots.save_elbo_vs_logpx(elbo, nll.log_px, figures / "elbo_vs_logpx.png")
    _write_json(Path(run.run_dir) / "evaluation.json", report)
    print(f"wrote {run.run_dir}/evaluation.json and figures/khat.png, figures/elbo_vs_logpx.png")
    return 0


def _evaluation_table(r: dict) -> str:
    lines = [
        f"test set: {r['num_points']} datapoints, L = {r['num_samples']} importance samples each",
        "",
        "| quantity (per datapoint, nats) | value | standard error |",
        "|---|---|---|",
        f"| NLL = -log p(x) (importance sampling) | {r['nll']:.3f} | {r['nll_stderr']:.3f} |",
        f"| NLL in bits/dim | {r['nll_bits_per_dim']:.4f} | |",
        f"| ELBO | {r['elbo']:.3f} | {r['elbo_stderr']:.3f} |",
        f"| gap log p(x) - ELBO | {r['gap']:.3f} | |",
        f"| largest Monte Carlo standard error of one log p(x) | {r['max_mc_stderr']:.4f} | |",
        "",
        "| k | IWAE bound L_k | standard error |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {mean:.3f} | {se:.3f} |" for k, (mean, se) in r["iwae"].items()]
    kh = r["khat"]
    lines += [
        "",
        f"PSIS k-hat: {kh['good (<= 0.5)']} good (<= 0.5), {kh['ok (0.5, 0.7]']} ok (0.5-0.7], "
        f"{kh['bad (> 0.7)']} unreliable (> 0.7); median {kh['median']:.3f}, max {kh['max']:.3f}",
    ]
    return "\n".join(lines)


# --- diagnose ----------------------------------------------------------------------------------


def cmd_diagnose(args) -> int:
    from pyro_vae.diagnostics import arviz_io, plots
    from pyro_vae.diagnostics.latent import active_units, amortization_gap, kl_per_dimension
    from pyro_vae.diagnostics.posterior import guide_draws, nuts_reference

    pyro.set_rng_seed(args.seed)
    run = load_run(args.run_dir)
    vae = run.vae
    x = evaluation_data(run, args.num_points, args.seed)
    out = Path(run.run_dir) / "figures"
    active, variances = active_units(vae.guide, x)
    kl = kl_per_dimension(vae.model, vae.guide, x)
    gap = amortization_gap(vae.model, vae.guide, x[: args.gap_points], num_steps=args.gap_steps)
    index = list(range(args.nuts_points))
    guide = guide_draws(vae.guide, x[index], num_chains=args.chains, num_draws=args.draws)
    nuts = nuts_reference(
        vae.model,
        x[index],
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.draws,
        seed=args.seed,
        progress=not args.quiet,
    )
    idatas = {
        "guide": arviz_io.to_inference_data(guide, index),
        "NUTS": arviz_io.to_inference_data(nuts, index),
    }
    summaries = {name: arviz_io.summary(idata) for name, idata in idatas.items()}
    for name, table in summaries.items():
        table.to_csv(Path(run.run_dir) / f"posterior_summary_{name.lower()}.csv")
    arviz_io.save_forest(idatas, out / "forest_guide_vs_nuts.png")
    arviz_io.save_pair(idatas, out / "pair_guide_vs_nuts.png")
    plots.save_kl_per_dimension(kl, out / "kl_per_dimension.png", variances=variances)
    report = {
        "active_units": active,
        "latent_dim": vae.latent_dim,
        "activity_per_dim": variances.tolist(),
        "kl_per_dim": kl.tolist(),
        "kl_total": kl.sum().item(),
        "amortization_gap": gap["mean_amortization_gap"],
        "elbo_amortized": gap["mean_elbo_amortized"],
        "elbo_optimized": gap["mean_elbo_optimized"],
        "max_r_hat_nuts": float(summaries["NUTS"]["r_hat"].max()),
    }
    _write_json(Path(run.run_dir) / "diagnostics.json", report)
    guide_sum, nuts_sum = summaries["guide"], summaries["NUTS"]
    mean_abs = (guide_sum["mean"] - nuts_sum["mean"]).abs().mean()
    sd_ratio = (guide_sum["sd"] / nuts_sum["sd"]).median()
    kl_text = " ".join(f"{v:.2f}" for v in kl.tolist())
    lines = [
        f"active units (Cov_x E_q[z_j] > 0.01): {active} of {vae.latent_dim}",
        f"KL(q(z|x) || p(z)): {report['kl_total']:.3f} nats/datapoint; by dimension: {kl_text}",
        f"amortization gap on {args.gap_points} test points: {report['amortization_gap']:.3f} "
        f"nats/datapoint (ELBO amortized {report['elbo_amortized']:.3f}, "
        f"optimized per datapoint {report['elbo_optimized']:.3f})",
        f"guide vs NUTS on {args.nuts_points} test points: mean |difference of posterior means| "
        f"{mean_abs:.3f}, median sd ratio guide/NUTS {sd_ratio:.3f}, "
        f"NUTS max R-hat {report['max_r_hat_nuts']:.3f}",
        f"wrote {run.run_dir}/diagnostics.json, posterior_summary_*.csv, figures/"
        "{forest,pair}_guide_vs_nuts.png and figures/kl_per_dimension.png",
    ]
    print("\n".join(lines))
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-vae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE by SVI; writes checkpoint, history and figures")
    t.add_argument("--dataset", default=DEFAULT_DATASET, choices=DATASETS)
    t.add_argument("--root", default=None, help="folder of mnist/fashion-mnist files")
    t.add_argument("--download", action="store_true", help="let torchvision download into --root")
    t.add_argument(
        "--binarize",
        default="auto",
        choices=["auto", "static", "dynamic", "none"],
        help="auto: static for --likelihood bernoulli, none for gaussian",
    )
    t.add_argument("--likelihood", default="bernoulli", choices=LIKELIHOODS)
    t.add_argument("--latent", type=int, default=20, help="latent dimension M")
    t.add_argument(
        "--hidden", type=_hidden, default=(400,), help="hidden sizes, e.g. 400 or 512,256"
    )
    t.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS))
    t.add_argument("--arch", default="mlp", choices=ARCHS)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--loss", default="trace", choices=LOSSES)
    t.add_argument("--device", default="auto", help="cpu, cuda or auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--clip-norm", type=float, default=None)
    t.add_argument("--patience", type=int, default=None, help="early stopping on test -ELBO")
    t.add_argument("--out", default="runs/vae", help="run folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate", help="test log p(x) by importance sampling, ELBO, gap, IWAE, k-hat"
    )
    e.add_argument("run_dir")
    e.add_argument(
        "--num-samples", type=int, default=5000, help="importance samples L per datapoint"
    )
    e.add_argument("--num-points", type=int, default=None, help="first N test points (default all)")
    e.add_argument("--batch-size", type=int, default=100)
    e.add_argument("--elbo-samples", type=int, default=100)
    e.add_argument("--iwae-k", type=_ints, default=[1, 10, 100, 1000])
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser(
        "diagnose", help="active units, KL per dimension, amortization gap, guide vs NUTS"
    )
    d.add_argument("run_dir")
    d.add_argument(
        "--num-points", type=int, default=1000, help="test points for active units and KL"
    )
    d.add_argument("--gap-points", type=int, default=20)
    d.add_argument("--gap-steps", type=int, default=300)
    d.add_argument("--nuts-points", type=int, default=2)
    d.add_argument("--chains", type=int, default=2)
    d.add_argument("--warmup", type=int, default=200)
    d.add_argument("--draws", type=int, default=300)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_diagnose)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, CheckpointError, TrainingDivergedError) as err:
        print(f"pyro-vae {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
