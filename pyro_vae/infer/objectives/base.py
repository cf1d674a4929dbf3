"""The objective contract: what an objective is, and everything the trainer may ask of it.

An objective is called as ::

    objective(model, guide, x, *args, num_data=None, **kwargs) -> torch.Tensor (0-dim)

and returns a differentiable estimate of its loss per datapoint of the batch ``x`` (nats), where
``num_data`` is the size N of the whole training set (None: the batch is the data set). For a
plain objective the loss is -ELBO per datapoint; a *surrogate* (annealed, free-bits, IWAE, a
loss plus an auxiliary term) minimizes something else and reports the true -ELBO of the same
draw beside it.

:class:`Objective` holds the contract with its defaults, the way ``pyro.infer.ELBO`` carries
the settings every Pyro loss shares: the step (:class:`~pyro_vae.infer.training.svi.SVIStep`),
the loop (:func:`~pyro_vae.infer.training.loop.train`) and the compile policy
(:mod:`pyro_vae.infer.compile.policy`) read these attributes and nothing else, so a wrapper
(:class:`~pyro_vae.infer.objectives.auxiliary.AuxiliaryTerm`) forwards all of them. A plain
callable is taken as a non-surrogate objective without a schedule (:func:`as_objective`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["CallableObjective", "Objective", "as_objective"]


class Objective:
    """Base class of every objective: the call, and what the trainer may ask of it.

    Subclasses implement :meth:`__call__` and override what differs from the defaults.

    Attributes
    ----------
    surrogate : bool
        The loss is not -ELBO (default False). The trainer then records :attr:`neg_elbo` as
        the training -ELBO, the loss itself as the minimized objective, and scores validation
        batches with the plain ELBO so that curves of different objectives compare.
    neg_elbo : torch.Tensor or None
        Set by a surrogate after each call: the true -ELBO per datapoint of the same draw,
        detached (0-dim). None for a plain objective, whose loss is its -ELBO.
    fixed_batch_shape : bool
        The objective works on one batch shape only (Pyro's JIT ELBOs, default False): the
        trainer drops an epoch's short last batch and validation uses the plain ELBO.
    """

    surrogate: bool = False
    neg_elbo: torch.Tensor | None = None
    fixed_batch_shape: bool = False

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """The loss per datapoint of the batch ``x``, differentiable in every parameter.

        Parameters
        ----------
        model, guide : callable
            A pair following the site convention (docs/design.md), called as
            ``f(x, *args, **kwargs)``.
        x : torch.Tensor of shape (B, ...)
            A minibatch of B datapoints.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        num_data : int, optional
            Size N of the whole training set, for minibatch scaling (None: ``x`` is all of it).

        Returns
        -------
        torch.Tensor of shape ()
            Nats per datapoint.
        """
        raise NotImplementedError

    def setup(self, model, guide, x, *args, **kwargs) -> None:
        """Finish what needs the pair, on a first batch, before any call (default: nothing).

        :func:`~pyro_vae.infer.objectives.registry.make_objective` calls it, inside a forked RNG, so
        a check that traces the pair changes no later draw. It must be idempotent: ``train``
        builds the objectives once to resolve ``compile`` and the step's set-up builds them
        again (a check repeated, an inner objective rebuilt; once per run, never per step). A
        subclass must also work when called without it (it then sets itself up lazily).

        Parameters
        ----------
        model, guide : callable
            The pair.
        x : torch.Tensor of shape (B, ...)
            A first batch.
        *args, **kwargs
            Passed on to the pair.
        """

    @property
    def kl_weight(self) -> float:
        """The weight beta of the latent (KL) terms at the latest step (1 unless annealed)."""
        return 1.0

    def set_progress(self, epochs_done: float) -> None:
        """Tell a schedule how far training is; the trainer calls it before every step.

        Progress is a function of (epoch, step), so a resumed run continues the schedule
        exactly and a checkpoint needs no state of the objective. No-op by default.

        Parameters
        ----------
        epochs_done : float
            Epochs completed before the coming step, e.g. 2.5 half-way through the third.
        """

    def capture_blocker(self) -> str | None:
        """Why one captured graph could not compute this objective, or None when it can.

        Read by the compile policy (:func:`pyro_vae.infer.compile.policy.step_blocker`); the
        reason is the one line a user sees when a compiled step stays eager.

        Returns
        -------
        str or None
        """
        return None

    def schedule_inputs(self) -> list[torch.Tensor]:
        """0-dim tensors holding the per-step scalars of a schedule (a KL weight), or [].

        :meth:`set_progress` updates them in place and the objective reads them as tensors,
        so a captured graph takes them as inputs (:class:`CompiledSVIStep`) and follows the
        schedule instead of freezing its value at capture time.

        Returns
        -------
        list of torch.Tensor
        """
        return []

    def step_parts(self) -> list[Objective]:
        """The parts a schedule of separate steps takes one gradient step on each, in order.

        Each part is an :class:`Objective` of its own (so a step asks it what it asks any
        objective: its schedule inputs, its recorded -ELBO) and returns its share of the
        loss; the parts sum to the objective. The default is one part, the objective itself; an
        :class:`~pyro_vae.infer.objectives.auxiliary.AuxiliaryTerm` has two, the wrapped
        objective and the weighted term (Pyro's SS-VAE example steps on its classification
        loss apart: ``LabelledStream(schedule="alternate")``).

        Returns
        -------
        list of Objective
        """
        return [self]

    def recorded_neg_elbo(self, loss: torch.Tensor) -> torch.Tensor:
        """The true -ELBO per datapoint of the call that returned ``loss``, detached.

        Parameters
        ----------
        loss : torch.Tensor of shape ()
            What the latest call returned.

        Returns
        -------
        torch.Tensor of shape ()
            :attr:`neg_elbo` for a surrogate, else ``loss`` itself.
        """
        return loss.detach() if self.neg_elbo is None else self.neg_elbo


class CallableObjective(Objective):
    """A plain function ``fn(model, guide, x, *args, num_data=None, **kwargs)`` as an objective.

    It is taken to return -ELBO per datapoint (not a surrogate) and to have no schedule;
    subclass :class:`Objective` to say otherwise.

    Parameters
    ----------
    fn : callable
        The function.
    """

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        return self.fn(model, guide, x, *args, num_data=num_data, **kwargs)

    def __repr__(self) -> str:
        return f"CallableObjective({getattr(self.fn, '__name__', self.fn)!r})"


def as_objective(fn: Callable) -> Objective:
    """``fn`` itself when it is an :class:`Objective`, else ``CallableObjective(fn)``.

    Parameters
    ----------
    fn : callable
        An objective.

    Returns
    -------
    Objective
    """
    return fn if isinstance(fn, Objective) else CallableObjective(fn)
