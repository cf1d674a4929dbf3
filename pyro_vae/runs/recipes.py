"""Recipes: a run's data, model, objective and training streams from its options.

The one place that turns the options of ``pyro-vae train`` (as ``config.json`` stores them,
:mod:`pyro_vae.runs.config`) into library objects:

- :func:`data_config` and :func:`run_data`: the data set, split and binarized as the run says;
- :func:`model_arguments` and :func:`build_model`: the one model-building path, used by
  ``train`` (from the options) and by :func:`pyro_vae.runs.folders.load_run` (from the stored
  ``config["vae"]``, which :func:`architecture` writes);
- :func:`training_objective`: the loss, with the settings its options turn on;
- the M2 losses of Kingma et al. (2014): :func:`m2_alpha` (default 0.1 N) and
  :func:`m2_classification_term` / :func:`m2_labelled_stream` (the classification term on the
  labelled stream);
- :func:`training_streams`: what :func:`~pyro_vae.infer.train` trains on, for each model.

:mod:`pyro_vae.runs.training` puts them together, in the order that makes a seed repeat a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyro_vae.data import (
    DatasetNotFoundError,
    DatasetSplits,
    ImageData,
    labelled_split,
    load_dataset,
)
from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm
from pyro_vae.infer.objectives.registry import LossChoice
from pyro_vae.infer.training.options import LabelledStream
from pyro_vae.models.conditional import CVAE
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE
from pyro_vae.runs.config import M2_ALPHA_PER_LABEL, with_added_options
from pyro_vae.runs.losses import loss_settings
from pyro_vae.runs.models import MODEL_CLASSES, Labels, model_kind
from pyro_vae.runs.own_data import (
    FILE_DATASET,
    file_data_config,
    load_run_file,
    model_image_shape,
)

__all__ = [
    "TrainingStreams",
    "MODELS",
    "architecture",
    "build_model",
    "data_config",
    "m2_alpha",
    "m2_classification_term",
    "m2_labelled_stream",
    "model_arguments",
    "run_data",
    "training_objective",
    "training_streams",
]

MODELS = MODEL_CLASSES
"""``config["model"]`` -> the class that ``config["vae"]`` (its keyword arguments) rebuilds: a
view of the model registry (:data:`~pyro_vae.runs.models.MODEL_REGISTRY`)."""


def data_config(options: Mapping) -> dict:
    """The data part of a run's config: binarization resolved, the rest as given.

    Parameters
    ----------
    options : Mapping
        ``dataset``, ``root``, ``binarize`` (``"auto"``, ``"static"``, ``"dynamic"`` or
        ``"none"``), ``likelihood``, ``seed``, ``val_fraction``.

    Returns
    -------
    dict
        ``dataset``, ``root``, ``binarize`` (``"auto"``: ``"static"`` for Bernoulli pixels,
        which need binary data, or the model's own (``"dynamic"`` for M2's:
        :attr:`~pyro_vae.runs.models.ModelKind.binarize`), None for a Gaussian, which keeps
        intensities; ``"none"``: None), ``seed``, ``val_fraction``.
    """
    if options.get("data") is not None:  # your own file: decided once it is read
        return file_data_config(options)
    binarize = options["binarize"]
    if binarize == "auto" and options["likelihood"] in ("bernoulli", "auto"):  # sets: images
        binarize = model_kind(options.get("model")).binarize
    elif binarize == "auto":
        binarize = None
    return {
        "dataset": options["dataset"],
        "root": options["root"],
        "binarize": None if binarize == "none" else binarize,
        "seed": options["seed"],
        "val_fraction": options["val_fraction"],
    }


def run_data(config: Mapping, download: bool = False, *, flags: bool = False) -> DatasetSplits:
    """The data a run was trained on, split the way it was (train / validation / test).

    Parameters
    ----------
    config : Mapping
        A run's config (or :func:`data_config`): ``dataset``, ``root``, ``binarize``,
        ``seed``, ``val_fraction`` (runs written before the validation split have none: 0).
    download : bool
        Let torchvision download "mnist" / "fashion-mnist" into ``root``.
    flags : bool
        A missing data set's message names the options of ``pyro-vae train`` (``--root``,
        ``--download``) instead of :func:`~pyro_vae.data.load_dataset`'s arguments.

    Returns
    -------
    DatasetSplits

    Raises
    ------
    ValueError, pyro_vae.data.DatasetNotFoundError
        As :func:`pyro_vae.data.load_dataset`.
    """
    if config["dataset"] == FILE_DATASET:
        return load_run_file(config)
    try:
        return load_dataset(
            config["dataset"],
            root=config.get("root"),
            download=download,
            binarize=config.get("binarize"),
            seed=config["seed"],
            val_fraction=config.get("val_fraction", 0.0),
        )
    except DatasetNotFoundError as err:
        if not flags:
            raise
        if download:
            remedy = f"--download could not fetch it into {err.root}"
        elif config.get("root") is not None:
            remedy = f"pass --download to let torchvision fetch it into {err.root}"
        else:
            remedy = "pass --root FOLDER: a folder with its IDX files, or with --download the "
            remedy += "folder torchvision fetches it into"
        raise DatasetNotFoundError(
            f"{err.searched}; {remedy}", dataset=err.dataset, root=err.root, searched=err.searched
        ) from None


def model_arguments(options: Mapping, data: DatasetSplits) -> dict:
    """The keyword arguments of the model ``options["model"]`` asks for, on ``data``.

    Parameters
    ----------
    options : Mapping
        ``model``, ``latent``, ``hidden``, ``likelihood``, ``activation``, and those the model
        reads for arguments of its own (:attr:`~pyro_vae.runs.models.ModelKind.arguments`:
        ``arch`` and ``flows`` for the VAE, ``init`` for M2; those an old run lacks take
        their :data:`~pyro_vae.runs.config.ADDED_RUN_OPTIONS`).
    data : DatasetSplits
        The run's data: the image size and, for a labelled model, the number of classes (the
        largest train or test label + 1).

    Returns
    -------
    dict
        For ``MODELS[options["model"]](**arguments)`` (:func:`build_model`).
    """
    options = with_added_options(options)
    arguments = dict(
        data_dim=data.train.data_dim,
        latent_dim=options["latent"],
        hidden=options["hidden"],
        # "auto" is a file's decision (made before this); a built-in set's images: Bernoulli
        likelihood="bernoulli" if options["likelihood"] == "auto" else options["likelihood"],
        activation=options["activation"],
        image_shape=model_image_shape(data),
    )
    return {**arguments, **model_kind(options["model"]).arguments(options, data)}


def build_model(kind: str, arguments: Mapping) -> VAE | CVAE | M2:
    """The one model-building path: ``MODELS[kind](**arguments)``.

    ``train`` calls it with :func:`model_arguments` (after seeding: the networks are drawn from
    the global torch RNG), :func:`~pyro_vae.runs.folders.load_run` with the stored
    ``config["vae"]``.

    Parameters
    ----------
    kind : str
        The model: a name in :data:`~pyro_vae.runs.models.MODEL_REGISTRY`.
    arguments : Mapping
        Its keyword arguments.

    Returns
    -------
    VAE, CVAE or M2
        With freshly initialised networks.

    Raises
    ------
    ValueError
        An unknown ``kind``, or arguments the model refuses.
    """
    return model_kind(kind).model(**arguments)


def architecture(model: VAE | CVAE | M2) -> dict:
    """What ``config.json`` stores under ``vae``: the keyword arguments that rebuild ``model``.

    Parameters
    ----------
    model : VAE, CVAE or M2
        A model built by :func:`build_model`.

    Returns
    -------
    dict
        ``model.config`` with ``hidden`` as a list (JSON-ready).
    """
    config = model.config
    return {**config, "hidden": list(config["hidden"])}


def training_objective(options: Mapping):
    """The training objective the options ask for: a loss name or an objective object.

    Parameters
    ----------
    options : Mapping
        ``loss`` (default ``"trace"``), ``iwae_k``, ``anneal_epochs``, ``anneal_start``,
        ``anneal_cycles``, ``free_bits`` (absent ones are off: the
        :data:`~pyro_vae.runs.config.ADDED_RUN_OPTIONS`).

    Returns
    -------
    str or LossChoice
        The loss name, with the settings its options turn on
        (:func:`~pyro_vae.runs.losses.loss_settings`: ``num_particles`` from ``iwae_k``;
        annealing and free bits for ``"trace"``) as a
        :class:`~pyro_vae.infer.objectives.registry.LossChoice` when there are any.
    """
    options = with_added_options({"loss": "trace", **options})
    settings = loss_settings(options)
    return LossChoice(options["loss"], settings) if settings else options["loss"]


def m2_alpha(num_labelled: int, alpha: float | None = None) -> float:
    """The weight alpha of M2's classification term: ``alpha``, or 46 N_l by default.

    Parameters
    ----------
    num_labelled : int
        N_l, the number of labelled training images.
    alpha : float, optional
        A weight chosen by the user.

    Returns
    -------
    float
        ``alpha``, or :data:`~pyro_vae.runs.config.M2_ALPHA_PER_LABEL` * N_l (46 per labelled
        image, as Pyro's SS-VAE example) when None. Kingma et al. (2014, sec. 4.1) use 0.1 N
        (N all training images): with 100 labels among 4,500 images that is 4.5 per labelled
        image, a tenth of Pyro's weight.
    """
    return M2_ALPHA_PER_LABEL * num_labelled if alpha is None else alpha


def m2_classification_term(m2: M2, alpha: float, num_labelled: int) -> AuxiliaryTerm:
    """The loss of M2's labelled stream: -ELBO with y given, plus the classification term.

    Summed over the N_l labelled images, the term is alpha * E_labelled[-log q(y|x)] (Kingma et
    al. 2014, eq. 9). With y given there is nothing to enumerate and z is reparameterized:
    the fast ``"trace"`` objective.

    Parameters
    ----------
    m2 : M2
        The model (its :meth:`~pyro_vae.models.m2.M2.classifier_nll`).
    alpha : float
        The weight alpha (:func:`m2_alpha`).
    num_labelled : int
        N_l, the number of labelled images.

    Returns
    -------
    AuxiliaryTerm
        ``AuxiliaryTerm("trace", m2.classifier_nll, weight=alpha / num_labelled)``.
    """
    return AuxiliaryTerm("trace", m2.classifier_nll, weight=alpha / num_labelled)


def m2_labelled_stream(
    m2: M2, labelled: ImageData, alpha: float, schedule: str = "alternate", passes="auto"
) -> LabelledStream:
    """M2's labelled stream: ``(x_l, y_l)`` with :func:`m2_classification_term` as its loss.

    Parameters
    ----------
    m2 : M2
        The model.
    labelled : ImageData
        The labelled images, with their labels ``.y``.
    alpha : float
        The weight alpha (:func:`m2_alpha`).
    schedule : {"alternate", "joint"}
        How the stream enters the steps (:class:`~pyro_vae.infer.LabelledStream`).
    passes : int or "auto"
        Passes over the labelled images per epoch ("alternate"; "auto": as many labelled
        batches as unlabelled ones).

    Returns
    -------
    LabelledStream
        For :func:`~pyro_vae.infer.train`'s ``labelled``; the first stream's loss is
        :data:`~pyro_vae.runs.config.M2_LOSS`.
    """
    classify = m2_classification_term(m2, alpha, len(labelled))
    return LabelledStream((labelled, labelled.y), loss=classify, schedule=schedule, passes=passes)


@dataclass(frozen=True)
class TrainingStreams:
    """What :func:`~pyro_vae.infer.train` trains on.

    Attributes
    ----------
    data : ImageData or tuple
        The (first) training stream: the images, ``(images, labels)`` for the CVAE, the
        unlabelled images for M2.
    val_data : ImageData, tuple or None
        The validation split, with its labels for the CVAE.
    labelled : LabelledStream or None
        M2's labelled images (no loss attached yet: see :func:`m2_labelled_stream`).
    """

    data: object
    val_data: object
    labelled: LabelledStream | None = None


def training_streams(options: Mapping, data: DatasetSplits) -> TrainingStreams:
    """The training streams of ``options["model"]``.

    Parameters
    ----------
    options : Mapping
        ``model``; for M2 ``labels_per_class`` and ``seed`` (which images keep their labels).
    data : DatasetSplits
        The run's data.

    Returns
    -------
    TrainingStreams
        The VAE trains on the images; the CVAE on ``(images, labels)`` (validation too); M2
        on the unlabelled images and a labelled stream of ``labels_per_class`` images per
        class (seeded, :func:`pyro_vae.data.labelled_split`).

    Raises
    ------
    ValueError
        More labels per class than some class has.
    """
    labels = model_kind(options.get("model")).labels
    if labels is Labels.NONE:
        return TrainingStreams(data.train, data.val)
    if labels is Labels.GIVEN:
        val = (data.val, data.val.y) if data.val is not None else None
        return TrainingStreams((data.train, data.train.y), val)
    labelled, unlabelled = labelled_split(
        data.train, options["labels_per_class"], seed=options["seed"]
    )
    return TrainingStreams(unlabelled, data.val, LabelledStream((labelled, labelled.y)))
