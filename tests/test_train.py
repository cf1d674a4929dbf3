"""The SVI trainer: fits any model/guide pair, reports -ELBO per datapoint; its options, data
with extra columns (labels) and a second, labelled stream.

Resume and checkpoints: tests/test_checkpoint.py; the step layer: tests/test_svi_step.py; the
objectives, and every built-in loss trained to its analytic optimum: tests/test_objectives.py.
"""

import json
import math
import re

import pyro
import pytest
import torch
from common import requires_cuda, small_vae
from pairs import LinearGaussian, MeanOnly

from pyro_vae.data import load_dataset
from pyro_vae.infer.objectives.elbo import FastTraceELBO
from pyro_vae.infer.training.epochs import labelled_positions
from pyro_vae.infer.training.loop import train
from pyro_vae.infer.training.options import LabelledStream
from pyro_vae.models.ppca import PPCA, CollapsedPPCA

# x_i ~ N(mu, 1): no latent at all, mu a parameter, an empty guide (tests/pairs.py)
_MEAN_ONLY = MeanOnly()
mean_model, empty_guide = _MEAN_ONLY.model, _MEAN_ONLY.guide


# --- fitting -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_vae_elbo_rises_on_mnist5k(mnist):
    vae = small_vae()
    result = train(
        vae.model, vae.guide, mnist.train, val_data=mnist.test, epochs=3, seed=0, progress=False
    )
    val = [r["val_loss"] for r in result.history]
    # an untrained Bernoulli decoder sits near 784 ln 2 = 543 nats; three epochs reach < 250
    assert val[2] < val[0] < 784 * math.log(2), f"validation -ELBO per datapoint: {val}"
    assert val[2] < 250, f"validation -ELBO after 3 epochs: {val[2]:.1f} nats"
    assert all(r["examples_per_s"] > 0 and r["seconds"] > 0 for r in result.history)


def test_collapsed_ppca_loss_is_exact_negative_log_likelihood(float64):
    x = load_dataset("digits").train.x.double()
    ppca = CollapsedPPCA(64, 5)
    result = train(ppca.model, ppca.guide, x, epochs=8, batch_size=256, lr=0.05, progress=False)
    # no latent: the reported training loss is -log p(x) per datapoint, averaged along the epoch
    exact = -ppca.to_ppca().log_marginal(x).mean().item()
    mle = -PPCA.fit(x, 5).log_marginal(x).mean().item()
    objective = FastTraceELBO()
    with torch.no_grad():
        reported = objective(ppca.model, ppca.guide, x, num_data=x.shape[0]).item()
    # two float64 computations of one number (the trace's terms, pPCA's Cholesky): round-off
    assert reported == pytest.approx(exact, rel=1e-10), (reported, exact)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # the MLE is the maximum; 1e-6 nats leaves room for the round-off of two log-determinants
    assert exact >= mle - 1e-6, f"trained {exact:.4f} cannot beat the MLE {mle:.4f}"


def test_pair_written_in_test_reaches_its_maximum_likelihood():
    torch.manual_seed(1)
    true_a = 2.0
    x = true_a * torch.randn(2000) + torch.randn(2000)
    pair = LinearGaussian()
    train(pair.model, pair.guide, x, epochs=60, batch_size=200, lr=0.05, seed=0, progress=False)
    a = pyro.param("a").item()
    # MLE: a^2 + 1 = mean(x^2); the exact posterior family makes the ELBO tight at the optimum.
    # The optimizer's noise: |error| <= 0.047 over the training seeds 0-7 (measured; seed 0:
    # 0.008), so 0.1 is twice the largest
    a_mle = math.sqrt((x**2).mean().item() - 1)
    assert abs(abs(a) - a_mle) < 0.1, f"|a| = {abs(a):.3f}, MLE {a_mle:.3f}"


