"""The model registry: every model of ``pyro-vae train --model`` by name.

One table, :data:`MODEL_REGISTRY`, name -> :class:`ModelKind` (the class, its own constructor
arguments from the run's options, the options that apply to it, the labels it takes, its
default binarization, one help line), read by the recipes (the model's arguments and training
streams), the option checks, :func:`~pyro_vae.runs.folders.load_run`, the reports, figures and
uses of a run, and the command line's ``--model`` choices and help. The labels a model takes
(:class:`Labels`) fix what the rest asks of it: the streams it trains on, whether ``evaluate``
passes the test labels and reports log p(x|y) or log p(x), whether it reports the accuracy of
q(y|x), which figures it draws, whether ``encode`` and ``sample`` take labels. Nothing outside
this module (and the loss registry, for losses) compares a model's name with a string: the rest
of the package asks the entry.

To add a model: a module in ``pyro_vae/models/`` with its class, and one entry below, or
:func:`register_model` for a model of your own (docs/design.md, "Adding a model").
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from pyro_vae.data import DatasetSplits
from pyro_vae.models.conditional import CVAE
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE
from pyro_vae.models.vamp import VampVAE
from pyro_vae.runs.config import M2_DEFAULTS, M2_LABELS_PER_CLASS, M2_LOSS, option_flag

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_CLASSES",
    "MODEL_OPTIONS",
    "MODEL_REGISTRY",
    "Labels",
    "ModelKind",
    "ModelOption",
    "check_model_options",
    "model_help",
    "model_kind",
    "models_taking",
    "register_model",
    "unregister_model",
]

DEFAULT_MODEL = "vae"
"""``--model``'s default, and the model of a run written before ``config["model"]`` existed."""


class Labels(enum.Enum):
    """The labels a model takes, which fix its streams, reports, figures and uses."""

    NONE = "none"
    """``f(x)``: trained on the images; log p(x)."""
    GIVEN = "given"
    """``f(x, y)`` always: trained on (images, labels), evaluated as log p(x|y) given the test
    labels; ``encode`` needs labels."""
    SEMI = "semi"
    """``f(x)`` or ``f(x, y)``: trained on the unlabelled images and a labelled stream
    (``--labels-per-class``, the classification term of ``model.classifier_nll``); log p(x)
    with y latent, and the test accuracy of q(y|x) (``model.accuracy``)."""


@dataclass(frozen=True)
class ModelOption:
    """An option of ``pyro-vae train`` that only some models take (:data:`MODEL_OPTIONS`).

    Attributes
    ----------
    neutral : object
        The value every model that does not take the option has: the option is refused for such
        a model when its value differs (``--flows 2``, ``--arch conv``). None: refused when
        written on the command line at all (``--alpha``).
    show_value : bool
        The refusal names the value (``--arch conv``), not only the option.
    argument : Mapping, optional
        For an option the parser does not declare itself (a new model's own: ``--pseudo-inputs``),
        the keyword arguments of argparse's ``add_argument`` (``type``, ``default``, ``help``):
        ``pyro-vae train`` then takes it as ``--pseudo-inputs``. None for those
        :mod:`pyro_vae.cli_parser` declares.
    """

    neutral: object = None
    show_value: bool = False
    argument: Mapping | None = None


MODEL_OPTIONS: dict[str, ModelOption] = {
    "labels_per_class": ModelOption(),
    "alpha": ModelOption(),
    "labelled_schedule": ModelOption(),
    "init": ModelOption(),
    "labelled_passes": ModelOption(),
    "flows": ModelOption(neutral=0),
    "arch": ModelOption(neutral="mlp", show_value=True),
    "pseudo_inputs": ModelOption(
        argument=dict(
            type=int,
            default=50,
            metavar="K",
            help="VampPrior: number K of learned pseudo-inputs, the mixture components of p(z) "
            "(default 50: the paper's 500 per 50,000 MNIST images at MNIST-5k's 4,500)",
        )
    ),
}
"""Every option of ``pyro-vae train`` that only some models take -> how it is refused for the
others (and, for a model's own new option, how the parser reads it). The entries'
:attr:`ModelKind.options` name which of these each model takes. A new option also defines the
run: its name goes in :data:`~pyro_vae.runs.config.RUN_OPTIONS`, and the value a run written
before it had in :data:`~pyro_vae.runs.config.ADDED_RUN_OPTIONS` (a test checks both)."""


def _no_arguments(options: Mapping, data: DatasetSplits) -> dict:
    return {}


