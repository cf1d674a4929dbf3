"""One HMC transition of every chain as a compiled graph, for annealed importance sampling.

:class:`CompiledTransition` computes exactly
:func:`~pyro_vae.infer.evidence.hmc.hmc_transition` (the same draws for one RNG state): the L
leapfrog steps, each running the model and the guide through Pyro's handlers with two backward
passes, and the accept/reject step, recorded once by
:func:`~pyro_vae.infer.compile.capture.capture` and compiled by inductor. Eager, the transition
pays Pyro's handlers and per-operator dispatch 2 L times and runs the Bernoulli likelihood and
its gradient as separate kernels; compiled, it is one call. The inverse temperature, the step
sizes and the scale are graph inputs, so one graph serves every temperature of the schedule
and every chunk of the same shape (graphs are kept in a small module-level cache).

The guide runs inside the graph on every evaluation (:class:`LatentSpace` with
``rerun_guide=True``): a distribution traced outside it would be a constant of the graph, tied
to the chunk it was drawn for.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from pyro_vae.infer.compile.capture import (
    MAX_GUARD_FAILURES,
    build_graph,
    graph_key,
    pair_inputs,
    warn_fallback,
)
from pyro_vae.infer.evidence.hmc import ChainState, hmc_transition
from pyro_vae.infer.pair.potential import LatentSpace, LogDensities

__all__ = ["CompiledTransition"]

_TRANSITION_GRAPHS: OrderedDict = OrderedDict()
_MAX_TRANSITION_GRAPHS = 8  # graphs hold their pair: keep the cache bounded


class CompiledTransition:
    """``hmc_transition(space, state, beta, step_size, scale, L)`` from a compiled graph.

    Parameters
    ----------
    space : LatentSpace
        The pair's latents for one chunk, built with ``rerun_guide=True``.
    num_leapfrog : int
        L.
    compile_fn : callable, optional
        Replaces :func:`~pyro_vae.infer.compile.capture.compile_graph` (tests).

    Attributes
    ----------
    fallback_reason : str or None
        Why transitions run eagerly, or None.
    """

    def __init__(self, space: LatentSpace, num_leapfrog: int, compile_fn=None):
        self.space, self.num_leapfrog = space, num_leapfrog
        self._compile_fn = compile_fn
        inputs = pair_inputs(space.pair)
        self.fallback_reason = inputs.fallback_reason
        self.params, self.param_names = inputs.params, inputs.param_names
        self.buffers, self._shapes = inputs.buffers, inputs.shapes

    def _eager(self, state, beta, step_size, scale):
        return hmc_transition(self.space, state, beta, step_size, scale, self.num_leapfrog)

    def __call__(self, state: ChainState, beta: float, step_size, scale):
        """As :func:`~pyro_vae.infer.evidence.hmc.hmc_transition`: (new state, accept prob)."""
        if self.fallback_reason is not None:
            return self._eager(state, beta, step_size, scale)
        beta_t = torch.tensor(beta, dtype=state.u.dtype, device=state.u.device)
        d = state.densities
        variable = [state.u, d.log_q, d.log_p, d.grad_q, d.grad_p, step_size, scale, beta_t]
        pair = self.space.pair
        key = (
            pair.model, pair.guide, pair.layout, pair.data_plate, self._shapes,
            graph_key((*self.buffers, pair.x, *pair.args, *variable), pair.kwargs),
            self.num_leapfrog,
        )  # fmt: skip
        compiled = _TRANSITION_GRAPHS.get(key)
        inputs = [*self.params, *self.buffers, pair.x, *pair.args, *variable]
        if compiled is None:
            compiled = self._build(inputs)
            if compiled is None:
                return self._eager(state, beta, step_size, scale)
            _TRANSITION_GRAPHS[key] = compiled
            while len(_TRANSITION_GRAPHS) > _MAX_TRANSITION_GRAPHS:
                _TRANSITION_GRAPHS.popitem(last=False)
        _TRANSITION_GRAPHS.move_to_end(key)
        out = compiled(inputs, pair.x.device)
        if out is None:  # a guarded decision differed: this transition eagerly
            if compiled.failures >= MAX_GUARD_FAILURES:
                self.fallback_reason = compiled.failure_reason()
                warn_fallback(self.fallback_reason)
            return self._eager(state, beta, step_size, scale)
        u, log_q, log_p, grad_q, grad_p, accept = out
        return ChainState(u, LogDensities(log_q, log_p, grad_q, grad_p)), accept

    def _build(self, inputs):
        def fn(guards, *flat):
            u, log_q, log_p, grad_q, grad_p, step_size, scale, beta = flat[-8:]
            state = ChainState(u, LogDensities(log_q, log_p, grad_q, grad_p))
            with guards:
                new, accept = self._eager(state, beta, step_size, scale)
            d = new.densities
            return new.u, d.log_q, d.log_p, d.grad_q, d.grad_p, accept, guards.held()

        compiled, self.fallback_reason = build_graph(
            fn,
            inputs,
            mutated=self.buffers,
            param_names=self.param_names,
            device=self.space.pair.x.device,
            compile_fn=self._compile_fn,
        )
        return compiled
