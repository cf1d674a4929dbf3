"""Evidence per datapoint: importance sampling, IWAE bounds, the ELBO, PSIS k-hat, data-set NLL,
annealed importance sampling and bidirectional Monte Carlo (with one discrete latent enumerated)."""

from pyro_vae.infer.evidence.ais import AISResult, AISSettings, ais_evidence
from pyro_vae.infer.evidence.bdmc import BDMCResult, bdmc, simulate_data
from pyro_vae.infer.evidence.dataset import NLLResult, dataset_nll
from pyro_vae.infer.evidence.enumerated import enumerated_ais, enumerated_bdmc
from pyro_vae.infer.evidence.importance import (
    elbo_per_datapoint,
    iwae_bound,
    iwae_from_log_weights,
    log_evidence,
)
from pyro_vae.infer.evidence.psis import KHAT_GOOD, KHAT_OK, pareto_khat
from pyro_vae.infer.evidence.weights import EvidenceResult

__all__ = [
    "AISResult",
    "AISSettings",
    "BDMCResult",
    "ais_evidence",
    "bdmc",
    "simulate_data",
    "KHAT_GOOD",
    "KHAT_OK",
    "EvidenceResult",
    "NLLResult",
    "dataset_nll",
    "enumerated_ais",
    "enumerated_bdmc",
    "elbo_per_datapoint",
    "iwae_bound",
    "iwae_from_log_weights",
    "log_evidence",
    "pareto_khat",
]
