"""SVIStep, the step layer: one gradient step of any objective on any pair, in a loop of
one's own; parameters collected once and guarded; a gradient hook before the update."""

import math
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import requires_cuda, small_vae
from pairs import LinearGaussian

from pyro_vae.infer.objectives.elbo import FastTraceELBO
from pyro_vae.infer.training.loop import train
from pyro_vae.infer.training.svi import SVIStep, make_adam


def test_svi_step_in_a_loop_of_ones_own_equals_train():
    x = torch.randn(300) * 2.0
    pair = LinearGaussian()
    pyro.set_rng_seed(0)
    svi = SVIStep(pair.model, pair.guide, lr=0.05)
    mine = []
    for _ in range(3):  # the loop train() runs: shuffle, then steps over minibatches
        order = torch.randperm(300)
        steps = [svi.step(x[order[i : i + 100]], num_data=300) for i in (0, 100, 200)]
        mine.append(sum(steps) * 100)
    pyro.clear_param_store()
    result = train(pair.model, pair.guide, x, epochs=3, batch_size=100, lr=0.05, seed=0,
                   progress=False)  # fmt: skip
    # same seed, same shuffles, same Adam: train() is exactly that loop (float sums, so 1e-12)
    assert [r["train_loss"] for r in result.history] == pytest.approx(
        [m / 300 for m in mine], rel=1e-12
    )


def test_a_parameter_created_after_the_first_step_is_refused():
    late = []

    def guide(x):
        c = pyro.param("c", torch.tensor(0.0))
        if late:  # a parameter that only exists once the flag is set
            c = c + pyro.param("late", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * x, 1.0))

    svi = SVIStep(LinearGaussian().model, guide, lr=0.01)
    svi.step(torch.randn(10))
    late.append(True)
    with pytest.raises(ValueError, match=r"\['late'\] first appeared at step 2"):
        svi.step(torch.randn(10))


def test_a_parameter_created_by_someone_else_is_not_refused():
    pair = LinearGaussian()
    svi = SVIStep(pair.model, pair.guide, lr=0.01)
    svi.step(torch.randn(10))
    pyro.param("unrelated", torch.zeros(2))  # e.g. another model evaluated between steps
    assert math.isfinite(svi.step(torch.randn(10)))


def test_stale_param_store_entry_is_refused(mnist):
    old = small_vae(seed=0)
    train(old.model, old.guide, mnist.train.x[:128], epochs=1, progress=False)
    new = small_vae(seed=1)
    with pytest.raises(ValueError, match="clear_param_store"):
        train(new.model, new.guide, mnist.train.x[:128], epochs=1, progress=False)


def test_grad_hook_sees_every_gradient_before_the_update():
    pair = LinearGaussian()
    seen = {}

    def hook(params):
        seen.update({k: v.grad.clone() for k, v in params.items()})
        for v in params.values():
            v.grad.zero_()  # what the hook leaves is what the optimizer uses

    svi = SVIStep(pair.model, pair.guide, lr=0.1, grad_hook=hook)
    x = torch.randn(50) * 2
    svi.setup(x)
    before = {k: v.detach().clone() for k, v in svi.params.items()}
    svi.step(x)
    assert set(seen) == {"a", "c", "s"}
    assert all(g.abs().sum() > 0 for g in seen.values())
    # Adam from a fresh state moves a parameter by lr * m / (sqrt(v) + eps) = 0 for zero grads
    for k, v in svi.params.items():
        assert torch.equal(v.detach(), before[k]), k


def test_any_callable_with_the_objective_signature_is_an_objective():
    pair = LinearGaussian()
    calls = []

    def objective(model, guide, x, num_data=None):
        calls.append(num_data)
        return FastTraceELBO()(model, guide, x, num_data=num_data) * 2.0

    svi = SVIStep(pair.model, pair.guide, loss=objective, lr=0.01)
    svi.setup(torch.ones(8))
    pyro.set_rng_seed(1)
    plain = FastTraceELBO()(pair.model, pair.guide, torch.ones(8), num_data=80).item()
    pyro.set_rng_seed(1)
    doubled = svi.step(torch.ones(8), num_data=80)  # the loss before its own update
    assert calls == [80]  # set-up traces the pair but never calls the objective
    assert doubled == pytest.approx(2 * plain, rel=1e-12)  # float round-off only


# --- the optimizer: one Adam of our own, torch's arithmetic, no torch._dynamo -----------------


