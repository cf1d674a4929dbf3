"""The compiled SVI step and compiled log weights equal their eager versions, or say why not.

Two compile functions are tested: the captured ATen graph run as it is (fast; it checks the
capture, the functional Adam, the guards and the caching) and inductor (``slow``: a few
seconds per graph; it checks what the benchmarks time).
"""

import copy
import warnings
from collections import OrderedDict

import pyro
import pyro.distributions as dist
import pytest
import torch
from pairs import CATALOGUE, BernoulliLatent, TwoSite, case

from pyro_vae.infer.compile import capture as capture_module
from pyro_vae.infer.compile.capture import CompileFallbackWarning, compile_graph
from pyro_vae.infer.compile.policy import JOINT_BLOCKER
from pyro_vae.infer.evidence import compiled as log_weights_module
from pyro_vae.infer.evidence.dataset import dataset_nll
from pyro_vae.infer.evidence.importance import elbo_per_datapoint, iwae_bound, log_evidence
from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm
from pyro_vae.infer.objectives.dreg import DReGObjective
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.objectives.kl_control import KLAnnealing, KLControlledELBO
from pyro_vae.infer.objectives.stl import STLObjective
from pyro_vae.infer.training import compiled_step as step_module
from pyro_vae.infer.training.compiled_step import CompiledSVIStep
from pyro_vae.infer.training.loop import train
from pyro_vae.infer.training.options import LabelledStream
from pyro_vae.infer.training.svi import SVIStep
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE


def captured_only(graph, inputs, device):
    """Run the captured graph without compiling it."""
    return graph


# float64 round-off is ~1e-16 per operation; inductor reorders sums of at most a few hundred
# terms here, measured differences are <= 3e-16 relative. 1e-9 keeps a wide margin, while a
# different draw or a missing term moves a loss by more than 1e-3.
RTOL, ATOL = 1e-9, 1e-12


# the pairs of the step tests (tests/pairs.py): a VAE, the collapsed pPCA (no latent), and two
# latent sites with a positive parameter and a Python branch on the data that a capture must
# guard; each with 10 datapoints
STEP_PAIRS = {"vae": "vae-bernoulli", "ppca": "collapsed-ppca", "two-site": "two-site"}


def make_pair(name):
    """(model, guide, data) of a fresh pair; the same numbers on every call."""
    pair = case(STEP_PAIRS[name]).make()
    return pair.model, pair.guide, pair.x


def run(name, step_cls, batches, seed=1, **options):
    """Steps on ``batches`` (row slices) in a fresh param store: losses, first grads, params."""
    with pyro.get_param_store().scope():
        model, guide, x = make_pair(name)
        svi = step_cls(model, guide, lr=0.01, **options)
        torch.manual_seed(seed)
        losses, grads = [], None
        for rows in batches:
            losses.append(svi.step(x[rows], num_data=x.shape[0]))
            if grads is None:  # Adam's first moment after one step is (1 - beta1) * grad
                state = svi.optimizer.state
                grads = {n: state[p]["exp_avg"] / 0.1 for n, p in svi.params.items()}
        params = {n: p.detach().clone() for n, p in svi.params.items()}
    return losses, grads, params, svi


# full batches, the shorter last one, and full ones again (the graph of each shape is reused);
# inductor gets one shape only, to compile one graph per test (a few seconds each)
BATCHES = [slice(0, 4), slice(4, 8), slice(8, 10), slice(0, 4), slice(8, 10)]
FULL_BATCHES = [slice(0, 4), slice(4, 8), slice(0, 4)]


# inductor steps the VAE only (the ELBO family, once): the captured graphs of all three, and
# inductor's forward of the pPCA and two-site graphs (test_compiled_log_weights_match_eager)
# cover the rest
STEP_CASES = [pytest.param(n, captured_only, id=f"{n}-captured") for n in STEP_PAIRS] + [
    pytest.param("vae", compile_graph, id="vae-inductor", marks=pytest.mark.slow)
]


