"""The compiled SVI step: one captured, inductor-compiled graph per batch shape.

:class:`CompiledSVIStep` is :class:`~pyro_vae.infer.training.svi.SVIStep` with its steps run by
a graph that :mod:`pyro_vae.infer.compile.capture` records once per batch shape, a pure function

    (parameters, Adam state, Adam's step sizes, module buffers, x, *args)
        -> (loss, -ELBO, guard), parameters and Adam state updated in place

With the same RNG state a compiled and an eager step draw the same noise, so a run resumed from
a checkpoint (parameters, optimizer, RNG states) continues bit for bit. What cannot be captured
falls back to the eager step with one notice: whatever
:func:`~pyro_vae.infer.compile.policy.step_blocker` names (a labelled stream, a gradient hook,
Pyro's JIT), a guide site without ``rsample``, an optimizer other
than the default Adam, tensors passed as keyword arguments, a parameter created during the
capture, a trace that fails or does not replay. An objective's schedule is no obstacle: its
per-step scalars are graph inputs (:meth:`Objective.schedule_inputs`), read on every call.
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
    capture,
    compile_graph,
    graph_key,
    module_buffers,
    warn_fallback,
)
from pyro_vae.infer.compile.policy import step_blocker
from pyro_vae.infer.pair.layout import is_fully_reparameterized
from pyro_vae.infer.runtime.devices import forked_rng
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
        Wall time spent capturing and compiling.
    """

    def __init__(
        self,
        model,
        guide,
        loss="trace",
        *,
        compile_fn: Callable | None = None,
        compile_short_batches: bool = False,
        **options,
    ):
        super().__init__(model, guide, loss, **options)
        self.compile_short_batches = compile_short_batches
        self._full_batch: int | None = None
        self._custom_optimizer = options.get("optimizer") is not None
        self._compile_fn = compile_fn or compile_graph
        self._graphs: dict = {}
        self.fallback_reason: str | None = None
        self.num_compiles = 0
        self.compile_seconds = 0.0
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
        # found once: walking the modules on every step would cost 60 us (measured)
        self._module_buffers = module_buffers(self.model, self.guide)
        reason = self._pair_reason(x, args, kwargs)
        if reason is not None:
            self._fall_back(reason)

    def _pair_reason(self, x, args, kwargs) -> str | None:
        """Why this pair and these options cannot be captured, or None."""
        blocker = step_blocker(
            self.objective, labelled_objective=self.labelled_objective, grad_hook=self.grad_hook
        )
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
        if not is_fully_reparameterized(self.model, self.guide, x, *args, **kwargs):
            return "a guide site without a reparameterized sampler (rsample)"
        return None

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self._graphs.clear()
        warn_fallback(reason)

    # -- the functional step that is captured ---------------------------------------------
    def _adam_state(self) -> tuple[list, list, list]:
        """Adam's (exp_avg, exp_avg_sq, step) per parameter, created as torch's Adam does."""
        state = self.optimizer.state
        for p in self.params.values():
            if p.requires_grad and not state[p]:
                state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        trainable = [p for p in self.params.values() if p.requires_grad]
        return (
            [state[p]["exp_avg"] for p in trainable],
            [state[p]["exp_avg_sq"] for p in trainable],
            [state[p]["step"] for p in trainable],
        )

    def _step_fn(self, num_params, num_args, num_data, kwargs):
        """fn(guards, *params, *exp_avg, *exp_avg_sq, *step, coefs, x, *args) -> outputs.

        Outputs: loss, -ELBO and the guard (see :meth:`_coefficients` for ``coefs``).
        """
        group = self.optimizer.param_groups[0]
        (beta1, beta2), eps, clip = group["betas"], group["eps"], self.clip_norm
        k = num_params

        def fn(guards, *flat):
            params, m, v, steps = (flat[i * k : (i + 1) * k] for i in range(4))
            # the buffers that follow coefs are reached through the modules, by identity
            coefs, x, args = flat[4 * k], flat[-1 - num_args], flat[len(flat) - num_args :]
            with guards:  # backward too: Pyro's ELBOs hook NaN checks onto the gradients
                loss = self.objective(self.model, self.guide, x, *args, num_data=num_data, **kwargs)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            held = guards.held()
            neg_elbo = self.objective.recorded_neg_elbo(loss)
            with torch.no_grad():
                if clip is not None:  # as torch.nn.utils.clip_grad_norm_
                    norm = torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None])
                    )
                    coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
                    grads = [None if g is None else g * coef for g in grads]
                # Adam (Kingma & Ba 2015, Alg. 1) as torch.optim.Adam writes it; nothing moves
                # when the loss is not finite (the eager step's refusal) or a guarded decision
                # differs from the capture's (the batch is then redone eagerly)
                ok = torch.isfinite(loss.detach()) & held
                for i, (p, g, m_, v_, t) in enumerate(zip(params, grads, m, v, steps, strict=True)):
                    if g is None:  # unused by the loss: torch's Adam skips it too
                        continue
                    t_new = t + 1
                    m_new = m_ + (1 - beta1) * (g - m_)
                    v_new = v_ * beta2 + (1 - beta2) * g * g
                    denom = (v_new.sqrt() / coefs[1, i]) + eps
                    p_new = p - coefs[0, i] * m_new / denom
                    p.copy_(torch.where(ok, p_new, p))
                    m_.copy_(torch.where(ok, m_new, m_))
                    v_.copy_(torch.where(ok, v_new, v_))
                    t.copy_(torch.where(ok, t_new, t))
            return loss.detach(), neg_elbo.detach(), held

        return fn

    def _build(self, key, x, args, num_data, kwargs):
        """Capture and compile the step for one batch shape; None after a fallback."""
        tic = time.perf_counter()
        params = list(self.params.values())
        if not all(p.requires_grad for p in params):
            self._fall_back("a parameter that does not require grad")
            return None
        m, v, steps = self._adam_state()
        buffers = [*self._module_buffers, *self.objective.schedule_inputs()]
        inputs = [*params, *m, *v, *steps, self._coefficients(steps), *buffers, x, *args]
        known = set(pyro.get_param_store().keys())
        try:
            # one eager call first, outside the trace: an objective's lazy set-up (e.g. the
            # IWAE's layout, found in a forked RNG) must not become part of every step
            with forked_rng(x), torch.no_grad():
                self.objective(self.model, self.guide, x, *args, num_data=num_data, **kwargs)
            step_fn = self._step_fn(len(params), len(args), num_data, kwargs)
            graph, num_guards = capture(
                step_fn, inputs, mutated=(*params, *m, *v, *steps, *buffers)
            )
        except CaptureError as err:
            self._fall_back(str(err))
            return None
        new = sorted(set(pyro.get_param_store().keys()) - known - set(self.params))
        if new:
            self._fall_back(f"parameter(s) {new} appeared while capturing a new batch shape")
            return None
        compiled = CompiledGraph(self._compile_fn(graph, inputs, x.device), num_guards)
        self._graphs[key] = compiled
        self.num_compiles += 1
        self.compile_seconds += time.perf_counter() - tic
        return compiled

    def _coefficients(self, steps) -> torch.Tensor:
        """Adam's per-parameter scalars of the coming step, (2, P) float64: graph inputs.

        Row 0 is lr / (1 - beta1^t), row 1 sqrt(1 - beta2^t), t the step about to be taken,
        in Python floats as ``torch.optim.Adam`` computes them. As inputs they follow a
        learning-rate scheduler; computed inside the graph, inductor would evaluate the two
        ``pow`` in every iteration of every vectorized Adam loop (measured: 3x slower Adam).
        The step counts are read from the optimizer's state.
        """
        counts = torch.stack(steps).tolist() if steps else []
        group = self.optimizer.param_groups[0]
        (beta1, beta2), lr = group["betas"], group["lr"]
        return torch.tensor(
            [
                [lr / (1 - beta1 ** (t + 1)) for t in counts],
                [math.sqrt(1 - beta2 ** (t + 1)) for t in counts],
            ],
            dtype=torch.float64,
        )

    def step(self, x, *args, num_data=None, labelled=None, num_labelled=None, **kwargs) -> float:
        """One gradient step, compiled (see the class docstring); as :meth:`SVIStep.step`.

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            A minibatch.
        *args, **kwargs, num_data, labelled, num_labelled
            As for :meth:`SVIStep.step`.

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
            self._fall_back("a labelled stream (two objectives per step)")
        compiled = None
        short = x.shape[0] < self._full_batch and not self.compile_short_batches
        if self.fallback_reason is None and not short:
            buffers = [*self._module_buffers, *self.objective.schedule_inputs()]
            key = (graph_key((*buffers, x, *args), kwargs), num_data)
            compiled = self._graphs.get(key)
            if compiled is None:
                reason = argument_blocker(args, kwargs)
                if reason is not None:
                    self._fall_back(reason)
                else:
                    compiled = self._build(key, x, args, num_data, kwargs)
        if compiled is not None:
            m, v, steps = self._adam_state()
            coefs = self._coefficients(steps)
            inputs = (*self.params.values(), *m, *v, *steps, coefs, *buffers, x, *args)
            out = compiled(inputs, x.device)
            if out is not None:
                loss, neg_elbo = out
                value = loss.item()
                if not math.isfinite(value):
                    message = f"the loss became {value} at step {self.num_steps + 1}"
                    raise TrainingDivergedError(message, value=value)
                self.last_neg_elbo = neg_elbo.item()  # the loss itself unless a surrogate's
                self.num_steps += 1
                return value
            if compiled.failures >= MAX_GUARD_FAILURES:
                self._fall_back(compiled.failure_reason())
        return super().step(
            x, *args, num_data=num_data, labelled=labelled, num_labelled=num_labelled, **kwargs
        )
