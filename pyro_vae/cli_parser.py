"""The argument parser of the ``pyro-vae`` command: one helper per subcommand.

Parsing only: every option's type, default and help line. The commands themselves are in
:mod:`pyro_vae.cli`, the rules behind the options in :mod:`pyro_vae.runs`.

Size: one declaration per option, most of it help text that users read in ``--help``; split,
the commands' parsers would only move apart from the shared option groups they use.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from pathlib import Path

from pyro_vae.data import DATASETS, DEFAULT_DATASET
from pyro_vae.infer.compile.policy import AUTO_MIN_STEPS
from pyro_vae.infer.evidence.ais import SCHEDULES, AISSettings
from pyro_vae.infer.evidence.psis import KHAT_OK
from pyro_vae.infer.objectives.registry import LOSSES, losses_taking
from pyro_vae.infer.runtime.devices import DEFAULT_THREADS
from pyro_vae.infer.training.options import SCHEDULES as LABELLED_SCHEDULES
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.nets import ACTIVATIONS, ARCHS, INITS
from pyro_vae.runs.certified import ESTIMATORS
from pyro_vae.runs.config import M2_ALPHA_PER_LABEL, M2_DEFAULTS, M2_LABELS_PER_CLASS, option_flag
from pyro_vae.runs.losses import loss_help
from pyro_vae.runs.models import DEFAULT_MODEL, MODEL_OPTIONS, MODEL_REGISTRY, model_help
from pyro_vae.runs.training import COMPILE_CHOICES

__all__ = ["DESCRIPTION", "DOCS_POINTER", "build_parser", "given_options"]

DESCRIPTION = "The ``pyro-vae`` command: train a VAE, then ask how good it is."
"""The first line of the command's help."""

DOCS_BUILD = "python3 -m sphinx -W --keep-going -b html docs docs/_build/html"
"""The one command that builds the documentation site, from the repository root."""

DOCS_POINTER = (
    "Documentation (the tutorials, the API, every command, the design): from the repository root, "
    f'pip install -e ".[docs]", then {DOCS_BUILD}, then open docs/_build/html/index.html; '
    "the tutorials are notebooks in docs/tutorials/."
)
"""Where the documentation is: the last lines of ``pyro-vae --help`` and ``python -m pyro_vae``."""


class FORMAT(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help once: not after a help text that states its own default, and not
    as "(default: None)" for an option whose default is worked out later (said in its help)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        # the description and the epilog wrapped between words only, so that a command in them
        # (the docs build's --keep-going) reads and copies whole
        text = " ".join(text.split())
        return textwrap.fill(
            text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )


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
    items = text.split(",")
    if len(items) > 1 and not all(s.strip() for s in items):  # refused, never dropped: a typo
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}: positive integers like 1,10")
    try:
        ks = [int(s) for s in items]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"positive integers like 1,10,100, not {text!r}")
    return ks


def _steps(text: str) -> list[int]:
    """``certify --steps``: distinct T in increasing order, run and reported in that order.

    A repeat or a decrease is refused rather than silently sorted or dropped: the table and
    the figure read T as a ladder of increasing effort, and ``certify`` runs what was written.
    """
    steps = _ks(text)
    repeated = sorted({t for t in steps if steps.count(t) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(
            f"T {','.join(map(str, repeated))} is repeated in {text!r}: give each T once"
        )
    if steps != sorted(steps):
        raise argparse.ArgumentTypeError(
            f"give T in increasing order, like {','.join(map(str, sorted(steps)))}, not {text!r}"
        )
    return steps


# --- the subcommands ---------------------------------------------------------------------------


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


def _train_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a VAE (or a CVAE, or M2) by SVI; writes checkpoint, history and figures",
        description="Train a VAE, conditional VAE or M2 model by SVI; writes config.json, "
        "checkpoint.pt, history.json/.csv and figures/ in --out.",
        formatter_class=FORMAT,
        allow_abbrev=False,
    )
    t.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=sorted(MODEL_REGISTRY),
        help=model_help(),
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
        f"labelled data (default {M2_ALPHA_PER_LABEL:g} N_l, N_l labelled images, as Pyro's "
        "SS-VAE example)",
    )
    t.add_argument(
        "--labelled-schedule",
        default="alternate",
        choices=sorted(LABELLED_SCHEDULES),
        help="--model m2: alternate, the labelled batches as steps of their own (the "
        "classification term a step apart) among the unlabelled ones, as Pyro's SS-VAE example; "
        "joint, a labelled batch inside every step (the weighted union of both losses)",
    )
    t.add_argument(
        "--labelled-passes",
        type=_passes,
        default="auto",
        help="--model m2, alternate schedule: passes over the labelled images per epoch; auto, "
        "as many labelled batches as unlabelled ones (one labelled step beside every "
        "unlabelled one)",
    )
    t.add_argument(
        "--init",
        default="small",
        choices=list(INITS),
        help="--model m2: start weights; small, hidden layers from N(0, 0.001^2) as Pyro's "
        "SS-VAE example; torch, PyTorch's default",
    )
    for name, option in MODEL_OPTIONS.items():  # a registered model's own options
        if option.argument is not None:
            t.add_argument(option_flag(name), **option.argument)
    _data_options(t)
    _model_options(t)
    _training_options(t)
    _run_options(t)
    _common(t)