def test_gradients_reach_every_parameter(mnist):
    vae = small_vae(likelihood="gaussian")
    before = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    result = train(vae.model, vae.guide, mnist.train.x[:256], epochs=1, progress=False)
    unchanged = [k for k, v in vae.state_dict().items() if torch.equal(v, before[k])]
    assert not unchanged, f"parameters never updated: {unchanged}"
    assert len(result.param_names) == len(before)


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["data", "val_data"])
def test_nan_in_data_is_refused_before_training(where, tmp_path):
    poisoned = torch.randn(100)
    poisoned[-1] = float("nan")
    data = {"data": torch.randn(100), "val_data": torch.randn(100)} | {where: poisoned}
    pair = LinearGaussian()
    with pytest.raises(ValueError, match=f"^{where} holds 1 NaN or inf values"):
        train(pair.model, pair.guide, data["data"], val_data=data["val_data"], out_dir=tmp_path,
              progress=False)  # fmt: skip
    assert not any(tmp_path.iterdir())


def test_early_stopping_when_validation_worsens():
    train_x, val_x = torch.ones(100), -torch.ones(100)
    result = train(
        mean_model,
        empty_guide,
        train_x,
        val_data=val_x,
        epochs=10,
        patience=2,
        lr=0.1,
        progress=False,
    )
    # mu climbs towards +1, so the validation loss at -1 gets worse every epoch after the first
    val = [r["val_loss"] for r in result.history]
    assert result.stopped_early and result.epochs_run == 3, val


def test_a_compiled_run_says_it_is_compiling_before_it_does(capsys, monkeypatch, step_costs):
    # the captured graph is run as it is (no inductor): only the notices are under test here;
    # the record of past compiles starts empty (the folder conftest gives each test)
    monkeypatch.setattr(
        "pyro_vae.infer.training.compiled_step.compile_graph", lambda graph, inputs, device: graph
    )
    pair = LinearGaussian()
    train(pair.model, pair.guide, torch.randn(20), epochs=1, batch_size=10, compile=True)
    out = capsys.readouterr().out
    assert "compiling the training step (about 25 s the first time)" in out, out
    assert re.search(r"compiled the training step in \d+\.\d s", out), out
    # three epochs: the compile's cost becomes what the first epoch took beyond the others
    train(pair.model, pair.guide, torch.randn(20), epochs=3, batch_size=10, compile=True)
    assert re.search(r"it took \d+ s last time on this machine", capsys.readouterr().out)
    train(pair.model, pair.guide, torch.randn(20), epochs=1, batch_size=10, compile=False)
    assert "compil" not in capsys.readouterr().out
    # each run left what it measured: the compile, and the seconds per step both ways
    (record,) = step_costs.iterdir()  # the folder conftest gives each test
    costs = json.loads(record.read_text())
    assert costs["compile_seconds"] > 0 and costs["compiled_step_seconds"] > 0, costs
    assert costs["eager_step_seconds"] > 0, costs


# --- a run is a function of its command: compile="auto" never reads other runs' records -------


def _run_in(records, monkeypatch, compile="auto"):
    """A 6-step run of a tiny VAE from seed 0 with ``records`` as the step-cost folder: its
    history without wall-clock columns, its parameters, its decision."""
    monkeypatch.setenv("PYRO_VAE_STEP_COSTS", str(records))
    pyro.clear_param_store()
    vae = small_vae(hidden=(16,), latent_dim=2)
    x = torch.bernoulli(torch.rand(20, 784, generator=torch.Generator().manual_seed(0)))
    result = train(vae.model, vae.guide, x, epochs=3, batch_size=10, seed=0, compile=compile)
    drop = ("seconds", "examples_per_s")
    history = [{k: v for k, v in r.items() if k not in drop} for r in result.history]
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return history, params, result.compile_decision


def _history_saying(records, monkeypatch, **costs):
    """Fill ``records`` with this run's step-cost record (its signature found by a real run),
    rewritten to say ``costs``: another run's history on this machine."""
    _run_in(records, monkeypatch, compile=False)
    (record,) = records.iterdir()
    record.write_text(json.dumps(costs))


