"""Benchmark: pyro_vae.infer.training.loop against a hand-written PyTorch loop of the same math.

The model is the 784-400-20-400-784 ReLU VAE with a Bernoulli likelihood on binarized MNIST-5k,
batch 128, Adam(lr=1e-3), one-sample reparameterized ELBO. The hand-written loop calls the very
same encoder and decoder modules (a deep copy) and writes the log-densities out by hand; it
shuffles, slices and calls ``.item()`` per step exactly as the trainer does. Both run alternately
in one process; we report median steady-state steps/s and the ratio trainer / hand-written.
For context the obvious Pyro loop (``SVI`` + ``Trace_ELBO`` + ``pyro.optim.Adam``) is timed too.

Two rows answer "what does eager execution cost": ``compiled SVIStep``
(:class:`~pyro_vae.infer.training.compiled_step.CompiledSVIStep`: Pyro's handlers run once per
batch shape, the step is one inductor-compiled graph; its compile time is printed apart, since
the warm-up round absorbs it) and ``NumPyro jit(svi.update)``: the same VAE as a NumPyro model and
guide, starting from the very same (PyTorch-initialized) weights, NumPyro's ``Trace_ELBO`` and
Adam(1e-3), stepped by ``jax.jit(svi.update)`` on the same batches with a ``float(loss)`` per
step. The NumPyro row needs the ``bench`` extra (``pip install -e '.[bench]'``: numpyro, CPU
jax); without it the row is skipped with a notice. ``--main-job`` also times the README's main
job (``pyro-vae train --epochs 50``) end to end with the eager and the compiled step;
``--main-job`` runs first, so that with a fresh ``TORCHINDUCTOR_CACHE_DIR`` its first compile
is a cold one; ``--routes`` adds the two other ways to run the captured step graph: as it is
(ATen ops, no inductor) and through ``torch.compile`` (Dynamo on the captured GraphModule).

With ``--iwae-k K`` (default 5; 0 skips it) the importance-weighted bound with K particles is
timed the same three ways: ``SVIStep`` with
:class:`~pyro_vae.infer.objectives.iwae.IWAEObjective`, Pyro's ``SVI`` with
``RenyiELBO(alpha=0, vectorize_particles=True)`` (the same bound, summed over the batch) and a
hand-written loop; the ratios of these rows are to the hand-written IWAE loop.

    python experiments/bench_train.py            # ~2 minutes on 2 CPU cores
    python experiments/bench_train.py --device cuda
    python experiments/bench_train.py --main-job --iwae-k 0
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time
from unittest import mock

import pyro
import torch
import torch.nn.functional as F

from pyro_vae.data import load_dataset
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.runtime.devices import resolve_device
from pyro_vae.infer.training.compiled_step import CompiledSVIStep
from pyro_vae.infer.training.loop import train
from pyro_vae.infer.training.svi import SVIStep, make_adam
from pyro_vae.models.vae import VAE

LOG_2PI = math.log(2 * math.pi)


def hand_written_epoch(vae, optimizer, x, batch_size) -> int:
    """One epoch of the same ELBO written directly in PyTorch; returns the number of steps."""
    n = x.shape[0]
    order = torch.randperm(n).to(x.device)
    steps = math.ceil(n / batch_size)
    for step in range(steps):
        batch = x[order[step * batch_size : (step + 1) * batch_size]]
        loc, scale = vae.encoder(batch)
        z = loc + scale * torch.randn_like(loc)
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
        logits = vae.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, batch, reduction="none").sum(-1)
        loss = -(log_lik + log_prior - log_q).mean()
        loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps


def hand_written_iwae_epoch(vae, optimizer, x, batch_size, k) -> int:
    """One epoch of the k-particle IWAE bound written directly in PyTorch."""
    n = x.shape[0]
    order = torch.randperm(n).to(x.device)
    steps = math.ceil(n / batch_size)
    for step in range(steps):
        batch = x[order[step * batch_size : (step + 1) * batch_size]]
        loc, scale = vae.encoder(batch)
        z = loc + scale * torch.randn((k, *loc.shape), device=loc.device)  # (k, B, M)
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
        logits = vae.decoder(z)
        target = batch.expand_as(logits)
        log_lik = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
        log_w = log_lik + log_prior - log_q
        loss = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
        loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps


def pyro_svi_epoch(svi, x, batch_size) -> int:
    """One epoch of the obvious Pyro loop: SVI + Trace_ELBO + pyro.optim.Adam."""
    n = x.shape[0]
    order = torch.randperm(n).to(x.device)
    steps = math.ceil(n / batch_size)
    for step in range(steps):
        svi.step(x[order[step * batch_size : (step + 1) * batch_size]]) / batch_size
    return steps


def _iwae_runners(vae, x, batch_size, k, device, batches_per_epoch) -> dict:
    """The IWAE bound with k particles, three ways, each on its own copy of ``vae``."""
    ours, theirs, hand = (copy.deepcopy(vae) for _ in range(3))
    hand_optimizer = make_adam(hand.parameters(), lr=1e-3)
    with pyro.get_param_store().scope():
        step = SVIStep(ours.model, ours.guide, IWAEObjective(k), lr=1e-3)
        step.setup(x[:batch_size])
    renyi = pyro.infer.RenyiELBO(
        alpha=0, num_particles=k, max_plate_nesting=1, vectorize_particles=True
    )
    svi = pyro.infer.SVI(theirs.model, theirs.guide, pyro.optim.Adam({"lr": 1e-3}), renyi)

    def step_round():
        def epoch():
            order = torch.randperm(x.shape[0]).to(x.device)
            for i in range(batches_per_epoch):
                step.step(x[order[i * batch_size : (i + 1) * batch_size]])
            return batches_per_epoch

        with pyro.get_param_store().scope():
            return _timed_epochs(epoch, 1, device)

    def renyi_round():
        with pyro.get_param_store().scope():
            return _timed_epochs(lambda: pyro_svi_epoch(svi, x, batch_size), 1, device)

    def hand_round():
        epoch = lambda: hand_written_iwae_epoch(hand, hand_optimizer, x, batch_size, k)  # noqa: E731
        return _timed_epochs(epoch, 1, device)

    return {
        f"IWAE k={k}, SVIStep + IWAEObjective": step_round,
        f"IWAE k={k}, Pyro SVI + RenyiELBO(alpha=0)": renyi_round,
        f"IWAE k={k}, hand-written": hand_round,
    }


def load_numpyro():
    """``(jax, numpyro)`` on CPU, or None after a one-line notice when they are not installed."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # never probe for accelerators here
    try:
        import jax
        import numpyro
    except ImportError:
        print("NumPyro rows skipped: numpyro and jax are not installed (pip install -e '.[bench]')")
        return None
    return jax, numpyro


