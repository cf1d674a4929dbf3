"""Benchmark: pyro_vae.infer.evidence.log_evidence against a hand-vectorized estimator.

Same math three ways, log p(x) ~ log (1/L) sum_l p(x, z_l) / q(z_l | x) per datapoint, for the
784-400-20 Bernoulli VAE (untrained, random binary 784-D data, float32):

- ``log_evidence``: any model/guide pair, vectorized over particles, chunked, with standard
  errors, ESS and PSIS k-hat on top of the estimate;
- hand-vectorized: encoder and decoder called directly, Normal / Bernoulli log-densities written
  by hand, the same L and the same particle chunks, a running logsumexp, nothing else;
- ``pyro.infer.Importance(num_samples=L)``: Pyro's loop over samples, one datapoint at a time
  (timed on a few datapoints and scaled per datapoint);
- ``log_evidence, compiled``: ``log_evidence(..., compile=True)``, each chunk's log weights
  from one inductor-compiled graph
  (:class:`pyro_vae.infer.evidence.compiled.CompiledLogWeights`); its compile time is printed
  apart (the warm-up repetition absorbs it);
- ``NumPyro vectorized``: the same VAE and weights as a NumPyro model and guide
  (``bench_train.numpyro_vae``), the guide drawn under a particle plate and the model replayed
  at its draws by NumPyro's handlers, per-datapoint log weights summed from the sites, one
  ``jax.jit`` function per chunk, the same chunks and running logsumexp. It needs the
  ``bench`` extra (numpyro, CPU jax) and is skipped with a notice without it.

The three alternate within each repetition, in an order rotated from one repetition to the
next (whoever runs after ``Importance`` pays for its garbage); we report median datapoints/s
and the ratios (targets: >= 0.9x the hand-vectorized estimator, >= 50x Importance). All share
one process, so the hand-vectorized estimator profits from the allocator priming that
``log_evidence`` does on CPU too. It also times ``pareto_khat`` on N=1000 rows of L=5000 log
weights (target < 2 s).

    python experiments/bench_evidence.py            # ~25 s on 2 CPU cores
    python experiments/bench_evidence.py --quick    # seconds, for smoke tests
    python experiments/bench_evidence.py --profile  # cProfile of one log_evidence call
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import math
import pstats
import statistics
import time
from pathlib import Path

import numpy as np
import pyro
import torch
import torch.nn.functional as F

from pyro_vae.infer.evidence.importance import log_evidence
from pyro_vae.infer.evidence.psis import pareto_khat
from pyro_vae.infer.evidence.weights import default_chunk_size
from pyro_vae.infer.runtime.devices import resolve_device
from pyro_vae.models.vae import VAE

LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def hand_log_evidence(vae, x, num_samples, chunk_size) -> torch.Tensor:
    """The same estimator in plain PyTorch: (N,) log (1/L) sum_l w_l, running logsumexp."""
    lse = None
    for start in range(0, num_samples, chunk_size):
        s = min(chunk_size, num_samples - start)
        loc, scale = vae.encoder(x)  # (N, M) each
        z = loc + scale * torch.randn((s,) + loc.shape, dtype=loc.dtype, device=loc.device)
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
        logits = vae.decoder(z)  # (S, N, D)
        bce = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        log_w = -bce.sum(-1) + log_prior - log_q  # (S, N)
        chunk = log_w.logsumexp(0)
        lse = chunk if lse is None else torch.logaddexp(lse, chunk)
    return lse - math.log(num_samples)


def _bench_train():
    """experiments/bench_train.py as a module (it holds the NumPyro VAE)."""
    path = Path(__file__).resolve().parent / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numpyro_estimator(vae, x, num_samples, chunk_size, seed):
    """``run() -> (N,)`` NumPyro's vectorized log (1/L) sum_l w_l, or None without NumPyro."""
    bench_train = _bench_train()
    loaded = bench_train.load_numpyro()
    if loaded is None:
        return None
    jax, numpyro = loaded
    jnp, handlers = jax.numpy, numpyro.handlers
    model, guide, params = bench_train.numpyro_vae(vae, jax, numpyro)
    x_np = jnp.asarray(x.cpu().numpy())

    def log_weights(params, x, key, s):  # (S, N), S static
        with numpyro.plate("particles", s, dim=-2):
            guide_trace = handlers.trace(
                handlers.seed(handlers.substitute(guide, params), key)
            ).get_trace(x, scale=False)
            replayed = handlers.replay(handlers.substitute(model, params), guide_trace)
            model_trace = handlers.trace(handlers.seed(replayed, key)).get_trace(x, scale=False)

        def total(trace):
            return sum(
                site["fn"].log_prob(site["value"])
                for site in trace.values()
                if site["type"] == "sample"
            )

        return total(model_trace) - total(guide_trace)

    chunk = jax.jit(log_weights, static_argnums=3)
    keys = [jax.random.PRNGKey(seed)]

    def run():
        lse = None
        for start in range(0, num_samples, chunk_size):
            s = min(chunk_size, num_samples - start)
            keys[0], key = jax.random.split(keys[0])
            part = jax.nn.logsumexp(chunk(params, x_np, key, s), axis=0)
            lse = part if lse is None else jnp.logaddexp(lse, part)
        out = lse - math.log(num_samples)
        return torch.from_numpy(np.asarray(out.block_until_ready()).copy())

    return run


