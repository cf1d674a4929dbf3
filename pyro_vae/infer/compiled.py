"""Compiled SVI steps and evidence chunks: run Pyro's handlers once, compile what they produce.

Eager Pyro pays Python and per-operator dispatch on every step, and its effect handlers on
every site. ``torch.compile`` of the objective itself graph-breaks inside Pyro's runtime, so
this module traces instead: ``make_fx`` runs the objective, ``torch.autograd.grad`` and a
functional Adam once, on the real tensors, with every handler active, and records only the
ATen operations they issue. The result is one graph per batch shape, a pure function

    (parameters, Adam state, Adam's step sizes, module buffers, x, *args)
        -> (loss, -ELBO, guard), parameters and Adam state updated in place

which inductor compiles. Random draws stay in the graph as ATen ops, compiled with inductor's
``fallback_random`` so that they consume torch's global generator exactly like the eager step:
with the same RNG state a compiled and an eager step draw the same noise, and a run resumed
from a checkpoint (parameters, optimizer, RNG states) continues bit for bit. Every capture is
checked by replaying it once against the traced call (:func:`capture`).

Route, chosen by measurement (``experiments/bench_train.py --routes``, docs/compiled.md):
inductor's ``compile_fx`` on the captured ATen graph, called directly. ``torch.compile`` of
the same GraphModule adds Dynamo's tracing and guards on every call for the same kernels;
the captured graph run without inductor removes Pyro's overhead but keeps per-operator
dispatch and unfused elementwise kernels. On CUDA the compiled graph is also replayed as a
CUDA graph (``triton.cudagraphs``); that path is untested.

Python decisions on tensor values (``if torch.isfinite(x).all()``, ``.item()``) are guarded:
the capture records each tensor-to-Python conversion and its value, and the graph checks that
every one of them comes out the same; when one does not, nothing is updated, the random state
is rewound and that batch runs eagerly (after :data:`MAX_GUARD_FAILURES` such batches the step
stays eager). What a capture cannot represent is refused with a one-line
:class:`CompileFallbackWarning` naming the reason, and the step stays eager: a guide site
without ``rsample``, an objective with a schedule (its weight would be baked in), a parameter
created during the capture, a labelled stream, a gradient hook, an optimizer other than the
default Adam, tensors passed as keyword arguments, a trace that fails or does not replay.
Python state that changes between steps without a tensor showing it (a counter in the model)
cannot be seen by any trace: a compiled pair must be a function of its parameters, data and
noise.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from pyro_vae.infer.devices import forked_rng
from pyro_vae.infer.objectives import is_fully_reparameterized
from pyro_vae.infer.params import collect_params
from pyro_vae.infer.svi import SVIStep, TrainingDivergedError

__all__ = [
    "AUTO_MIN_STEPS",
    "CaptureError",
    "CompileFallbackWarning",
    "CompiledLogWeights",
    "CompiledSVIStep",
    "DecisionGuards",
    "MAX_GUARD_FAILURES",
    "capture",
    "compile_graph",
    "should_compile",
]

# "auto" compiles a training run of at least this many steps (see should_compile)
AUTO_MIN_STEPS = 2000

# batches whose guarded decisions differed from the capture's before a step stays eager
MAX_GUARD_FAILURES = 3


class CaptureError(RuntimeError):
    """The pair cannot be captured as one graph; the message names the reason."""


class CompileFallbackWarning(UserWarning):
    """A compiled path fell back to eager execution; the message names the reason."""


def _notice(reason: str) -> None:
    warnings.warn(
        f"compiled step unavailable, running eagerly: {reason}", CompileFallbackWarning, 3
    )


def should_compile(num_steps: int, device) -> bool:
    """The ``compile="auto"`` rule: compile when the run repays the compile time.

    Compiling the step's graph costs C seconds once and saves s seconds per step; it pays
    from C / s steps on. Measured for the README's main job (784-400-20 VAE, batch 128, 2 CPU
    cores; docs/compiled.md): s = 2.6 ms, C = 2.4 s with inductor's on-disk cache warm (any
    run after the first on a machine) and 23 s cold, so break-even at ~920 and ~8,900 steps.
    :data:`AUTO_MIN_STEPS` = 2,000 is twice the warm break-even: a run of that length gains
    from the second run on a machine and loses at most the one cold compile.

    Parameters
    ----------
    num_steps : int
        Steps the run will take (epochs x batches per epoch).
    device : str or torch.device
        CPU or CUDA (the CUDA path is untested and compiled by the same rule).

    Returns
    -------
    bool
    """
    del device  # one measured rule for now; the GPU break-even was not measured
    return num_steps >= AUTO_MIN_STEPS


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
    from torch._inductor.compile_fx import compile_fx  # heavy import, only when compiling
    from torch._inductor.decomposition import select_decomp_table

    # fallback_random: draws come from the global generator in the eager order, so the
    # compiled and eager steps agree for one seed and a resumed run continues bit for bit
    patches = {"fallback_random": True, "triton.cudagraphs": device.type == "cuda"}
    decompositions = dict(select_decomp_table())
    if device.type == "cpu":
        decompositions[torch.ops.aten.log1p.default] = _log1p
    with torch.no_grad():
        return compile_fx(graph, inputs, config_patches=patches, decompositions=decompositions)


def _key_of(tensors, kwargs: dict) -> tuple:
    """What a graph is specialized on: shapes, dtypes, devices, non-tensor arguments."""
    # strides too: without Dynamo's guards, a kernel compiled for one layout must not see another
    spec = tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors)
    return spec, tuple(sorted(kwargs.items()))


def _buffers(*fns) -> list:
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


def _check_arguments(args: tuple, kwargs: dict) -> str | None:
    """The reason the arguments cannot be captured, or None."""
    if not all(isinstance(a, torch.Tensor) for a in args):
        return "a positional argument after x is not a tensor"
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return "a tensor is passed as a keyword argument"
    try:
        hash(tuple(sorted(kwargs.items())))
    except TypeError:
        return "a keyword argument is not hashable"
    return None


class CompiledSVIStep(SVIStep):
    """:class:`~pyro_vae.infer.svi.SVIStep` whose steps run as one compiled graph per shape.

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
        As for :class:`~pyro_vae.infer.svi.SVIStep`.
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
        self._module_buffers = _buffers(self.model, self.guide)
        reason = self._pair_reason(x, args, kwargs, labelled)
        if reason is not None:
            self._fall_back(reason)

    def _pair_reason(self, x, args, kwargs, labelled) -> str | None:
        """Why this pair and these options cannot be captured, or None."""
        if labelled is not None or self.labelled_loss is not self.loss:
            return "a labelled stream (two objectives per step)"
        if self.grad_hook is not None:
            return "a gradient hook (Python code between backward and update)"
        if self.loss == "jit":
            return 'loss="jit" (Pyro\'s own TorchScript tracing)'
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
        if getattr(self.objective, "set_progress", None) is not None and (
            getattr(self.objective, "annealing", "schedule") is not None
        ):
            return "an objective with a schedule (set_progress): the graph would freeze its weight"
        reason = _check_arguments(args, kwargs)
        if reason is not None:
            return reason
        if not is_fully_reparameterized(self.model, self.guide, x, *args, **kwargs):
            return "a guide site without a reparameterized sampler (rsample)"
        return None

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self._graphs.clear()
        _notice(reason)

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
            neg_elbo = getattr(self.objective, "neg_elbo", None)
            neg_elbo = loss if neg_elbo is None else neg_elbo
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
        buffers = self._module_buffers
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
        compiled = _Compiled(self._compile_fn(graph, inputs, x.device), num_guards)
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
            buffers = self._module_buffers
            key = (_key_of((*buffers, x, *args), kwargs), num_data)
            compiled = self._graphs.get(key)
            if compiled is None:
                reason = _check_arguments(args, kwargs)
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


