"""The ``pyro-vae`` command: train a VAE, then ask how good it is.

    pyro-vae train --dataset mnist5k --epochs 10 --out runs/vae
    pyro-vae evaluate runs/vae --num-samples 5000
    pyro-vae diagnose runs/vae

``--model cvae`` trains the conditional VAE p(x|y) on images with their labels (evaluated as
log p(x|y) with the test labels); ``--model m2 --labels-per-class N`` the semi-supervised M2 on
N labelled images per class and the rest unlabelled (evaluated as log p(x), and by the test
accuracy of its classifier q(y|x)).

Every log-likelihood, ELBO and NLL printed is per datapoint, in nats, and names its split.
Every failure is one line on stderr and exit status 2; nothing already on disk is changed by a
command that fails before it starts training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae.data import DATASETS, DEFAULT_DATASET, labelled_split
from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm
from pyro_vae.infer.objectives.elbo import LOSSES
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.objectives.kl_control import KLAnnealing, KLControlledELBO
from pyro_vae.infer.runtime.devices import DEFAULT_THREADS, resolve_device, set_threads
from pyro_vae.infer.runtime.distributed import barrier, join
from pyro_vae.infer.training.checkpoint import CheckpointError, load_checkpoint
from pyro_vae.infer.training.loop import train
from pyro_vae.infer.training.options import LabelledStream
from pyro_vae.infer.training.run_state import CHECKPOINT_NAME
from pyro_vae.infer.training.svi import TrainingDivergedError
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.vae import VAE
from pyro_vae.nets import ACTIVATIONS, ARCHS
from pyro_vae.runs import (
    CONFIG_NAME,
    MODELS,
    RUN_FILES,
    check_writable,
    conditional_figures,
    evaluation_data,
    evaluation_labels,
    load_run,
    read_config,
    run_data,
    test_images,
    training_figures,
    write_text_atomic,
)

__all__ = ["build_parser", "main"]

# options that define a run: a resumed run must keep them (the stored values are used)
RUN_OPTIONS = (
    "dataset",
    "root",
    "binarize",
    "val_fraction",
    "seed",
    "likelihood",
    "latent",
    "hidden",
    "activation",
    "arch",
    "batch_size",
    "lr",
    "loss",
    "clip_norm",
    "flows",
    "anneal_epochs",
    "anneal_start",
    "anneal_cycles",
    "free_bits",
    "iwae_k",
    "model",
    "labels_per_class",
    "alpha",
    "compile",
)
# run-defining options added after runs were first written: an older run had these values
ADDED_RUN_OPTIONS = dict(
    flows=0,
    anneal_epochs=None,
    anneal_start=0.0,
    anneal_cycles=1,
    free_bits=0.0,
    iwae_k=5,
    model="vae",
    labels_per_class=None,
    alpha=None,
    compile="off",
)
COMPILE_CHOICES = {"auto": "auto", "on": True, "off": False}
M2_LABELS_PER_CLASS = 10  # the default of --model m2: MNIST with 100 labels (Kingma et al. 2014)
# options a resume may change; the change is recorded in config.json and the history
RESUME_OPTIONS = ("epochs", "patience", "device", "threads", "quiet")
IWAE_KS = (1, 10, 100, 1000)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``pyro-vae train: error: ... (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- argument types ----------------------------------------------------------------------------


def _number(convert, accept, expected: str):
    """An argparse type: ``convert(text)`` if ``accept`` takes it, else "expected {expected}"."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
_fraction = _number(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
_count = _number(int, lambda v: v >= 0, "a non-negative integer")
_nats = _number(float, lambda v: v >= 0 and math.isfinite(v), "a number of nats >= 0")
_non_negative = _number(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes like 400 or 512,256, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"positive sizes like 400 or 512,256, not {text!r}")
    return sizes


def _ks(text: str) -> list[int]:
    try:
        ks = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"positive integers like 1,10,100, not {text!r}")
    return ks


# --- train -------------------------------------------------------------------------------------


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _stored(value):
    """An option's value as config.json stores it (tuples become lists)."""
    return list(value) if isinstance(value, tuple) else value


