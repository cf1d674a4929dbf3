"""The log weights of one chunk of particles as a compiled graph, for the estimators.

:class:`CompiledLogWeights` computes exactly
:func:`~pyro_vae.infer.pair.particles.draw_log_weights` (the same draws for one RNG state) from
a graph that
:mod:`pyro_vae.infer.compile.capture` records once per (pair, parameter shapes, batch shape,
S) and inductor compiles; graphs are kept in a small module-level cache, so the chunks of one
estimate and the batches of ``dataset_nll`` reuse them.
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
from pyro_vae.infer.pair.particles import PairBatch, draw_log_weights

__all__ = ["CompiledLogWeights"]

_LOG_WEIGHT_GRAPHS: OrderedDict = OrderedDict()  # (pair, shapes, S...) -> compiled graph
_MAX_LOG_WEIGHT_GRAPHS = 16  # graphs hold their pair: keep the cache bounded


class CompiledLogWeights:
    """The log weights of :func:`~pyro_vae.infer.pair.particles.draw_log_weights`, compiled.

    One object serves one call of an estimator (one pair, one batch ``x``): calling it with
    S returns the (S, N) log weights of S fresh particles, from a graph captured and compiled
    once per (pair, parameter shapes, batch shape, S) and kept in a small module-level cache,
    so that the chunks of one call and the batches of ``dataset_nll`` reuse it. The
    parameters are found by running the pair (param-only trace) once per object and passed
    to the graph as inputs, so a graph never holds stale values. With the same RNG state the
    draws are those of the eager function; a chunk whose guarded decisions differ from the
    capture's is redrawn eagerly (see
    :class:`~pyro_vae.infer.compile.capture.DecisionGuards`). A pair that cannot be captured
    runs eagerly after one :class:`~pyro_vae.infer.compile.capture.CompileFallbackWarning`.

    Parameters
    ----------
    pair : PairBatch
        The pair bound to its batch ``x`` of N datapoints, with its layout
        (:func:`~pyro_vae.infer.pair.particles.bind_pair`).
    compile_fn : callable, optional
        As for :class:`~pyro_vae.infer.training.compiled_step.CompiledSVIStep`.

    Attributes
    ----------
    fallback_reason : str or None
        Why the log weights are computed eagerly, or None.
    """

    def __init__(self, pair: PairBatch, compile_fn=None):
        self.pair = pair
        self._compile_fn = compile_fn
        inputs = pair_inputs(pair)
        self.fallback_reason = inputs.fallback_reason
        self.params, self.param_names = inputs.params, inputs.param_names
        self.buffers, self._shapes = inputs.buffers, inputs.shapes
        if self.fallback_reason is not None:
            warn_fallback(self.fallback_reason)

    def _eager(self, num_particles):
        return draw_log_weights(self.pair, num_particles)

    def __call__(self, num_particles: int) -> torch.Tensor:
        """(S, N) log weights log p(x, z_s) - log q(z_s | x) of S fresh particles, nats.

        Parameters
        ----------
        num_particles : int
            S.

        Returns
        -------
        torch.Tensor of shape (S, N)
        """
        if self.fallback_reason is not None:
            return self._eager(num_particles)
        pair = self.pair
        key = (
            pair.model, pair.guide, graph_key((*self.buffers, pair.x, *pair.args), pair.kwargs),
            self._shapes, num_particles, pair.layout, pair.data_plate,
        )  # fmt: skip
        compiled = _LOG_WEIGHT_GRAPHS.get(key)
        if compiled is None:
            compiled = self._build(num_particles)
            if compiled is None:
                return self._eager(num_particles)
            _LOG_WEIGHT_GRAPHS[key] = compiled
            while len(_LOG_WEIGHT_GRAPHS) > _MAX_LOG_WEIGHT_GRAPHS:
                _LOG_WEIGHT_GRAPHS.popitem(last=False)
        _LOG_WEIGHT_GRAPHS.move_to_end(key)
        out = compiled((*self.params, *self.buffers, pair.x, *pair.args), pair.x.device)
        if out is None:  # a guarded decision differed: this chunk eagerly
            if compiled.failures >= MAX_GUARD_FAILURES:
                self.fallback_reason = compiled.failure_reason()
                warn_fallback(self.fallback_reason)
            return self._eager(num_particles)
        return out[0]

    def _build(self, num_particles):
        inputs = [*self.params, *self.buffers, self.pair.x, *self.pair.args]

        def fn(guards, *flat):
            with guards:
                log_w = self._eager(num_particles)
            return log_w, guards.held()

        with torch.no_grad():
            compiled, self.fallback_reason = build_graph(
                fn,
                inputs,
                mutated=self.buffers,
                param_names=self.param_names,
                device=self.pair.x.device,
                compile_fn=self._compile_fn,
            )
        return compiled
