"""One pass of a pair, recorded: z ~ q(z|x), then the model replayed at z, site by site.

The single-particle objectives (:mod:`pyro_vae.infer.objectives`) score what this records
instead of building two full ``pyro.poutine.Trace`` objects: each counting site keeps its
distribution, value, mask and minibatch-scaled ``scale`` (:class:`SiteTerm`), enough to compute
its log-density later, in any grouping (the whole ELBO, per latent dimension for free bits).
"""

from __future__ import annotations

import torch
from pyro.distributions.util import is_identically_one, scale_and_mask
from pyro.poutine.messenger import Messenger

from pyro_vae.infer.pair.sites import DATA_PLATE, counts, data_frame, data_scale

__all__ = ["SiteTerm", "run_pair"]


class SiteTerm:
    """One counting sample site as a Pyro run saw it: enough to score it later.

    Attributes
    ----------
    fn : torch.distributions.Distribution
        The site's distribution.
    value : torch.Tensor
        Its value (the draw, or the observation).
    mask : torch.Tensor or None
        Pyro's mask of the site.
    scale : float or torch.Tensor
        Pyro's scale times the minibatch factor N_total / full_size of the data plate.
    is_observed : bool
        Whether the site is observed.
    per_datapoint : bool
        Whether the site lies inside the data plate.
    """

    __slots__ = ("fn", "value", "mask", "scale", "is_observed", "per_datapoint")

    def __init__(self, msg, data_plate: str, num_data: int | None):
        self.fn, self.value, self.mask = msg["fn"], msg["value"], msg["mask"]
        self.scale = msg["scale"] * data_scale(msg, data_plate, num_data)
        self.is_observed = msg["is_observed"]
        self.per_datapoint = data_frame(msg, data_plate) is not None

    def log_prob_sum(self) -> torch.Tensor:
        """The scaled, masked log-density summed over the site's batch: a 0-dim tensor."""
        log_prob = self.fn.log_prob(self.value)
        if self.mask is not None:
            log_prob = scale_and_mask(log_prob, mask=self.mask)
        # multiply after summing: one scalar op instead of one over the whole batch
        scale = self.scale
        return log_prob.sum() if is_identically_one(scale) else log_prob.sum() * scale


class _GuideRecorder(Messenger):
    """Runs the guide, keeping each latent value and its :class:`SiteTerm`."""

    def __init__(self, data_plate: str, num_data: int | None):
        super().__init__()
        self.data_plate, self.num_data = data_plate, num_data
        self.values: dict[str, torch.Tensor] = {}
        self.latents: dict[str, SiteTerm] = {}

    def _pyro_post_sample(self, msg):
        if msg["is_observed"]:
            return
        self.values[msg["name"]] = msg["value"]  # plate indices too: the model replays them
        if counts(msg):
            self.latents[msg["name"]] = SiteTerm(msg, self.data_plate, self.num_data)


class _ModelScorer(Messenger):
    """Runs the model at the guide's latent values (a replay), keeping every :class:`SiteTerm`."""

    def __init__(self, values: dict[str, torch.Tensor], data_plate: str, num_data: int | None):
        super().__init__()
        self.values, self.data_plate, self.num_data = values, data_plate, num_data
        self.sites: dict[str, SiteTerm] = {}

    def _pyro_sample(self, msg):
        value = self.values.get(msg["name"])
        if value is not None and not msg["is_observed"]:
            msg["value"] = value
            msg["done"] = True

    def _pyro_post_sample(self, msg):
        if counts(msg):
            self.sites[msg["name"]] = SiteTerm(msg, self.data_plate, self.num_data)


def run_pair(model, guide, x, *args, data_plate=DATA_PLATE, num_data=None, **kwargs):
    """Draw z ~ q(z|x) once and replay the model there, recording every counting site.

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention (docs/design.md), called as
        ``f(x, *args, **kwargs)``.
    x : torch.Tensor of shape (B, ...)
        A minibatch.
    *args, **kwargs
        Passed on to ``model`` and ``guide``.
    data_plate : str
        Name of the data plate.
    num_data : int, optional
        Size N of the whole training set, for the minibatch factor in each site's ``scale``.

    Returns
    -------
    guide_sites : dict of str to SiteTerm
        The guide's latent sites.
    model_sites : dict of str to SiteTerm
        The model's sites, observed and latent, in execution order.
    """
    with _GuideRecorder(data_plate, num_data) as guide_run:
        guide(x, *args, **kwargs)
    with _ModelScorer(guide_run.values, data_plate, num_data) as model_run:
        model(x, *args, **kwargs)
    return guide_run.latents, model_run.sites