@dataclass(frozen=True)
class ModelKind:
    """One registered model of ``pyro-vae train --model``.

    Attributes
    ----------
    model : type
        The class; ``model(**config["vae"])`` rebuilds a run's model.
    help : str
        One line for ``--model``'s help.
    title : str
        What ``train``'s first line calls it ("conditional VAE").
    arguments : callable
        ``arguments(options, data) -> dict``: the keyword arguments of its own, beside those
        every model takes (``data_dim``, ``latent_dim``, ``hidden``, ``likelihood``,
        ``activation``, ``image_shape``: :func:`~pyro_vae.runs.recipes.model_arguments`).
    options : tuple of str
        The :data:`MODEL_OPTIONS` it takes; the others are refused (:func:`check_model_options`).
    labels : Labels
        The labels it takes: its streams, reports, figures and uses (see the properties).
    binarize : {"static", "dynamic"}
        ``--binarize auto`` of Bernoulli pixels.
    loss : str, optional
        The only loss it trains with (a registered loss name), and why, in ``loss_reason``.
    defaults : Mapping
        Options that take other defaults for it on a new run (unless given).
    check : callable, optional
        ``check(options, given) -> options``: checks of its own options, after the shared ones.
    simulated : str
        How ``calibrate`` simulates its data, for the report.
    """

    model: type
    help: str
    title: str
    arguments: Callable[[Mapping, DatasetSplits], dict] = _no_arguments
    options: tuple[str, ...] = ()
    labels: Labels = Labels.NONE
    binarize: str = "static"
    loss: str | None = None
    loss_reason: str = ""
    defaults: Mapping = field(default_factory=dict)
    check: Callable[[dict, set], dict] | None = None
    simulated: str = "z ~ p(z), x ~ p(x|z)"

    @property
    def conditional(self) -> bool:
        """Whether the pair is always called with labels, ``f(x, y)`` (the CVAE)."""
        return self.labels is Labels.GIVEN

    @property
    def semi_supervised(self) -> bool:
        """Whether it trains on unlabelled images and a labelled stream (M2)."""
        return self.labels is Labels.SEMI

    @property
    def takes_labels(self) -> bool:
        """Whether it reads labels at all: its data need them, ``encode``/``sample`` take them
        (``--label``), and it draws the labelled figures (class-conditional samples)."""
        return self.labels is not Labels.NONE

    @property
    def evidence_label(self) -> str:
        """What ``evaluate`` estimates: "log p(x|y)" for a conditional model, else "log p(x)"."""
        return "log p(x|y)" if self.conditional else "log p(x)"

    @property
    def reports_accuracy(self) -> bool:
        """Whether ``train`` and ``evaluate`` report the test accuracy of q(y|x)."""
        return self.semi_supervised


def _vae_arguments(options: Mapping, data: DatasetSplits) -> dict:
    return dict(arch=options["arch"], flows=options["flows"])


def _vamp_arguments(options: Mapping, data: DatasetSplits) -> dict:
    return dict(_vae_arguments(options, data), pseudo_inputs=options["pseudo_inputs"])


def _check_vamp(options: dict, given: set) -> dict:
    if options["pseudo_inputs"] < 1:  # refused before anything is written
        raise ValueError(
            f"--pseudo-inputs {options['pseudo_inputs']} must be a positive integer: the "
            "number K of mixture components of the VampPrior"
        )
    return options


def _labelled_arguments(options: Mapping, data: DatasetSplits) -> dict:
    """The number of classes: the largest train or test label + 1."""
    return dict(num_classes=int(max(data.train.y.max(), data.test.y.max())) + 1)


def _m2_arguments(options: Mapping, data: DatasetSplits) -> dict:
    return dict(_labelled_arguments(options, data), init=options["init"])


def _check_m2(options: dict, given: set) -> dict:
    passes = options["labelled_passes"]
    if options["labelled_schedule"] == "joint" and passes not in ("auto", 1):
        raise ValueError(
            f"--labelled-passes {passes} needs --labelled-schedule alternate: the joint "
            "schedule takes a labelled batch inside every step"
        )
    if options["labels_per_class"] is None:
        options["labels_per_class"] = M2_LABELS_PER_CLASS
    return options


