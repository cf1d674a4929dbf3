"""Inference: the SVI trainer and importance-sampled evidence, for any model/guide pair."""

from pyro_vae.infer.evidence import (
    GlobalLatentError,
    dataset_nll,
    elbo_per_datapoint,
    iwae_bound,
    log_evidence,
)
from pyro_vae.infer.train import TrainingDivergedError, train

__all__ = [
    "GlobalLatentError",
    "TrainingDivergedError",
    "dataset_nll",
    "elbo_per_datapoint",
    "iwae_bound",
    "log_evidence",
    "train",
]
