"""The objective contract (pyro_vae.infer.objectives.base) and the one compile policy.

What the step, the loop and the compiled path may ask of an objective is written once, in
``Objective``; these tests pin that wrappers forward it and that the compile decision has one
rule (``pyro_vae.infer.compile.policy``), used by ``train`` and ``CompiledSVIStep`` alike.
"""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO

from pyro_vae.cli_parser import build_parser
from pyro_vae.infer import (
    LOSSES,
    AuxiliaryTerm,
    IWAEObjective,
    KLAnnealing,
    KLControlledELBO,
    Objective,
    SVIStep,
    make_objective,
)
from pyro_vae.infer.compile.policy import (
    AUTO_MIN_STEPS,
    AUTO_MIN_WEIGHTS,
    CompileDecision,
    compile_advice,
    resolve,
    resolve_training,
    step_blocker,
)
from pyro_vae.infer.compile.warm import (
    StepCosts,
    inductor_cache_dir,
    recorded_costs,
    remember_costs,
    step_signature,
)
from pyro_vae.infer.objectives.base import CallableObjective, as_objective
from pyro_vae.infer.objectives.dreg import DReGObjective
from pyro_vae.infer.objectives.elbo import FastTraceELBO, PyroELBO
from pyro_vae.infer.objectives.registry import LOSS_REGISTRY, LossChoice, losses_taking
from pyro_vae.infer.objectives.stl import STLObjective
from pyro_vae.infer.training.compiled_step import CompiledSVIStep
from pyro_vae.models.vae import VAE

BLOCKER = "Pyro's JIT"  # any reason the policy is given


def _vae_and_batch():
    vae = VAE(6, latent_dim=2, hidden=(4,))
    return vae, torch.bernoulli(torch.full((5, 6), 0.5))


def _plain_loss(model, guide, x, *args, num_data=None, **kwargs):
    return FastTraceELBO()(model, guide, x, *args, num_data=num_data, **kwargs)


def test_every_built_in_objective_is_an_objective():
    vae, x = _vae_and_batch()
    for loss in (*LOSSES, Trace_ELBO()):  # every registered loss
        assert isinstance(make_objective(loss, vae.model, vae.guide, x), Objective), loss
    for objective in (KLControlledELBO(), IWAEObjective(3), AuxiliaryTerm("trace", len)):
        assert make_objective(objective, vae.model, vae.guide, x) is objective


def test_the_registry_is_the_one_list_of_losses():
    # the command line takes every registered loss, and nothing else
    parser = build_parser()
    for name in LOSSES:
        assert parser.parse_args(["train", "--loss", name]).loss == name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--loss", "elbo"])
    assert LOSSES == tuple(LOSS_REGISTRY)
    assert all(loss.help and "\n" not in loss.help for loss in LOSS_REGISTRY.values())
    assert losses_taking("num_particles") == ("iwae", "iwae-dreg")
    assert losses_taking("free_bits") == losses_taking("annealing") == ("trace",)
    vae, x = _vae_and_batch()
    built = make_objective(LossChoice("iwae-dreg", {"num_particles": 7}), vae.model, vae.guide, x)
    assert type(built) is DReGObjective and built.num_particles == 7
    assert type(make_objective("stl", vae.model, vae.guide, x)) is STLObjective
    with pytest.raises(ValueError, match="unknown loss 'elbo'; choose one of"):
        make_objective("elbo", vae.model, vae.guide, x)
    with pytest.raises(ValueError, match="loss 'stl' takes no setting 'num_particles'"):
        LossChoice("stl", {"num_particles": 3})


def test_a_plain_callable_is_a_plain_objective():
    vae, x = _vae_and_batch()
    objective = make_objective(_plain_loss, vae.model, vae.guide, x)
    assert isinstance(objective, CallableObjective) and as_objective(objective) is objective
    assert not objective.surrogate and objective.kl_weight == 1.0
    assert objective.capture_blocker() is None
    loss = objective(vae.model, vae.guide, x)
    assert objective.recorded_neg_elbo(loss) is not loss  # detached
    assert torch.equal(objective.recorded_neg_elbo(loss), loss.detach())


