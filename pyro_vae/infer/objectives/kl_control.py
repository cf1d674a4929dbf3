"""KL annealing and free bits: objectives that reshape the latent terms of the ELBO.

Write the single-sample ELBO of a batch as a reconstruction term and latent terms,

    ELBO = log p(x | z) - sum_sites [log q(z_s | x) - log p(z_s | ...)],   z ~ q(z | x),

the second sum being a Monte Carlo estimate of the KL divergence of each latent site. Early in
training the cheapest way to raise the ELBO is to make q(z|x) = p(z) and ignore z: a stable
equilibrium ("posterior collapse"). Two remedies reshape the latent terms:

- **KL annealing** (Bowman et al. 2015): weight them by beta(t), rising from beta_0 to 1 over
  the first epochs (:class:`KLAnnealing`; cyclical as in Fu et al. 2019 with ``cycles > 1``);
- **free bits** (Kingma et al. 2016, eq. 15): replace the KL of each latent dimension j by
  max(lambda, E_minibatch[KL_j]), so a dimension that carries less than lambda nats is not
  pushed further towards the prior.

:class:`KLControlledELBO` does either or both for any pair whose guide is reparameterized, by
recording each site's density as the pair runs (the way Pyro's DMM example scales its latent
sites with ``poutine.scale``, but without a second pass). The loss it returns is the reshaped
objective; it also keeps ``neg_elbo``, the true -ELBO (beta = 1, lambda = 0) of the same draw,
which the trainer records next to it so curves stay comparable.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.util import scale_and_mask
from torch.distributions import Independent

from pyro_vae.infer.objectives.base import Objective
from pyro_vae.infer.pair.layout import require_reparameterized
from pyro_vae.infer.pair.record import SiteTerm, run_pair
from pyro_vae.infer.pair.sites import DATA_PLATE

__all__ = ["KLAnnealing", "KLControlledELBO"]


class KLAnnealing:
    """The KL weight beta(t) of Bowman et al. (2015), t in epochs (fractions within an epoch).

    beta rises linearly from ``start`` to 1 over ``epochs`` epochs and stays at 1. With
    ``cycles = C > 1`` the schedule is cyclical (Fu et al. 2019, with their R = 0.5): C cycles
    of 2 * ``epochs`` epochs, each a linear rise over ``epochs`` epochs then ``epochs`` epochs
    at 1; after the last cycle beta stays at 1.

    Parameters
    ----------
    epochs : float
        Length of the rise, in epochs (> 0).
    start : float
        beta_0, in [0, 1).
    cycles : int
        Number of rises (>= 1).

    Raises
    ------
    ValueError
        For ``epochs <= 0``, ``start`` outside [0, 1) or ``cycles < 1``.
    """

    def __init__(self, epochs: float, start: float = 0.0, cycles: int = 1):
        if isinstance(epochs, bool) or not isinstance(epochs, int | float) or not epochs > 0:
            raise ValueError(f"annealing epochs must be a positive number, got {epochs!r}")
        if not isinstance(start, int | float) or not 0 <= start < 1:
            raise ValueError(f"annealing start must lie in [0, 1), got {start!r}")
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise ValueError(f"annealing cycles must be a positive int, got {cycles!r}")
        self.epochs, self.start, self.cycles = float(epochs), float(start), cycles

    def __call__(self, t: float) -> float:
        """beta at ``t`` epochs into training."""
        period = 2 * self.epochs if self.cycles > 1 else self.epochs
        if t >= self.cycles * period:
            return 1.0
        rise = min(1.0, math.fmod(t, period) / self.epochs)
        return self.start + (1.0 - self.start) * rise

    def __repr__(self) -> str:
        return f"KLAnnealing(epochs={self.epochs:g}, start={self.start:g}, cycles={self.cycles})"


def _elementwise(fn):
    """The univariate distribution under ``Independent`` wrappers, or None if ``fn`` has a
    genuinely multivariate part (a flow, a full-covariance Gaussian) whose density does not
    split into one term per dimension."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn if fn.event_shape == () else None


def _per_dimension_sum(site: SiteTerm, base) -> torch.Tensor:
    """The site's scaled, masked log-density summed over its batch: one value per dimension."""
    log_prob = base.log_prob(site.value)  # batch_shape + event_shape
    event_dims = len(site.fn.event_shape)
    if site.mask is not None:
        mask = torch.as_tensor(site.mask)
        log_prob = scale_and_mask(log_prob, mask=mask.reshape(mask.shape + (1,) * event_dims))
    batch_dims = tuple(range(log_prob.dim() - event_dims))
    return log_prob.sum(batch_dims).reshape(-1) * site.scale