def _resume_settings(args, given: set[str], out: Path) -> tuple[dict, int]:
    """Check a ``--resume`` against the stored run before anything is written.

    Options not given take their stored values; a given run-defining option that differs is
    refused, naming every difference. Returns the stored config and the epochs already done.
    """
    checkpoint_path = out / CHECKPOINT_NAME
    if not checkpoint_path.is_file():
        raise FileNotFoundError(
            f"--resume: there is no checkpoint {checkpoint_path} to continue; "
            "train without --resume to start a run there"
        )
    config = read_config(out)
    stored = config.get("options")
    if isinstance(stored, dict):
        stored = {**ADDED_RUN_OPTIONS, **stored}
    if not isinstance(stored, dict) or any(name not in stored for name in RUN_OPTIONS):
        raise ValueError(f"{out / CONFIG_NAME} records no options of pyro-vae train to resume")
    differences = [
        f"{_option(name)} {_stored(getattr(args, name))} (the run has {stored[name]})"
        for name in RUN_OPTIONS
        if name in given and _stored(getattr(args, name)) != stored[name]
    ]
    if differences:
        raise ValueError(
            "--resume cannot change what defines the run: "
            + ", ".join(differences)
            + "; train into another --out, or pass --overwrite instead of --resume to replace it"
        )
    for name in RUN_OPTIONS:
        value = stored[name]
        setattr(args, name, tuple(value) if name == "hidden" else value)
    for name in ("epochs", "patience"):  # the target and the stopping rule carry over
        if name not in given:
            setattr(args, name, stored[name])
    done = int(load_checkpoint(checkpoint_path)["epoch"])  # also refuses a damaged checkpoint
    if args.epochs <= done:
        raise ValueError(
            f"the run in {out} has done {done} epochs; --epochs {args.epochs} adds none "
            f"(pass --epochs {done + 10}, say, to train on)"
        )
    return config, done


def _check_objective_options(args, given: set[str]) -> None:
    """Refuse objective options that cannot apply together, naming them."""
    if "anneal_epochs" not in given and args.anneal_epochs is None:
        orphans = [n for n in ("anneal_start", "anneal_cycles") if n in given]
        if orphans:
            raise ValueError(
                f"{_option(orphans[0])} needs --anneal-epochs (the length of the rise)"
            )
    if "iwae_k" in given and args.loss != "iwae":
        raise ValueError(f"--iwae-k sets the particles of --loss iwae, not of --loss {args.loss}")
    reshaped = [
        name
        for name, off in (("anneal_epochs", None), ("free_bits", 0.0))
        if getattr(args, name) != off
    ]
    if reshaped and args.loss != "trace":
        raise ValueError(
            f"{_option(reshaped[0])} reshapes the single-sample ELBO of --loss trace; it cannot "
            f"apply to --loss {args.loss}"
        )


def _check_model_options(args, given: set[str]) -> None:
    """Refuse options that do not apply to --model, naming them; fill in the M2 defaults."""
    if args.model != "m2":
        for name in ("labels_per_class", "alpha"):
            if name in given:
                raise ValueError(f"{_option(name)} applies to --model m2, not --model {args.model}")
    if args.model == "vae":
        return
    if args.flows:
        raise ValueError(f"--flows applies to --model vae, not --model {args.model}")
    if args.arch != "mlp":
        raise ValueError(
            f"--arch {args.arch} applies to --model vae; --model {args.model} uses MLPs"
        )
    if args.model == "m2":
        if "loss" in given and args.loss != "enum":
            raise ValueError(
                f"--model m2 sums the label out exactly with --loss enum, not --loss {args.loss}"
            )
        args.loss = "enum"
        if args.labels_per_class is None:
            args.labels_per_class = M2_LABELS_PER_CLASS


def _objective(args):
    """The training objective the options ask for: a loss name or an objective object."""
    if args.loss == "iwae":
        return IWAEObjective(args.iwae_k)
    if args.anneal_epochs is None and args.free_bits == 0:
        return args.loss
    annealing = None
    if args.anneal_epochs is not None:
        annealing = KLAnnealing(args.anneal_epochs, args.anneal_start, args.anneal_cycles)
    return KLControlledELBO(annealing, args.free_bits)