@pytest.mark.parametrize("name, compile_fn", STEP_CASES)
def test_compiled_step_matches_eager(name, compile_fn, float64):
    batches = BATCHES if compile_fn is captured_only else FULL_BATCHES
    eager = run(name, SVIStep, batches)
    fast = run(name, CompiledSVIStep, batches, compile_fn=compile_fn, compile_short_batches=True)
    assert fast[3].fallback_reason is None
    # one graph per batch shape, reused afterwards
    assert fast[3].num_compiles == len({rows.stop - rows.start for rows in batches})
    torch.testing.assert_close(fast[0], eager[0], rtol=RTOL, atol=ATOL)  # losses
    torch.testing.assert_close(fast[1], eager[1], rtol=RTOL, atol=ATOL)  # gradients
    # Adam itself: torch's fused kernel and our graph round differently; after five steps of
    # lr 0.01 on O(1) parameters the measured difference is ~1e-17
    torch.testing.assert_close(fast[2], eager[2], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "loss, flows",
    [(IWAEObjective(3), 0), ("meanfield", 0), (KLControlledELBO(free_bits=0.1), 0), ("trace", 2)]
    + [
        pytest.param(loss, flows, marks=pytest.mark.slow)  # a replay at detached draws: seconds
        for loss, flows in ((DReGObjective(3), 0), (STLObjective(), 0), (DReGObjective(3), 2))
    ],
    ids=["iwae", "meanfield", "free-bits", "iaf-buffers", "dreg", "stl", "dreg-iaf"],
)
def test_other_objectives_and_module_buffers_match_eager(loss, flows, float64):
    def steps(step_cls, **options):
        with pyro.get_param_store().scope():
            torch.manual_seed(0)
            vae = VAE(12, latent_dim=3, hidden=(8,), flows=flows)
            x = torch.bernoulli(torch.full((10, 12), 0.4))
            svi = step_cls(vae.model, vae.guide, copy.deepcopy(loss), lr=0.01, **options)
            torch.manual_seed(1)
            out = [(svi.step(x[r], num_data=10), svi.last_neg_elbo) for r in BATCHES[:3]]
            return out, {n: p.detach().clone() for n, p in svi.params.items()}, svi

    eager, fast = steps(SVIStep), steps(CompiledSVIStep, compile_fn=captured_only)
    assert fast[2].fallback_reason is None
    torch.testing.assert_close(fast[:2], eager[:2], rtol=RTOL, atol=ATOL)


def m2_steps(step_cls, steps=3, **options):
    """Alternate steps of M2 (an enumerated unlabelled step, then a labelled batch's two
    parts): the losses, the -ELBOs of the labelled steps, the parameters and the step."""
    with pyro.get_param_store().scope():
        torch.manual_seed(0)
        m2 = M2(12, num_classes=3, latent_dim=2, hidden=(8,))
        x = torch.bernoulli(torch.full((8, 12), 0.4))
        x_l, y_l = torch.bernoulli(torch.full((4, 12), 0.6)), torch.tensor([0, 1, 2, 1])
        classify = AuxiliaryTerm("trace", m2.classifier_nll, weight=2.0)
        svi = step_cls(m2.model, m2.guide, "enum", labelled_loss=classify, lr=0.01, **options)
        svi.setup(x, labelled=(x_l, y_l))
        torch.manual_seed(1)
        out = []
        for _ in range(steps):
            out.append(svi.step(x, num_data=8))
            out.append(svi.step_labelled(x_l, y_l, num_labelled=4, share=0.5))
            out.append(svi.last_neg_elbo)
        return out, {n: p.detach().clone() for n, p in svi.params.items()}, svi


