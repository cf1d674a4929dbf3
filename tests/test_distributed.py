"""Tests for pyro_vae.infer.runtime.distributed: two gloo processes on CPU, against one process.

Two ranks are started with ``torch.multiprocessing.spawn`` and the environment torchrun would
set; a failed assertion in a rank fails the test. Closed forms: the averaged gradient of two
half batches is the gradient of the whole batch at the same noise (float64 round-off, 1e-12);
the sharded evidence of the exact pPCA guide is the exact log p(x) on every rank.
"""

import json
import math
import os
import socket
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as torch_dist
from pairs import FactorAnalysis, GaussianMixture

from pyro_vae.cli import main
from pyro_vae.infer.evidence.ais import ais_evidence
from pyro_vae.infer.evidence.bdmc import bdmc, simulate_data
from pyro_vae.infer.evidence.dataset import dataset_nll
from pyro_vae.infer.evidence.enumerated import enumerated_ais
from pyro_vae.infer.runtime.distributed import (
    PeerLostError,
    Ranks,
    average_gradients,
    broadcast_params,
    epoch_shard,
    init_from_env,
    leave,
)
from pyro_vae.infer.training.compiled_step import CompiledSVIStep
from pyro_vae.infer.training.svi import SVIStep
from pyro_vae.models.ppca import PPCA
from pyro_vae.models.vae import VAE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world_size, port, fn):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    ranks = init_from_env(torch.device("cpu"))
    assert ranks == Ranks(rank, world_size)
    try:
        fn(ranks)
    finally:
        leave()  # as after a failure; nothing when ``fn`` left already
    leave()  # a second call (the exit handler's) finds no group and does nothing
    assert not torch_dist.is_initialized()


def spawn(fn, world_size=2):
    """Run ``fn(ranks)`` on ``world_size`` gloo ranks; any rank's exception fails the caller."""
    torch.multiprocessing.spawn(_rank_main, args=(world_size, _free_port(), fn), nprocs=world_size)


class GivenNoise:
    """The VAE with its guide's noise given: z = mu(x) + sigma(x) * eps, scored by the Gaussian
    density, so that one process and two ranks can use exactly the same eps per datapoint."""

    def __init__(self, vae):
        self.vae = vae

    def model(self, x, eps):
        self.vae.model(x)

    def guide(self, x, eps):
        pyro.module("encoder", self.vae.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.vae.encoder(x)
            z = loc + scale * eps
            log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
            pyro.sample("z", dist.Delta(z, log_density=log_q, event_dim=1))


def _recorded_gradients(svi: SVIStep, x, eps, hook=None):
    """One step on ``x`` with noise ``eps``; the gradients as the update saw them."""
    seen = {}

    def record(params):
        if hook is not None:
            hook(params)
        seen.update({name: p.grad.clone() for name, p in params.items()})

    svi.grad_hook = record
    svi.step(x, eps, num_data=8)
    return seen


def _gradients_and_evidence(ranks):
    torch.set_default_dtype(torch.float64)
    gen = torch.Generator().manual_seed(1)
    x, eps = torch.rand(8, 6, generator=gen).round(), torch.randn(8, 2, generator=gen)
    pyro.set_rng_seed(0)
    whole = GivenNoise(VAE(6, latent_dim=2, hidden=(5,)))
    one_process = SVIStep(whole.model, whole.guide, lr=1e-3)
    with pyro.get_param_store().scope():
        one_process.setup(x, eps)
        initial = {name: value.detach().clone() for name, value in one_process.params.items()}
        expected = _recorded_gradients(one_process, x, eps)
    pyro.set_rng_seed(ranks.rank)  # a different initialization on each rank: the broadcast
    local = GivenNoise(VAE(6, latent_dim=2, hidden=(5,)))  # makes them all rank 0's
    rank = SVIStep(local.model, local.guide, lr=1e-3)
    rank.setup(x[:4], eps[:4])
    broadcast_params(rank.params)
    for name, value in rank.params.items():  # rank 0's initial values are the one process's
        torch.testing.assert_close(value.detach(), initial[name], rtol=0, atol=0)
    rows = slice(4 * ranks.rank, 4 * ranks.rank + 4)  # each rank half of the global batch
    got = _recorded_gradients(rank, x[rows], eps[rows], hook=average_gradients)
    for name in expected:
        # float64 round-off of two partial sums against one
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-12, msg=name)

    # the sharded evidence of the exact guide is exact, on every rank, in the original order
    ppca = PPCA(torch.randn(5, 2, generator=gen), torch.zeros(5), torch.tensor(0.3))
    pyro.set_rng_seed(5)  # the same data on every rank
    xs = ppca.sample(11)
    result = dataset_nll(ppca.model, ppca.guide, xs, num_samples=7, batch_size=4, progress=False)
    torch.testing.assert_close(result.log_px, ppca.log_marginal(xs), rtol=0, atol=1e-8)
    assert result.khat.shape == (11,)
    leave(wait=True)  # as the command line does after a command that succeeded everywhere
    assert not torch_dist.is_initialized()