def _existing_run_files(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def cmd_train(args) -> int:
    given = args.given
    out = Path(args.out)
    say = (lambda *a: None) if args.quiet else print
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: pass one")
    check_writable(out)
    config, done = None, 0
    existing = _existing_run_files(out)
    if args.resume:
        config, done = _resume_settings(args, given, out)
    _check_model_options(args, given)
    _check_objective_options(args, given)
    if not args.resume and existing and not args.overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}); pass --resume "
            "to continue it or --overwrite to replace it"
        )
    set_threads(args.threads)
    # an absent device fails before the data are loaded; under torchrun every rank joins here
    ranks, _ = join(resolve_device(args.device))
    if not ranks.is_main:  # rank 0 speaks and writes for all
        say = lambda *a: None  # noqa: E731
    barrier()  # every rank has checked the folder before rank 0 changes it
    binarize = args.binarize
    if binarize == "auto":  # Bernoulli pixels need binary data; a Gaussian keeps intensities
        binarize = "static" if args.likelihood == "bernoulli" else None
    binarize = None if binarize == "none" else binarize
    run_config = {
        "dataset": args.dataset,
        "root": args.root,
        "binarize": binarize,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
    }
    data = run_data(run_config)
    streams = _training_streams(args, data)  # refuses too many labels per class
    pyro.set_rng_seed(args.seed)  # before the networks are initialised: runs repeat exactly
    vae = _build_model(args, data)
    objective = _objective(args)
    if args.model == "m2":
        labelled = streams["labelled"].data[0]
        if args.alpha is None:  # Kingma et al. (2014), sec. 4.1: alpha = 0.1 N
            args.alpha = 0.1 * len(data.train)
        # y given: nothing to enumerate, z is reparameterized (the fast "trace" objective)
        classify = AuxiliaryTerm("trace", vae.classifier_nll, weight=args.alpha / len(labelled))
        streams["labelled"] = LabelledStream(streams["labelled"].data, loss=classify)
    options = {name: _stored(getattr(args, name)) for name in (*RUN_OPTIONS, *RESUME_OPTIONS)}
    if config is None:  # a new run (or --overwrite): the folder is written from scratch
        config = {**run_config, "model": args.model}
        config["vae"] = {**vae.config, "hidden": list(args.hidden)}
        config.update(options=options, resumes=[])
        if ranks.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for path in [*(out / n for n in existing), *out.glob("figures/*.png")]:
                path.unlink()
            write_text_atomic(out / CONFIG_NAME, json.dumps(config, indent=1))
    else:  # recorded once the first new epoch is safely on disk
        changed = {
            name: [config["options"].get(name), options[name]]
            for name in RESUME_OPTIONS
            if config["options"].get(name) != options[name]
        }
        config["resumes"] = [*config.get("resumes", []), {"from_epoch": done, "changed": changed}]
        config["options"] = options
    segment = len(config["resumes"])

    def on_epoch_end(record: dict) -> None:
        if record["epoch"] == done + 1 and segment > 0:
            write_text_atomic(out / CONFIG_NAME, json.dumps(config, indent=1))

    name = {"vae": "VAE", "cvae": "conditional VAE", "m2": "M2 model"}[args.model]
    what = f"{args.likelihood} {name} {data.train.data_dim}-{'-'.join(map(str, args.hidden))}-"
    labels_note = ""
    if args.model == "m2":
        n_l = len(streams["labelled"].data[0])
        labels_note = f", {n_l:,} of them labelled ({args.labels_per_class} per class)"
    say(
        f"{'resuming' if done else 'training'} a {what}{args.latent} on {args.dataset} "
        f"({data.sizes()}{labels_note}) -> {out}"
        + (f", from epoch {done} to {args.epochs}" if done else "")
    )
    if not isinstance(objective, str):
        say(f"objective: {objective!r}; the history records it and the true -ELBO")
    pyro.clear_param_store()
    result = train(
        vae.model,
        vae.guide,
        streams["data"],
        val_data=streams["val_data"],
        labelled=streams.get("labelled"),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=objective,
        device=args.device,
        seed=args.seed,
        clip_norm=args.clip_norm,
        patience=args.patience,
        out_dir=out,
        resume=args.resume,
        progress=not args.quiet,
        on_epoch_end=on_epoch_end,
        tags={"segment": segment},
        compile=COMPILE_CHOICES[args.compile],
    )
    if not ranks.is_main:
        return 0
    final = result.final
    test_loss = _test_loss(vae, data, args.model)
    bits = data.train.data_dim * math.log(2)
    val_text = (
        f"validation -ELBO {final['val_loss']:.2f}, " if final.get("val_loss") is not None else ""
    )
    accuracy = ""
    if args.model == "m2":
        x_test = test_images(data).to(next(vae.parameters()).device)
        accuracy = f"; test accuracy of q(y|x) {vae.accuracy(x_test, data.test.y):.4f}"
    print(
        f"after {final['epoch']} epochs: train -ELBO {final['train_loss']:.2f}, {val_text}"
        f"test -ELBO {test_loss:.2f} nats/datapoint ({test_loss / bits:.4f} bits/dim)"
        + (" given the labels" if args.model == "cvae" else "")
        + accuracy
        + (" (stopped early)" if result.stopped_early else "")
    )
    if args.model == "vae":
        figures = training_figures(vae, data, result.history, out / "figures")
    else:
        figures = conditional_figures(vae, data, result.history, out / "figures")
    say(f"figures in {out / 'figures'}: {', '.join(p.name for p in figures)}")
    say(f"next: pyro-vae evaluate {out}    (test log p(x) by importance sampling)")
    return 0