@pytest.mark.slow
def test_m2_alternate_steps_compile_and_match_eager(float64):
    # y is summed out by TraceEnum_ELBO, not drawn: the enumerated step is captured too; the
    # labelled batch's two parts (-ELBO given y, the classification term) are a graph each.
    # The captured graphs only: inductor's part is the same for every graph (the sweep above),
    # and compiling M2's three graphs would cost the suite tens of seconds
    eager = m2_steps(SVIStep)
    fast = m2_steps(CompiledSVIStep, compile_fn=captured_only)
    assert fast[2].fallback_reason is None and fast[2].num_compiles == 3
    torch.testing.assert_close(fast[:2], eager[:2], rtol=RTOL, atol=ATOL)


def test_m2_joint_steps_fall_back_with_the_policy_reason():
    with pyro.get_param_store().scope():
        m2 = M2(12, num_classes=3, latent_dim=2, hidden=(8,))
        x, x_l, y_l = torch.rand(8, 12), torch.rand(4, 12), torch.tensor([0, 1, 2, 1])
        classify = AuxiliaryTerm("trace", m2.classifier_nll, weight=2.0)
        svi = CompiledSVIStep(
            m2.model, m2.guide, "enum", labelled_loss=classify, compile_fn=captured_only
        )
        with pytest.warns(CompileFallbackWarning, match="joint schedule"):
            svi.step(x, num_data=8, labelled=(x_l, y_l), num_labelled=4)
    assert svi.fallback_reason == JOINT_BLOCKER and svi.num_compiles == 0


@pytest.mark.slow
def test_a_semi_supervised_run_trains_compiled_and_resumes_bit_for_bit(
    tmp_path, float64, monkeypatch
):
    # train() itself: the alternate schedule with two labelled passes compiles every step
    # (no fallback), equals the eager run, and a compiled run resumed from its checkpoint
    # continues as if never stopped
    monkeypatch.setattr(step_module, "compile_graph", captured_only)

    def fit(compile, epochs, out=None, resume=False):
        with pyro.get_param_store().scope():
            torch.manual_seed(0)
            m2 = M2(12, num_classes=3, latent_dim=2, hidden=(8,))
            x = torch.bernoulli(torch.full((24, 12), 0.4))
            x_l, y_l = torch.bernoulli(torch.full((6, 12), 0.6)), torch.arange(6) % 3
            classify = AuxiliaryTerm("trace", m2.classifier_nll, weight=2.0)
            stream = LabelledStream((x_l, y_l), 3, loss=classify, passes=2)
            history = train(
                m2.model,
                m2.guide,
                x,
                labelled=stream,
                loss="enum",
                epochs=epochs,
                batch_size=8,
                seed=1,
                compile=compile,
                out_dir=out,
                resume=resume,
                progress=False,
                device="cpu",
            ).history
            return [(h["train_loss"], h["train_objective"]) for h in history]

    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        compiled = fit(True, 3)
        fit(True, 2, out=tmp_path)
        resumed = fit(True, 3, out=tmp_path, resume=True)
    torch.testing.assert_close(compiled, fit(False, 3), rtol=RTOL, atol=ATOL)
    assert resumed == compiled  # the history holds every epoch; bit for bit