def _passes(text: str):
    """``--labelled-passes``: "auto" or an int >= 1."""
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected auto or a positive integer, got {text!r}"
        ) from None


def _m2(name: str) -> str:
    """The help's note of an option whose ``--model m2`` default differs (with the default)."""

    def shown(value) -> str:
        return (
            ",".join(map(str, value))
            if isinstance(value, tuple)
            else f"{value:g}"
            if isinstance(value, float)
            else str(value)
        )

    return (
        f" (default {shown(VAE_DEFAULTS[name])}; {shown(M2_DEFAULTS[name])} for --model m2, as "
        "Pyro's SS-VAE example)"
    )


VAE_DEFAULTS = dict(latent=20, hidden=(400,), activation="relu", batch_size=128)
"""The defaults of the options whose ``--model m2`` default differs (:data:`M2_DEFAULTS`)."""


def _data_options(t: argparse.ArgumentParser) -> None:
    t.add_argument("--dataset", default=DEFAULT_DATASET, choices=DATASETS, help="data set")
    _file_options(t)
    t.add_argument("--root", default=None, help="folder of the mnist/fashion-mnist files")
    t.add_argument("--download", action="store_true", help="let torchvision download into --root")
    t.add_argument(
        "--binarize",
        default="auto",
        choices=["auto", "static", "dynamic", "none"],
        help="pixels to {0, 1}; auto: static for --likelihood bernoulli (dynamic for --model "
        "m2), none for gaussian",
    )
    t.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        help="part of the training data held out (seeded) for the validation curve and "
        "early stopping; the test split is only used for the final report",
    )


def _model_options(t: argparse.ArgumentParser) -> None:
    t.add_argument(
        "--likelihood",
        default="auto",
        choices=["auto", *LIKELIHOODS],
        help="p(x|z); auto: bernoulli for binary values or values in [0, 1], gaussian for "
        "other reals (a built-in data set: bernoulli)",
    )
    t.add_argument(
        "--latent",
        type=_positive_int,
        default=VAE_DEFAULTS["latent"],
        help=f"latent dimension M{_m2('latent')}",
    )
    t.add_argument(
        "--hidden",
        type=_hidden,
        default=VAE_DEFAULTS["hidden"],
        help=f"hidden sizes, e.g. 512,256{_m2('hidden')}",
    )
    t.add_argument(
        "--activation",
        default=VAE_DEFAULTS["activation"],
        choices=sorted(ACTIVATIONS),
        help=f"hidden activation{_m2('activation')}",
    )
    t.add_argument("--arch", default="mlp", choices=ARCHS, help="encoder/decoder networks")