MODEL_REGISTRY: dict[str, ModelKind] = {
    "vae": ModelKind(
        VAE,
        "the VAE p(z) p(x|z)",
        "VAE",
        _vae_arguments,
        ("flows", "arch"),
    ),
    "cvae": ModelKind(
        CVAE,
        "the conditional VAE p(x|y) trained on images and labels",
        "conditional VAE",
        _labelled_arguments,
        labels=Labels.GIVEN,
        simulated="z ~ p(z), x ~ p(x|z,y) at the test labels",
    ),
    "m2": ModelKind(
        M2,
        "the semi-supervised model of Kingma et al. 2014 (--labels-per-class, --alpha)",
        "M2 model",
        _m2_arguments,
        ("labels_per_class", "alpha", "labelled_schedule", "labelled_passes", "init"),
        labels=Labels.SEMI,
        # M2's classifier learns from fresh draws: one fixed draw cost it 7.8 points of test
        # accuracy on MNIST-5k, seed 0 (docs/results/semi_supervised.md)
        binarize="dynamic",
        loss=M2_LOSS,
        loss_reason="sums the label out exactly",
        defaults=M2_DEFAULTS,
        check=_check_m2,
        simulated="y ~ p(y), z ~ p(z), x ~ p(x|y,z); z ranked under q(z|x,y) at the true y",
    ),
    # --flows is not taken: the VampPrior mixes the guide's Gaussians q(z|u_k), and an IAF
    # guide has no Gaussian density at u_k (VampVAE refuses flows > 0)
    "vamp": ModelKind(
        VampVAE,
        "the VAE with the VampPrior p(z) = (1/K) sum_k q(z|u_k) (--pseudo-inputs K)",
        "VampPrior VAE",
        _vamp_arguments,
        ("arch", "pseudo_inputs"),
        check=_check_vamp,
    ),
}
"""Every model of ``pyro-vae train --model``: name -> :class:`ModelKind`."""


def model_kind(name: str | None) -> ModelKind:
    """The entry of model ``name`` (None: a run written before ``config["model"]``, a VAE).

    Raises
    ------
    ValueError
        An unknown name, naming the registered ones.
    """
    name = DEFAULT_MODEL if name is None else name
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name]


def register_model(name: str, kind: ModelKind) -> None:
    """Add a model to :data:`MODEL_REGISTRY` (``--model name`` of parsers built after).

    Raises
    ------
    ValueError
        A name already registered, or an option the :data:`MODEL_OPTIONS` do not hold.
    """
    if name in MODEL_REGISTRY:
        raise ValueError(f"model {name!r} is registered already")
    unknown = [option for option in kind.options if option not in MODEL_OPTIONS]
    if unknown:
        raise ValueError(
            f"model {name!r} takes {option_flag(unknown[0])}, which MODEL_OPTIONS does not hold"
        )
    MODEL_REGISTRY[name] = kind


def unregister_model(name: str) -> ModelKind:
    """Remove a model added by :func:`register_model`; returns its entry."""
    return MODEL_REGISTRY.pop(name)


class _Classes(Mapping):
    """name -> class, a live read-only view of :data:`MODEL_REGISTRY`."""

    def __getitem__(self, name: str) -> type:
        return MODEL_REGISTRY[name].model

    def __iter__(self) -> Iterator[str]:
        return iter(MODEL_REGISTRY)

    def __len__(self) -> int:
        return len(MODEL_REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


MODEL_CLASSES: Mapping[str, type] = _Classes()
"""``config["model"]`` -> the class that ``config["vae"]`` rebuilds (a view of the registry)."""


def models_taking(option: str) -> tuple[str, ...]:
    """The names of the models that take ``option`` (one of :data:`MODEL_OPTIONS`)."""
    return tuple(name for name, kind in MODEL_REGISTRY.items() if option in kind.options)


def model_help() -> str:
    """The help of ``--model``: every registered model with its help line."""
    return "; ".join(f"{name}, {kind.help}" for name, kind in MODEL_REGISTRY.items())


def check_model_options(options: dict, given: set[str]) -> dict:
    """Refuse the options the run's model does not take; its loss, defaults and own checks.

    Parameters
    ----------
    options : dict
        The options of ``train`` (a resume's stored values filled in).
    given : set of str
        The options written on the command line.

    Returns
    -------
    dict
        ``options`` with the model's loss, and on a new run its :attr:`ModelKind.defaults`
        where not given.

    Raises
    ------
    ValueError
        Naming the first option that does not apply, or a loss the model cannot train with.
    """
    name = options["model"]
    kind = model_kind(name)
    for option, rule in MODEL_OPTIONS.items():
        if option in kind.options:
            continue
        value = options.get(option, rule.neutral)
        if option in given if rule.neutral is None else value != rule.neutral:
            flag = option_flag(option) + (f" {value}" if rule.show_value else "")
            takers = " or ".join(f"--model {taker}" for taker in models_taking(option))
            raise ValueError(f"{flag} applies to {takers}, not --model {name}")
    if kind.loss is not None:
        if "loss" in given and options["loss"] != kind.loss:
            raise ValueError(
                f"--model {name} {kind.loss_reason} with --loss {kind.loss}, "
                f"not --loss {options['loss']}"
            )
        options["loss"] = kind.loss
    if kind.check is not None:
        options = kind.check(options, given)
    if not options.get("resume"):  # a resume keeps the stored values
        options.update({k: v for k, v in kind.defaults.items() if k not in given})
    return options
