"""Run folders of the ``pyro-vae`` command, and the recipes that make and read them.

A run folder holds ``config.json`` (data set, model -- ``"vae"``, ``"cvae"`` or ``"m2"`` --,
architecture and every option that defines the run), ``checkpoint.pt`` and
``history.json``/``.csv`` (written by :func:`pyro_vae.infer.training.loop.train`), ``figures/``
and, after ``pyro-vae evaluate`` / ``diagnose``, their reports. This package (and
:mod:`pyro_vae.cli`, which only parses, calls it and prints) is the only library code that
knows both the data sets and the models; ``infer`` and ``diagnostics`` stay generic.

- :mod:`~pyro_vae.runs.config`: which options define a run, which a resume may change, the
  migration of old runs, reading and writing ``config.json``;
- :mod:`~pyro_vae.runs.checks`: the checks of the options, and of a resume against the run;
- :mod:`~pyro_vae.runs.losses`: the options -> the settings of a registered loss;
- :mod:`~pyro_vae.runs.models`: the model registry, every ``--model`` by name and what the
  rest asks of it (its arguments, options, labels, streams, reports);
- :mod:`~pyro_vae.runs.recipes`: data, model (one building path for ``train`` and
  :func:`load_run`), objective, M2's losses and the training streams, from the options;
- :mod:`~pyro_vae.runs.training`: all of them made, in order, and trained;
- :mod:`~pyro_vae.runs.folders`: a run folder, :func:`load_run`, the test images scored;
- :mod:`~pyro_vae.runs.progress`: what a ``train`` command saved, undone or named when it
  fails or is interrupted;
- :mod:`~pyro_vae.runs.figures`: the figures of training, evaluation and diagnosis;
- :mod:`~pyro_vae.runs.reports`: the final scores of ``train``, ``evaluate``'s report and table;
- :mod:`~pyro_vae.runs.diagnosis`: ``diagnose``'s report;
- :mod:`~pyro_vae.runs.archive`: every report kept in a folder named by its settings, the
  latest copied to the top of the run folder.
"""

from pyro_vae.runs.checks import check_options, check_resume
from pyro_vae.runs.config import (
    ADDED_RUN_OPTIONS,
    CONFIG_NAME,
    DOWNLOADABLE,
    M2_ALPHA_PER_LABEL,
    M2_DEFAULTS,
    M2_LABELS_PER_CLASS,
    M2_LOSS,
    RESUME_OPTIONS,
    RUN_OPTIONS,
    new_config,
    option_flag,
    read_config,
    record_resume,
    stored_options,
    stored_value,
    with_added_options,
    write_config,
    write_text_atomic,
)
from pyro_vae.runs.diagnosis import Diagnosis, diagnose_run, diagnosis_text, save_diagnosis
from pyro_vae.runs.figures import (
    conditional_figures,
    diagnosis_figures,
    evaluation_figures,
    run_figures,
    training_figures,
)
from pyro_vae.runs.folders import (
    RUN_FILES,
    Run,
    check_writable,
    clear_run,
    evaluation_data,
    evaluation_labels,
    existing_run_files,
    load_run,
    remove_leftovers,
    test_images,
)
from pyro_vae.runs.models import MODEL_REGISTRY, ModelKind, model_kind, register_model
from pyro_vae.runs.progress import (
    ONE_LINE_ERRORS,
    RunProgress,
    TrainingInterrupted,
    missing_root,
    sigterm_as_interrupt,
)
from pyro_vae.runs.recipes import (
    MODELS,
    TrainingStreams,
    architecture,
    build_model,
    data_config,
    m2_alpha,
    m2_classification_term,
    m2_labelled_stream,
    model_arguments,
    run_data,
    training_objective,
    training_streams,
)
from pyro_vae.runs.reports import (
    IWAE_KS,
    Evaluation,
    evaluate_run,
    evaluation_table,
    final_scores,
    iwae_ks,
    khat_summary,
)
from pyro_vae.runs.training import COMPILE_CHOICES, TrainingRecipe, training_recipe

__all__ = [
    "ADDED_RUN_OPTIONS",
    "COMPILE_CHOICES",
    "CONFIG_NAME",
    "DOWNLOADABLE",
    "Diagnosis",
    "Evaluation",
    "IWAE_KS",
    "M2_ALPHA_PER_LABEL",
    "M2_DEFAULTS",
    "M2_LABELS_PER_CLASS",
    "M2_LOSS",
    "MODELS",
    "MODEL_REGISTRY",
    "ModelKind",
    "ONE_LINE_ERRORS",
    "RESUME_OPTIONS",
    "RUN_FILES",
    "RUN_OPTIONS",
    "Run",
    "RunProgress",
    "TrainingInterrupted",
    "TrainingRecipe",
    "TrainingStreams",
    "architecture",
    "build_model",
    "check_options",
    "check_resume",
    "check_writable",
    "clear_run",
    "conditional_figures",
    "data_config",
    "diagnose_run",
    "diagnosis_figures",
    "diagnosis_text",
    "evaluate_run",
    "evaluation_data",
    "evaluation_figures",
    "evaluation_labels",
    "evaluation_table",
    "existing_run_files",
    "final_scores",
    "iwae_ks",
    "khat_summary",
    "load_run",
    "m2_alpha",
    "m2_classification_term",
    "m2_labelled_stream",
    "missing_root",
    "model_arguments",
    "model_kind",
    "new_config",
    "option_flag",
    "read_config",
    "record_resume",
    "register_model",
    "remove_leftovers",
    "run_data",
    "run_figures",
    "save_diagnosis",
    "sigterm_as_interrupt",
    "stored_options",
    "stored_value",
    "test_images",
    "training_figures",
    "training_objective",
    "training_recipe",
    "training_streams",
    "with_added_options",
    "write_config",
    "write_text_atomic",
]