def test_auxiliary_term_forwards_the_contract_of_what_it_wraps():
    vae, x = _vae_and_batch()
    annealed = KLControlledELBO(KLAnnealing(epochs=2.0, start=0.2))
    wrapped = AuxiliaryTerm(annealed, lambda x: x.sum(-1), weight=0.0)
    wrapped.setup(vae.model, vae.guide, x)
    assert wrapped.objective is annealed
    # a schedule no longer blocks a capture: its weight is a graph input, forwarded too
    assert wrapped.capture_blocker() is None
    assert wrapped.schedule_inputs() == annealed.schedule_inputs() != []
    wrapped.set_progress(1.0)  # half-way up the linear rise from 0.2 to 1
    assert annealed.beta == pytest.approx(0.6, rel=1e-12) and wrapped.kl_weight == annealed.beta
    loss = wrapped(vae.model, vae.guide, x)
    # weight 0: the loss is the annealed objective's; the record is its true -ELBO
    assert wrapped.neg_elbo is annealed.neg_elbo
    assert annealed.schedule_inputs()[0].item() == annealed.beta  # the tensor follows set_progress
    assert torch.isfinite(loss)


def test_the_labelled_stream_objective_gets_the_schedule_too():
    # an annealed objective wrapped as the labelled loss used to be silently never annealed
    vae, x = _vae_and_batch()
    annealed = KLControlledELBO(KLAnnealing(epochs=4.0))
    labelled_loss = AuxiliaryTerm(annealed, lambda x: x.sum(-1), weight=0.0)
    svi = SVIStep(vae.model, vae.guide, labelled_loss=labelled_loss)
    svi.setup(x, labelled=(x,))
    svi.set_progress(3.0)
    assert svi.labelled_objective is labelled_loss and annealed.beta == 0.75


def test_jit_declares_one_batch_shape_and_a_blocker():
    vae, x = _vae_and_batch()
    jit = make_objective("jit", vae.model, vae.guide, x)
    assert isinstance(jit, PyroELBO) and isinstance(jit.elbo, JitTrace_ELBO)
    assert jit.fixed_batch_shape and "TorchScript" in jit.capture_blocker()
    assert not make_objective("pyro-trace", vae.model, vae.guide, x).fixed_batch_shape


def test_step_blocker_is_the_one_rule():
    plain, annealed = FastTraceELBO(), KLControlledELBO(KLAnnealing(epochs=1.0))
    assert step_blocker(plain) is None
    assert step_blocker(KLControlledELBO(free_bits=0.5)) is None  # no schedule: capturable
    assert step_blocker(annealed) is None  # the schedule's weight is an input of the graph
    # a labelled stream blocks in the joint schedule only; alternate steps are captured apart
    assert "joint schedule" in step_blocker(plain, labelled_objective=plain, joint=True)
    assert step_blocker(plain, labelled_objective=plain) is None
    vae, x = _vae_and_batch()
    jit = make_objective("jit", vae.model, vae.guide, x)
    assert "TorchScript" in step_blocker(plain, labelled_objective=jit)
    # a gradient hook (the data-parallel all-reduce) runs between the graph and the update


def test_the_compiled_step_falls_back_for_the_reason_the_policy_gives():
    vae, x = _vae_and_batch()
    svi = CompiledSVIStep(vae.model, vae.guide, "jit")
    with pytest.warns(UserWarning, match="TorchScript"):
        svi.setup(x)
    assert svi.fallback_reason == step_blocker(svi.objective)


@pytest.mark.parametrize(
    "request_, work, blocker, expected",
    [
        ("auto", AUTO_MIN_STEPS, None, True),
        ("auto", AUTO_MIN_STEPS - 1, None, False),
        ("auto", 10 * AUTO_MIN_STEPS, BLOCKER, False),
        (True, 1, BLOCKER, True),  # asked for: the compiled path then says why it falls back
        (False, 10 * AUTO_MIN_STEPS, None, False),
    ],
)
def test_resolve(request_, work, blocker, expected):
    decision = resolve(request_, work=work, min_work=AUTO_MIN_STEPS, blocker=blocker)
    assert decision.compile is expected and bool(decision) is expected
    if blocker is not None and request_ == "auto":
        assert blocker in decision.reason


@pytest.mark.parametrize(
    "request_, steps, blocker, expected, reason",
    [
        ("auto", AUTO_MIN_STEPS, None, True, "auto: 2,000 steps >= 2,000"),
        ("auto", 1170, None, False, "auto: 1,170 steps < 2,000"),
        ("auto", 10**6, BLOCKER, False, f"auto: {BLOCKER}"),
        (False, 10**6, None, False, "compile=False"),
        (True, 1, None, True, "compile=True"),
    ],
)
def test_resolve_training_decides_from_the_run_alone(request_, steps, blocker, expected, reason):
    # no argument can carry another run's history: the signature is the proof
    decision = resolve_training(request_, steps=steps, blocker=blocker)
    assert decision == CompileDecision(expected, reason)