@pytest.mark.slow
@pytest.mark.parametrize("records_say", ["compiling pays", "compiling does not pay"])
def test_the_same_run_with_and_without_another_runs_records_is_bit_identical(
    records_say, tmp_path, monkeypatch, capsys
):
    # both directions of the flip: the rule says eager (6 steps < 2,000) and the records say
    # compiling pays; the rule says compile (6 >= 5 here) and the records say it does not.
    # The captured graph runs as it is (no inductor): the compiled path's arithmetic, cheaply
    monkeypatch.setattr(
        "pyro_vae.infer.training.compiled_step.compile_graph", lambda graph, inputs, device: graph
    )
    if records_say == "compiling pays":
        costs = dict(compile_seconds=0.001, compiled_step_seconds=0.0, eager_step_seconds=1.0)
        rule_compiles, advice = False, "compiling would save about 6 s"
    else:
        monkeypatch.setattr("pyro_vae.infer.compile.policy.AUTO_MIN_STEPS", 5)
        costs = dict(compile_seconds=1e3, compiled_step_seconds=1.0, eager_step_seconds=1.0)
        rule_compiles, advice = True, "compiling costs about 1000 s more than it saves"
    fresh, records = tmp_path / "fresh", tmp_path / "records"
    fresh.mkdir(), records.mkdir()
    _history_saying(records, monkeypatch, **costs)
    capsys.readouterr()
    history, params, decision = _run_in(fresh, monkeypatch)
    assert advice not in capsys.readouterr().out  # a fresh machine has nothing to advise
    history_r, params_r, decision_r = _run_in(records, monkeypatch)
    assert advice in capsys.readouterr().out  # the records were read, and only advised
    assert decision.compile is decision_r.compile is rule_compiles, (decision, decision_r)
    assert history == history_r  # every number of every epoch
    assert params.keys() == params_r.keys()
    assert all(torch.equal(params[k], params_r[k]) for k in params)  # bit for bit
    # the two paths differ in the last digits: a flip would show in the parameters
    _, other, _ = _run_in(fresh, monkeypatch, compile=not rule_compiles)
    assert not all(torch.equal(params[k], other[k]) for k in params)


def test_patience_without_validation_data_warns_and_watches_the_training_loss():
    with pytest.warns(UserWarning, match="patience=2 without val_data stops on the training"):
        result = train(mean_model, empty_guide, torch.ones(10), epochs=2, patience=2,
                       progress=False)  # fmt: skip
    assert result.epochs_run == 2


def test_lr_schedule_is_stepped_each_epoch(mnist):
    vae = small_vae()
    schedule = lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)  # noqa: E731
    result = train(
        vae.model,
        vae.guide,
        mnist.train.x[:256],
        epochs=3,
        lr=1e-3,
        lr_schedule=schedule,
        clip_norm=10.0,
        progress=False,
    )
    assert [r["lr"] for r in result.history] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_dynamic_binarization_serves_fresh_binary_batches():
    data = load_dataset("mnist5k", binarize="dynamic").train
    seen = []

    def model(x):
        seen.append(x)
        mean_model(x)

    train(model, empty_guide, data, epochs=1, batch_size=4000, progress=False)
    batch = seen[-1]
    assert set(batch.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(seen[0], seen[-1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss": "nope"}, "unknown loss"),
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0}, "lr must be positive"),
        ({"clip_norm": -1.0}, "clip_norm must be positive"),
        ({"patience": 0}, "patience"),
    ],
    ids=["unknown-loss", "negative-epochs", "zero-batch", "zero-lr", "negative-clip", "patience"],
)
def test_bad_arguments_are_clear_errors(mnist, kwargs, match):
    vae = small_vae()
    with pytest.raises(ValueError, match=match):
        train(vae.model, vae.guide, mnist.train.x[:64], progress=False, **kwargs)