def _training_options(t: argparse.ArgumentParser) -> None:
    t.add_argument("--epochs", type=_positive_int, default=10, help="epochs to reach")
    t.add_argument(
        "--batch-size",
        type=_positive_int,
        default=VAE_DEFAULTS["batch_size"],
        help=f"datapoints per step{_m2('batch_size')}",
    )
    t.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    t.add_argument(
        "--loss",
        default="trace",
        choices=LOSSES,
        help=loss_help(),
    )
    t.add_argument(
        "--iwae-k",
        type=_positive_int,
        default=5,
        help=f"particles k of --loss {' or '.join(losses_taking('num_particles'))}",
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


def _run_options(t: argparse.ArgumentParser) -> None:
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    t.add_argument(
        "--compile",
        default="auto",
        choices=sorted(COMPILE_CHOICES),
        help="run each step as one compiled graph; auto: when the step can be captured and "
        f"the run has at least {AUTO_MIN_STEPS} steps (decided from the run alone, so a command "
        "repeats bit for bit; the path is printed and kept by --resume)",
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


def _path(text: str) -> str:
    """A file or folder as an absolute path, so a run records where its data are."""
    return str(Path(text).expanduser().absolute())


def _image_size(text: str) -> tuple[int, int]:
    sizes = _hidden(text)
    if len(sizes) != 2:
        raise argparse.ArgumentTypeError(f"expected H,W such as 28,28, got {text!r}")
    return sizes


def _file_options(t: argparse.ArgumentParser) -> None:
    """``train``'s options for your own data (:mod:`pyro_vae.datafiles`)."""
    t.add_argument(
        "--data",
        type=_path,
        default=None,
        help="your own training data instead of --dataset: .npy, .npz (x, y), .pt, .csv or a "
        "folder of images (one subfolder per class)",
    )
    t.add_argument(
        "--test-data",
        type=_path,
        default=None,
        help="--data's test part (default: a seeded 20%% of --data held out)",
    )
    t.add_argument(
        "--label-column",
        default=None,
        help="the .csv column of integer labels (a name, or a number without a header line)",
    )
    t.add_argument(
        "--image-size",
        type=_image_size,
        default=None,
        help="H,W: resize every image of a --data folder to it (default: their one size)",
    )


def _usage_parsers(sub) -> None:
    """``encode`` and ``sample``; ``evaluate --data`` is declared with ``evaluate``."""
    c = sub.add_parser(
        "encode",
        help="the posterior mean and sd of z for every point of a file",
        description="The guide's posterior mean and standard deviation of z per datapoint of "
        "--data, in its order, transformed as the run's data; written to --out (.npy, .csv or "
        ".pt by the suffix).",
        formatter_class=FORMAT,
        allow_abbrev=False,
    )
    c.add_argument("run_dir", help="a folder written by pyro-vae train")
    c.add_argument("--data", type=_path, required=True, help="the data file to encode")
    c.add_argument("--out", required=True, help="the file to write: .npy, .csv or .pt")
    _usage_options(c)
    s = sub.add_parser(
        "sample",
        help="draws from the prior through the decoder, as an array (and a PNG grid)",
        description="N draws z ~ p(z) decoded by p(x|z): the mean E[x|z] with --mean, else a "
        "draw of x; written to --out (.npy, .csv or .pt), and for image data a PNG grid beside.",
        formatter_class=FORMAT,
        allow_abbrev=False,
    )
    s.add_argument("run_dir", help="a folder written by pyro-vae train")
    s.add_argument("--num", type=_positive_int, required=True, help="how many draws")
    s.add_argument("--out", required=True, help="the file to write: .npy, .csv or .pt")
    s.add_argument("--mean", action="store_true", help="the mean E[x|z] instead of a draw of x")
    _usage_options(s)


def _usage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label",
        type=_count,
        default=None,
        help="--model cvae or m2: the label y of every point (encode: default the file's "
        "labels; M2 without them: z's moments under q(y|x); sample: default y ~ uniform)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=10000, help="datapoints per chunk")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    _common(p)


def _evaluate_parser(sub) -> None:
    e = sub.add_parser(
        "evaluate",
        help="test log p(x) by importance sampling, ELBO, gap, IWAE, k-hat",
        description="Score a trained run on its test split: log p(x) by importance sampling, "
        "the ELBO and IWAE bounds from the same samples, PSIS k-hat.",
        formatter_class=FORMAT,
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
    e.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default="is",
        help="log p(x) to trust: importance sampling, AIS on every point, or auto (AIS where "
        f"the IS k-hat is above {KHAT_OK:g})",
    )
    _ais_options(e)
    e.add_argument(
        "--data",
        type=_path,
        default=None,
        help="score this file instead of the test split: log p(x) per point, in its order, "
        "written to scores_NAME.csv beside evaluation.json",
    )
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    _common(e)


def _ais_options(p: argparse.ArgumentParser, steps: bool = True) -> None:
    """The annealed importance sampler's settings (defaults: AISSettings, Wu et al. 2017)."""
    d = AISSettings()
    p.add_argument("--ais-chains", type=_positive_int, default=d.num_chains, help="AIS chains S")
    if steps:
        p.add_argument(
            "--ais-steps", type=_positive_int, default=d.num_steps, help="AIS distributions T"
        )
    p.add_argument(
        "--ais-leapfrog", type=_positive_int, default=d.num_leapfrog, help="leapfrog steps"
    )
    p.add_argument(
        "--ais-schedule", choices=SCHEDULES, default=d.schedule, help="inverse temperatures"
    )


def _certify_parser(sub) -> None:
    c = sub.add_parser(
        "certify",
        help="BDMC bounds on log p(x) for data simulated from the run's model",
        description="Bidirectional Monte Carlo (Grosse et al. 2015): forward AIS from the "
        "guide and reverse AIS from the true latents, on data drawn from the trained model; the "
        "gap between the two bounds is how far AIS at these settings can be from log p(x).",
        formatter_class=FORMAT,
        allow_abbrev=False,
    )
    c.add_argument("run_dir", help="a folder written by pyro-vae train")
    c.add_argument(
        "--num-points", type=_positive_int, default=100, help="datapoints drawn from the model"
    )
    c.add_argument(
        "--steps",
        type=_steps,
        default="10,100,1000",  # a string: argparse parses it, and --help shows it as typed
        metavar="T1,T2,...",
        help="the AIS steps T to run, in increasing order",
    )
    _ais_options(c, steps=False)
    c.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    _common(c)


def _diagnose_parser(sub) -> None:
    d = sub.add_parser(
        "diagnose",
        help="active units, KL per dimension, amortization gap, guide vs NUTS",
        description="Posterior diagnostics of a trained run on its test split, with ArviZ.",
        formatter_class=FORMAT,
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


def _calibrate_parser(sub) -> None:
    c = sub.add_parser(
        "calibrate",
        help="simulation-based calibration of the guide: over- or under-confident, biased?",
        description="Simulation-based calibration (Talts et al. 2018): data simulated from the "
        "run's model, the rank of each true latent among guide draws, per latent dimension: "
        "coverage, a uniformity p-value, z-score, contraction and a verdict.",
        formatter_class=FORMAT,
        allow_abbrev=False,
    )
    c.add_argument("run_dir", help="a folder written by pyro-vae train")
    c.add_argument(
        "--num-simulations",
        type=_positive_int,
        default=1000,
        help="datapoints simulated from the model",
    )
    c.add_argument("--num-draws", type=_positive_int, default=99, help="guide draws per simulation")
    c.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    _common(c)


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-vae`` argument parser (``train``, ``evaluate``, ``certify``, ``diagnose``).

    Returns
    -------
    argparse.ArgumentParser
        ``parse_args`` gives a namespace whose ``command`` names the subcommand; errors are one
        line and exit status 2.
    """
    from pyro_vae import __version__

    parser = _Parser(
        prog="pyro-vae",
        description=DESCRIPTION,
        epilog=DOCS_POINTER,
        formatter_class=FORMAT,
        allow_abbrev=False,  # so that given_options sees every option as written
    )
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    _certify_parser(sub)
    _diagnose_parser(sub)
    _usage_parsers(sub)
    _calibrate_parser(sub)
    return parser


def given_options(args: argparse.Namespace, argv: list[str]) -> set[str]:
    """The option names written on the command line (abbreviations are off, so this is exact).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.
    argv : list of str
        The command line they were parsed from.

    Returns
    -------
    set of str
        The ``dest`` names of the options that appear in ``argv``.
    """
    return {
        name
        for name in vars(args)
        if any(a == option_flag(name) or a.startswith(option_flag(name) + "=") for a in argv)
    }
