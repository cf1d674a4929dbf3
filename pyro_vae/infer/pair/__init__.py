"""The engine under every tool: the site convention, the pair doctor, inspecting a pair,
particles and weights."""

from pyro_vae.infer.pair.doctor import FROM_PRIOR, check_pair
from pyro_vae.infer.pair.layout import (
    PairLayout,
    inspect_pair,
    is_fully_reparameterized,
    max_plate_nesting,
    require_reparameterized,
)
from pyro_vae.infer.pair.params import collect_params, restore_params
from pyro_vae.infer.pair.particles import (
    PairBatch,
    bind_pair,
    detach_draws,
    draw_log_weights,
    guide_log_prob,
    model_log_prob,
    trace_guide,
    trace_log_prob,
    trace_model,
)
from pyro_vae.infer.pair.record import SiteTerm, run_pair
from pyro_vae.infer.pair.sites import DATA_PLATE, GlobalLatentError

__all__ = [
    "DATA_PLATE",
    "FROM_PRIOR",
    "GlobalLatentError",
    "PairBatch",
    "PairLayout",
    "SiteTerm",
    "bind_pair",
    "check_pair",
    "collect_params",
    "detach_draws",
    "draw_log_weights",
    "guide_log_prob",
    "inspect_pair",
    "is_fully_reparameterized",
    "max_plate_nesting",
    "model_log_prob",
    "require_reparameterized",
    "restore_params",
    "run_pair",
    "trace_guide",
    "trace_log_prob",
    "trace_model",
]
