"""Importance-weighted training: the IWAE bound of Burda et al. (2015) as a training objective.

For each datapoint, with k particles z_1..z_k ~ q(z | x) drawn at once and reparameterized,

    L_k(x) = log (1/k) sum_i p(x, z_i) / q(z_i | x)  <=  log p(x),

a bound that rises with k (L_1 is the ELBO) and tightens to log p(x) as k grows (Burda et
al. 2015, Theorem 1). Training on it lets the guide be a proposal rather than a posterior
fit: the weights, not q alone, carry the posterior.

The particles are one vectorized draw under an outer ``pyro.plate`` (the same draw as
:func:`pyro_vae.infer.evidence.importance.log_evidence` uses), so the pair must follow the site
convention of docs/design.md: every site inside the data plate, no global latent. Pyro's
``RenyiELBO(alpha=0)`` computes the same bound (summed over the batch where this averages);
it has no ``differentiable_loss``, only a ``loss_and_grads`` that calls ``backward`` itself,
so it cannot serve as an objective of :class:`~pyro_vae.infer.training.svi.SVIStep` (gradient hooks,
clipping, the minibatch convention). ``experiments/bench_train.py`` times the two.
"""

from __future__ import annotations

import math

import torch

from pyro_vae.infer.objectives.particle import ParticleObjective
from pyro_vae.infer.pair.particles import PairBatch, draw_log_weights
from pyro_vae.infer.pair.sites import DATA_PLATE

__all__ = ["IWAEObjective"]


class IWAEObjective(ParticleObjective):
    """-L_k per datapoint (nats): the importance-weighted bound, negated, as a loss.

    Minibatches: the bound is a sum over datapoints, so the batch mean of -L_k(x_n) is an
    unbiased estimate of the full-data value per datapoint; ``num_data`` is not needed.

    Parameters
    ----------
    num_particles : int
        k >= 1 (k = 1 is the single-sample ELBO).
    data_plate : str
        Name of the data plate.

    Attributes
    ----------
    neg_elbo : torch.Tensor or None
        -ELBO per datapoint of the latest draw (the mean of -log w over the k particles),
        detached: what the trainer records so curves compare with plain ELBO runs.

    Errors: those of :class:`~pyro_vae.infer.objectives.particle.ParticleObjective` (k not a
    positive int; a guide site not reparameterized; a site outside the data plate).
    """

    surrogate = True  # the loss is not -ELBO: validation scores the plain ELBO
    what = "the IWAE"

    def __init__(self, num_particles: int = 5, data_plate: str = DATA_PLATE):
        super().__init__(num_particles, data_plate)
        self.neg_elbo = None

    def per_datapoint(self, pair: PairBatch) -> torch.Tensor:
        """L_k(x_n) of each datapoint, shape (B,), differentiable in every parameter."""
        k = self.num_particles
        log_w = draw_log_weights(pair, k)
        self.neg_elbo = -log_w.detach().mean()
        return torch.logsumexp(log_w, dim=0) - math.log(k)
