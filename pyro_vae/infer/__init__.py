"""Inference for any model/guide pair: SVI steps and training, importance-sampled evidence.

The subpackages, each importing only those listed before it (``tests/test_layering.py``):
``runtime`` (devices, torch.distributed, files) -> ``pair`` (the site convention, inspecting a
pair, particles and log weights) -> ``objectives`` (the objective contract and every loss) ->
``compile`` (capture, compile, and the one compile policy) -> ``training`` (the step, the loop,
checkpoints) and ``evidence`` (importance sampling, IWAE bounds, k-hat, data-set NLL,
annealed importance sampling and bidirectional Monte Carlo).
"""

from pyro_vae.infer.evidence.ais import AISResult, AISSettings, ais_evidence
from pyro_vae.infer.evidence.bdmc import BDMCResult, bdmc, simulate_data
from pyro_vae.infer.evidence.dataset import dataset_nll
from pyro_vae.infer.evidence.importance import (
    elbo_per_datapoint,
    iwae_bound,
    iwae_from_log_weights,
    log_evidence,
)
from pyro_vae.infer.evidence.psis import pareto_khat
from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm
from pyro_vae.infer.objectives.base import Objective
from pyro_vae.infer.objectives.dreg import DReGObjective
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.objectives.kl_control import KLAnnealing, KLControlledELBO
from pyro_vae.infer.objectives.registry import LOSSES, LossChoice, make_objective
from pyro_vae.infer.objectives.stl import STLObjective
from pyro_vae.infer.pair import FROM_PRIOR, GlobalLatentError, check_pair
from pyro_vae.infer.training.loop import TrainResult, train
from pyro_vae.infer.training.options import LabelledStream, TrainOptions
from pyro_vae.infer.training.svi import SVIStep, TrainingDivergedError

__all__ = [
    "AISResult",
    "AISSettings",
    "AuxiliaryTerm",
    "BDMCResult",
    "DReGObjective",
    "FROM_PRIOR",
    "GlobalLatentError",
    "IWAEObjective",
    "KLAnnealing",
    "KLControlledELBO",
    "LOSSES",
    "LabelledStream",
    "LossChoice",
    "Objective",
    "STLObjective",
    "SVIStep",
    "TrainOptions",
    "TrainResult",
    "TrainingDivergedError",
    "ais_evidence",
    "bdmc",
    "check_pair",
    "dataset_nll",
    "elbo_per_datapoint",
    "iwae_bound",
    "iwae_from_log_weights",
    "log_evidence",
    "make_objective",
    "pareto_khat",
    "simulate_data",
    "train",
]
