"""Capture what Pyro's handlers compute as one ATen graph, check it, compile it with inductor.

Eager Pyro pays Python and per-operator dispatch on every step, and its effect handlers on
every site. ``torch.compile`` of an objective itself graph-breaks inside Pyro's runtime, so
this module traces instead: ``make_fx`` runs a function (the objective, ``torch.autograd.grad``
and a functional Adam, for the compiled step; one chunk of log weights, for the compiled
estimators) once, on the real tensors, with every handler active, and records only the ATen
operations they issue (:func:`capture`). Inductor compiles the result (:func:`compile_graph`).
Random draws stay in the graph as ATen ops, compiled with inductor's ``fallback_random`` so that
they consume torch's global generator exactly like eager code: with the same RNG state a
compiled and an eager call draw the same noise, and a run resumed from a checkpoint continues
bit for bit. Every capture is checked by replaying it once against the traced call.

Route, chosen by measurement (``experiments/bench_train.py --routes``, docs/compiled.md):
inductor's ``compile_fx`` on the captured ATen graph, called directly. ``torch.compile`` of
the same GraphModule adds Dynamo's tracing and guards on every call for the same kernels;
the captured graph run without inductor removes Pyro's overhead but keeps per-operator
dispatch and unfused elementwise kernels. On CUDA the compiled graph is also replayed as a
CUDA graph (``triton.cudagraphs``); that path is untested.

Python decisions on tensor values (``if torch.isfinite(x).all()``, ``.item()``) are guarded
(:class:`DecisionGuards`): the capture records each tensor-to-Python conversion and its value,
and the graph checks that every one of them comes out the same; when one does not, the
:class:`CompiledGraph` answers None, the random state is rewound and the caller runs that call
eagerly (after :data:`MAX_GUARD_FAILURES` such calls it stays eager). What a capture cannot
represent is refused with a one-line :class:`CompileFallbackWarning` naming the reason
(:func:`warn_fallback`). Python state that changes between calls without a tensor showing it
(a counter in the model) cannot be seen by any trace: a compiled pair must be a function of
its parameters, data and noise.

The users of this machinery live with what they compile:
:class:`~pyro_vae.infer.training.compiled_step.CompiledSVIStep` and
:class:`~pyro_vae.infer.evidence.compiled.CompiledLogWeights`; whether to compile at all is
decided once, by :mod:`pyro_vae.infer.compile.policy`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from pyro_vae.infer.pair.params import collect_params

__all__ = [
    "MAX_GUARD_FAILURES",
    "CaptureError",
    "CompileFallbackWarning",
    "CompiledGraph",
    "PairInputs",
    "DecisionGuards",
    "argument_blocker",
    "build_graph",
    "capture",
    "compile_graph",
    "graph_key",
    "module_buffers",
    "pair_inputs",
    "warn_fallback",
]

# batches whose guarded decisions differed from the capture's before a step stays eager
MAX_GUARD_FAILURES = 3


class CaptureError(RuntimeError):
    """The pair cannot be captured as one graph; the message names the reason."""


class CompileFallbackWarning(UserWarning):
    """A compiled path fell back to eager execution; the message names the reason."""


def warn_fallback(reason: str) -> None:
    """One :class:`CompileFallbackWarning`: "compiled step unavailable, running eagerly: ..."."""
    warnings.warn(
        f"compiled step unavailable, running eagerly: {reason}", CompileFallbackWarning, 3
    )


class DecisionGuards(TorchDispatchMode):
    """Inside a capture, answers each tensor-to-Python conversion and remembers it.

    ``make_fx`` refuses to turn a traced tensor into a Python value; under this mode the
    value is computed from the real tensor instead (so the Python code takes the capture's
    branch) and the pair (tensor, value) is kept, so that :meth:`held` can put the check
    "every such value is as at capture" into the graph.

    Attributes
    ----------
    taken : list of (torch.Tensor, bool or int or float)
        The converted tensors and their values at capture.
    """

    def __init__(self):
        super().__init__()
        self.taken: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            with _disable_current_modes():  # the real value, not a trace error
                value = func(*args)
            self.taken.append((args[0], value))
            return value
        return func(*args, **(kwargs or {}))

    def held(self) -> torch.Tensor:
        """A 0-dim bool tensor, traced: every recorded conversion gives its captured value.

        Returns
        -------
        torch.Tensor of shape ()
        """
        held = torch.ones((), dtype=torch.bool)
        for tensor, value in self.taken:
            held = held & (tensor == value).all().to(held.device)
        return held


def capture(fn: Callable, inputs: list, mutated=()) -> tuple[torch.fx.GraphModule, int]:
    """Trace ``fn(guards, *inputs)`` to an ATen graph, running every Pyro handler once.

    The trace runs on the real tensors (``make_fx``'s "real" mode): a tensor among ``inputs``
    becomes a graph input wherever ``fn`` reaches it, including through closures and the
    param store, so parameters need not be passed explicitly to the model; any other tensor
    the trace meets is a constant of the graph. Pyro's validation is off during the trace
    (its checks would be guarded decisions for nothing). ``fn`` runs the pair inside
    ``with guards:`` (a :class:`DecisionGuards`) and puts ``guards.held()`` among its outputs.

    The capture is then checked by a replay: the graph, run from the random state the trace
    started from, must give the trace's outputs bit for bit and leave the random state where
    the trace left it. A pair that resets the random state while it runs (``fork_rng``,
    ``manual_seed``: invisible to the trace) fails this check instead of drawing other noise.
    The tensors in ``mutated``, the random state and everything else are as before the call.

    Parameters
    ----------
    fn : callable
        ``fn(guards, *inputs) -> tuple of tensors``.
    inputs : list of torch.Tensor
        The graph's inputs, in order.
    mutated : sequence of torch.Tensor
        Inputs that ``fn`` updates in place (parameters, optimizer state), restored after the
        trace and the replay.

    Returns
    -------
    graph : torch.fx.GraphModule
        ``graph(*inputs) -> fn's outputs``.
    num_guards : int
        Guarded decisions recorded (0: ``held()`` is always true).

    Raises
    ------
    CaptureError
        When the trace fails or the replay differs; the message names the reason.
    """
    recorders, traced_outputs = [], []

    def traced(*flat):
        guards = DecisionGuards()
        recorders.append(guards)
        outputs = fn(guards, *flat)
        traced_outputs.extend(outputs)
        return outputs

    devices = sorted({t.device.index or 0 for t in inputs if t.device.type == "cuda"})
    saved = [t.detach().clone() for t in mutated]

    def restore():
        with torch.no_grad():
            for t, value in zip(mutated, saved, strict=True):
                t.copy_(value)

    with torch.random.fork_rng(devices=devices):
        start = _rng_states(devices)
        try:
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer chatter; real problems raise
                graph = make_fx(traced)(*inputs)
        except Exception as err:  # any failure is a reason to stay eager, named in the notice
            first = (str(err).strip().splitlines() or [""])[0]
            raise CaptureError(f"tracing failed ({type(err).__name__}: {first[:200]})") from err
        finally:
            restore()
        end = _rng_states(devices)
        expected = [t.detach().clone() for t in traced_outputs]
        _set_rng_states(start, devices)
        with torch.no_grad():
            replayed = graph(*inputs)
        same_stream = all(map(torch.equal, _rng_states(devices), end))
        restore()
    same_values = all(  # bit for bit; a NaN loss replays as NaN
        torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
        for a, b in zip(expected, replayed, strict=True)
    )
    if not (same_stream and same_values):
        raise CaptureError(
            "the captured graph does not replay the eager call (does the pair reset the random "
            "state while it runs, e.g. with fork_rng or manual_seed?)"
        )
    return graph, len(recorders[0].taken)


def _rng_states(devices) -> list:
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]


def _set_rng_states(states, devices) -> None:
    torch.set_rng_state(states[0])
    for state, d in zip(states[1:], devices, strict=True):
        torch.cuda.set_rng_state(state, d)


def _log1p(u: torch.Tensor) -> torch.Tensor:
    """log(1 + u) to a few ulps with one ``log``: Goldberg (1991), Theorem 4.

    With w = 1 + u rounded, log1p(u) = u when w == 1, else log(w) * u / (w - 1). Inductor
    lowers ``log1p`` to a CPU kernel 8x slower than ``log`` (measured on 100k floats), and
    every Bernoulli log-likelihood (``binary_cross_entropy_with_logits``) calls it per pixel.
    """
    w = 1 + u
    exact = torch.log(w) * (u / (w - 1))
    return torch.where((w == 1) | torch.isinf(u), u, exact)


def compile_graph(graph: torch.fx.GraphModule, inputs: list, device: torch.device) -> Callable:
    """Compile a captured graph with inductor; its random ops use torch's global generator.

    Parameters
    ----------
    graph : torch.fx.GraphModule
        As returned by :func:`capture`.
    inputs : list of torch.Tensor
        Example inputs (the real ones are fine: compilation does not run the graph).
    device : torch.device
        On CUDA the graph is also replayed as a CUDA graph (untested).

    Returns
    -------
    callable
        ``compiled(*inputs) -> outputs``, to be called under ``torch.no_grad()``.
    """
    from torch._guards import TracingContext, tracing
    from torch._inductor.compile_fx import compile_fx  # heavy import, only when compiling
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    # fallback_random: draws come from the global generator in the eager order, so the
    # compiled and eager steps agree for one seed and a resumed run continues bit for bit
    patches = {"fallback_random": True, "triton.cudagraphs": device.type == "cuda"}
    log1p = torch.ops.aten.log1p.default
    if device.type == "cpu" and any(node.target is log1p for node in graph.graph.nodes):
        # rewritten here, not passed to inductor as a decomposition table: a table of one's
        # own enters inductor's cache key and cannot be pickled, so the cache is bypassed. A
        # re-trace with fake tensors runs nothing (no draw, no parameter moves).
        graph = make_fx(graph, decomposition_table={log1p: _log1p}, tracing_mode="fake")(*inputs)
    # inductor's on-disk FX graph cache serves a graph only inside a tracing context whose fake
    # mode has a shape environment ("No shape env" bypasses it): one with static shapes, as a
    # graph captured from real tensors has
    context = TracingContext(FakeTensorMode(shape_env=ShapeEnv()))
    with torch.no_grad(), tracing(context):
        return compile_fx(graph, inputs, config_patches=patches)


def graph_key(tensors, kwargs: dict) -> tuple:
    """What a graph is specialized on: shapes, dtypes, devices, non-tensor arguments."""
    # strides too: without Dynamo's guards, a kernel compiled for one layout must not see another
    spec = tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors)
    return spec, tuple(sorted(kwargs.items()))


def module_buffers(*fns) -> list:
    """The buffers of the modules whose bound methods ``fns`` are: graph inputs too.

    Passed in, a buffer's current values are read on every call (it may be updated in place,
    as BatchNorm's running statistics are) instead of frozen into the graph as a constant.
    The tensors are those found here: a buffer later replaced by a new tensor is not seen.
    """
    found = {}
    for fn in fns:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            found.update((id(b), b) for b in owner.buffers())
    return list(found.values())


def argument_blocker(args: tuple, kwargs: dict) -> str | None:
    """Why the pair's arguments after ``x`` cannot be graph inputs, or None when they can."""
    if not all(isinstance(a, torch.Tensor) for a in args):
        return "a positional argument after x is not a tensor"
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return "a tensor is passed as a keyword argument"
    try:
        hash(tuple(sorted(kwargs.items())))
    except TypeError:
        return "a keyword argument is not hashable"
    return None


@dataclass(frozen=True)
class PairInputs:
    """What a captured graph of a bound pair takes besides its data, found once.

    Attributes
    ----------
    fallback_reason : str or None
        Why the pair's arguments cannot be graph inputs (:func:`argument_blocker`), or None.
    params : list of torch.Tensor
        Its parameters, found by running it (empty when it falls back).
    param_names : set of str
        Their names.
    buffers : list of torch.Tensor
        Its modules' buffers (:func:`module_buffers`).
    shapes : tuple
        (name, shape, dtype) of each parameter: part of a graph's cache key.
    """

    fallback_reason: str | None
    params: list
    param_names: set
    buffers: list
    shapes: tuple


def pair_inputs(pair) -> PairInputs:
    """The :class:`PairInputs` of a :class:`~pyro_vae.infer.pair.particles.PairBatch`."""
    reason = argument_blocker(pair.args, pair.kwargs)
    found = {}
    if reason is None:
        found = collect_params(pair.model, pair.guide, pair.x, *pair.args, **pair.kwargs)
    shapes = tuple((name, tuple(p.shape), p.dtype) for name, p in found.items())
    buffers = module_buffers(pair.model, pair.guide)
    return PairInputs(reason, list(found.values()), set(found), buffers, shapes)


def build_graph(fn, inputs, *, mutated, param_names, device, compile_fn=None):
    """Capture ``fn`` and compile it, or say why not: ``(CompiledGraph, None)`` or
    ``(None, reason)`` after one :class:`CompileFallbackWarning`.

    The capture is refused when it fails (:func:`capture`) or when running ``fn`` created a
    parameter the caller did not pass among ``inputs`` (``param_names``): the graph would
    hold it as a constant.
    """
    known = set(pyro.get_param_store().keys())
    reason = None
    try:
        graph, num_guards = capture(fn, inputs, mutated=mutated)
    except CaptureError as err:
        reason = str(err)
    new = sorted(set(pyro.get_param_store().keys()) - known - set(param_names))
    if reason is None and new:
        reason = f"parameter(s) {new} appeared while capturing"
    if reason is not None:
        warn_fallback(reason)
        return None, reason
    return CompiledGraph((compile_fn or compile_graph)(graph, inputs, device), num_guards), None


class CompiledGraph:
    """A compiled graph whose last output is its guard; answers None when a guard fails.

    With guards, the random state is saved before the call and rewound after a failure, so
    the eager rerun of the batch draws what the eager step would have drawn.
    """

    def __init__(self, fn: Callable, num_guards: int):
        self.fn, self.num_guards, self.failures = fn, num_guards, 0

    def __call__(self, inputs, device):
        if self.num_guards:
            rng = torch.get_rng_state(), _cuda_rng_state(device)
        with torch.no_grad():
            *outputs, held = self.fn(*inputs)
        if self.num_guards and not held.item():
            self.failures += 1
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], device)
            return None
        return outputs

    def failure_reason(self) -> str:
        """The fallback notice after guard failures: data-dependent Python control flow."""
        return (
            f"data-dependent Python control flow: the pair's decisions on tensor values "
            f"differed from the capture's on {self.failures} batches"
        )


def _cuda_rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None
