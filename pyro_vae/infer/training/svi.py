"""One SVI step for any model/guide pair: the objective, the parameters, the optimizer.

:class:`SVIStep` plays the part of ``pyro.infer.SVI``: ``step(x) -> loss`` computes an objective
(:mod:`pyro_vae.infer.objectives`), backpropagates and updates the parameters, in a loop the
caller owns; :func:`pyro_vae.infer.training.loop.train` is one such loop. It differs from
``SVI`` where that is measured to be faster (``experiments/bench_train.py``): the parameters
are collected once, from a validated trace of the pair on the first batch
(:func:`pyro_vae.infer.pair.params.validated_traces`), instead of by a param-only trace
on every step, and all of them share one fused Adam (:mod:`~pyro_vae.infer.training.adam`)
instead of Pyro's per-parameter optimizers. What that could cost is guarded: a parameter that
the pair creates after the first batch is refused with a clear error (it would never be
optimized), and so is a module parameter that an older param-store entry shadows.

A semi-supervised run's second stream enters the step in one of two schedules
(:class:`~pyro_vae.infer.training.options.LabelledStream`): inside every step, as the weighted
union of both losses (``step(x, labelled=...)``), or as steps of its own (:meth:`SVIStep.
step_labelled`).

Size: the step, both schedules of the labelled stream and the parameter guards share the
parameters, the optimizer and one update (``_update``); apart they would hand all three
between modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch

from pyro_vae.infer.objectives.base import Objective
from pyro_vae.infer.objectives.registry import make_objective
from pyro_vae.infer.pair.params import (
    check_owned_params,
    collect_params,
    restore_params,
    trace_params,
    validated_traces,
)
from pyro_vae.infer.pair.sites import DATA_PLATE, check_data
from pyro_vae.infer.runtime.devices import forked_rng
from pyro_vae.infer.training.adam import Adam

__all__ = ["SVIStep", "TrainingDivergedError", "make_adam"]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the parameters were not updated with it.

    Parameters
    ----------
    message : str
        What happened, and at which step.
    value : float
        The offending loss, NaN or +-inf; kept as the attribute ``value``.
    """

    def __init__(self, message: str, value: float = math.nan):
        super().__init__(message)
        self.value = value

    @classmethod
    def at_step(cls, value: float, step: int) -> TrainingDivergedError:
        """The error for a loss ``value`` that is not finite at optimizer step ``step``."""
        return cls(f"the loss became {value} at step {step}", value=value)


def _refuse_bad_data(x) -> None:
    """Raise :func:`check_data`'s one line when the batch holds NaN or inf, hiding the error
    it explains (e.g. torch's many-line constraint message) from the traceback."""
    try:
        check_data(x)
    except ValueError as bad:
        raise bad from None


def make_adam(params, lr: float) -> Adam:
    """One Adam over all parameters: :class:`~pyro_vae.infer.training.adam.Adam`.

    The arithmetic of ``torch.optim.Adam(fused=True)`` (one fused kernel, about a third of the
    time of the default for-loop implementation on CPU, ``experiments/bench_train.py``), its
    state and checkpoints, without importing ``torch._dynamo`` (2 s) as torch's Adam does.

    Parameters
    ----------
    params : iterable of torch.Tensor
        Leaf tensors to optimize.
    lr : float
        Learning rate.

    Returns
    -------
    Adam
    """
    return Adam(list(params), lr=lr)


