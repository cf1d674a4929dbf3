"""What every objective on S reparameterized particles shares: k, the checks, the layout.

The IWAE bound (:mod:`~pyro_vae.infer.objectives.iwae`), its doubly reparameterized gradient
(:mod:`~pyro_vae.infer.objectives.dreg`) and the sticking-the-landing ELBO
(:mod:`~pyro_vae.infer.objectives.stl`) all draw S particles at once through the particle
pipeline (:mod:`pyro_vae.infer.pair.particles`), so the pair must follow the site convention of
docs/design.md (every site inside the data plate, no global latent) and its guide must be
reparameterized. Each objective is a mean over the batch of a per-datapoint bound, an unbiased
estimate of the full-data value per datapoint: ``num_data`` is not needed.
"""

from __future__ import annotations

import torch

from pyro_vae.infer.objectives.base import Objective
from pyro_vae.infer.pair.layout import inspect_pair, require_reparameterized
from pyro_vae.infer.pair.particles import PairBatch
from pyro_vae.infer.pair.sites import DATA_PLATE
from pyro_vae.infer.runtime.devices import forked_rng

__all__ = ["ParticleObjective"]


class ParticleObjective(Objective):
    """Base of the objectives on S particles: checks k, binds the pair to each batch.

    Parameters
    ----------
    num_particles : int
        S >= 1.
    data_plate : str
        Name of the data plate.

    Raises
    ------
    ValueError
        For S that is not a positive int; when called, for a guide with a latent site that is
        not reparameterized.
    GlobalLatentError
        When called on a pair with a site outside the data plate.
    """

    what = "the objective"
    """The subject of the objective's messages, e.g. "the IWAE"."""

    def __init__(self, num_particles: int = 1, data_plate: str = DATA_PLATE):
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or num_particles < 1
        ):
            raise ValueError(f"{self.what} needs k >= 1 particles, got {num_particles!r}")
        self.num_particles, self.data_plate = num_particles, data_plate
        self._layouts = {}  # batch size -> PairLayout (the last batch may be shorter)

    def bind(self, model, guide, x, args: tuple, kwargs: dict) -> PairBatch:
        """The pair bound to the batch ``x``; the first batch of each size is inspected once
        (reparameterization, layout), in a forked RNG so that the draws that follow do not
        change."""
        layout = self._layouts.get(x.shape[0])
        if layout is None:
            require_reparameterized(f"{self.what} objective", model, guide, x, *args, **kwargs)
            with forked_rng(x), torch.no_grad():
                layout = inspect_pair(model, guide, x, *args, data_plate=self.data_plate, **kwargs)
            self._layouts[x.shape[0]] = layout
        return PairBatch(model, guide, x, args, kwargs, layout, self.data_plate)

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """The negated bound per datapoint of the batch ``x``, averaged: a loss in nats per
        datapoint whose gradient is the estimator of :meth:`per_datapoint`.

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
            -(1/B) sum_n bound(x_n), nats per datapoint.
        """
        return -self.per_datapoint(self.bind(model, guide, x, args, kwargs)).mean()

    def per_datapoint(self, pair: PairBatch) -> torch.Tensor:
        """The objective's bound per datapoint of ``pair.x``, shape (B,), nats; each subclass
        defines it (and the gradient estimator it carries)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_particles={self.num_particles})"