def _sharded_ais_and_bdmc(ranks):
    # with the exact guide every chain's weight is log p(x) (tests/test_ais.py), so the sharded
    # estimates equal the closed form, row for row, on every rank, whatever the chains drew
    torch.set_default_dtype(torch.float64)
    fa = FactorAnalysis()
    pyro.set_rng_seed(5)  # the same data on every rank
    x, quick = fa.sample(5), dict(num_chains=2, num_steps=3, num_leapfrog=2, progress=False)
    ais = ais_evidence(fa.model, fa.exact_guide, x, **quick)
    torch.testing.assert_close(ais.log_px, fa.log_px(x), rtol=0, atol=1e-9)
    assert ais.log_weights.shape == (5, 2)
    one = ais_evidence(fa.model, fa.exact_guide, x[:1], **quick)  # rank 1 has no share
    torch.testing.assert_close(one.log_px, fa.log_px(x[:1]), rtol=0, atol=1e-9)
    pyro.set_rng_seed(6)  # the same simulated data on every rank, as certify seeds them
    simulated = simulate_data(fa.model, torch.zeros(3, 8))
    sandwich = bdmc(fa.model, fa.exact_guide, simulated, **quick)
    for bound in (sandwich.lower, sandwich.upper):
        torch.testing.assert_close(bound, fa.log_px(simulated.x), rtol=0, atol=1e-9)
    mixture, grid = GaussianMixture(), torch.linspace(-4.0, 5.0, 7)
    summed = enumerated_ais(mixture.model, mixture.guide, grid, **quick)
    torch.testing.assert_close(summed.log_px, mixture.exact_log_px(grid).detach(), rtol=0,
                               atol=1e-12)  # fmt: skip


def _captured_only(graph, inputs, device):
    return graph


def _compiled_data_parallel_steps(ranks):
    # each rank steps on its half of every batch, compiled (the graph stops at the gradients,
    # the all-reduce and the fused Adam follow) and eagerly, from rank 0's start
    torch.set_default_dtype(torch.float64)
    x = torch.rand(16, 6, generator=torch.Generator().manual_seed(1)).round()
    params = []
    for step_cls, options in ((SVIStep, {}), (CompiledSVIStep, {"compile_fn": _captured_only})):
        with pyro.get_param_store().scope():
            pyro.set_rng_seed(ranks.rank)  # different starts: the broadcast makes them rank 0's
            vae = VAE(6, latent_dim=2, hidden=(5,))
            svi = step_cls(vae.model, vae.guide, lr=0.01, grad_hook=average_gradients, **options)
            svi.setup(x[:4])
            broadcast_params(svi.params)
            pyro.set_rng_seed(10 + ranks.rank)  # each rank its own noise, as train() seeds it
            for batch in range(3):
                rows = slice(8 * (batch % 2) + 4 * ranks.rank, 8 * (batch % 2) + 4 * ranks.rank + 4)
                svi.step(x[rows], num_data=16)
            params.append(torch.cat([p.detach().flatten() for p in svi.params.values()]))
    assert svi.fallback_reason is None and svi.num_compiles == 1
    torch.testing.assert_close(params[1], params[0], rtol=1e-9, atol=1e-12)  # as test_compiled
    gathered = [torch.empty_like(params[1]) for _ in range(ranks.world_size)]
    torch_dist.all_gather(gathered, params[1])
    assert all(torch.equal(g, gathered[0]) for g in gathered)  # every rank holds the same


def _every_collective_check(ranks):
    """The three checks above in one pair of ranks: each rank pays Python, torch and gloo's
    start once, not three times. The last one leaves the group (as the command line does)."""
    for check in (_sharded_ais_and_bdmc, _compiled_data_parallel_steps, _gradients_and_evidence):
        pyro.clear_param_store()
        torch.set_default_dtype(torch.float32)
        check(ranks)


@pytest.mark.slow
def test_two_ranks_average_gradients_shard_the_evidence_ais_and_bdmc_and_step_compiled():
    # the whole-batch gradient, the sharded evidence, AIS and BDMC, the compiled data-parallel
    # step: a failed assertion names its check in the rank's traceback
    spawn(_every_collective_check)