def numpyro_vae(vae, jax, numpyro):
    """The MLP VAE ``vae`` as a NumPyro (model, guide, params) starting at its torch weights.

    Same math as :class:`pyro_vae.models.vae.VAE`: an encoder MLP emitting (mu, log sigma),
    z ~ N(mu, sigma) in the guide, z ~ N(0, I) and x ~ Bernoulli(logits = decoder(z)) in the
    model; the loss of a batch is scaled to -ELBO per datapoint as ``SVIStep``'s is, and
    ``kl_weight`` (an argument of model and guide) scales the z site in both, the KL weight
    beta of annealing. Layer weights are stored transposed (x @ W), as JAX code writes them.
    """
    jnp, dist, handlers = jax.numpy, numpyro.distributions, numpyro.handlers
    params = {
        name.replace(".", "_"): jnp.asarray(p.detach().cpu().numpy().T)
        for name, p in vae.named_parameters()
    }
    latent = params["encoder_net_2_bias"].shape[0] // 2

    def mlp(prefix, h):
        for layer in (0, 2):
            w = numpyro.param(
                f"{prefix}_net_{layer}_weight", params[f"{prefix}_net_{layer}_weight"]
            )
            b = numpyro.param(f"{prefix}_net_{layer}_bias", params[f"{prefix}_net_{layer}_bias"])
            h = h @ w + b
            h = jax.nn.relu(h) if layer == 0 else h
        return h

    def model(x, scale=True, kl_weight=1.0):
        with (
            numpyro.plate("data", x.shape[0]),
            handlers.scale(scale=1 / x.shape[0] if scale else 1.0),
        ):
            with handlers.scale(scale=kl_weight):  # beta (log p(z) - log q(z)): annealing
                z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([latent]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=mlp("decoder", z)).to_event(1), obs=x)

    def guide(x, scale=True, kl_weight=1.0):
        out = mlp("encoder", x)
        with (
            numpyro.plate("data", x.shape[0]),
            handlers.scale(scale=1 / x.shape[0] if scale else 1.0),
            handlers.scale(scale=kl_weight),
        ):
            numpyro.sample(
                "z", dist.Normal(out[..., :latent], jnp.exp(out[..., latent:])).to_event(1)
            )

    return model, guide, params