class _Compiled:
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
        return (
            f"data-dependent Python control flow: the pair's decisions on tensor values "
            f"differed from the capture's on {self.failures} batches"
        )


def _cuda_rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------
# evidence: the (S, N) log weights of one chunk of particles
# ------------------------------------------------------------------------------------------
_LOG_WEIGHT_GRAPHS: OrderedDict = OrderedDict()  # (pair, shapes, S...) -> compiled graph
_MAX_LOG_WEIGHT_GRAPHS = 16  # graphs hold their pair: keep the cache bounded


class CompiledLogWeights:
    """The log weights of :func:`~pyro_vae.infer.evidence.draw_log_weights`, compiled.

    One object serves one call of an estimator (one pair, one batch ``x``): calling it with
    S returns the (S, N) log weights of S fresh particles, from a graph captured and compiled
    once per (pair, parameter shapes, batch shape, S) and kept in a small module-level cache,
    so that the chunks of one call and the batches of ``dataset_nll`` reuse it. The
    parameters are found by running the pair (param-only trace) once per object and passed
    to the graph as inputs, so a graph never holds stale values. With the same RNG state the
    draws are those of the eager function; a chunk whose guarded decisions differ from the
    capture's is redrawn eagerly (see :class:`DecisionGuards`). A pair that cannot be
    captured runs eagerly after one :class:`CompileFallbackWarning`.

    Parameters
    ----------
    model, guide : callable
        The pair.
    x : torch.Tensor of shape (N, ...)
        The batch.
    args : tuple
        Positional arguments after ``x``.
    kwargs : dict
        Keyword arguments of the pair.
    layout : PairLayout
        As returned by :func:`~pyro_vae.infer.evidence.inspect_pair` for ``x``.
    data_plate : str
        Name of the data plate.
    compile_fn : callable, optional
        As for :class:`CompiledSVIStep`.

    Attributes
    ----------
    fallback_reason : str or None
        Why the log weights are computed eagerly, or None.
    """

    def __init__(self, model, guide, x, args, kwargs, layout, data_plate, compile_fn=None):
        self.pair, self.x, self.args, self.kwargs = (model, guide), x, args, kwargs
        self.layout, self.data_plate = layout, data_plate
        self._compile_fn = compile_fn or compile_graph
        self.fallback_reason = _check_arguments(args, kwargs)
        found = {}
        if self.fallback_reason is None:
            found = collect_params(model, guide, x, *args, **kwargs)
        self.params, self.param_names = list(found.values()), set(found)
        self.buffers = _buffers(model, guide)
        self._shapes = tuple((name, tuple(p.shape), p.dtype) for name, p in found.items())
        if self.fallback_reason is not None:
            _notice(self.fallback_reason)

    def _eager(self, num_particles):
        from pyro_vae.infer.evidence import draw_log_weights  # evidence imports this module

        model, guide = self.pair
        return draw_log_weights(
            model, guide, self.x, self.args, self.kwargs, self.layout, self.data_plate,
            num_particles,
        )  # fmt: skip

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
        key = (
            self.pair, _key_of((*self.buffers, self.x, *self.args), self.kwargs), self._shapes,
            num_particles,
            self.layout, self.data_plate,
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
        out = compiled((*self.params, *self.buffers, self.x, *self.args), self.x.device)
        if out is None:  # a guarded decision differed: this chunk eagerly
            if compiled.failures >= MAX_GUARD_FAILURES:
                self.fallback_reason = compiled.failure_reason()
                _notice(self.fallback_reason)
            return self._eager(num_particles)
        return out[0]

    def _build(self, num_particles):
        inputs = [*self.params, *self.buffers, self.x, *self.args]
        known = set(pyro.get_param_store().keys())

        def fn(guards, *flat):
            with guards:
                log_w = self._eager(num_particles)
            return log_w, guards.held()

        with torch.no_grad():
            try:
                graph, num_guards = capture(fn, inputs, mutated=self.buffers)
            except CaptureError as err:
                self.fallback_reason = str(err)
        new = sorted(set(pyro.get_param_store().keys()) - known - self.param_names)
        if self.fallback_reason is None and new:
            self.fallback_reason = f"parameter(s) {new} appeared while capturing"
        if self.fallback_reason is not None:
            _notice(self.fallback_reason)
            return None
        return _Compiled(self._compile_fn(graph, inputs, self.x.device), num_guards)