class SVIStep:
    """Minimize an objective of a model/guide pair one minibatch at a time.

    Parameters
    ----------
    model, guide : callable
        A pair following the site convention (docs/design.md), called as
        ``f(x, *args, **kwargs)``. Bound methods of an ``nn.Module`` are checked to have all
        their parameters optimized.
    loss : str, pyro.infer.ELBO or callable
        The objective, see :func:`pyro_vae.infer.objectives.registry.make_objective`.
    lr : float
        Learning rate of the default optimizer, :func:`make_adam`.
    optimizer : callable, optional
        ``optimizer(list_of_params) -> torch.optim.Optimizer``, replacing the default.
    clip_norm : float, optional
        Clip the global gradient norm to this value before each update.
    data_plate : str
        Name of the data plate.
    grad_hook : callable, optional
        ``grad_hook(params)`` runs after ``backward`` and before clipping and the update, e.g.
        to all-reduce gradients across processes.
    labelled_loss : str, pyro.infer.ELBO or callable, optional
        The objective of the second, labelled stream of :meth:`step` (default: ``loss``),
        e.g. an :class:`~pyro_vae.infer.objectives.auxiliary.AuxiliaryTerm` adding a
        classification term.

    Raises
    ------
    ValueError
        When ``lr`` or ``clip_norm`` is not positive.

    Examples
    --------
    >>> svi = SVIStep(vae.model, vae.guide, lr=1e-3)          # doctest: +SKIP
    >>> for batch in batches:                                  # doctest: +SKIP
    ...     loss = svi.step(batch, num_data=len(dataset))      # -ELBO per datapoint, nats
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        loss="trace",
        *,
        lr: float = 1e-3,
        optimizer: Callable | None = None,
        clip_norm: float | None = None,
        data_plate: str = DATA_PLATE,
        grad_hook: Callable | None = None,
        labelled_loss=None,
    ):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm!r}")
        self.model, self.guide, self.loss = model, guide, loss
        self.lr, self.clip_norm, self.data_plate = lr, clip_norm, data_plate
        self.grad_hook = grad_hook
        self.labelled_loss = loss if labelled_loss is None else labelled_loss
        self.labelled_objective = None
        self._make_optimizer = optimizer or (lambda params: make_adam(params, lr))
        self.objective: Objective | None = None
        self.eval_objective: Objective | None = None
        self.optimizer = None
        self.params: dict[str, torch.Tensor] = {}
        self.num_steps = 0
        self.last_neg_elbo = math.nan
        self._store_size = 0

    def setup(self, x: torch.Tensor, *args, labelled: tuple | None = None, **kwargs) -> None:
        """Trace the pair on a first batch; build the objective, parameters and optimizer.

        ``step`` calls it on its first batch. The trace runs with Pyro's validation on (so
        shape and support mistakes surface here) and in a forked RNG, so a fresh and a resumed
        run draw the same numbers afterwards.

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            A batch of data.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        labelled : tuple, optional
            A first batch ``(x_l, *args_l)`` of the labelled stream, traced too (its
            parameters join the others) and used to build ``labelled_loss``.

        Returns
        -------
        None

        Raises
        ------
        ValueError
            From the pair doctor (:func:`~pyro_vae.infer.pair.doctor.check_pair`: NaN data, a
            data plate of the wrong size, latent sites that do not match, a value outside its
            support); when the pair registers no trainable parameter, a parameter holds NaN or
            inf, or a module's parameter is shadowed by an older param-store entry; Pyro's own
            errors for a shape mismatch.
        """
        with forked_rng(x):
            build = dict(data_plate=self.data_plate)
            traces = validated_traces(self.model, self.guide, x, *args, **build, **kwargs)
            self.objective = make_objective(
                self.loss, self.model, self.guide, x, *args, **build, **kwargs
            )
            # a surrogate (annealed, free-bits, IWAE) loss is not -ELBO, and the JIT traces
            # one batch shape: score validation batches with the plain ELBO
            plain = self.objective.surrogate or self.objective.fixed_batch_shape
            self.eval_objective = (
                make_objective("trace", self.model, self.guide, x, *args, **build, **kwargs)
                if plain
                else self.objective
            )
            if labelled is not None:
                traces += validated_traces(self.model, self.guide, *labelled, **build, **kwargs)
                self.labelled_objective = make_objective(
                    self.labelled_loss, self.model, self.guide, *labelled, **build, **kwargs
                )
        self.params = trace_params(traces)
        check_owned_params(self.params, (self.model, self.guide))
        self.optimizer = self._make_optimizer(list(self.params.values()))
        self._store_size = len(pyro.get_param_store())

    def step(
        self,
        x: torch.Tensor,
        *args,
        num_data: int | None = None,
        labelled: tuple | None = None,
        num_labelled: int | None = None,
        **kwargs,
    ) -> float:
        """One gradient step on the batch ``x`` (and a batch of the labelled stream).

        With a labelled batch the loss is that of the union of both data sets, per datapoint:
        (N * loss(x) + N_l * labelled_loss(x_l)) / (N + N_l), each stream scaled for its own
        minibatch, an unbiased estimate of the full-data loss (Kingma et al. 2014, eq. 8-9,
        divided by the number of datapoints).

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            A minibatch.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        num_data : int, optional
            Size N of the whole training set, for minibatch scaling (None: ``x`` is all of it).
        labelled : tuple, optional
            A minibatch ``(x_l, *args_l)`` of the labelled stream, scored by ``labelled_loss``
            as ``labelled_loss(model, guide, x_l, *args_l, num_data=N_l, **kwargs)``.
        num_labelled : int, optional
            Size N_l of the labelled data set (None: ``x_l`` is all of it).

        Returns
        -------
        float
            The objective before the update: -ELBO per datapoint, nats (for a surrogate
            objective, its own value; the true -ELBO of the same draw is then
            ``last_neg_elbo``).

        Raises
        ------
        TrainingDivergedError
            When the loss is NaN or infinite (the parameters are left unchanged).
        ValueError
            When a parameter first appears after the first batch (it would never be
            optimized), the batch holds NaN or inf, or from :meth:`setup` on the first batch
            (the pair doctor, :func:`~pyro_vae.infer.pair.doctor.check_pair`).
        """
        if self.optimizer is None:
            self.setup(x, *args, labelled=labelled, **kwargs)
        try:
            loss = self.objective(self.model, self.guide, x, *args, num_data=num_data, **kwargs)
        except ValueError:  # e.g. torch's constraint error of an encoder fed NaN: say so
            _refuse_bad_data(x)
            raise
        value = loss.item()
        self.last_neg_elbo = self._neg_elbo(self.objective, value)
        if labelled is not None:
            loss, value = self._add_labelled(loss, x, num_data, labelled, num_labelled, kwargs)
        return self._update(loss, value, x, args, kwargs)

    def step_labelled(
        self,
        x_l: torch.Tensor,
        *args,
        num_labelled: int | None = None,
        share: float = 1.0,
        **kwargs,
    ) -> float:
        """Steps on a batch of the labelled stream alone: one per part of its objective.

        The schedule ``LabelledStream(schedule="alternate")``: the labelled objective's parts
        (:meth:`~pyro_vae.infer.objectives.base.Objective.step_parts`: for M2's
        ``AuxiliaryTerm``, -ELBO with y given, then the classification term) each take a
        gradient step of their own on this batch, in order, each loss times ``share``.

        Parameters
        ----------
        x_l : torch.Tensor of shape (B_l, ...)
            A minibatch of the labelled stream; ``*args`` (its labels) and ``**kwargs`` go to
            the pair, as in :meth:`step`.
        num_labelled : int, optional
            Size N_l of the labelled data set (None: ``x_l`` is all of it).
        share : float
            The factor of every part's loss: B_l / B (the first stream's batch size B) gives
            each datapoint of the two streams the same weight per step.

        Returns
        -------
        float
            The labelled objective per datapoint (the sum of the parts' values, each before
            its update); ``last_neg_elbo`` is set to the first part's -ELBO.
        """
        if self.labelled_objective is None:
            raise ValueError("step_labelled needs a labelled stream: pass labelled= to setup")
        total = 0.0
        for i, part in enumerate(self.labelled_objective.step_parts()):
            value, neg_elbo = self._step_part(i, part, share, x_l, args, num_labelled, kwargs)
            if i == 0:
                self.last_neg_elbo = neg_elbo
            total += value
        return total

    def _step_part(self, index, part, share, x_l, args, num_labelled, kwargs):
        """One step on ``share`` times the ``index``-th part; its value and its -ELBO."""
        loss = part(self.model, self.guide, x_l, *args, num_data=num_labelled, **kwargs)
        value = loss.item()
        neg_elbo = self._neg_elbo(part, value)
        self._update(share * loss, value, x_l, args, kwargs)
        return value, neg_elbo

    def _update(self, loss: torch.Tensor, value: float, x, args, kwargs) -> float:
        """Check ``loss`` (its float ``value``), backpropagate it and take the optimizer step."""
        if not math.isfinite(value):
            _refuse_bad_data(x)  # NaN data is the data's fault, not the training's
            raise TrainingDivergedError.at_step(value, self.num_steps + 1)
        if len(pyro.get_param_store()) != self._store_size:  # O(1); rarely true
            self._refuse_new_params(x, args, kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._apply_gradients()
        return value

    def _apply_gradients(self) -> None:
        """The update from the parameters' ``.grad``: the hook, clipping, the optimizer step."""
        if self.grad_hook is not None:
            self.grad_hook(self.params)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params.values(), self.clip_norm)
        self.optimizer.step()
        self.num_steps += 1

    @staticmethod
    def _neg_elbo(objective, value: float) -> float:
        """The true -ELBO of a call that returned ``value``, as a float: what
        :meth:`~pyro_vae.infer.objectives.base.Objective.recorded_neg_elbo` returns (a
        surrogate's ``neg_elbo``, else the loss), without a second read of the loss."""
        neg_elbo = getattr(objective, "neg_elbo", None)
        return value if neg_elbo is None else float(neg_elbo)

    def _add_labelled(self, loss, x, num_data, labelled, num_labelled, kwargs):
        """The loss of both streams per datapoint of their union; updates ``last_neg_elbo``."""
        if self.labelled_objective is None:
            raise ValueError(
                "a labelled batch was passed after setup ran without one: pass labelled= to "
                "the first step (or to setup) so that its parameters are collected"
            )
        n, n_l = num_data or x.shape[0], num_labelled or labelled[0].shape[0]
        loss_l = self.labelled_objective(
            self.model, self.guide, *labelled, num_data=num_labelled, **kwargs
        )
        neg_elbo_l = self._neg_elbo(self.labelled_objective, loss_l.item())
        total = (n * loss + n_l * loss_l) / (n + n_l)
        self.last_neg_elbo = (n * self.last_neg_elbo + n_l * neg_elbo_l) / (n + n_l)
        return total, total.item()

    def set_progress(self, epochs_done: float) -> None:
        """Pass training progress to the objectives (a schedule such as KL annealing).

        :func:`~pyro_vae.infer.training.loop.train` calls it before every step; a loop of your
        own should too when an objective has a schedule. Progress is a function of the epoch
        and the step, so a resumed run continues the schedule exactly. The labelled stream's
        objective is told too, so a wrapped annealed objective keeps its schedule there.

        Parameters
        ----------
        epochs_done : float
            Epochs completed before the coming step (fractional within an epoch).
        """
        self.objective.set_progress(epochs_done)
        if self.labelled_objective is not None:
            self.labelled_objective.set_progress(epochs_done)

    def _refuse_new_params(self, x, args, kwargs) -> None:
        """The param store grew: refuse if the pair itself created the new parameters."""
        found = collect_params(self.model, self.guide, x, *args, **kwargs)
        new = sorted(set(found) - set(self.params))
        if new:
            raise ValueError(
                f"parameter(s) {new} first appeared at step {self.num_steps + 1}, after the "
                "parameters were collected on the first batch, and would never be optimized: "
                "create every parameter on every call of the model and guide"
            )
        self._store_size = len(pyro.get_param_store())  # created by someone else

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, *args, num_data: int | None = None, **kwargs) -> float:
        """The objective on ``x`` without gradients or an update (e.g. a validation batch).

        A surrogate objective (annealed, free-bits, IWAE, an auxiliary term) or one that works
        on one batch shape only (``fixed_batch_shape``: Pyro's JIT) is replaced here by the
        plain ``"trace"`` ELBO, so that validation curves compare across objectives.

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            A batch of data.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        num_data : int, optional
            Size N of the data set ``x`` is drawn from (None: ``x`` is all of it).

        Returns
        -------
        float
            -ELBO per datapoint, nats.
        """
        if self.optimizer is None:
            self.setup(x, *args, **kwargs)
        return self.eval_objective(
            self.model, self.guide, x, *args, num_data=num_data, **kwargs
        ).item()

    def state_dict(self) -> dict:
        """Parameters (unconstrained, on CPU) and optimizer state, for a checkpoint.

        Returns
        -------
        dict
            ``"params"``: param-store name to a detached CPU tensor; ``"optimizer"``: the
            optimizer's ``state_dict()``.
        """
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output; ``setup`` must have run.

        Parameters
        ----------
        state : dict
            As returned by :meth:`state_dict`, e.g. read back from a checkpoint.

        Returns
        -------
        None

        Raises
        ------
        ValueError
            When the saved parameters' names or shapes differ from the pair's, or a saved
            value is not finite (see :func:`pyro_vae.infer.pair.params.restore_params`).
        """
        restore_params(self.params, state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
