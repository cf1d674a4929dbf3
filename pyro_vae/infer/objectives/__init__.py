"""Objectives: the contract (``base``), the ELBOs, KL control, the IWAE bound and its DReG
gradient, the STL ELBO, auxiliary terms, and the registry of every built-in loss by name."""

from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm
from pyro_vae.infer.objectives.base import CallableObjective, Objective, as_objective
from pyro_vae.infer.objectives.dreg import DReGObjective
from pyro_vae.infer.objectives.elbo import FastTraceELBO, PyroELBO
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.objectives.kl_control import KLAnnealing, KLControlledELBO
from pyro_vae.infer.objectives.particle import ParticleObjective
from pyro_vae.infer.objectives.registry import (
    LOSS_REGISTRY,
    LOSSES,
    Loss,
    LossChoice,
    losses_taking,
    make_objective,
)
from pyro_vae.infer.objectives.stl import STLObjective

__all__ = [
    "LOSSES",
    "LOSS_REGISTRY",
    "AuxiliaryTerm",
    "CallableObjective",
    "DReGObjective",
    "FastTraceELBO",
    "IWAEObjective",
    "KLAnnealing",
    "KLControlledELBO",
    "Loss",
    "LossChoice",
    "Objective",
    "ParticleObjective",
    "PyroELBO",
    "STLObjective",
    "as_objective",
    "losses_taking",
    "make_objective",
]