def _numpyro_runner(vae, x, batch_size, seed, epochs_per_round):
    """A round of NumPyro SVI epochs with ``jax.jit(svi.update)``, or None without NumPyro."""
    loaded = load_numpyro()
    if loaded is None:
        return None
    jax, numpyro = loaded
    model, guide, _ = numpyro_vae(vae, jax, numpyro)
    svi = numpyro.infer.SVI(model, guide, numpyro.optim.Adam(1e-3), numpyro.infer.Trace_ELBO())
    x_np = x.cpu().numpy()
    state = [svi.init(jax.random.PRNGKey(seed), x_np[:batch_size])]
    update = jax.jit(svi.update)

    def epoch():
        n = x_np.shape[0]
        order = torch.randperm(n).numpy()
        steps = math.ceil(n / batch_size)
        for step in range(steps):
            state[0], loss = update(
                state[0], x_np[order[step * batch_size : (step + 1) * batch_size]]
            )
            float(loss)  # as .item() in the torch loops: the step has finished
        return steps

    return lambda: _timed_epochs(epoch, epochs_per_round, torch.device("cpu"))


def _dynamo_route(graph, inputs, device):
    """The captured graph through torch.compile (Dynamo over an ATen GraphModule)."""
    options = {"fallback_random": True}
    return torch.compile(graph, options=options, fullgraph=True, dynamic=False)


ROUTES = {
    "captured graph, uncompiled": lambda graph, inputs, device: graph,
    "captured graph, torch.compile": _dynamo_route,
}


def _route_runner(vae, x, args, device, compile_fn, batches_per_epoch):
    """A round of epochs of a CompiledSVIStep whose graphs ``compile_fn`` compiles."""
    route_vae = copy.deepcopy(vae)
    with pyro.get_param_store().scope():
        step = CompiledSVIStep(route_vae.model, route_vae.guide, lr=1e-3, compile_fn=compile_fn)
        step.setup(x[: args.batch_size])

    def epoch():
        n = x.shape[0]
        order = torch.randperm(n).to(x.device)
        for i in range(batches_per_epoch):
            step.step(x[order[i * args.batch_size : (i + 1) * args.batch_size]], num_data=n)
        return batches_per_epoch

    def round_():
        with pyro.get_param_store().scope():
            return _timed_epochs(epoch, args.epochs_per_round, device)

    return round_