def test_clip_norm_matches_eager(float64):
    eager = run("vae", SVIStep, BATCHES[:2], clip_norm=0.5)
    fast = run("vae", CompiledSVIStep, BATCHES[:2], clip_norm=0.5, compile_fn=captured_only)
    torch.testing.assert_close(fast[0], eager[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(fast[2], eager[2], rtol=RTOL, atol=ATOL)


def test_guarded_decision_reruns_the_batch_eagerly(float64):
    # the capture sees positive data; a batch with a negative value takes the other branch
    def batches_with_a_negative():
        model, guide, x = make_pair("two-site")
        return x

    x = batches_with_a_negative()
    x[5] = -1.0  # make_pair returns the same data every time: patch it in both runs below
    results = []
    for step_cls in (SVIStep, CompiledSVIStep):
        with pyro.get_param_store().scope():
            pair = TwoSite()
            options = {}
            if step_cls is CompiledSVIStep:
                options = {"compile_fn": captured_only, "compile_short_batches": True}
            svi = step_cls(pair.model, pair.guide, lr=0.01, **options)
            torch.manual_seed(1)
            losses = [svi.step(x[rows], num_data=10) for rows in BATCHES]
            results.append((losses, {n: p.detach().clone() for n, p in svi.params.items()}))
    torch.testing.assert_close(results[1], results[0], rtol=RTOL, atol=ATOL)
    assert svi.fallback_reason is None and svi.num_compiles == 2


def test_persistent_guard_failures_fall_back_with_a_notice():
    def model(x):
        a = pyro.param("a", torch.tensor(0.5))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            scale = x.abs().max().item()  # a Python float from the data, new on every batch
            pyro.sample("x", dist.Normal(a * z, scale), obs=x)

    def guide(x):
        c = pyro.param("c", torch.tensor(0.1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * x, 1.0))

    svi = CompiledSVIStep(model, guide, compile_fn=captured_only)
    with pytest.warns(CompileFallbackWarning, match="data-dependent Python control flow"):
        for i in range(5):
            loss = svi.step(torch.randn(8) * (i + 1))
    assert "data-dependent" in svi.fallback_reason and torch.isfinite(torch.tensor(loss))


def test_non_reparameterized_pair_falls_back_with_a_notice():
    pair = BernoulliLatent()
    svi = CompiledSVIStep(pair.model, pair.guide, compile_fn=captured_only)
    with pytest.warns(CompileFallbackWarning, match="rsample"):
        svi.step(torch.randn(6))
    svi.step(torch.randn(6))  # eager from then on, without a new notice
    assert svi.num_compiles == 0 and svi.num_steps == 2


def test_random_state_reset_inside_the_pair_falls_back_with_a_notice():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        c = pyro.param("c", torch.tensor(0.1))
        with torch.random.fork_rng():  # a draw the trace records but the fork undoes
            jitter = 1e-3 * torch.randn(())
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * x + jitter, 1.0))

    svi = CompiledSVIStep(model, guide, compile_fn=captured_only)
    with pytest.warns(CompileFallbackWarning, match="replay"):
        svi.step(torch.randn(6))
    assert svi.num_compiles == 0 and svi.num_steps == 1


def test_an_annealed_objective_compiles_and_follows_its_schedule(float64):
    # beta(t) enters the graph as an input: one graph for every step, each with its own beta
    def steps(step_cls, **options):
        with pyro.get_param_store().scope():
            torch.manual_seed(0)
            vae = VAE(12, latent_dim=3, hidden=(8,))
            x = torch.bernoulli(torch.full((10, 12), 0.4))
            loss = KLControlledELBO(annealing=KLAnnealing(epochs=2), free_bits=0.1)
            svi = step_cls(vae.model, vae.guide, loss, lr=0.01, **options)
            torch.manual_seed(1)
            out = []
            for t, rows in enumerate(FULL_BATCHES):
                loss.set_progress(t / 2)  # beta = 0, 0.25, 0.5
                out.append((svi.step(x[rows], num_data=10), svi.last_neg_elbo, loss.kl_weight))
            return out, {n: p.detach().clone() for n, p in svi.params.items()}, svi

    eager, fast = steps(SVIStep), steps(CompiledSVIStep, compile_fn=captured_only)
    assert fast[2].fallback_reason is None and fast[2].num_compiles == 1
    assert [w for *_, w in fast[0]] == [0.0, 0.25, 0.5]
    torch.testing.assert_close(fast[:2], eager[:2], rtol=RTOL, atol=ATOL)