def test_absent_cuda_device_is_a_clear_error(mnist, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # absent on every machine
    vae = small_vae()
    with pytest.raises(ValueError, match="no CUDA device"):
        train(vae.model, vae.guide, mnist.train.x[:64], device="cuda", progress=False)


def test_compile_option_is_validated(mnist):
    vae = small_vae()
    with pytest.raises(ValueError, match="compile must be"):
        train(vae.model, vae.guide, mnist.train.x[:64], epochs=1, compile="yes", progress=False)


@pytest.mark.slow  # the first capture in a process imports torch._dynamo
def test_compiled_training_follows_the_eager_run(mnist, monkeypatch):
    # the captured graph as it is: train()'s compiled path (capture, reuse, the graph's Adam);
    # inductor's own kernels against the eager step: tests/test_compiled.py (vae-inductor)
    monkeypatch.setattr(
        "pyro_vae.infer.training.compiled_step.compile_graph", lambda graph, inputs, device: graph
    )
    histories = []
    for compile in (False, True):
        pyro.clear_param_store()
        vae = small_vae(seed=0)
        result = train(
            vae.model, vae.guide, mnist.train.x[:512], epochs=2, seed=0, compile=compile,
            progress=False,
        )  # fmt: skip
        histories.append([r["train_loss"] for r in result.history])
    # the same draws (the compiled graph calls torch's own RNG); float32 kernels that sum in
    # another order (inductor's: relative differences of 1e-6 per step; the captured graph's
    # ATen calls: the same or less), far below 1e-4 after 8 steps
    for eager, compiled in zip(*histories, strict=True):
        assert abs(eager - compiled) < 1e-4 * abs(eager), histories


@requires_cuda
def test_cuda_and_cpu_agree(mnist):
    vae = small_vae()
    x = mnist.train.x[:256]
    objective = FastTraceELBO()
    means = {}
    with torch.no_grad():
        for device in ("cpu", "cuda"):
            vae.to(device)
            xd = x.to(device)
            means[device] = torch.tensor(
                [objective(vae.model, vae.guide, xd).item() for _ in range(200)]
            )
    diff = means["cpu"].mean() - means["cuda"].mean()
    stderr = (means["cpu"].var() / 200 + means["cuda"].var() / 200).sqrt()
    assert abs(diff) < 4 * stderr, f"CPU - CUDA -ELBO: {diff:.4f} nats (4 se {4 * stderr:.4f})"
    pyro.clear_param_store()
    result = train(vae.model, vae.guide, x, epochs=2, device="cuda", progress=False)
    assert result.device.type == "cuda"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@requires_cuda
def test_compiled_training_runs_on_cuda(mnist):
    # the Adam coefficients once lived on the CPU: inductor handed their host pointer to a CUDA
    # kernel ("CUDA driver error: invalid argument", found on an H200); eager never noticed
    pyro.clear_param_store()
    vae = small_vae()
    result = train(vae.model, vae.guide, mnist.train.x[:256], epochs=2, device="cuda",
                   compile=True, progress=False)  # fmt: skip
    assert result.device.type == "cuda"
    assert math.isfinite(result.history[-1]["train_loss"])


# --- data with extras (labels) and a second, labelled stream ------------------------------------


class LabelChecking:
    """The LinearGaussian pair called as f(x, y); it checks that every batch keeps its rows'
    labels (the data below have y = 10 * x, exactly representable)."""

    def __init__(self):
        self.pair, self.seen = LinearGaussian(), []

    def model(self, x, y):
        assert torch.equal(y, (10 * x).long()), "a batch lost the rows of its labels"
        self.seen.append(y.clone())
        self.pair.model(x)

    def guide(self, x, y):
        self.pair.guide(x)


def test_a_tuple_of_data_and_labels_serves_matching_rows():
    x = torch.arange(40.0) / 10
    pair = LabelChecking()
    train(pair.model, pair.guide, (x, (10 * x).long()), epochs=2, batch_size=8, progress=False)
    # every label is served once per epoch (plus the set-up batch): 2 epochs of 40
    served = torch.cat(pair.seen[1:])
    assert sorted(served.tolist()) == sorted(2 * list(range(40)))


def test_tuple_rows_must_match():
    pair = LabelChecking()
    with pytest.raises(ValueError, match=r"data\[1\] has 5 rows but data\[0\] holds 6"):
        train(pair.model, pair.guide, (torch.zeros(6), torch.zeros(5).long()), progress=False)


def _constant(value):
    """An objective of value ``value`` per datapoint whose gradient reaches the pair's "a"."""

    def objective(model, guide, x, *args, num_data=None, **kwargs):
        return pyro.param("a") * 0.0 + value

    return objective


def _two_streams(loss, labelled_loss, schedule, epochs=1, batch_size=10, passes=1):
    """Train LabelChecking on 30 rows labelled 0..29 and a labelled stream of 6 rows, 0..5,
    in batches of 4."""
    pair = LabelChecking()
    x, x_l = torch.arange(30.0) / 10, torch.arange(6.0) / 10
    stream = LabelledStream(
        (x_l, (10 * x_l).long()), 4, loss=labelled_loss, schedule=schedule, passes=passes
    )
    return train(
        pair.model,
        pair.guide,
        (x, (10 * x).long()),
        labelled=stream,
        loss=loss,
        epochs=epochs,
        batch_size=batch_size,
        progress=False,
    ).history


@pytest.mark.parametrize("schedule", ["joint", "alternate"])
def test_labelled_stream_loss_is_per_datapoint_of_both_data_sets(schedule):
    history = _two_streams(_constant(2.0), _constant(5.0), schedule, batch_size=7)
    # (N * 2 + N_l * 5) / (N + N_l) with N = 30, N_l = 6, exact up to float round-off
    assert history[0]["train_loss"] == pytest.approx((30 * 2 + 6 * 5) / 36, rel=1e-12)


def test_labelled_batches_cycle_through_permutations_of_the_labelled_set():
    served = []

    def labelled_loss(model, guide, x, y, num_data=None):
        served.append(y.clone())
        assert num_data == 6, "the labelled stream is scaled by its own size"
        return pyro.param("a") * 0.0

    _two_streams(_constant(0.0), labelled_loss, "joint")
    # 3 steps of 4 labelled rows = two whole permutations of the 6 labelled rows
    order = torch.cat(served).tolist()
    assert len(order) == 12 and sorted(order[:6]) == sorted(order[6:]) == list(range(6))


def test_alternate_schedule_steps_once_on_every_batch_of_both_streams_per_epoch():
    steps = []

    def recording(stream):
        def loss(model, guide, x, y, num_data=None):
            steps.append((stream, y.tolist(), num_data))
            return pyro.param("a") * 0.0

        return loss

    _two_streams(recording("u"), recording("l"), "alternate", epochs=2)
    for epoch in (steps[:5], steps[5:]):
        # 3 unlabelled batches of 10 and the labelled batches of 4 and 2, spread evenly
        assert [s[0] for s in epoch] == ["u", "l", "u", "l", "u"], epoch
        assert [len(s[1]) for s in epoch] == [10, 4, 10, 2, 10]
        unlabelled = sorted(sum((s[1] for s in epoch if s[0] == "u"), []))
        labelled = sorted(sum((s[1] for s in epoch if s[0] == "l"), []))
        assert unlabelled == list(range(30)) and labelled == list(range(6))
        assert {s[2] for s in epoch if s[0] == "u"} == {30}  # each stream scaled by its size
        assert {s[2] for s in epoch if s[0] == "l"} == {6}


def test_labelled_passes_serve_the_labelled_stream_that_many_times_per_epoch():
    steps = []

    def recording(stream):
        def loss(model, guide, x, y, num_data=None):
            steps.append((stream, y.tolist()))
            return pyro.param("a") * 0.0

        return loss

    _two_streams(recording("u"), recording("l"), "alternate", passes=3)
    # 3 unlabelled batches and 3 passes of 2 labelled batches, spread evenly
    assert [s[0] for s in steps] == ["l", "u", "l", "l", "u", "l", "l", "u", "l"]
    labelled = [s[1] for s in steps if s[0] == "l"]
    for one_pass in (labelled[0:2], labelled[2:4], labelled[4:6]):  # each a permutation
        assert sorted(one_pass[0] + one_pass[1]) == list(range(6))


def test_labelled_passes_need_the_alternate_schedule():
    with pytest.raises(ValueError, match=r"passes=2 needs the alternate schedule"):
        LabelledStream((torch.zeros(3, 2),), schedule="joint", passes=2)
    with pytest.raises(ValueError, match=r"labelled passes must be an int >= 1, got 0"):
        LabelledStream((torch.zeros(3, 2),), passes=0)


@pytest.mark.parametrize(
    "unlabelled, labelled, expected",
    [(3, 2, [1, 3]), (17, 1, [9]), (1, 3, [0, 2, 3]), (4, 4, [1, 3, 5, 7])],
)
def test_labelled_batches_are_spread_evenly_among_the_steps(unlabelled, labelled, expected):
    positions = labelled_positions(unlabelled, labelled)
    assert positions == expected
    assert len(set(positions)) == labelled and max(positions) < unlabelled + labelled


def test_an_unknown_labelled_schedule_is_refused():
    with pytest.raises(ValueError, match=r"unknown labelled schedule 'both'; choose one of"):
        LabelledStream((torch.zeros(3, 2),), schedule="both")