def main_job_seconds(compiled: bool, epochs: int, out_dir: str) -> tuple[float, float]:
    """Wall time of ``pyro-vae train --epochs E --out DIR`` with the eager or compiled step.

    The compiled step is swapped in where the trainer builds its step (the one-line change
    that ``train(compile=...)`` makes), so everything else, data loading to figures, is the
    command as users run it. Returns (wall seconds, seconds spent capturing and compiling).
    """
    import importlib

    from pyro_vae import cli

    train_module = importlib.import_module("pyro_vae.infer.training.loop")  # not the function train
    made = []

    class RecordedStep(CompiledSVIStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    step_cls = RecordedStep if compiled else SVIStep
    tic = time.perf_counter()
    with mock.patch.object(train_module, "SVIStep", step_cls):
        status = cli.main(["train", "--epochs", str(epochs), "--out", out_dir, "--quiet"])
    if status not in (0, None):
        raise RuntimeError(f"pyro-vae train exited with status {status}")
    return time.perf_counter() - tic, sum(step.compile_seconds for step in made)


def _main_job(epochs: int) -> dict:
    """The main job eagerly, compiled, compiled again (inductor's on-disk cache warm) and
    eagerly again (the first run also pays the process's one-time costs: data, imports)."""
    runs = {}
    order = (
        ("eager, first in the process", False),
        ("compiled", True),
        ("compiled, cache warm", True),
        ("eager", False),
    )
    for label, compiled in order:
        with tempfile.TemporaryDirectory() as out:
            runs[label] = main_job_seconds(compiled, epochs, out)
    print(f"\n`pyro-vae train --epochs {epochs}`: wall time, of which capture + compile")
    print("| step | wall s | compile s |\n|---|---|---|")
    for label, (wall, compile_s) in runs.items():
        print(f"| {label} | {wall:.1f} | {compile_s:.1f} |")
    return runs


def _timed_epochs(epoch_fn, epochs, device) -> list[float]:
    """Steps per second of each of ``epochs`` calls of ``epoch_fn()`` (returns its step count)."""
    rates = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        steps = epoch_fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps / (time.perf_counter() - tic))
    return rates


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating timed rounds")
    parser.add_argument("--epochs-per-round", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-data", type=int, default=4000, help="training datapoints used")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--iwae-k", type=int, default=5, help="IWAE particles (0: skip)")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled row")
    parser.add_argument("--no-numpyro", action="store_true", help="skip the NumPyro row")
    parser.add_argument(
        "--main-job", action="store_true", help="also time `pyro-vae train --epochs 50`"
    )
    parser.add_argument("--main-job-epochs", type=int, default=50)
    parser.add_argument("--main-job-only", action="store_true", help="time the main job only")
    parser.add_argument(
        "--routes",
        action="store_true",
        help="also time the captured graph uncompiled and via torch.compile",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    # first, so that with a fresh TORCHINDUCTOR_CACHE_DIR its first compile is a cold one
    main_job = _main_job(args.main_job_epochs) if args.main_job or args.main_job_only else None
    if args.main_job_only:
        return {"main_job_seconds": main_job}
    torch.set_num_threads(args.threads)  # the command sets its own
    pyro.set_rng_seed(args.seed)
    x = load_dataset("mnist5k", binarize="static", seed=args.seed).train.x[: args.num_data]
    x = x.to(device)
    batches_per_epoch = math.ceil(x.shape[0] / args.batch_size)

    vae = VAE(784, latent_dim=20, hidden=(400,), likelihood="bernoulli").to(device)
    # as people write it: torch.optim.Adam with its defaults (a for-loop over parameters on CPU)
    reference = copy.deepcopy(vae)
    ref_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    # the same optimizer the trainer builds, so the ratio isolates the Pyro model/guide overhead
    same_opt_reference = copy.deepcopy(vae)
    same_optimizer = make_adam(same_opt_reference.parameters(), lr=1e-3)
    step_vae = copy.deepcopy(vae)
    with pyro.get_param_store().scope():
        step = SVIStep(step_vae.model, step_vae.guide, lr=1e-3)
        step.setup(x[: args.batch_size])
    compiled_vae = copy.deepcopy(vae)
    with pyro.get_param_store().scope():
        compiled_step = CompiledSVIStep(compiled_vae.model, compiled_vae.guide, lr=1e-3)
        compiled_step.setup(x[: args.batch_size])
    svi_vae = copy.deepcopy(vae)
    svi = pyro.infer.SVI(
        svi_vae.model, svi_vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO()
    )

    def trainer_round():
        # The trainer times its own epochs (set-up and the first-batch probe excluded).
        with pyro.get_param_store().scope():  # keep the three copies' parameters apart
            result = train(
                vae.model,
                vae.guide,
                x,
                epochs=args.epochs_per_round,
                batch_size=args.batch_size,
                device=device,
                progress=False,
            )
        return [r["examples_per_s"] * batches_per_epoch / x.shape[0] for r in result.history]

    def reference_round():
        epoch = lambda: hand_written_epoch(reference, ref_optimizer, x, args.batch_size)  # noqa: E731
        return _timed_epochs(epoch, args.epochs_per_round, device)

    def same_optimizer_round():
        epoch = lambda: hand_written_epoch(  # noqa: E731
            same_opt_reference, same_optimizer, x, args.batch_size
        )
        return _timed_epochs(epoch, args.epochs_per_round, device)

    def step_round():  # the step layer in a loop of one's own, written like hand_written_epoch
        def epoch():
            n = x.shape[0]
            order = torch.randperm(n).to(x.device)
            for i in range(batches_per_epoch):
                step.step(x[order[i * args.batch_size : (i + 1) * args.batch_size]], num_data=n)
            return batches_per_epoch

        with pyro.get_param_store().scope():
            return _timed_epochs(epoch, args.epochs_per_round, device)

    def compiled_round():
        def epoch():
            n = x.shape[0]
            order = torch.randperm(n).to(x.device)
            for i in range(batches_per_epoch):
                compiled_step.step(
                    x[order[i * args.batch_size : (i + 1) * args.batch_size]], num_data=n
                )
            return batches_per_epoch

        with pyro.get_param_store().scope():
            return _timed_epochs(epoch, args.epochs_per_round, device)

    def svi_round():
        with pyro.get_param_store().scope():
            epoch = lambda: pyro_svi_epoch(svi, x, args.batch_size)  # noqa: E731
            return _timed_epochs(epoch, args.epochs_per_round, device)

    runners = {
        "pyro_vae.train": trainer_round,
        "SVIStep.step in your own loop": step_round,
        "hand-written": reference_round,
        "hand-written, trainer's fused Adam": same_optimizer_round,
        "Pyro SVI + Trace_ELBO + pyro.optim.Adam": svi_round,
    }
    if not args.no_compiled:
        runners["compiled SVIStep"] = compiled_round
    if args.routes:
        for name, compile_fn in ROUTES.items():
            runners[name] = _route_runner(vae, x, args, device, compile_fn, batches_per_epoch)
    numpyro_round = None
    if not args.no_numpyro and device.type == "cpu":
        numpyro_round = _numpyro_runner(vae, x, args.batch_size, args.seed, args.epochs_per_round)
    if numpyro_round is not None:
        runners["NumPyro jit(svi.update)"] = numpyro_round
    k = args.iwae_k
    if k > 0:
        runners.update(_iwae_runners(vae, x, args.batch_size, k, device, batches_per_epoch))
    rates = {name: [] for name in runners}
    for round_ in range(args.rounds + 1):  # round 0 warms up and is discarded
        for name, fn in runners.items():
            epoch_rates = fn()
            if round_ > 0:
                rates[name].extend(epoch_rates)

    medians = {name: statistics.median(values) for name, values in rates.items()}
    hand = medians["hand-written"]
    setting = f"batch {args.batch_size}, {device}, {torch.get_num_threads()} threads"
    print(f"\nsteps/s, median over {args.rounds} alternating rounds, {setting}")
    same = medians["hand-written, trainer's fused Adam"]
    print("| loop | steps/s | ratio to hand-written | ratio to hand-written, same optimizer |")
    print("|---|---|---|---|")
    for name, rate in medians.items():
        if name.startswith("IWAE"):
            continue
        print(f"| {name} | {rate:.1f} | {rate / hand:.3f}x | {rate / same:.3f}x |")
    numpyro_rate = medians.get("NumPyro jit(svi.update)")
    if numpyro_rate is not None:
        print("\n| loop | ratio to NumPyro jit(svi.update) |\n|---|---|")
        for name, rate in medians.items():
            if not name.startswith("IWAE"):
                print(f"| {name} | {rate / numpyro_rate:.3f}x |")
    if not args.no_compiled:
        print(
            f"\ncompiled SVIStep: {compiled_step.num_compiles} graphs (batch shapes) captured and "
            f"compiled in {compiled_step.compile_seconds:.1f} s"
        )
    if k > 0:
        hand_iwae = medians[f"IWAE k={k}, hand-written"]
        print(f"\n| IWAE k={k} loop | steps/s | ratio to hand-written IWAE |\n|---|---|---|")
        for name, rate in medians.items():
            if name.startswith("IWAE"):
                print(f"| {name} | {rate:.1f} | {rate / hand_iwae:.3f}x |")
    return {
        "steps_per_s": medians,
        "ratio": medians["pyro_vae.train"] / hand,
        "ratio_same_optimizer": medians["pyro_vae.train"] / same,
        "iwae_ratio": (
            medians[f"IWAE k={k}, SVIStep + IWAEObjective"] / medians[f"IWAE k={k}, hand-written"]
            if k > 0
            else None
        ),
        "rates": rates,
        "ratio_compiled_to_numpyro": (
            medians["compiled SVIStep"] / numpyro_rate
            if numpyro_rate is not None and "compiled SVIStep" in medians
            else None
        ),
        "compile_seconds": None if args.no_compiled else compiled_step.compile_seconds,
        "main_job_seconds": main_job,
    }


if __name__ == "__main__":
    main()