def importance_log_evidence(vae, x, num_samples) -> torch.Tensor:
    """Pyro's ``Importance``: a Python loop over L traces, one datapoint per run: (n,)."""
    out = []
    for row in x:
        posterior = pyro.infer.Importance(vae.model, vae.guide, num_samples=num_samples)
        out.append(posterior.run(row[None]).get_log_normalizer())
    return torch.stack(out)


def _timed(fn, device) -> tuple[float, object]:
    gc.collect()  # garbage left by the previous runner (Importance's traces) is not ours
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic, value


def _khat_seconds(rows, samples) -> float:
    log_weights = torch.randn(rows, samples, generator=torch.Generator().manual_seed(0))
    tic = time.perf_counter()
    pareto_khat(log_weights)
    return time.perf_counter() - tic


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-data", type=int, default=100, help="datapoints N")
    parser.add_argument("--num-samples", type=int, default=1000, help="particles L")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: memory budget")
    parser.add_argument("--importance-points", type=int, default=2, help="datapoints timed")
    parser.add_argument("--reps", type=int, default=6, help="alternating timed repetitions")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for smoke tests")
    parser.add_argument("--profile", action="store_true", help="cProfile one log_evidence call")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled row")
    parser.add_argument("--no-numpyro", action="store_true", help="skip the NumPyro row")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_data, args.num_samples, args.importance_points, args.reps = 8, 50, 1, 1
    return args


def main(argv=None) -> dict:
    args = _parse(argv)
    device = resolve_device(args.device)
    pyro.set_rng_seed(args.seed)
    N, L, D = args.num_data, args.num_samples, 784
    chunk = args.chunk_size or default_chunk_size(N, D, device)
    vae = VAE(D, latent_dim=20, hidden=(400,), likelihood="bernoulli").to(device)
    x = torch.bernoulli(torch.full((N, D), 0.3)).to(device)
    x_few = x[: args.importance_points]

    runners = {
        "log_evidence": lambda: (
            log_evidence(vae.model, vae.guide, x, num_samples=L, chunk_size=chunk).log_px
        ),
        "hand-vectorized": lambda: hand_log_evidence(vae, x, L, chunk),
        "pyro Importance": lambda: importance_log_evidence(vae, x_few, L),
    }
    points = {"log_evidence": N, "hand-vectorized": N, "pyro Importance": len(x_few)}
    compile_seconds = None
    if not args.no_compiled:

        def compiled():
            return log_evidence(
                vae.model, vae.guide, x, num_samples=L, chunk_size=chunk, compile=True
            ).log_px

        compile_seconds, _ = _timed(compiled, device)  # the first call captures and compiles
        compile_seconds -= _timed(compiled, device)[0]
        runners["log_evidence, compiled"] = compiled
        points["log_evidence, compiled"] = N
    if not args.no_numpyro and device.type == "cpu":
        numpyro_run = numpyro_estimator(vae, x, L, chunk, args.seed)
        if numpyro_run is not None:
            numpyro_run()  # jit compiles here
            runners["NumPyro vectorized"] = numpyro_run
            points["NumPyro vectorized"] = N
    times = {name: [] for name in runners}
    estimates = {}
    names = list(runners)
    for rep in range(args.reps + 1):  # rep 0 warms up and is discarded
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:  # rotate: each follows each other
            seconds, estimates[name] = _timed(runners[name], device)
            if rep > 0:
                times[name].append(seconds)

    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(log_evidence, vae.model, vae.guide, x, num_samples=L, chunk_size=chunk)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(20)
    return _report(args, device, chunk, times, points, estimates, compile_seconds)