def test_parameter_appearing_at_a_new_shape_falls_back_and_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        c = pyro.param("c", torch.tensor(0.1))
        if x.shape[0] < 4:  # a parameter that only a short batch creates
            c = c + pyro.param("late", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * x, 1.0))

    svi = CompiledSVIStep(model, guide, compile_fn=captured_only, compile_short_batches=True)
    svi.step(torch.randn(4))
    with pytest.warns(CompileFallbackWarning, match="late"):
        with pytest.raises(ValueError, match="first appeared"):  # what the eager step says
            svi.step(torch.randn(2))


@pytest.mark.parametrize("compile_short_batches, graphs", [(False, 1), (True, 2)])
def test_short_last_batch_compiles_at_most_once(compile_short_batches, graphs, monkeypatch):
    # by default the short batch runs eagerly; compiled, its graph is made once and reused
    calls = []
    monkeypatch.setattr(step_module, "capture", _counting(step_module.capture, calls))
    vae = VAE(12, latent_dim=3, hidden=(8,))
    svi = CompiledSVIStep(
        vae.model, vae.guide, compile_fn=captured_only, compile_short_batches=compile_short_batches
    )
    x = torch.bernoulli(torch.full((10, 12), 0.4))
    for _ in range(3):  # three epochs of batches 4, 4, 2
        for start in range(0, 10, 4):
            svi.step(x[start : start + 4], num_data=10)
    assert len(calls) == graphs and svi.num_compiles == graphs and svi.num_steps == 9