@pytest.mark.slow
def test_a_tiny_eager_training_run_neither_imports_dynamo_nor_changes_torchs_optimizers():
    # torch.optim's methods import torch._dynamo (about 2 s) on their first call; a short run
    # is shorter. And no class of torch's may be changed to avoid it (the four methods, Adam's
    # functional update and the plain functions behind their dynamo-disabling wrappers)
    code = """
import sys, torch
import torch.optim.adam as torch_adam
Optimizer = torch.optim.Optimizer
names = ["add_param_group", "zero_grad", "state_dict", "load_state_dict", "step"]
before = [getattr(Optimizer, n) for n in names] + [torch_adam.adam, torch.optim.Adam.step]
from pyro_vae.infer import train
from pyro_vae.infer.training.svi import make_adam
def model(x):
    import pyro, pyro.distributions as dist
    m = pyro.param("m", torch.tensor(0.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(m, 1.0), obs=x)
def guide(x):
    pass
result = train(model, guide, torch.randn(20), epochs=2, batch_size=5, progress=False)
adam = make_adam([torch.ones(3, requires_grad=True)], 0.1)
adam.load_state_dict(adam.state_dict())
after = [getattr(Optimizer, n) for n in names] + [torch_adam.adam, torch.optim.Adam.step]
patched = [f for f in before if hasattr(getattr(f, "__wrapped__", f), "__dynamo_disable")]
print(result.epochs_run, "torch._dynamo" in sys.modules, before == after, patched == [])
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert done.stdout.split() == ["2", "False", "True", "True"], done.stdout + done.stderr


def _adam_pair(dtype=torch.float32, device="cpu"):
    """Two copies of the same parameters, with the same gradients to come."""
    torch.manual_seed(0)
    ours = [torch.randn(5, 3, dtype=dtype), torch.randn(4, dtype=dtype)]
    ours = [p.to(device).requires_grad_() for p in ours]
    return ours, [p.detach().clone().requires_grad_() for p in ours]


def _same_gradients(ours, theirs):
    for p, q in zip(ours, theirs, strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()


@pytest.mark.parametrize(
    "dtype, device",
    [
        (torch.float32, "cpu"),
        (torch.float64, "cpu"),
        pytest.param(torch.float32, "cuda", marks=requires_cuda),
    ],
)
def test_our_adam_steps_and_saves_exactly_as_torchs_fused_adam(dtype, device):
    ours, theirs = _adam_pair(dtype, device)
    adam, reference = make_adam(ours, 0.01), torch.optim.Adam(theirs, lr=0.01, fused=True)
    assert not isinstance(adam, torch.optim.Adam) and isinstance(adam, torch.optim.Optimizer)
    # a learning-rate schedule takes it (a torch Optimizer), and moves both alike
    schedules = [torch.optim.lr_scheduler.ExponentialLR(a, gamma=0.5) for a in (adam, reference)]
    for _ in range(4):
        _same_gradients(ours, theirs)
        adam.step()
        reference.step()
        for schedule in schedules:
            schedule.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True))  # bit for bit
    state, expected = adam.state_dict(), reference.state_dict()
    assert state["param_groups"] == expected["param_groups"]  # the checkpoint format is torch's
    assert state["state"].keys() == expected["state"].keys()
    for i, values in expected["state"].items():
        assert all(torch.equal(state["state"][i][k], values[k]) for k in values), i
    # each loads the other's state and then steps as the other does
    adam.load_state_dict(expected)
    reference.load_state_dict(state)
    _same_gradients(ours, theirs)
    adam.step()
    reference.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True))


def test_without_a_fused_kernel_our_adam_writes_the_update_out(monkeypatch):
    # a device or dtype without torch's fused kernel: the compiled step's update, eagerly;
    # torch's for-loop Adam computes the same in another order: round-off only (float64)
    def missing(*args, **kwargs):
        raise RuntimeError("no fused kernel here")

    monkeypatch.setattr(torch, "_fused_adam_", missing)
    ours, theirs = _adam_pair(torch.float64)
    adam, reference = make_adam(ours, 0.01), torch.optim.Adam(theirs, lr=0.01, foreach=False)
    for _ in range(5):
        _same_gradients(ours, theirs)
        adam.step()
        reference.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)  # float64 round-off
    assert [adam.state[p]["step"].item() for p in ours] == [5.0, 5.0]


def test_our_adam_refuses_what_it_does_not_implement():
    p = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="lr must be positive"):
        make_adam([p], 0.0)
    with pytest.raises(ValueError, match="appears twice"):
        make_adam([p, p], 0.1)
    foreign = torch.optim.Adam([p.detach().clone().requires_grad_()], amsgrad=True).state_dict()
    with pytest.raises(ValueError, match="uses amsgrad, which Adam does not"):
        make_adam([p], 0.1).load_state_dict(foreign)
    two = torch.optim.Adam([p.detach().clone().requires_grad_(), torch.ones(1)]).state_dict()
    with pytest.raises(ValueError, match="belongs to another model"):
        make_adam([p], 0.1).load_state_dict(two)