def _a_rank_is_killed(ranks):
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    average_gradients({"p": p})  # both ranks are connected
    if ranks.rank == 1:
        os._exit(0)  # as kill -9: no error of its own, its connections just close
    lost = r"^rank 0 of 2 lost another process of the job during the gradient all-reduce \(gloo: "
    # gloo names the peer or not: "Connection closed by peer [127.0.0.1]:PORT" or "... by peer"
    gone = r".*(by peer( \[[^\]]*\]:\d+)?|[Bb]roken pipe)\): that process"
    with pytest.raises(PeerLostError, match=lost + gone):
        average_gradients({"p": p})


@pytest.mark.slow
def test_a_killed_rank_gives_the_survivors_one_line_instead_of_gloos_traceback():
    spawn(_a_rank_is_killed)


@pytest.mark.parametrize("num_data, world_size", [(10, 2), (11, 2), (10, 3), (5, 1)])
def test_epoch_shards_cover_the_data_like_distributed_sampler(num_data, world_size):
    shards = [epoch_shard(num_data, 4, 0, Ranks(r, world_size)) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    joined = torch.cat(shards)
    assert set(joined.tolist()) == set(range(num_data))
    assert len(joined) - num_data == (-num_data) % world_size  # the padding, nothing more
    sampler = torch.utils.data.DistributedSampler(
        range(num_data), num_replicas=world_size, rank=1 % world_size, seed=0
    )
    sampler.set_epoch(4)
    assert shards[1 % world_size].tolist() == list(sampler)  # the same indices as PyTorch's
    other_epoch = epoch_shard(num_data, 5, 0, Ranks(0, world_size))
    assert not torch.equal(other_epoch, shards[0])  # reshuffled every epoch


def test_a_lone_process_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env(torch.device("cpu")) == Ranks(0, 1)


def test_an_incomplete_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="start the processes with torchrun"):
        init_from_env(torch.device("cpu"))


def _torchrun(*argv, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", "-m", "pyro_vae.cli", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a job that hangs fails here instead of stalling the suite
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _ranks_said(done: subprocess.CompletedProcess) -> str:
    """What the ranks printed on stderr, before torchrun's summary (that names only a signal)."""
    said = done.stderr.split('Traceback (most recent call last):\n  File "<frozen runpy>"')[0]
    return said[-4000:] or done.stderr[-2000:]


@pytest.mark.slow
def test_torchrun_trains_one_run_that_resumes_on_one_process(tmp_path):
    out = tmp_path / "run"
    tiny = ["--dataset", "digits", "--latent", "2", "--hidden", "32", "--threads", "1"]
    done = _torchrun("train", *tiny, "--epochs", "2", "--out", str(out), "--quiet")
    assert done.returncode == 0, _ranks_said(done)
    assert done.stdout.count("after 2 epochs") == 1, done.stdout  # rank 0 reports for all
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    # 1,294 training digits on 2 ranks: 647 each, local batches of 64 -> 11 steps an epoch;
    # the loss is the -ELBO per datapoint of all of them, well below 64 ln 2 = 44.4 nats
    assert history[1]["train_loss"] < history[0]["train_loss"] < 64 * math.log(2), history
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
    resumed = json.loads((out / "history.json").read_text())
    assert resumed[:2] == history and resumed[2]["segment"] == 1
    config = json.loads((out / "config.json").read_text())
    assert config["resumes"] == [{"from_epoch": 2, "changed": {"epochs": [2, 3]}}]
    # sharded BDMC and AIS: test_two_ranks_... (gloo, in process) and tests/test_experiments.py
    # (bench_distributed --ais, under torchrun); the sharded evaluate: docs/tutorials/scaling_out


@pytest.mark.slow
def test_torchrun_trains_m2_in_alternate_steps(tmp_path):
    # every rank takes one step per batch of its shard and one pass over the labelled set per
    # epoch: the same number of all-reduces on both ranks, or the job hangs (and times out)
    out = tmp_path / "m2"
    tiny = ["--dataset", "digits", "--latent", "2", "--hidden", "16", "--threads", "1"]
    tiny += ["--model", "m2", "--labels-per-class", "3", "--batch-size", "64"]
    done = _torchrun("train", *tiny, "--epochs", "2", "--out", str(out), "--quiet")
    assert done.returncode == 0, _ranks_said(done)
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in history), history


@pytest.mark.slow
def test_a_failing_job_stops_every_rank_with_its_message(tmp_path):
    missing = str(tmp_path / "none")
    done = _torchrun("train", "--dataset", "mnist", "--root", missing, "--out", str(tmp_path / "r"))
    assert done.returncode != 0
    assert "pyro-vae train: error: " in done.stderr and "'mnist' not found" in done.stderr
    assert not (tmp_path / "r").exists()