def _counting(fn, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return counted


@pytest.mark.slow
def test_resumed_compiled_run_is_bit_identical(tmp_path, float64):
    # the graph of test_compiled_step_matches_eager[vae-inductor] (same pair, shapes, dtype):
    # inductor's cache serves it when both run, so this test compiles at most once
    def fresh():
        model, guide, x = make_pair("vae")
        return CompiledSVIStep(model, guide, lr=0.01), x

    batches = [slice(0, 4), slice(4, 8)] * 3
    with pyro.get_param_store().scope():  # six steps; the checkpoint written after the third
        svi, x = fresh()
        torch.manual_seed(1)
        straight = [svi.step(x[rows], num_data=10) for rows in batches[:3]]
        torch.save({**svi.state_dict(), "rng": torch.get_rng_state()}, tmp_path / "ck.pt")
        straight += [svi.step(x[rows], num_data=10) for rows in batches[3:]]
        final = {n: p.detach().clone() for n, p in svi.params.items()}
    with pyro.get_param_store().scope():
        svi, x = fresh()  # a new process would start like this: new pair, new graph
        svi.setup(x[:4])
        checkpoint = torch.load(tmp_path / "ck.pt")
        svi.load_state_dict(checkpoint)
        torch.set_rng_state(checkpoint["rng"])
        rest = [svi.step(x[rows], num_data=10) for rows in batches[3:]]
        resumed = {n: p.detach().clone() for n, p in svi.params.items()}
    assert rest == straight[3:]  # bit for bit
    assert all(torch.equal(resumed[n], final[n]) for n in final)


@pytest.mark.slow
def test_a_resumed_annealed_compiled_run_is_bit_identical(tmp_path, float64):
    # the schedule is a function of t only: a resumed graph reads the same beta at each step
    def fresh():
        model, guide, x = make_pair("vae")
        loss = KLControlledELBO(annealing=KLAnnealing(epochs=3))
        return CompiledSVIStep(model, guide, loss, lr=0.01, compile_fn=captured_only), loss, x

    def steps(svi, loss, x, ks):
        out = []
        for k in ks:
            loss.set_progress(k / 2)
            out.append(svi.step(x[slice(0, 4) if k % 2 == 0 else slice(4, 8)], num_data=10))
        return out

    with pyro.get_param_store().scope():
        svi, loss, x = fresh()
        torch.manual_seed(1)
        straight = steps(svi, loss, x, range(6))
    with pyro.get_param_store().scope():
        svi, loss, x = fresh()
        torch.manual_seed(1)
        first = steps(svi, loss, x, range(3))
        torch.save({**svi.state_dict(), "rng": torch.get_rng_state()}, tmp_path / "ck.pt")
    with pyro.get_param_store().scope():
        svi, loss, x = fresh()
        svi.setup(x[:4])
        checkpoint = torch.load(tmp_path / "ck.pt")
        svi.load_state_dict(checkpoint)
        torch.set_rng_state(checkpoint["rng"])
        rest = steps(svi, loss, x, range(3, 6))
        assert svi.fallback_reason is None and svi.num_compiles == 1
    assert first + rest == straight  # bit for bit


@pytest.mark.parametrize("name", ["vae", "two-site"])
def test_compiled_validation_matches_eager(name, float64):
    # an annealed objective: validation scores the plain -ELBO, another graph than the step's;
    # "two-site" branches on the data, a decision the validation graph must guard too
    scores = {}
    for step_cls in (SVIStep, CompiledSVIStep):
        with pyro.get_param_store().scope():
            model, guide, x = make_pair(name)
            loss = KLControlledELBO(annealing=KLAnnealing(epochs=3))
            options = dict(compile_fn=captured_only, compile_evaluation=True)
            svi = step_cls(model, guide, loss, **(options if step_cls is CompiledSVIStep else {}))
            svi.setup(x[:4])
            torch.manual_seed(2)
            scores[step_cls] = [svi.evaluate(x[rows], num_data=10) for rows in BATCHES]
    assert svi.fallback_reason is None and svi.evaluation_compile_seconds > 0
    torch.testing.assert_close(scores[CompiledSVIStep], scores[SVIStep], rtol=RTOL, atol=ATOL)


def test_a_long_compiled_run_validates_compiled_and_scores_as_eager(float64, monkeypatch, capsys):
    monkeypatch.setattr(step_module, "compile_graph", captured_only)
    monkeypatch.setattr("pyro_vae.infer.training.loop.AUTO_MIN_EVALUATIONS", 4)  # 2 x 2 batches
    built = []
    monkeypatch.setattr(step_module, "build_graph", _counting(step_module.build_graph, built))

    def fit(compile):
        with pyro.get_param_store().scope():
            model, guide, x = make_pair("vae")
            options = dict(epochs=2, batch_size=4, lr=0.01, seed=3, compile=compile)
            return train(model, guide, x[:8], val_data=x, **options).history

    compiled, eager = fit(True), fit(False)
    assert len(built) == 1  # one validation graph, for the full batches, reused
    assert "compiling the validation pass" in capsys.readouterr().out
    for key in ("train_loss", "val_loss"):
        torch.testing.assert_close(
            [r[key] for r in compiled], [r[key] for r in eager], rtol=RTOL, atol=ATOL
        )


def test_eager_checkpoint_loads_into_compiled_step(float64):
    eager = run("vae", SVIStep, BATCHES[:2])[3]
    with pyro.get_param_store().scope():
        model, guide, x = make_pair("vae")
        svi = CompiledSVIStep(model, guide, lr=0.01, compile_fn=captured_only)
        svi.setup(x[:4])
        svi.load_state_dict(eager.state_dict())
        svi.step(x[:4], num_data=10)
        state = svi.optimizer.state_dict()["state"]
    assert all(float(s["step"]) == 3 for s in state.values())


# --- evidence ---------------------------------------------------------------------------------
def evidence_pair(case):
    """(model, guide, x, *args) of a catalogue pair, its parameters created, at most 6 rows."""
    pair = case.make()
    with torch.no_grad():
        pair.model(pair.x, *pair.args), pair.guide(pair.x, *pair.args)  # create the parameters
    return pair.model, pair.guide, pair.x[:6], *(a[:6] for a in pair.args)


# two chunks of S = 20 particles each (IWAE: 4 estimates of k = 5 per chunk): one graph
ESTIMATORS = {
    "log_evidence": lambda m, g, x, *a, **kw: (
        log_evidence(m, g, x, *a, num_samples=40, **kw).log_px
    ),
    "iwae_bound": lambda m, g, x, *a, **kw: iwae_bound(m, g, x, 5, *a, num_estimates=8, **kw),
    "elbo_per_datapoint": lambda m, g, x, *a, **kw: elbo_per_datapoint(
        m, g, x, *a, num_samples=40, **kw
    ),
}

# every pair the evidence takes (the refused ones are refused before any graph is made); the
# inductor compiles (a few seconds a graph) of three of them: a VAE, the exact pPCA guide (a
# MultivariateNormal, Cholesky in the graph) and two sites behind a guarded branch
INDUCTOR_PAIRS = ["vae-bernoulli", "ppca", "two-site"]
# the fixed mixture prior's graph is the VampVAE's (one MixtureSameSupport): one of them is
# enough in the quick suite
SLOW_CAPTURED = {"mixture-prior"}
LOG_WEIGHT_CASES = [
    pytest.param(
        c,
        captured_only,
        id=f"{c}-captured",
        marks=[pytest.mark.slow] if c.name in SLOW_CAPTURED else [],
    )
    for c in CATALOGUE
    if c.refusal is None
] + [
    pytest.param(case(name), compile_graph, id=f"{name}-inductor", marks=pytest.mark.slow)
    for name in INDUCTOR_PAIRS
]


@pytest.mark.parametrize("case, compile_fn", LOG_WEIGHT_CASES)
def test_compiled_log_weights_match_eager(case, compile_fn, float64, monkeypatch):
    monkeypatch.setattr(capture_module, "compile_graph", compile_fn)
    monkeypatch.setattr(log_weights_module, "_LOG_WEIGHT_GRAPHS", OrderedDict())
    model, guide, x, *args = evidence_pair(case)
    for label, estimator in ESTIMATORS.items():
        torch.manual_seed(2)
        eager = estimator(model, guide, x, *args, chunk_size=20)
        torch.manual_seed(2)
        fast = estimator(model, guide, x, *args, chunk_size=20, compile=True)
        torch.testing.assert_close(fast, eager, rtol=RTOL, atol=ATOL, msg=label)
    assert len(log_weights_module._LOG_WEIGHT_GRAPHS) == 1  # shared by the chunks and estimators


def test_evidence_compile_argument_is_checked():
    model, guide, x = evidence_pair(case("vae-bernoulli"))
    with pytest.raises(ValueError, match="compile"):
        log_evidence(model, guide, x, num_samples=2, compile="yes")


def test_copy_of_a_pair_uses_its_own_parameters(float64, monkeypatch):
    # graphs are cached per pair and take the parameters as inputs: a trained copy must not
    # be scored with the weights of the original
    monkeypatch.setattr(capture_module, "compile_graph", captured_only)
    vae = VAE(12, latent_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((6, 12), 0.4))
    torch.manual_seed(3)
    before = elbo_per_datapoint(vae.model, vae.guide, x, num_samples=4, compile=True)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1)
    torch.manual_seed(3)
    after = elbo_per_datapoint(vae.model, vae.guide, x, num_samples=4, compile=True)
    torch.manual_seed(3)
    other = copy.deepcopy(vae)
    eager_after = elbo_per_datapoint(other.model, other.guide, x, num_samples=4)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, eager_after, rtol=RTOL, atol=ATOL)


def test_a_compiled_data_set_score_says_it_is_compiling(monkeypatch, capsys):
    monkeypatch.setattr(capture_module, "compile_graph", captured_only)
    model, guide, x = evidence_pair(case("vae-bernoulli"))
    dataset_nll(model, guide, x, num_samples=2, batch_size=len(x), compile=True)
    assert "compiling the log weights (about 7 s the first time)" in capsys.readouterr().out
    dataset_nll(model, guide, x, num_samples=2, compile=True, progress=False)
    assert "compiling" not in capsys.readouterr().out
