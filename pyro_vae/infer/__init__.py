"""Inference for any model/guide pair: SVI steps and training, importance-sampled evidence."""

from pyro_vae.infer.evidence import (
    dataset_nll,
    elbo_per_datapoint,
    iwae_bound,
    iwae_from_log_weights,
    log_evidence,
)
from pyro_vae.infer.iwae import IWAEObjective
from pyro_vae.infer.kl_control import KLAnnealing, KLControlledELBO
from pyro_vae.infer.objectives import AuxiliaryTerm, make_objective
from pyro_vae.infer.psis import pareto_khat
from pyro_vae.infer.sites import GlobalLatentError
from pyro_vae.infer.svi import SVIStep, TrainingDivergedError
from pyro_vae.infer.train import train

__all__ = [
    "AuxiliaryTerm",
    "GlobalLatentError",
    "IWAEObjective",
    "KLAnnealing",
    "KLControlledELBO",
    "SVIStep",
    "TrainingDivergedError",
    "dataset_nll",
    "elbo_per_datapoint",
    "iwae_bound",
    "iwae_from_log_weights",
    "log_evidence",
    "make_objective",
    "pareto_khat",
    "train",
]
