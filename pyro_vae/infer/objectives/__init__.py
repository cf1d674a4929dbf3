"""Objectives: the contract (``base``), the ELBOs, KL control, the IWAE bound, auxiliary terms."""

from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm
from pyro_vae.infer.objectives.base import CallableObjective, Objective, as_objective
from pyro_vae.infer.objectives.elbo import LOSSES, FastTraceELBO, PyroELBO, make_objective
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.objectives.kl_control import KLAnnealing, KLControlledELBO

__all__ = [
    "LOSSES",
    "AuxiliaryTerm",
    "CallableObjective",
    "FastTraceELBO",
    "IWAEObjective",
    "KLAnnealing",
    "KLControlledELBO",
    "Objective",
    "PyroELBO",
    "as_objective",
    "make_objective",
]
