"""An objective plus a weighted per-datapoint term, e.g. M2's classification loss."""

from __future__ import annotations

import math

from pyro_vae.infer.objectives.base import CallableObjective, Objective
from pyro_vae.infer.objectives.registry import make_objective
from pyro_vae.infer.pair.sites import DATA_PLATE

__all__ = ["AuxiliaryTerm"]


class AuxiliaryTerm(Objective):
    """An objective plus ``weight`` times a per-datapoint term: -ELBO + weight * term.

    Per datapoint n of the batch, the loss is -ELBO(x_n) + weight * term(x_n, ...), and the
    returned number is its minibatch estimate per datapoint (the objective's, plus ``weight``
    times the batch mean of ``term``). For the M2 model on labelled data, ``term`` is the
    classifier's -log q_phi(y_n|x_n) and ``weight`` alpha / N_labelled: the extended objective
    of Kingma, Rezende, Mohamed & Welling (2014), eq. 9, J^alpha = J + alpha *
    E_{p~_l(x,y)}[-log q_phi(y|x)]. It is a surrogate: the trainer records ``neg_elbo``, the
    objective's own -ELBO of the same draw, and scores validation with the plain ELBO.

    Parameters
    ----------
    loss : str, pyro.infer.ELBO or callable
        The objective, built by :func:`make_objective` on the first call (e.g. ``"enum"``).
    term : callable
        ``term(x, *args, **kwargs) -> torch.Tensor of shape (B,)``, differentiable, nats per
        datapoint; called with the objective's batch and arguments.
    weight : float
        The factor of ``term``, >= 0.
    data_plate : str
        Name of the data plate.

    Attributes
    ----------
    neg_elbo : torch.Tensor or None
        -ELBO per datapoint of the last call (without the term), detached.

    Raises
    ------
    ValueError
        When ``weight`` is negative or not finite, or ``term`` is not callable.
    """

    surrogate = True  # the loss is not -ELBO: the history records neg_elbo beside it
    # the rest of the contract (fixed_batch_shape, kl_weight, set_progress, capture_blocker)
    # is the wrapped objective's

    def __init__(self, loss, term, weight: float = 1.0, data_plate: str = DATA_PLATE):
        if not callable(term):
            raise ValueError(f"term must be callable, got {type(term).__name__}")
        if isinstance(weight, bool) or not (isinstance(weight, int | float) and weight >= 0):
            raise ValueError(f"weight must be a number >= 0, got {weight!r}")
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {weight!r}")
        self.loss, self.term, self.weight, self.data_plate = loss, term, float(weight), data_plate
        self.objective = None
        self.neg_elbo = None
        self._term_part = CallableObjective(self.weighted_term)  # the second of step_parts

    def __repr__(self) -> str:
        term = getattr(self.term, "__name__", self.term)
        return f"AuxiliaryTerm({self.loss!r}, {term}, weight={self.weight:g})"

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """-ELBO + weight * term per datapoint of the batch ``x``, differentiable.

        Parameters
        ----------
        model, guide : callable
            The pair, called as ``f(x, *args, **kwargs)``.
        x : torch.Tensor of shape (B, ...)
            A minibatch.
        *args, **kwargs
            Passed on to the pair and to ``term``.
        num_data : int, optional
            Size N of the data set the batch is drawn from (None: ``x`` is all of it).

        Returns
        -------
        torch.Tensor of shape ()
            Nats per datapoint.
        """
        if self.objective is None:
            self.setup(model, guide, x, *args, **kwargs)
        neg_elbo = self.objective(model, guide, x, *args, num_data=num_data, **kwargs)
        self.neg_elbo = self.objective.recorded_neg_elbo(neg_elbo)  # it may be a surrogate
        return neg_elbo + self.weighted_term(model, guide, x, *args, **kwargs)

    def weighted_term(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """``weight`` times the batch mean of ``term``: the second of :meth:`step_parts`.

        Called like the objective (``model``, ``guide`` and ``num_data`` are not used).

        Returns
        -------
        torch.Tensor of shape ()
            Nats per datapoint.
        """
        term = self.term(x, *args, **kwargs)
        if term.shape != (x.shape[0],):
            raise ValueError(
                f"term must return one value per datapoint, shape ({x.shape[0]},), got "
                f"{tuple(term.shape)}"
            )
        return self.weight * term.mean()

    def step_parts(self) -> list:
        """The wrapped objective, then :meth:`weighted_term` as an objective of its own (see
        :meth:`Objective.step_parts`).

        Raises
        ------
        RuntimeError
            Before the objective is set up (a first call or :meth:`setup`).
        """
        if self.objective is None:
            raise RuntimeError("step_parts needs the objective set up: call setup first")
        return [self.objective, self._term_part]

    def setup(self, model, guide, x, *args, **kwargs) -> None:
        """Build the wrapped objective for this pair (:func:`make_objective` on a first batch).

        Parameters
        ----------
        model, guide : callable
            The pair.
        x : torch.Tensor of shape (B, ...)
            A first batch.
        *args, **kwargs
            Passed on to the pair.
        """
        self.objective = make_objective(
            self.loss, model, guide, x, *args, data_plate=self.data_plate, **kwargs
        )

    @property
    def fixed_batch_shape(self) -> bool:
        """Whether the wrapped objective works on one batch shape only (False before set-up)."""
        return self.objective is not None and self.objective.fixed_batch_shape

    @property
    def kl_weight(self) -> float:
        """The wrapped objective's KL weight (1 before the first call)."""
        return self.objective.kl_weight if self.objective is not None else 1.0

    def set_progress(self, epochs_done: float) -> None:
        """Forwarded to the wrapped objective (an annealed one keeps its schedule).

        Parameters
        ----------
        epochs_done : float
            Epochs completed before the coming step.
        """
        if self.objective is not None:
            self.objective.set_progress(epochs_done)

    def schedule_inputs(self) -> list:
        """The wrapped objective's (see :meth:`Objective.schedule_inputs`)."""
        return self.objective.schedule_inputs() if self.objective is not None else []

    def capture_blocker(self) -> str | None:
        """The wrapped objective's reason, if it has one (see :meth:`Objective.capture_blocker`)."""
        return self.objective.capture_blocker() if self.objective is not None else None
