"""The one compile policy: whether a run or an estimate is compiled, and why not.

Every entry point that takes ``compile={"auto", True, False}`` (``train``, ``log_evidence``,
``iwae_bound``, ``elbo_per_datapoint``, ``dataset_nll``) resolves it once, here, the way
scikit-learn's PCA resolves ``svd_solver="auto"`` once in ``_fit`` and then dispatches:

- ``False`` runs eagerly; ``True`` compiles (what cannot be captured then falls back with a
  one-line :class:`~pyro_vae.infer.compile.capture.CompileFallbackWarning` naming the reason);
- ``"auto"`` compiles when nothing blocks the capture and the work is large enough to repay
  the compile time: :data:`AUTO_MIN_STEPS` training steps, or :data:`AUTO_MIN_WEIGHTS`
  importance weights N * L of an estimate. A blocked "auto" runs eagerly without a warning.
  The validation batches of a compiled training run are compiled from
  :data:`AUTO_MIN_EVALUATIONS` of them on (with ``True`` too: forcing the step's compile does
  not force a validation compile that cannot pay).

"auto" is decided from the job alone (its size, its pair, its objective: :func:`resolve`,
:func:`resolve_training`), never from the machine's history, so the same command, data and
seed take the same path, and give the same numbers bit for bit, on every run. The compiled
and the eager path agree to float round-off only (a different order of the same operations),
so a decision that moved with what other runs left would change the numbers. What this machine
measured of a training step (:class:`~pyro_vae.infer.compile.warm.StepCosts`) only advises:
:func:`compile_advice` says when compiling would save time ("auto" chose eager) or cost time
("auto" chose to compile), and the user passes ``compile=True`` or ``False`` to follow it.

What blocks a compiled training step is written once too (:func:`step_blocker`): a labelled
second stream inside every step (the "joint" schedule) and whatever the objectives themselves
declare (:meth:`~pyro_vae.infer.objectives.base.Objective.
capture_blocker`: Pyro's JIT). A schedule is not a blocker: its per-step scalars are graph
inputs (``Objective.schedule_inputs``); nor is a labelled stream in the "alternate" schedule,
whose steps are captured one graph per part; nor is a gradient hook (a data-parallel run's
all-reduce), which runs between the captured gradients and the update.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyro_vae.infer.compile.warm import StepCosts
from pyro_vae.infer.objectives.base import Objective

__all__ = [
    "AUTO_MIN_EVALUATIONS",
    "AUTO_MIN_GRADIENTS",
    "AUTO_MIN_STEPS",
    "AUTO_MIN_WEIGHTS",
    "COMPILE_SECONDS",
    "JOINT_BLOCKER",
    "CompileDecision",
    "check_request",
    "compile_advice",
    "compile_notice",
    "resolve",
    "resolve_training",
    "step_blocker",
]

# "auto" compiles a training run of at least this many steps. Compiling the step's graph costs
# C seconds once and saves s seconds per step, so it pays from C / s steps on. Measured for the
# README's main job (784-400-20 VAE, batch 128, 2 CPU cores; docs/compiled.md): s = 2.6 ms,
# C = 2.4 s with inductor's on-disk cache warm (any run after the first on a machine) and 23 s
# cold, so break-even at ~920 and ~8,900 steps. 2,000 is twice the warm break-even: a run of
# that length gains from the second run on a machine and loses at most the one cold compile.
# The GPU break-even was not measured; the same rule applies there. On another day (docs/results/
# numpyro.md) the warm compile took 14-15 s and saved 5 ms per step, break-even ~2,900:
# the compile cost moves between days, which a fixed threshold cannot follow; it is still the
# rule, so that a run is a function of its command (what the machine measured only advises:
# compile_advice)
AUTO_MIN_STEPS = 2000
# "auto" compiles the validation of a compiled run from this many full validation batches
# (epochs x batches): measured on the main job's VAE (experiments/bench_steps.py --rows
# validation, batch 128, 2 threads, 2026-11-30), the compiled -ELBO without gradients saves
# 3.1 ms per batch (21,491 against 44,688 datapoints/s) and costs 3.1 s to capture and compile
# with inductor's cache warm (11.1 s the first time): break-even ~1,000; twice that
AUTO_MIN_EVALUATIONS = 2_000
# "auto" compiles the log weights of an estimate of at least this many weights N * L: about
# twice the measured break-even of ~850,000 (docs/compiled.md)
AUTO_MIN_WEIGHTS = 2_000_000
# "auto" compiles the HMC transition of an annealed importance sampler from this many
# gradient evaluations on (datapoints x chains x transitions x leapfrog steps): measured on the
# main job's VAE (experiments/bench_ais.py --compiled, one core, nothing else running), the
# compiled transition takes 26 us per evaluation against 36 us eager and costs 49-54 s to
# capture and compile: break-even ~5 million
AUTO_MIN_GRADIENTS = 6_000_000
JOINT_BLOCKER = "a labelled stream in the joint schedule (two objectives per step)"

# seconds a first compile takes, with inductor's on-disk cache cold (docs/compiled.md: the
# README's main job's step 23.1 s, the log-weight graph 6.8 s); later runs reuse the cache
COMPILE_SECONDS = {
    "training step": 25,
    "validation pass": 11,
    "log weights": 7,
    "HMC transition": 55,
}


def compile_notice(what: str, seconds_before: float | None = None) -> str:
    """The line said before a compiled ``what`` (a key of :data:`COMPILE_SECONDS`) is built.

    A first compile takes longer than a short run, so a command that seems to hang says why;
    ``seconds_before``, what the same compile took last time on this machine, if known.
    """
    if seconds_before is not None:
        return f"compiling the {what} (it took {seconds_before:.0f} s last time on this machine)"
    return f"compiling the {what} (about {COMPILE_SECONDS[what]} s the first time)"


@dataclass(frozen=True)
class CompileDecision:
    """What :func:`resolve` decided.

    Attributes
    ----------
    compile : bool
        Whether to build the compiled path.
    reason : str
        Why, in a few words (for notes and tests).
    """

    compile: bool
    reason: str

    def __bool__(self) -> bool:
        return self.compile


def check_request(compile) -> None:
    """Refuse a ``compile`` argument other than "auto", True or False.

    Parameters
    ----------
    compile : object
        The argument as the user gave it.

    Raises
    ------
    ValueError
        One line naming the value.
    """
    if compile not in ("auto", True, False):
        raise ValueError(f'compile must be "auto", True or False, got {compile!r}')


def resolve(compile, *, work: int, min_work: int, blocker: str | None = None) -> CompileDecision:
    """Resolve a ``compile`` request once: the rule every entry point calls.

    Parameters
    ----------
    compile : {"auto", True, False}
        The request.
    work : int
        The size of the job: training steps (epochs x batches) or importance weights N * L.
    min_work : int
        The least work that repays a compile, :data:`AUTO_MIN_STEPS` or
        :data:`AUTO_MIN_WEIGHTS`.
    blocker : str, optional
        Why the job cannot be captured (:func:`step_blocker`), if known before it starts.

    Returns
    -------
    CompileDecision

    Raises
    ------
    ValueError
        For a request other than "auto", True or False.
    """
    check_request(compile)
    if compile != "auto":
        return CompileDecision(bool(compile), f"compile={compile}")
    if blocker is not None:
        return CompileDecision(False, f"auto: {blocker}")
    if work < min_work:
        return CompileDecision(False, f"auto: {work:,} is below the {min_work:,} that repay it")
    return CompileDecision(True, f"auto: {work:,} >= {min_work:,}")


def resolve_training(compile, *, steps: int, blocker: str | None = None) -> CompileDecision:
    """Resolve ``compile`` for a training run of ``steps`` optimizer steps.

    "auto" compiles from :data:`AUTO_MIN_STEPS` steps on when nothing blocks the capture: a
    function of the run alone, never of what other runs measured (:func:`compile_advice`).

    Parameters
    ----------
    compile : {"auto", True, False}
        The request.
    steps : int
        The run's optimizer steps (epochs x steps per epoch).
    blocker : str, optional
        As for :func:`resolve`.

    Returns
    -------
    CompileDecision
        Its reason reads e.g. "auto: 1,170 steps < 2,000".
    """
    decision = resolve(compile, work=steps, min_work=AUTO_MIN_STEPS, blocker=blocker)
    if compile != "auto" or blocker is not None:
        return decision
    sign = ">=" if decision.compile else "<"
    return CompileDecision(decision.compile, f"auto: {steps:,} steps {sign} {AUTO_MIN_STEPS:,}")


def compile_advice(
    decision: CompileDecision, *, steps: int, costs: StepCosts, blocker: str | None = None
) -> str | None:
    """What this machine's measurements say of an "auto" decision, or None: advice only.

    When the recorded costs of this step (complete: compiled, eager and the compile) say that
    the ``steps`` would save more than the compile costs, ``steps * (eager - compiled) >
    compile seconds``, and "auto" chose eager, or the reverse, one line says so and how to take
    the other path. The decision itself never changes: the run stays a function of its command.

    Parameters
    ----------
    decision : CompileDecision
        What :func:`resolve_training` decided for "auto" (other requests get no advice).
    steps : int
        The run's optimizer steps.
    costs : StepCosts
        What earlier runs measured on this machine
        (:func:`~pyro_vae.infer.compile.warm.recorded_costs`).
    blocker : str, optional
        Why the step cannot be captured (then there is no other path to advise).

    Returns
    -------
    str or None
    """
    if not decision.reason.startswith("auto: ") or blocker is not None or not costs.complete:
        return None
    saved = steps * (costs.eager_step_seconds - costs.compiled_step_seconds)
    gain = saved - costs.compile_seconds
    measured = "on this machine (measured by earlier runs)"
    if gain > 0 and not decision.compile:
        return f"compiling would save about {gain:.0f} s {measured}: compile=True (--compile on)"
    if gain <= 0 and decision.compile:
        return (
            f"compiling costs about {-gain:.0f} s more than it saves {measured}: compile=False "
            "(--compile off) runs eagerly"
        )
    return None


def step_blocker(
    objective: Objective,
    *,
    labelled_objective: Objective | None = None,
    joint: bool = False,
) -> str | None:
    """Why a training step with these parts cannot be captured, or None.

    Parameters
    ----------
    objective : Objective
        The step's objective.
    labelled_objective : Objective, optional
        The objective of a second, labelled stream. In the "alternate" schedule its parts are
        steps of their own, each captured apart; in the "joint" schedule (``joint=True``) both
        objectives would share one step, which is not captured.
    joint : bool
        Whether the labelled stream enters every step ("joint").

    Returns
    -------
    str or None
        The one-line reason a user sees, or None.
    """
    if labelled_objective is not None and joint:
        return JOINT_BLOCKER
    reason = objective.capture_blocker()
    if reason is None and labelled_objective is not None:
        reason = labelled_objective.capture_blocker()
    return reason