class KLControlledELBO(Objective):
    """-ELBO per datapoint with annealed and/or free-bits latent terms, for any pair.

    Per datapoint (minibatch estimates, nats), with L the reconstruction term
    E_q[log p(x | z)] and KL_g the Monte Carlo KL of a group g of latent dimensions, ::

        loss = -L + beta(t) * sum_g max(lambda * |g|, E_minibatch[KL_g]).

    With ``annealing=None`` beta = 1; with ``free_bits=0`` the max is the KL itself, so the
    loss is exactly -ELBO. The groups:

    - a latent site inside the data plate whose guide and model densities both factorize over
      the event (``Normal(...).to_event(1)``, any product of univariate densities) gives one
      group per dimension, ``|g| = 1``, as in Kingma et al. (2016);
    - a site whose density does not factorize (an IAF flow guide, a full-covariance Gaussian)
      is one group, ``|g|`` = its number of dimensions: the same lambda nats per dimension, spent
      over the site as a whole;
    - a latent site outside the data plate (a global) is not clamped: its KL is not a
      per-datapoint quantity. beta weights it like every latent term.

    A group whose minibatch KL is below its threshold contributes a constant, so it receives
    no gradient from its KL term.

    Parameters
    ----------
    annealing : callable, optional
        ``beta(t)`` with t in epochs, e.g. :class:`KLAnnealing`; the trainer sets t before
        every step through :meth:`set_progress`.
    free_bits : float
        lambda, nats per latent dimension (>= 0).
    data_plate : str
        Name of the data plate.

    Attributes
    ----------
    beta : float
        The KL weight of the latest step.
    neg_elbo : torch.Tensor or None
        The true -ELBO per datapoint (beta = 1, lambda = 0) of the latest call's draw,
        detached.

    Raises
    ------
    ValueError
        For a negative or non-finite ``free_bits``, or (when called) a guide with a latent
        site that is not reparameterized.
    """

    surrogate = True  # the loss is not -ELBO: validation scores the plain ELBO

    def __init__(self, annealing=None, free_bits: float = 0.0, data_plate: str = DATA_PLATE):
        if isinstance(free_bits, bool) or not isinstance(free_bits, int | float):
            raise ValueError(f"free_bits must be a number of nats >= 0, got {free_bits!r}")
        if not (math.isfinite(free_bits) and free_bits >= 0):
            raise ValueError(f"free_bits must be a number of nats >= 0, got {free_bits!r}")
        if annealing is not None and not callable(annealing):
            raise ValueError(f"annealing must be a schedule beta(t), got {annealing!r}")
        self.annealing, self.free_bits = annealing, float(free_bits)
        self.data_plate = data_plate
        self.beta = annealing(0.0) if annealing is not None else 1.0
        # the weight as a 0-dim tensor too: a captured step graph reads it as an input
        self._beta_tensor = torch.tensor(self.beta, dtype=torch.float64)
        self.neg_elbo = None
        self._checked = False

    def set_progress(self, epochs_done: float) -> None:
        """Tell the schedule how far training is: ``epochs_done`` epochs (fractional).

        Parameters
        ----------
        epochs_done : float
            Epochs completed before the coming step, e.g. 2.5 half-way through the third.
        """
        self.beta = self.annealing(epochs_done) if self.annealing is not None else 1.0
        self._beta_tensor.fill_(self.beta)

    def setup(self, model, guide, x, *args, **kwargs) -> None:
        """Refuse a guide that is not reparameterized (see :meth:`Objective.setup`).

        Parameters
        ----------
        model, guide : callable
            The pair.
        x : torch.Tensor of shape (B, ...)
            A first batch.
        *args, **kwargs
            Passed on to the pair.

        Raises
        ------
        ValueError
            When a latent site of the guide has no ``rsample``.
        """
        require_reparameterized("KL annealing and free bits", model, guide, x, *args, **kwargs)
        self._checked = True

    @property
    def kl_weight(self) -> float:
        """beta of the latest step."""
        return self.beta

    def schedule_inputs(self) -> list[torch.Tensor]:
        """The annealed weight beta as a 0-dim tensor (none without annealing)."""
        return [self._beta_tensor] if self.annealing is not None else []

    def _kl_groups(self, q: SiteTerm | None, p: SiteTerm, n: int):
        """(KL per group, per datapoint; free nats per group) of one latent site."""
        if q is not None and q.per_datapoint and self.free_bits > 0:
            q_base, p_base = _elementwise(q.fn), _elementwise(p.fn)
            if q_base is not None and p_base is not None:
                kl = (_per_dimension_sum(q, q_base) - _per_dimension_sum(p, p_base)) / n
                return kl, self.free_bits
            kl = (q.log_prob_sum() - p.log_prob_sum()) / n
            return kl, self.free_bits * max(1, p.fn.event_shape.numel())
        log_q = q.log_prob_sum() if q is not None else 0.0
        return (log_q - p.log_prob_sum()) / n, None

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """The reshaped loss per datapoint of the batch ``x``, differentiable.

        Parameters
        ----------
        model, guide : callable
            A pair following the site convention (docs/design.md), called as
            ``f(x, *args, **kwargs)``, with a reparameterized guide.
        x : torch.Tensor of shape (B, ...)
            A minibatch of B datapoints.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        num_data : int, optional
            Size N of the whole training set, for minibatch scaling (None: ``x`` is all of it).

        Returns
        -------
        torch.Tensor of shape ()
            ``-L + beta * sum_g max(lambda |g|, KL_g)``, nats per datapoint.
        """
        if not self._checked:
            self.setup(model, guide, x, *args, **kwargs)
        n = num_data or x.shape[0]
        guide_sites, model_sites = run_pair(
            model, guide, x, *args, data_plate=self.data_plate, num_data=num_data, **kwargs
        )
        log_lik, kl_total, kl_kept = 0.0, 0.0, 0.0
        for name, p in model_sites.items():
            if p.is_observed:
                log_lik = log_lik + p.log_prob_sum() / n
                continue
            kl, free = self._kl_groups(guide_sites.get(name), p, n)
            kl_total = kl_total + kl.sum()
            kl_kept = kl_kept + (kl.clamp(min=free).sum() if free is not None else kl.sum())
        self.neg_elbo = (kl_total - log_lik).detach()
        beta = self._beta_tensor if self.annealing is not None else self.beta
        return beta * kl_kept - log_lik

    def __repr__(self) -> str:
        return f"KLControlledELBO(annealing={self.annealing!r}, free_bits={self.free_bits:g})"