# a step measured at 5 ms eager and 3 ms compiled, its compile at 4 s: break-even 2,000 steps
MEASURED = StepCosts(compile_seconds=4.0, compiled_step_seconds=0.003, eager_step_seconds=0.005)


@pytest.mark.parametrize(
    "steps, costs, advice",
    [
        (1_000, MEASURED, None),  # eager, and the measurements agree
        (1_999, MEASURED, None),
        (1_999, StepCosts(4.0, 0.001, 0.005), "compiling would save about 4 s"),  # 8 s - 4 s
        (3_000, MEASURED, None),  # compiled, and it pays (6 s against 4 s)
        (3_000, StepCosts(10.0, 0.003, 0.005), "compiling costs about 4 s more than it saves"),
        (3_000, StepCosts(compile_seconds=100.0), None),  # incomplete: nothing to say
    ],
)
def test_what_the_machine_measured_only_advises(steps, costs, advice):
    decision = resolve_training("auto", steps=steps)
    said = compile_advice(decision, steps=steps, costs=costs)
    assert (said is None) is (advice is None), said
    if advice is not None:
        assert said.startswith(advice) and "(measured by earlier runs)" in said, said
        # and names the request that takes the other path
        assert ("compile=True" if not decision else "compile=False") in said, said
    assert compile_advice(resolve_training(False, steps=steps), steps=steps, costs=costs) is None
    blocked = resolve_training("auto", steps=steps, blocker=BLOCKER)  # no other path to take
    assert compile_advice(blocked, steps=steps, costs=costs, blocker=BLOCKER) is None


def test_resolve_refuses_other_requests():
    with pytest.raises(ValueError, match="compile must be"):
        resolve("yes", work=1, min_work=AUTO_MIN_WEIGHTS)


class _Recorder(Objective):
    """A surrogate whose true -ELBO is a constant: what the history must record."""

    surrogate = True

    def __call__(self, model, guide, x, *args, num_data=None, **kwargs):
        self.neg_elbo = torch.tensor(7.0)
        return pyro.param("a", torch.tensor(0.0)) * 0.0 + 3.0


def test_the_loop_records_what_the_contract_says():
    from pyro_vae.infer import train

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    record = train(model, guide, torch.zeros(8), loss=_Recorder(), epochs=1, progress=False)
    final = record.final
    assert final["train_loss"] == 7.0 and final["train_objective"] == 3.0
    assert final["kl_weight"] == 1.0


def test_a_steps_costs_are_remembered_in_inductors_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PYRO_VAE_STEP_COSTS")  # the default folder (conftest sets another)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    vae, x = _vae_and_batch()
    signature = step_signature("training step", (vae.model, vae.guide), FastTraceELBO(), x)
    # another object of the same objective: the same signature (no address in it)
    assert signature == step_signature("training step", (vae.model, vae.guide), FastTraceELBO(), x)
    assert signature != step_signature("training step", (vae.model, vae.guide), "trace", x)
    assert signature != step_signature(
        "training step", (vae.model, vae.guide), FastTraceELBO(), x[:3]
    )
    assert signature != step_signature(
        "training step", (vae.model, vae.guide), FastTraceELBO(), x, world_size=2
    )
    assert recorded_costs(signature) == StepCosts()
    remember_costs(signature, compile_seconds=2.5)
    remember_costs(signature, eager_step_seconds=0.01)  # a later run adds to the record
    assert recorded_costs(signature) == StepCosts(2.5, None, 0.01)
    assert not recorded_costs(signature).complete
    assert inductor_cache_dir() == tmp_path
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "pyro_vae_compiled").write_text("a file where the record's folder would go")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocked))
    remember_costs(signature, compile_seconds=1.0)  # cannot be written: no record, no error
    assert recorded_costs(signature) == StepCosts()
    monkeypatch.setenv("PYRO_VAE_STEP_COSTS", "off")  # neither read nor written
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    remember_costs(signature, compile_seconds=3.0)
    assert recorded_costs(signature) == StepCosts()
    assert json.loads((tmp_path / "pyro_vae_compiled" / f"{signature}.json").read_text()) == {
        "compile_seconds": 2.5,
        "compiled_step_seconds": None,
        "eager_step_seconds": 0.01,
    }
