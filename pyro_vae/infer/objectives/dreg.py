"""The IWAE bound with the doubly reparameterized guide gradient (DReG, Tucker et al. 2018).

The bound is the IWAE's, L_k(x) = log (1/k) sum_i w_i with w_i = p(x, z_i) / q_phi(z_i | x)
(:mod:`~pyro_vae.infer.objectives.iwae`); only the guide's gradient estimator changes. The
IWAE gradient of phi is sum_i w~_i d/dphi log w_i (w~ the normalized weights), whose score
part d/dphi log q_phi(z) at fixed z does not vanish as k grows, so its signal-to-noise ratio
falls like 1/sqrt(k) (Rainforth et al. 2018, Fig. 1). Reparameterizing that part a second
time removes it (Tucker et al. 2018, eq. 7):

    grad_phi L_k  ~=  sum_i w~_i^2  (d log w_i / d z_i)  (d z_i / d phi),

the path derivative only, weighted by the squared normalized weights; the model's gradient
stays the IWAE's, sum_i w~_i grad_theta log p(x, z_i). Both are unbiased for the gradient of
the same bound.

One loss gives both: with log p and log q at the draws z (reparameterized) and at the same
draws detached (the model and the guide replayed at ``detach_draws``: bars below),

    surrogate = logsumexp_i(log p-bar_i - stop(log q_i)) - log k
                + sum_i stop(w~_i^2) [(log p_i - log p-bar_i) - (log q_i - log q-bar_i)],

where the bracket is zero in value and carries exactly the path derivative in phi (the score
parts of log q_i and log q-bar_i cancel, and so do the theta parts of log p_i and
log p-bar_i), while the first term is the bound with gradients in theta only. Its value is the
IWAE's; a step costs two passes of the pair where the IWAE takes one.
"""

from __future__ import annotations

import math

import torch

from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.pair.particles import (
    PairBatch,
    detach_draws,
    guide_log_prob,
    model_log_prob,
    trace_guide,
    trace_model,
)

__all__ = ["DReGObjective"]


class DReGObjective(IWAEObjective):
    """-L_k per datapoint (nats), the IWAE bound, with the DReG gradient for the guide.

    Parameters, attributes (``neg_elbo``) and errors: those of
    :class:`~pyro_vae.infer.objectives.iwae.IWAEObjective`. With k = 1 the gradient is the
    sticking-the-landing ELBO's (:class:`~pyro_vae.infer.objectives.stl.STLObjective`).
    """

    what = "the IWAE-DReG"

    def per_datapoint(self, pair: PairBatch) -> torch.Tensor:
        """L_k(x_n) of each datapoint, shape (B,), with the gradients of the module docstring."""
        if not torch.is_grad_enabled():  # a value only: the IWAE's, one pass
            return super().per_datapoint(pair)
        k = self.num_particles
        guide_trace = trace_guide(pair, k)
        model_trace = trace_model(pair, k, guide_trace)
        log_q = guide_log_prob(pair, k, guide_trace)
        log_p = model_log_prob(pair, k, model_trace, guide_trace)
        fixed = detach_draws(guide_trace)
        log_q_fixed = guide_log_prob(pair, k, trace_guide(pair, k, at=fixed))
        # the model replayed at its own draws: a latent it drew from the prior keeps its value
        model_fixed = trace_model(pair, k, detach_draws(model_trace))
        log_p_fixed = model_log_prob(pair, k, model_fixed, fixed)
        log_w = (log_p - log_q).detach()
        self.neg_elbo = -log_w.mean()
        weights = torch.softmax(log_w, dim=0)  # w~_i, (k, B)
        path = (log_p - log_p_fixed) - (log_q - log_q_fixed)
        path = path - path.detach()  # zero in value (round-off of a flow's inverse aside)
        bound = torch.logsumexp(log_p_fixed - log_q.detach(), dim=0) - math.log(k)
        return bound + (weights**2 * path).sum(0)
