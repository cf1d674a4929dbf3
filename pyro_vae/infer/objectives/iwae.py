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

from pyro_vae.infer.objectives.base import Objective
from pyro_vae.infer.pair.layout import inspect_pair, require_reparameterized
from pyro_vae.infer.pair.particles import PairBatch, draw_log_weights
from pyro_vae.infer.pair.sites import DATA_PLATE
from pyro_vae.infer.runtime.devices import forked_rng

__all__ = ["IWAEObjective"]


class IWAEObjective(Objective):
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

    Raises
    ------
    ValueError
        For k that is not a positive int; when called, for a guide with a latent site that is
        not reparameterized.
    GlobalLatentError
        When called on a pair with a site outside the data plate.
    """

    surrogate = True  # the loss is not -ELBO: validation scores the plain ELBO

    def __init__(self, num_particles: int = 5, data_plate: str = DATA_PLATE):
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or num_particles < 1
        ):
            raise ValueError(f"the IWAE needs k >= 1 particles, got {num_particles!r}")
        self.num_particles, self.data_plate = num_particles, data_plate
        self.neg_elbo = None
        self._layouts = {}  # batch size -> PairLayout (the last batch may be shorter)

    def _layout(self, model, guide, x, args, kwargs):
        layout = self._layouts.get(x.shape[0])
        if layout is None:
            require_reparameterized("the IWAE objective", model, guide, x, *args, **kwargs)
            # a forked RNG: finding the layout must not change the draws that follow
            with forked_rng(x), torch.no_grad():
                layout = inspect_pair(model, guide, x, *args, data_plate=self.data_plate, **kwargs)
            self._layouts[x.shape[0]] = layout
        return layout

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """-L_k per datapoint of the batch ``x``, differentiable in every parameter.

        Parameters
        ----------
        model, guide : callable
            A pair following the site convention, with a reparameterized guide.
        x : torch.Tensor of shape (B, ...)
            A minibatch of B datapoints.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        num_data : int, optional
            Accepted for the objective signature; the batch mean needs no scaling.

        Returns
        -------
        torch.Tensor of shape ()
            -(1/B) sum_n L_k(x_n), nats per datapoint.
        """
        layout = self._layout(model, guide, x, args, kwargs)
        k = self.num_particles
        pair = PairBatch(model, guide, x, args, kwargs, layout, self.data_plate)
        log_w = draw_log_weights(pair, k)
        self.neg_elbo = -log_w.detach().mean()
        bound = torch.logsumexp(log_w, dim=0) - math.log(k)  # (B,)
        return -bound.mean()

    def __repr__(self) -> str:
        return f"IWAEObjective(num_particles={self.num_particles})"
