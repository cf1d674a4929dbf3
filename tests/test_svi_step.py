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
from common import small_vae
from pairs import LinearGaussian

from pyro_vae.infer.objectives.elbo import FastTraceELBO
from pyro_vae.infer.training.adam import EagerAdam
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


# --- the optimizer: torch's Adam, without importing torch._dynamo ----------------------------


@pytest.mark.slow
def test_the_adam_of_a_short_run_does_not_import_dynamo():
    # torch.optim imports torch._dynamo (about 2 s) on its first call; a short run is shorter
    code = """
import sys, torch
from pyro_vae.infer.training.svi import make_adam
p = torch.ones(3, requires_grad=True)
adam = make_adam([p], 0.1)
for _ in range(2):
    p.grad = torch.ones(3)
    adam.step()
    adam.zero_grad()
adam.load_state_dict(adam.state_dict())
print(type(adam).__name__, "torch._dynamo" in sys.modules)
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert done.stdout.split() == ["EagerAdam", "False"], done.stdout + done.stderr


@pytest.mark.parametrize("fused", [True, False])
def test_eager_adam_steps_exactly_as_torchs_adam_before_and_after_dynamo_is_imported(fused):
    import torch._dynamo  # noqa: F401  (the second half: torch's own wrappers take over)

    torch.manual_seed(0)
    ours = [torch.randn(5, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    adam = make_adam(ours, 0.01) if fused else EagerAdam(ours, lr=0.01)
    reference = torch.optim.Adam(theirs, lr=0.01, fused=fused)
    assert isinstance(adam, EagerAdam) and isinstance(adam, torch.optim.Adam)
    for _ in range(4):
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        adam.step()
        reference.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True))  # bit for bit
    state, expected = adam.state_dict()["state"], reference.state_dict()["state"]
    assert all(torch.equal(state[i]["exp_avg_sq"], expected[i]["exp_avg_sq"]) for i in state)
