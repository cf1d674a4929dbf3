"""The compiled SVI step: one captured, inductor-compiled graph per batch shape.

:class:`CompiledSVIStep` is :class:`~pyro_vae.infer.training.svi.SVIStep` with its steps run by
a graph that :mod:`pyro_vae.infer.compile.capture` records once per batch shape, a pure function ::

    (parameters, Adam state, Adam's step sizes, module buffers, x, *args)
        -> (loss, -ELBO, guard), parameters and Adam state updated in place

(:mod:`~pyro_vae.infer.training.functional_adam`). With a gradient hook (the all-reduce of a
data-parallel run) the graph stops at the gradients, ``(parameters, buffers, x, *args) -> (loss,
-ELBO, gradients, guard)``, and the hook, clipping and the fused Adam follow as in the eager step,
so every rank takes the same update. With the same RNG state a compiled and an eager step draw
the same noise, so a run resumed from a checkpoint (parameters, optimizer, RNG states)
continues bit for bit.

What cannot be captured falls back to the eager step with one notice: whatever
:func:`~pyro_vae.infer.compile.policy.step_blocker` names (a labelled stream inside every step,
Pyro's JIT), a guide site drawn without ``rsample`` (an enumerated one is summed out, not
drawn, and is captured), an optimizer other than the default Adam, tensors passed as keyword
arguments, a parameter created during the capture, a trace that fails or does not replay. An
objective's schedule is no obstacle: its per-step scalars are graph inputs
(:meth:`Objective.schedule_inputs`), read on every call. Nor is a labelled stream in the
"alternate" schedule: each part of its objective (:meth:`Objective.step_parts`) is a step of its
own, captured as a graph of its own, its loss times the stream's share B_l / B inside the graph.

Validation batches (:meth:`CompiledSVIStep.evaluate`) can run by compiled graphs too, of the
plain -ELBO without gradients (``compile_evaluation``; ``train`` decides when that pays).

Size: the step's graphs and the validation graphs share the parameters, the module buffers,
the batch-shape rule and the fallback; apart they would hand all four between modules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pyro
import torch

from pyro_vae.infer.compile.capture import (
    MAX_GUARD_FAILURES,
    CaptureError,
    CompiledGraph,
    argument_blocker,
    build_graph,
    capture,
    compile_graph,
    graph_key,
    module_buffers,
    warn_fallback,
)
from pyro_vae.infer.compile.policy import JOINT_BLOCKER, step_blocker
from pyro_vae.infer.pair.layout import is_fully_reparameterized
from pyro_vae.infer.runtime.devices import forked_rng
from pyro_vae.infer.training.functional_adam import (
    adam_coefficients,
    adam_state,
    adam_update_,
    clip_gradients,
)
from pyro_vae.infer.training.svi import SVIStep, TrainingDivergedError

__all__ = ["CompiledSVIStep"]


class CompiledSVIStep(SVIStep):
    """:class:`~pyro_vae.infer.training.svi.SVIStep`, its steps one compiled graph per shape.

    Same constructor, ``setup``, ``step``, ``evaluate``, ``state_dict`` and
    ``load_state_dict`` as ``SVIStep``. On each new batch shape (and ``num_data``) the
    objective, its gradients and the Adam update are captured once with Pyro's handlers
    active (:func:`capture`) and compiled (:func:`compile_graph`); later steps of that shape
    call the compiled graph only. Adam's state lives in ``self.optimizer`` as for the eager
    step, so checkpoints of either step load into the other. A pair or setting that cannot be
    captured (see the module docstring) runs the eager step, after one
    :class:`CompileFallbackWarning` naming the reason; ``fallback_reason`` keeps it.

    Parameters
    ----------
    model, guide, loss, **options
        As for :class:`~pyro_vae.infer.training.svi.SVIStep`.
    compile_fn : callable, optional
        ``compile_fn(graph, inputs, device) -> callable`` (default :func:`compile_graph`);
        ``lambda graph, inputs, device: graph`` runs the captured graph without compiling it.
    compile_evaluation : bool, default False
        Also run :meth:`evaluate` (validation batches) by a compiled graph of the plain
        -ELBO without gradients, one per batch shape (short batches eager, as for steps).
    compile_short_batches : bool, default False
        Also compile batches smaller than the first one. By default they run the eager step:
        the last batch of an epoch comes once per epoch, and compiling its shape costs as much
        as compiling the full one (docs/compiled.md) for a saving of a few milliseconds per
        epoch. The rule depends on the batch size only, so a resumed run takes the same path.

    Attributes
    ----------
    fallback_reason : str or None
        Why the step runs eagerly, or None while it is compiled.
    num_compiles : int
        Graphs captured and compiled so far (one per batch shape).
    compile_seconds : float
        Wall time spent capturing and compiling the steps' graphs.
    evaluation_compile_seconds : float
        Wall time spent capturing and compiling :meth:`evaluate`'s graphs.
    """

    def __init__(
        self,
        model,
        guide,
        loss="trace",
        *,
        compile_fn: Callable | None = None,
        compile_evaluation: bool = False,
        compile_short_batches: bool = False,
        **options,
    ):
        super().__init__(model, guide, loss, **options)
        self.compile_evaluation = compile_evaluation
        self.compile_short_batches = compile_short_batches
        self._full_batch: int | None = None
        self._full_batch_l: int | None = None
        self._custom_optimizer = options.get("optimizer") is not None
        self._compile_fn = compile_fn or compile_graph
        self._graphs: dict = {}
        self._grad_slots: dict = {}  # per graph with a gradient hook: whose gradients it returns
        self.fallback_reason: str | None = None
        self.num_compiles = 0
        self.compile_seconds = 0.0
        self.evaluation_compile_seconds = 0.0
        self._evaluation_graphs: dict = {}  # a failed capture leaves None: eager from then on
        self._module_buffers: list = []

    def setup(self, x: torch.Tensor, *args, labelled: tuple | None = None, **kwargs) -> None:
        """As :meth:`SVIStep.setup`; also decides whether the pair can be compiled.

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            A batch of data.
        *args, **kwargs, labelled
            As for :meth:`SVIStep.setup`.

        Returns
        -------
        None
        """
        super().setup(x, *args, labelled=labelled, **kwargs)
        self._full_batch = x.shape[0]
        self._full_batch_l = labelled[0].shape[0] if labelled is not None else None
        # found once: walking the modules on every step would cost 60 us (measured)
        self._module_buffers = module_buffers(self.model, self.guide)
        reason = self._pair_reason(x, args, kwargs)
        if reason is None and labelled is not None:
            reason = self._pair_reason(labelled[0], labelled[1:], kwargs)
        if reason is not None:
            self._fall_back(reason)

    def _pair_reason(self, x, args, kwargs) -> str | None:
        """Why this pair and these options cannot be captured, or None."""
        blocker = step_blocker(self.objective, labelled_objective=self.labelled_objective)
        if blocker is not None:
            return blocker
        if self._custom_optimizer:
            return "a custom optimizer (only the default Adam is compiled)"
        group = self.optimizer.param_groups
        if (
            len(group) != 1
            or group[0]["amsgrad"]
            or group[0]["weight_decay"]
            or group[0]["maximize"]
        ):
            return "an Adam setting other than the default (amsgrad, weight decay, maximize)"
        reason = argument_blocker(args, kwargs)
        if reason is not None:
            return reason
        if not is_fully_reparameterized(
            self.model, self.guide, x, *args, allow_enumerated=True, **kwargs
        ):
            return "a guide site without a reparameterized sampler (rsample)"
        return None

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self._graphs.clear()
        warn_fallback(reason)

    # -- the functional step that is captured ---------------------------------------------
    def _step_fn(self, objective, num_args, num_data, share, kwargs, grad_slots):
        """The function captured for ``share`` times ``objective``'s loss.

        Without a gradient hook: fn(guards, *params, *exp_avg, *exp_avg_sq, *step, coefs,
        *buffers, x, *args) -> (loss, -ELBO, guard), the Adam update in place. With one (the
        all-reduce of a data-parallel run, Python between backward and the update): fn(guards,
        *params, *buffers, x, *args) -> (loss, -ELBO, *gradients, guard), the gradients of the
        parameters whose indices the capture writes into ``grad_slots`` (the others get none).
        """
        group = self.optimizer.param_groups[0]
        betas, eps, clip = group["betas"], group["eps"], self.clip_norm
        k, update = len(self.params), self.grad_hook is None

        def fn(guards, *flat):
            params = flat[:k]
            # the buffers that follow coefs are reached through the modules, by identity
            x, args = flat[-1 - num_args], flat[len(flat) - num_args :]
            with guards:  # backward too: Pyro's ELBOs hook NaN checks onto the gradients
                loss = objective(self.model, self.guide, x, *args, num_data=num_data, **kwargs)
                scaled = loss if share == 1.0 else share * loss
                grads = torch.autograd.grad(scaled, params, allow_unused=True)
            held = guards.held()
            neg_elbo = objective.recorded_neg_elbo(loss).detach()
            if not update:
                grad_slots[:] = [i for i, g in enumerate(grads) if g is not None]
                return (loss.detach(), neg_elbo, *(g for g in grads if g is not None), held)
            m, v, steps = (flat[i * k : (i + 1) * k] for i in range(1, 4))
            with torch.no_grad():
                if clip is not None:
                    grads = clip_gradients(grads, clip)
                # nothing moves when the loss is not finite (the eager step's refusal) or a
                # guarded decision differs from the capture's (the batch is then redone eagerly)
                ok = torch.isfinite(loss.detach()) & held
                adam_update_(params, grads, m, v, steps, flat[4 * k], betas, eps, ok)
            return loss.detach(), neg_elbo, held

        return fn

    def _inputs(self, buffers, x, args) -> tuple[list, list]:
        """The graph's inputs (see :meth:`_step_fn`), Adam's state created if need be, and
        those of them the graph changes in place."""
        params = list(self.params.values())
        if self.grad_hook is not None:
            return [*params, *buffers, x, *args], buffers
        m, v, steps = adam_state(self.optimizer, params)
        coefs = adam_coefficients(self.optimizer, steps)
        mutated = [*params, *m, *v, *steps, *buffers]
        return [*params, *m, *v, *steps, coefs, *buffers, x, *args], mutated

    def _build(self, key, objective, x, args, num_data, share, kwargs):
        """Capture and compile the step on ``objective`` for one batch shape; None after a
        fallback."""
        tic = time.perf_counter()
        params = list(self.params.values())
        if not all(p.requires_grad for p in params):
            self._fall_back("a parameter that does not require grad")
            return None
        buffers = [*self._module_buffers, *objective.schedule_inputs()]
        inputs, mutated = self._inputs(buffers, x, args)
        known = set(pyro.get_param_store().keys())
        grad_slots = []
        try:
            # one eager call first, outside the trace: an objective's lazy set-up (e.g. the
            # IWAE's layout, found in a forked RNG) must not become part of every step
            with forked_rng(x), torch.no_grad():
                objective(self.model, self.guide, x, *args, num_data=num_data, **kwargs)
            fn = self._step_fn(objective, len(args), num_data, share, kwargs, grad_slots)
            graph, num_guards = capture(fn, inputs, mutated=mutated)
        except CaptureError as err:
            self._fall_back(str(err))
            return None
        new = sorted(set(pyro.get_param_store().keys()) - known - set(self.params))
        if new:
            self._fall_back(f"parameter(s) {new} appeared while capturing a new batch shape")
            return None
        compiled = CompiledGraph(self._compile_fn(graph, inputs, x.device), num_guards)
        self._graphs[key] = compiled
        self._grad_slots[key] = grad_slots
        self.num_compiles += 1
        self.compile_seconds += time.perf_counter() - tic
        return compiled

    def step(self, x, *args, num_data=None, labelled=None, num_labelled=None, **kwargs) -> float:
        """One gradient step, compiled (see the class docstring); as :meth:`SVIStep.step`.

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            A minibatch.
        *args, **kwargs, num_data, labelled, num_labelled
            As for :meth:`SVIStep.step`; a ``labelled`` batch (the "joint" schedule) runs the
            eager step.

        Returns
        -------
        float
            The objective before the update, nats per datapoint.

        Raises
        ------
        TrainingDivergedError
            When the loss is NaN or infinite (the parameters are left unchanged).
        ValueError
            As for :meth:`SVIStep.step`, from the eager step.
        """
        if self.optimizer is None:
            self.setup(x, *args, labelled=labelled, **kwargs)
        if labelled is not None and self.fallback_reason is None:
            self._fall_back(JOINT_BLOCKER)
        out = self._run_compiled("data", self.objective, 1.0, x, args, num_data, kwargs)
        if out is not None:
            self.last_neg_elbo = out[1]  # the loss itself unless a surrogate's
            return out[0]
        return super().step(
            x, *args, num_data=num_data, labelled=labelled, num_labelled=num_labelled, **kwargs
        )

    def _step_part(self, index, part, share, x_l, args, num_labelled, kwargs):
        """A labelled step on one part of the objective (:meth:`SVIStep.step_labelled`),
        compiled; eager when it cannot be."""
        tag = ("labelled", index)
        out = self._run_compiled(tag, part, share, x_l, args, num_labelled, kwargs)
        if out is not None:
            return out
        return super()._step_part(index, part, share, x_l, args, num_labelled, kwargs)

    def _run_compiled(self, tag, objective, share, x, args, num_data, kwargs):
        """The step on ``share`` times ``objective`` by its graph for this batch shape (built
        on first use): (value, -ELBO) as floats, or None when it runs eagerly."""
        full = self._full_batch if tag == "data" else self._full_batch_l
        short = x.shape[0] < full and not self.compile_short_batches
        if self.fallback_reason is not None or short:
            return None
        buffers = [*self._module_buffers, *objective.schedule_inputs()]
        key = (tag, graph_key((*buffers, x, *args), kwargs), num_data, share)
        compiled = self._graphs.get(key)
        if compiled is None:
            reason = argument_blocker(args, kwargs)
            if reason is not None:
                self._fall_back(reason)
                return None
            compiled = self._build(key, objective, x, args, num_data, share, kwargs)
            if compiled is None:
                return None
        out = compiled(self._inputs(buffers, x, args)[0], x.device)
        if out is None:
            if compiled.failures >= MAX_GUARD_FAILURES:
                self._fall_back(compiled.failure_reason())
            return None
        loss, neg_elbo, *grads = out
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDivergedError.at_step(value, self.num_steps + 1)
        if self.grad_hook is None:  # the graph has updated the parameters
            self.num_steps += 1
        else:  # the graph's gradients, then the eager step's update (hook, clipping, Adam)
            params = list(self.params.values())
            self.optimizer.zero_grad(set_to_none=True)
            for i, grad in zip(self._grad_slots[key], grads, strict=True):
                params[i].grad = grad
            self._apply_gradients()
        return value, neg_elbo.item()

    # -- validation ---------------------------------------------------------------------------
    def evaluate(self, x: torch.Tensor, *args, num_data: int | None = None, **kwargs) -> float:
        """As :meth:`SVIStep.evaluate`; by a compiled graph with ``compile_evaluation``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            A batch of data.
        *args, **kwargs, num_data
            As for :meth:`SVIStep.evaluate`.

        Returns
        -------
        float
            -ELBO per datapoint, nats.
        """
        if self.optimizer is None:
            self.setup(x, *args, **kwargs)
        graph = self._evaluation_graph(x, args, num_data, kwargs)
        out = graph(self._evaluation_inputs(x, args), x.device) if graph is not None else None
        if out is None:  # eager; after guard failures the graph is dropped
            if graph is not None and graph.failures >= MAX_GUARD_FAILURES:
                self._evaluation_graphs[self._evaluation_key(x, args, num_data, kwargs)] = None
            return super().evaluate(x, *args, num_data=num_data, **kwargs)
        return out[0].item()

    def _evaluation_inputs(self, x, args) -> list:
        return [*self.params.values(), *self._module_buffers, x, *args]

    def _evaluation_key(self, x, args, num_data, kwargs) -> tuple:
        return graph_key((*self._module_buffers, x, *args), kwargs), num_data

    def _evaluation_graph(self, x, args, num_data, kwargs) -> CompiledGraph | None:
        """The compiled -ELBO for this batch shape (built on first use), or None: eager."""
        short = x.shape[0] < self._full_batch and not self.compile_short_batches
        if not self.compile_evaluation or self.fallback_reason is not None or short:
            return None
        if argument_blocker(args, kwargs) is not None:
            return None
        key = self._evaluation_key(x, args, num_data, kwargs)
        if key in self._evaluation_graphs:
            return self._evaluation_graphs[key]
        tic, objective, num_args = time.perf_counter(), self.eval_objective, len(args)

        with forked_rng(x), torch.no_grad():  # an objective's lazy set-up, outside the trace
            objective(self.model, self.guide, x, *args, num_data=num_data, **kwargs)

        def fn(guards, *flat):
            x, args = flat[-1 - num_args], flat[len(flat) - num_args :]
            with guards, torch.no_grad():
                loss = objective(self.model, self.guide, x, *args, num_data=num_data, **kwargs)
            return loss.detach(), guards.held()

        graph, _ = build_graph(
            fn,
            self._evaluation_inputs(x, args),
            mutated=self._module_buffers,
            param_names=set(self.params),
            device=x.device,
            compile_fn=self._compile_fn,
        )
        self._evaluation_graphs[key] = graph
        self.evaluation_compile_seconds += time.perf_counter() - tic
        return graph
