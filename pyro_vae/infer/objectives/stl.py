"""The ELBO with the sticking-the-landing guide gradient (STL, Roeder, Wu & Duvenaud 2017).

The reparameterized gradient of ELBO(x) = E_q[log p(x, z) - log q_phi(z | x)] has two parts
in phi: the path derivative, through z = z(phi, eps), and the score d/dphi log q_phi(z) at
fixed z, whose expectation is zero. STL drops the score (Roeder et al. 2017, eq. 8):

    grad_phi ELBO  ~=  (d/dz [log p(x, z) - log q_phi(z | x)]) (d z / d phi),

unbiased for the same gradient, and exactly zero when q is the posterior (log p(x, z) -
log q(z | x) = log p(x) for every z): the estimator's variance vanishes at the optimum, where
the plain estimator's does not. The model's gradient is unchanged.

One loss gives it: with log q-bar, the guide replayed at the same draws detached
(:func:`~pyro_vae.infer.pair.particles.detach_draws`), whose gradient is the score alone,

    surrogate = log p(x, z) - log q(z | x) + (log q-bar - stop(log q-bar)),

equal to the ELBO estimate in value. A step runs the guide twice.
"""

from __future__ import annotations

import torch

from pyro_vae.infer.objectives.particle import ParticleObjective
from pyro_vae.infer.pair.particles import (
    PairBatch,
    detach_draws,
    guide_log_prob,
    model_log_prob,
    trace_guide,
    trace_model,
)

__all__ = ["STLObjective"]


class STLObjective(ParticleObjective):
    """-ELBO per datapoint (nats), averaged over S particles, with the STL guide gradient.

    Not a surrogate: the value is the ELBO estimate itself, so the history records it as it
    does Trace_ELBO's.

    Parameters and errors: those of
    :class:`~pyro_vae.infer.objectives.particle.ParticleObjective`; ``num_particles`` S >= 1
    draws per datapoint are averaged (1, the default: the single-sample ELBO).
    """

    what = "the STL"

    def per_datapoint(self, pair: PairBatch) -> torch.Tensor:
        """ELBO(x_n) of each datapoint, shape (B,), the mean over S particles of
        log p(x_n, z_s) - log q(z_s | x_n), with the STL gradient for the guide."""
        S = self.num_particles
        guide_trace = trace_guide(pair, S)
        log_q = guide_log_prob(pair, S, guide_trace)
        elbo = model_log_prob(pair, S, trace_model(pair, S, guide_trace), guide_trace) - log_q
        if torch.is_grad_enabled():  # the score's gradient, to be taken away: zero in value
            score = guide_log_prob(pair, S, trace_guide(pair, S, at=detach_draws(guide_trace)))
            elbo = elbo + (score - score.detach())
        return elbo.mean(0)