def _report(args, device, chunk, times, points, estimates, compile_seconds=None) -> dict:
    medians = {name: statistics.median(t) for name, t in times.items()}
    rates = {name: points[name] / medians[name] for name in medians}
    ours = rates["log_evidence"]
    khat_rows, khat_samples = (50, 500) if args.quick else (1000, 5000)
    khat_s = _khat_seconds(khat_rows, khat_samples)
    print(
        f"\nlog p(x) per datapoint, 784-400-20 Bernoulli VAE, N={args.num_data}, "
        f"L={args.num_samples}, chunk={chunk}, {device}, {torch.get_num_threads()} threads; "
        f"median of {args.reps} alternating repetitions"
    )
    print("| estimator | datapoints/s | median s per call | log_evidence speed-up |")
    print("|---|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.2f} | {medians[name]:.3f} | {ours / rate:.2f}x |")
    ratio_hand = ours / rates["hand-vectorized"]
    ratio_importance = ours / rates["pyro Importance"]
    print(f"\nlog_evidence / hand-vectorized: {ratio_hand:.3f}x (target >= 0.9x)")
    print(f"log_evidence / Importance: {ratio_importance:.1f}x (target >= 50x)")
    print(f"pareto_khat on {khat_rows} x {khat_samples} log weights: {khat_s:.3f} s (target < 2 s)")
    ratio_compiled = ratio_numpyro = None
    if "log_evidence, compiled" in rates:
        ratio_compiled = rates["log_evidence, compiled"] / rates["hand-vectorized"]
        print(f"log_evidence compiled / hand-vectorized: {ratio_compiled:.3f}x")
        print(f"compile time of the log-weight graphs: {compile_seconds:.1f} s")
    if "NumPyro vectorized" in rates:
        numpyro_rate = rates["NumPyro vectorized"]
        print("\n| estimator | ratio to NumPyro vectorized |\n|---|---|")
        for name, rate in rates.items():
            print(f"| {name} | {rate / numpyro_rate:.3f}x |")
        if ratio_compiled is not None:
            ratio_numpyro = rates["log_evidence, compiled"] / numpyro_rate
            print(
                f"log_evidence compiled / NumPyro vectorized: {ratio_numpyro:.3f}x (target >= 1x)"
            )
    few = args.importance_points
    mean_log_px = {name: value[:few].mean().item() for name, value in estimates.items()}
    print(f"mean log p(x) of the first {few} datapoints in nats (sanity check):", end=" ")
    print(", ".join(f"{name} {value:.2f}" for name, value in mean_log_px.items()))
    return {
        "datapoints_per_s": rates,
        "median_seconds": medians,
        "ratio_vs_hand": ratio_hand,
        "ratio_vs_importance": ratio_importance,
        "khat_seconds": khat_s,
        "mean_log_px": mean_log_px,
        "chunk_size": chunk,
        "times": times,
        "ratio_compiled_vs_hand": ratio_compiled,
        "ratio_compiled_vs_numpyro": ratio_numpyro,
        "compile_seconds": compile_seconds,
    }


if __name__ == "__main__":
    main()
