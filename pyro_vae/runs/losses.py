"""A run's loss: the command line's options -> the settings of a registered loss.

The losses themselves, their settings and help lines are the registry's
(:data:`~pyro_vae.infer.objectives.registry.LOSS_REGISTRY`); this module only says which
options of ``pyro-vae train`` make each setting (:data:`RUN_SETTINGS`), so that the recipe
(:func:`loss_settings`), the option checks (:func:`check_loss_options`) and the command line's
help (:func:`loss_help`) follow the registry, and a new loss needs no change here unless it
takes a new setting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pyro_vae.infer.objectives.kl_control import KLAnnealing
from pyro_vae.infer.objectives.registry import LOSS_REGISTRY, losses_taking
from pyro_vae.runs.config import ADDED_RUN_OPTIONS, option_flag

__all__ = ["RUN_SETTINGS", "RunSetting", "check_loss_options", "loss_help", "loss_settings"]


@dataclass(frozen=True)
class RunSetting:
    """How the options of a run make one setting of a loss.

    Attributes
    ----------
    options : tuple of str
        The run options (``config.json`` names) that make the setting.
    value : callable
        ``value(options) -> object``: the setting, or None when the options leave it off.
    does : str
        What the options do, for a refusal: "sets the particles".
    """

    options: tuple[str, ...]
    value: Callable[[Mapping], object]
    does: str


def _annealing(options: Mapping) -> KLAnnealing | None:
    if options["anneal_epochs"] is None:
        return None
    return KLAnnealing(options["anneal_epochs"], options["anneal_start"], options["anneal_cycles"])


RUN_SETTINGS = {
    "num_particles": RunSetting(
        ("iwae_k",), lambda options: options["iwae_k"], "sets the particles"
    ),
    "annealing": RunSetting(
        ("anneal_epochs", "anneal_start", "anneal_cycles"),
        _annealing,
        "reshapes the single-sample ELBO",
    ),
    "free_bits": RunSetting(
        ("free_bits",),
        lambda options: options["free_bits"] or None,
        "reshapes the single-sample ELBO",
    ),
}
"""Every setting a registered loss takes -> the run options that make it."""


def loss_settings(options: Mapping) -> dict:
    """The settings of the run's loss (``options["loss"]``) that its options turn on.

    Parameters
    ----------
    options : Mapping
        A run's options, with every run-defining one present.

    Returns
    -------
    dict
        Setting name -> value, for the settings the loss takes and the options do not leave off.
    """
    settings = {}
    for name in LOSS_REGISTRY[options["loss"]].settings:
        value = RUN_SETTINGS[name].value(options)
        if value is not None:
            settings[name] = value
    return settings


def check_loss_options(options: Mapping, given: Iterable[str]) -> None:
    """Refuse an option that makes a setting the run's loss does not take.

    An option counts when it was given on the command line or differs from the value a run
    without it has (:data:`~pyro_vae.runs.config.ADDED_RUN_OPTIONS`).

    Parameters
    ----------
    options : Mapping
        A run's options.
    given : iterable of str
        The names of the options written on the command line.

    Raises
    ------
    ValueError
        Naming the option, the losses it applies to and the run's loss.
    """
    loss, given = options["loss"], set(given)
    for setting, run in RUN_SETTINGS.items():
        if setting in LOSS_REGISTRY[loss].settings:
            continue
        for name in run.options:
            if name in given or options[name] != ADDED_RUN_OPTIONS[name]:
                takers = " or ".join(losses_taking(setting))
                raise ValueError(
                    f"{option_flag(name)} {run.does} of --loss {takers}; it cannot apply to "
                    f"--loss {loss}"
                )


def loss_help() -> str:
    """The help of ``--loss``: every registered loss with its help line."""
    return "the objective: " + "; ".join(
        f"{name}, {loss.help}" for name, loss in LOSS_REGISTRY.items()
    )