def _training_streams(args, data) -> dict:
    """What ``train`` gets for --model: ``data`` and ``val_data`` (with labels for the CVAE),
    and for M2 the ``labelled`` stream (``--labels-per-class`` images per class, seeded)."""
    if args.model == "vae":
        return {"data": data.train, "val_data": data.val}
    if args.model == "cvae":
        val = (data.val, data.val.y) if data.val is not None else None
        return {"data": (data.train, data.train.y), "val_data": val}
    labelled, unlabelled = labelled_split(data.train, args.labels_per_class, seed=args.seed)
    return {
        "data": unlabelled,
        "val_data": data.val,
        "labelled": LabelledStream((labelled, labelled.y)),
    }


def _build_model(args, data):
    """The --model's networks, drawn from the global torch RNG (seeded by the caller)."""
    if args.model == "vae":
        return VAE(
            data.train.data_dim,
            latent_dim=args.latent,
            hidden=args.hidden,
            likelihood=args.likelihood,
            activation=args.activation,
            arch=args.arch,
            image_shape=data.image_shape,
            flows=args.flows,
        )
    num_classes = int(max(data.train.y.max(), data.test.y.max())) + 1
    return MODELS[args.model](
        data.train.data_dim,
        num_classes=num_classes,
        latent_dim=args.latent,
        hidden=args.hidden,
        likelihood=args.likelihood,
        activation=args.activation,
        image_shape=data.image_shape,
    )


@torch.no_grad()
def _test_loss(vae, data, kind: str = "vae") -> float:
    """-ELBO per datapoint on the test split (one fixed binarization for a "dynamic" run);
    given the test labels for the CVAE."""
    from pyro_vae.infer.evidence.importance import elbo_per_datapoint

    x = test_images(data).to(next(vae.parameters()).device)
    labels = (data.test.y.to(x.device),) if kind == "cvae" else ()
    return -elbo_per_datapoint(vae.model, vae.guide, x, *labels, num_samples=1).mean().item()


# --- evaluate ----------------------------------------------------------------------------------


def _iwae_ks(args) -> list[int]:
    if args.iwae_k is None:
        return [k for k in IWAE_KS if k <= args.num_samples]
    too_many = [k for k in args.iwae_k if k > args.num_samples]
    if too_many:
        raise ValueError(
            f"--iwae-k {','.join(map(str, too_many))} exceeds --num-samples {args.num_samples}: "
            "L_k is computed from k of the L importance samples"
        )
    return sorted(set(args.iwae_k))


