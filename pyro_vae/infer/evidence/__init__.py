"""Evidence per datapoint: importance sampling, IWAE bounds, the ELBO, PSIS k-hat, data-set NLL."""

from pyro_vae.infer.evidence.dataset import NLLResult, dataset_nll
from pyro_vae.infer.evidence.importance import (
    elbo_per_datapoint,
    iwae_bound,
    iwae_from_log_weights,
    log_evidence,
)
from pyro_vae.infer.evidence.psis import KHAT_GOOD, KHAT_OK, pareto_khat
from pyro_vae.infer.evidence.weights import EvidenceResult

__all__ = [
    "KHAT_GOOD",
    "KHAT_OK",
    "EvidenceResult",
    "NLLResult",
    "dataset_nll",
    "elbo_per_datapoint",
    "iwae_bound",
    "iwae_from_log_weights",
    "log_evidence",
    "pareto_khat",
]