def cmd_evaluate(args) -> int:
    from pyro_vae.infer.evidence.dataset import dataset_nll
    from pyro_vae.infer.evidence.importance import iwae_from_log_weights

    set_threads(args.threads)
    ranks, device = join(resolve_device(args.device))  # under torchrun: sharded evaluation
    ks = _iwae_ks(args)
    run = load_run(args.run_dir, device=device)
    figures = Path(run.run_dir) / "figures"
    check_writable(figures)  # before the work, not after it
    pyro.set_rng_seed(args.seed)
    vae = run.vae
    x = evaluation_data(run, args.num_points, args.seed).to(device)
    y = evaluation_labels(run, args.num_points).to(device)
    n, dim = x.shape
    # one importance-sampling pass: its weights give log p(x), the ELBO and every L_k; a
    # conditional run is scored with the test labels, log p(x|y)
    nll = dataset_nll(
        vae.model,
        vae.guide,
        (x, y) if run.conditional else x,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        progress=not args.quiet and ranks.is_main,
        return_log_weights=True,
    )
    elbo = nll.log_weights.mean(1)
    iwae = {}
    for k in ks:
        bound = iwae_from_log_weights(nll.log_weights, k)
        iwae[k] = (bound.mean().item(), bound.std().item() / math.sqrt(n))
    khat = nll.khat
    report = {
        "run_dir": str(run.run_dir),
        "model": run.kind,
        "evidence": "log p(x|y)" if run.conditional else "log p(x)",
        "split": "test",
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
    if run.kind == "m2":
        report["accuracy"] = vae.accuracy(x, y)
    if not ranks.is_main:  # every rank holds the gathered result; rank 0 reports it
        return 0
    print(_evaluation_table(report))  # first: nothing computed is lost if a write fails
    write_text_atomic(Path(run.run_dir) / "evaluation.json", json.dumps(report, indent=1))
    from pyro_vae.diagnostics import plots

    plots.save_khat_plot(khat, figures / "khat.png")
    plots.save_elbo_vs_logpx(elbo, nll.log_px, figures / "elbo_vs_logpx.png")
    if not args.quiet:
        print(f"wrote {run.run_dir}/evaluation.json, figures/khat.png, figures/elbo_vs_logpx.png")
    return 0


def _evaluation_table(r: dict) -> str:
    lines = [
        f"{r['split']} split: {r['num_points']} datapoints, L = {r['num_samples']} importance "
        "samples each; the ELBO and every L_k are computed from the same samples",
        "",
        "| quantity (per datapoint, nats) | value | standard error |",
        "|---|---|---|",
        f"| NLL = -{r.get('evidence', 'log p(x)')} (importance sampling) | {r['nll']:.3f} "
        f"| {r['nll_stderr']:.3f} |",
        f"| NLL in bits/dim | {r['nll_bits_per_dim']:.4f} | |",
        f"| ELBO | {r['elbo']:.3f} | {r['elbo_stderr']:.3f} |",
        f"| gap log p(x) - ELBO | {r['gap']:.3f} | |",
        f"| largest Monte Carlo standard error of one log p(x) | {r['max_mc_stderr']:.4f} | |",
        "",
        "| k | IWAE bound L_k | standard error |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {mean:.3f} | {se:.3f} |" for k, (mean, se) in r["iwae"].items()]
    if "accuracy" in r:
        lines += ["", f"test accuracy of the classifier q(y|x): {r['accuracy']:.4f}"]
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
    from pyro_vae.diagnostics.latent import (
        active_units,
        amortization_gap,
        kl_per_dimension,
        latent_kl,
    )
    from pyro_vae.diagnostics.posterior import guide_draws, nuts_reference

    set_threads(args.threads)
    run = load_run(args.run_dir)
    out = Path(run.run_dir) / "figures"
    check_writable(out)
    pyro.set_rng_seed(args.seed)
    vae = run.vae
    x = evaluation_data(run, args.num_points, args.seed)
    # a conditional pair gets the test labels: every tool is called f(x, y)
    y = (evaluation_labels(run, args.num_points),) if run.conditional else ()
    flows = getattr(vae, "flows", 0)
    if args.gap_points > len(x) or args.nuts_points > len(x):
        raise ValueError(
            f"--gap-points {args.gap_points} and --nuts-points {args.nuts_points} must not "
            f"exceed --num-points {len(x)}"
        )
    active, variances = active_units(vae.guide, x, *y)
    # a flow guide does not factorize: its KL has no per-unit split, only a Monte Carlo total
    kl = kl_per_dimension(vae.model, vae.guide, x, *y) if not flows else None
    kl_total = kl.sum().item() if kl is not None else latent_kl(vae.model, vae.guide, x).mean()
    gap_rows = slice(0, args.gap_points)
    gap = amortization_gap(
        vae.model,
        vae.guide,
        x[gap_rows],
        *(t[gap_rows] for t in y),
        num_steps=args.gap_steps,
        progress=not args.quiet,
    )
    index = list(range(args.nuts_points))
    y_index = tuple(t[index] for t in y)
    guide = guide_draws(vae.guide, x[index], *y_index, num_chains=args.chains, num_draws=args.draws)
    nuts = nuts_reference(
        vae.model,
        x[index],
        *y_index,
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.draws,
        seed=args.seed,
        progress=not args.quiet,
    )
    guide = {name: draws for name, draws in guide.items() if name in nuts}  # M2: NUTS sums y out
    idatas = {
        "guide": arviz_io.to_inference_data(guide, index),
        "NUTS": arviz_io.to_inference_data(nuts, index),
    }
    summaries = {name: arviz_io.summary(idata) for name, idata in idatas.items()}
    report = {
        "split": "test",
        "active_units": active,
        "latent_dim": vae.latent_dim,
        "activity_per_dim": variances.tolist(),
        "kl_per_dim": kl.tolist() if kl is not None else None,
        "kl_total": float(kl_total),
        "amortization_gap": gap["mean_amortization_gap"],
        "elbo_amortized": gap["mean_elbo_amortized"],
        "elbo_optimized": gap["mean_elbo_optimized"],
        "max_r_hat_nuts": float(summaries["NUTS"]["r_hat"].max()),
    }
    guide_sum, nuts_sum = summaries["guide"], summaries["NUTS"]
    mean_abs = (guide_sum["mean"] - nuts_sum["mean"]).abs().mean()
    sd_ratio = (guide_sum["sd"] / nuts_sum["sd"]).median()
    kl_text = (
        "by dimension: " + " ".join(f"{v:.2f}" for v in kl.tolist())
        if kl is not None
        else "Monte Carlo total (a flow guide has no per-dimension KL)"
    )
    lines = [
        f"test split, {len(x)} datapoints:",
        f"active units (Cov_x E_q[z_j] > 0.01): {active} of {vae.latent_dim}",
        f"KL(q(z|x) || p(z)): {report['kl_total']:.3f} nats/datapoint; {kl_text}",
        f"amortization gap on {args.gap_points} test points: {report['amortization_gap']:.3f} "
        f"nats/datapoint (ELBO amortized {report['elbo_amortized']:.3f}, "
        f"optimized per datapoint {report['elbo_optimized']:.3f})",
        f"guide vs NUTS on {args.nuts_points} test points: mean |difference of posterior means| "
        f"{mean_abs:.3f}, median sd ratio guide/NUTS {sd_ratio:.3f}, "
        f"NUTS max R-hat {report['max_r_hat_nuts']:.3f}",
    ]
    print("\n".join(lines))  # first: nothing computed is lost if a write fails
    write_text_atomic(Path(run.run_dir) / "diagnostics.json", json.dumps(report, indent=1))
    for name, table in summaries.items():
        table.to_csv(Path(run.run_dir) / f"posterior_summary_{name.lower()}.csv")
    arviz_io.save_forest(idatas, out / "forest_guide_vs_nuts.png")
    arviz_io.save_pair(idatas, out / "pair_guide_vs_nuts.png")
    if kl is not None:
        plots.save_kl_per_dimension(kl, out / "kl_per_dimension.png", variances=variances)
    if not args.quiet:
        kl_figure = " and figures/kl_per_dimension.png" if kl is not None else ""
        print(
            f"wrote {run.run_dir}/diagnostics.json, posterior_summary_*.csv, figures/"
            "{forest,pair}_guide_vs_nuts.png" + kl_figure
        )
    return 0


# --- parser ------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seeds every random draw")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=DEFAULT_THREADS,
        help="CPU threads for torch; one stays fast when other processes share the cores",
    )
    p.add_argument(
        "--quiet", action="store_true", help="print only the results (no progress, no notes)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-vae`` argument parser (``train``, ``evaluate``, ``diagnose``)."""
    from pyro_vae import __version__

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = _Parser(
        prog="pyro-vae",
        description=__doc__.splitlines()[0],
        formatter_class=fmt,
        allow_abbrev=False,  # so that _given_options sees every option as written
    )
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train a VAE (or a CVAE, or M2) by SVI; writes checkpoint, history and figures",
        description="Train a VAE, conditional VAE or M2 model by SVI; writes config.json, "
        "checkpoint.pt, history.json/.csv and figures/ in --out.",
        formatter_class=fmt,
        allow_abbrev=False,
    )
    t.add_argument(
        "--model",
        default="vae",
        choices=sorted(MODELS),
        help="vae; cvae, the conditional VAE p(x|y) trained on images and labels; m2, the "
        "semi-supervised model of Kingma et al. 2014 (--labels-per-class, --alpha)",
    )
    t.add_argument(
        "--labels-per-class",
        type=_positive_int,
        default=None,
        help=f"--model m2: labelled training images per class, the rest unlabelled (default "
        f"{M2_LABELS_PER_CLASS})",
    )
    t.add_argument(
        "--alpha",
        type=_non_negative,
        default=None,
        help="--model m2: weight alpha of the classification term alpha * E[-log q(y|x)] on "
        "labelled data (default 0.1 N, N training images, as Kingma et al. 2014)",
    )
    t.add_argument("--dataset", default=DEFAULT_DATASET, choices=DATASETS, help="data set")
    t.add_argument("--root", default=None, help="folder of the mnist/fashion-mnist files")
    t.add_argument("--download", action="store_true", help="let torchvision download into --root")
    t.add_argument(
        "--binarize",
        default="auto",
        choices=["auto", "static", "dynamic", "none"],
        help="pixels to {0, 1}; auto: static for --likelihood bernoulli, none for gaussian",
    )
    t.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        help="part of the training data held out (seeded) for the validation curve and "
        "early stopping; the test split is only used for the final report",
    )
    t.add_argument("--likelihood", default="bernoulli", choices=LIKELIHOODS, help="p(x|z)")
    t.add_argument("--latent", type=_positive_int, default=20, help="latent dimension M")
    t.add_argument("--hidden", type=_hidden, default=(400,), help="hidden sizes, e.g. 512,256")
    t.add_argument(
        "--activation", default="relu", choices=sorted(ACTIVATIONS), help="hidden activation"
    )
    t.add_argument("--arch", default="mlp", choices=ARCHS, help="encoder/decoder networks")
    t.add_argument("--epochs", type=_positive_int, default=10, help="epochs to reach")
    t.add_argument("--batch-size", type=_positive_int, default=128, help="datapoints per step")
    t.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    t.add_argument(
        "--loss",
        default="trace",
        choices=LOSSES,
        help="the objective: trace (our fast Trace_ELBO), Pyro's pyro-trace, meanfield or "
        "jit, or iwae (the importance-weighted bound, --iwae-k particles)",
    )
    t.add_argument(
        "--iwae-k", type=_positive_int, default=5, help="particles k of --loss iwae (Burda et al.)"
    )
    t.add_argument(
        "--flows",
        type=_count,
        default=0,
        help="inverse autoregressive flow steps in the guide (0: diagonal Gaussian guide)",
    )
    t.add_argument(
        "--anneal-epochs",
        type=_positive_float,
        default=None,
        help="KL annealing (Bowman et al.): the KL weight rises linearly from --anneal-start "
        "to 1 over this many epochs (default: no annealing)",
    )
    t.add_argument(
        "--anneal-start", type=_fraction, default=0.0, help="KL weight at the start of a rise"
    )
    t.add_argument(
        "--anneal-cycles",
        type=_positive_int,
        default=1,
        help="rises of the KL weight; above 1 the schedule is cyclical (Fu et al.: each cycle "
        "rises over --anneal-epochs, then holds 1 as long)",
    )
    t.add_argument(
        "--free-bits",
        type=_nats,
        default=0.0,
        help="free bits (Kingma et al. 2016): nats per latent dimension below which a "
        "dimension's minibatch KL is not penalized (0: off)",
    )
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    t.add_argument(
        "--compile",
        default="auto",
        choices=sorted(COMPILE_CHOICES),
        help="run each step as one compiled graph; auto: for runs of at least 2000 steps "
        "(where the compile time is repaid) whose step can be captured",
    )
    t.add_argument("--clip-norm", type=_positive_float, default=None, help="clip the gradient norm")
    t.add_argument(
        "--patience",
        type=_positive_int,
        default=None,
        help="stop after this many epochs without a better validation -ELBO",
    )
    t.add_argument("--out", default="runs/vae", help="run folder")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out to --epochs; options not given keep the run's values",
    )
    t.add_argument(
        "--overwrite", action="store_true", help="replace a run that is already in --out"
    )
    _common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="test log p(x) by importance sampling, ELBO, gap, IWAE, k-hat",
        description="Score a trained run on its test split: log p(x) by importance sampling, "
        "the ELBO and IWAE bounds from the same samples, PSIS k-hat.",
        formatter_class=fmt,
        allow_abbrev=False,
    )
    e.add_argument("run_dir", help="a folder written by pyro-vae train")
    e.add_argument(
        "--num-samples", type=_positive_int, default=5000, help="importance samples L per datapoint"
    )
    e.add_argument(
        "--num-points", type=_positive_int, default=None, help="first N test points (default all)"
    )
    e.add_argument("--batch-size", type=_positive_int, default=100, help="datapoints per chunk")
    e.add_argument(
        "--iwae-k",
        type=_ks,
        default=None,
        help="k of the IWAE bounds L_k, e.g. 1,10,100 (default: 1,10,100,1000 up to L)",
    )
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    _common(e)
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser(
        "diagnose",
        help="active units, KL per dimension, amortization gap, guide vs NUTS",
        description="Posterior diagnostics of a trained run on its test split, with ArviZ.",
        formatter_class=fmt,
        allow_abbrev=False,
    )
    d.add_argument("run_dir", help="a folder written by pyro-vae train")
    d.add_argument(
        "--num-points", type=_positive_int, default=1000, help="test points for units and KL"
    )
    d.add_argument("--gap-points", type=_positive_int, default=20, help="test points for the gap")
    d.add_argument("--gap-steps", type=_positive_int, default=300, help="per-datapoint guide steps")
    d.add_argument(
        "--nuts-points", type=_positive_int, default=2, help="test points compared with NUTS"
    )
    d.add_argument("--chains", type=_positive_int, default=2, help="NUTS and guide chains")
    d.add_argument("--warmup", type=_positive_int, default=200, help="NUTS warm-up steps")
    d.add_argument("--draws", type=_positive_int, default=300, help="draws per chain")
    _common(d)
    d.set_defaults(func=cmd_diagnose)
    return parser


def _given_options(args: argparse.Namespace, argv: list[str]) -> set[str]:
    """The option names written on the command line (abbreviations are off, so this is exact)."""
    return {
        name
        for name in vars(args)
        if any(a == _option(name) or a.startswith(_option(name) + "=") for a in argv)
    }


def _one_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run ``pyro-vae``; returns the exit status (0, or 2 after a one-line error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = _given_options(args, argv)
    try:
        return args.func(args)
    except (OSError, ValueError, CheckpointError, TrainingDivergedError) as err:
        print(f"pyro-vae {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
