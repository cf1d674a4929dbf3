"""Benchmark: annealed importance sampling of pyro_vae beside the same AIS written in JAX.

The pair is the 784-400-20 Bernoulli VAE of the main job (a trained run with ``--run``, else
fresh weights) on binarized MNIST-5k test digits. ``pyro_vae`` runs
:func:`~pyro_vae.infer.evidence.ais.ais_evidence` (S chains plus its pilot chains per datapoint,
T steps of the sigmoid schedule, L leapfrog steps, the momentum scaled by the guide's spread).
The JAX reference does the same arithmetic in one ``jax.jit``-compiled ``lax.scan`` over the
schedule, with a ``fori_loop`` over leapfrog steps: the same number of chains (S plus the
pilots), the guide's sigma as the momentum scale, the step size adapted by 1.02 / 0.98 from the
mean acceptance, log q and log p and their gradients by ``jax.value_and_grad``. Both are timed
alternately in one process at equal compute: with ``--threads 1`` (the default) the process is
pinned to one core (``os.sched_setaffinity``) before JAX starts, because ``XLA_FLAGS``' one
intra-op thread did not hold XLA's CPU client to one core (measured: user time 1.2x the wall
time, and JAX 1.7x faster unpinned than pinned); the JAX compile is timed apart. We report
datapoints per second and the ratio pyro_vae / JAX (target: at least 1.0). The JAX row needs
the ``bench`` extra (``pip install -e '.[bench]'``); without it the row is skipped with a
notice.

``--density-cost`` only times one evaluation of log q, log p and their gradients for 50
datapoints x 20 chains (what every leapfrog step pays; e.g. an IAF guide against a Gaussian one)
and returns. ``--compiled`` adds ``ais_evidence(..., compile=True)``: every HMC transition
one captured, inductor-compiled graph (its capture and compile timed apart). ``--profile``
prints where pyro_vae's eager time goes (cProfile, by total time).

    python experiments/bench_ais.py --compiled          # ~5 minutes on 2 CPU cores
    python experiments/bench_ais.py --run runs/vae --num-points 100 --steps 100
    python experiments/bench_ais.py --run runs/iaf --density-cost
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pyro_vae.data import load_dataset
from pyro_vae.infer.evidence.ais import AISSettings, ais_evidence, schedule, total_chains
from pyro_vae.infer.pair.particles import bind_pair
from pyro_vae.infer.pair.potential import LatentSpace
from pyro_vae.models import VAE


def load_jax(threads: int):
    """``jax`` on CPU (one intra-op thread when ``threads == 1``), or None with a notice."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    try:
        import jax
    except ImportError:
        print("JAX row skipped: jax is not installed (pip install -e '.[bench]')")
        return None
    return jax


def jax_ais(vae: VAE, x, settings: AISSettings, jax):
    """``run(key) -> log p(x)`` of shape (N,): the JAX AIS of the module docstring."""
    jnp = jax.numpy
    weights = {n: jnp.asarray(p.detach().cpu().numpy().T) for n, p in vae.named_parameters()}

    def mlp(prefix, h):
        h = jax.nn.relu(h @ weights[f"{prefix}.net.0.weight"] + weights[f"{prefix}.net.0.bias"])
        return h @ weights[f"{prefix}.net.2.weight"] + weights[f"{prefix}.net.2.bias"]

    x = jnp.asarray(x.cpu().numpy())
    out = mlp("encoder", x)
    latent = out.shape[-1] // 2
    mu, sigma = out[:, :latent], jnp.exp(out[:, latent:])
    chains, leapfrog = total_chains(settings), settings.num_leapfrog
    betas = jnp.asarray(schedule(settings.num_steps, settings.schedule).numpy())
    low, high = settings.step_size_bounds

    def normal(z, m, s):
        return (-0.5 * ((z - m) / s) ** 2 - jnp.log(s) - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)

    def log_p(z):
        logits = mlp("decoder", z)
        return normal(z, 0.0, 1.0) + (x * logits - jax.nn.softplus(logits)).sum(-1)

    def log_q(z):
        return normal(z, mu, sigma)

    def with_grad(log_density, z):
        """Per-row values and the gradient of their sum, one forward and one backward pass."""

        def total(z):
            rows = log_density(z)
            return rows.sum(), rows

        (_, rows), grad = jax.value_and_grad(total, has_aux=True)(z)
        return rows, grad

    def both(z):
        (lq, gq), (lp, gp) = with_grad(log_q, z), with_grad(log_p, z)
        return lq, lp, gq, gp

    def transition(carry, beta):
        z, lq, lp, gq, gp, eps, key = carry
        key, k_mom, k_acc = jax.random.split(key, 3)
        step = eps[None, :, None]
        r0 = jax.random.normal(k_mom, z.shape) / sigma
        log_f0 = (1 - beta) * lq + beta * lp

        def leap(i, state):
            z1, r, _, _, gq1, gp1 = state
            r = r + 0.5 * step * ((1 - beta) * gq1 + beta * gp1)
            z1 = z1 + step * sigma**2 * r
            lq1, lp1, gq1, gp1 = both(z1)
            r = r + 0.5 * step * ((1 - beta) * gq1 + beta * gp1)
            return z1, r, lq1, lp1, gq1, gp1

        z1, r, lq1, lp1, gq1, gp1 = jax.lax.fori_loop(0, leapfrog, leap, (z, r0, lq, lp, gq, gp))
        log_f1 = (1 - beta) * lq1 + beta * lp1
        kinetic0, kinetic1 = 0.5 * ((r0 * sigma) ** 2).sum(-1), 0.5 * ((r * sigma) ** 2).sum(-1)
        log_accept = jnp.nan_to_num((log_f1 - kinetic1) - (log_f0 - kinetic0), nan=-jnp.inf)
        accept_prob = jnp.exp(jnp.minimum(log_accept, 0.0))
        accept = jax.random.uniform(k_acc, accept_prob.shape) < accept_prob

        def pick(new, old):
            return jnp.where(accept if new.ndim == 2 else accept[..., None], new, old)

        above = accept_prob.mean(0) > settings.target_accept
        eps = jnp.clip(eps * jnp.where(above, 1.02, 0.98), low, high)
        return (pick(z1, z), pick(lq1, lq), pick(lp1, lp), pick(gq1, gq), pick(gp1, gp), eps, key)

    def step_k(carry, k):
        state, log_w = carry
        z, lq, lp, *_ = state
        log_w = log_w + (betas[k] - betas[k - 1]) * (lp - lq)
        last = len(betas) - 1
        state = jax.lax.cond(k < last, lambda s: transition(s, betas[k]), lambda s: s, state)
        return (state, log_w), None

    @jax.jit
    def run(key):
        key, k0 = jax.random.split(key)
        z = mu + sigma * jax.random.normal(k0, (chains, *mu.shape))
        lq, lp, gq, gp = both(z)
        eps = jnp.full(mu.shape[:1], settings.step_size)
        state = (z, lq, lp, gq, gp, eps, key)
        steps = jnp.arange(1, len(betas))
        (_, log_w), _ = jax.lax.scan(step_k, (state, jnp.zeros(lq.shape)), steps)
        return jax.scipy.special.logsumexp(log_w, 0) - jnp.log(chains)

    return run


def density_cost(vae: VAE, x) -> dict:
    """Seconds per evaluation of log q, log p and their gradients for 20 chains per datapoint."""
    space, u = LatentSpace.draw(bind_pair(vae.model, vae.guide, x), 20)
    space.log_densities(u, grad=True)  # warm-up
    _, seconds = _timed(lambda: [space.log_densities(u, grad=True) for _ in range(5)])
    print(f"{seconds / 5:.3f} s per evaluation of {20 * len(x)} chains (log q, log p, gradients)")
    return {"seconds_per_evaluation": seconds / 5}


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a trained run (default: fresh weights)")
    parser.add_argument("--num-points", type=int, default=50, help="test digits scored")
    parser.add_argument("--chains", type=int, default=16, help="AIS chains S")
    parser.add_argument("--steps", type=int, default=100, help="AIS distributions T")
    parser.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps L")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch and XLA CPU threads")
    parser.add_argument("--profile", action="store_true", help="where pyro_vae's time goes")
    parser.add_argument(
        "--density-cost", action="store_true", help="only time one density-gradient evaluation"
    )
    parser.add_argument(
        "--compiled", action="store_true", help="also the compiled transition (CompiledTransition)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.threads == 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core for both
    jax = load_jax(args.threads)
    torch.manual_seed(0)
    if args.run:
        from pyro_vae.runs.folders import load_run

        vae = load_run(args.run).vae
    else:
        vae = VAE(784, latent_dim=20, hidden=(400,))
    x = load_dataset("mnist5k", binarize="static", seed=0).test.x[: args.num_points]
    if args.density_cost:
        return density_cost(vae, x[:50])
    settings = AISSettings(num_chains=args.chains, num_steps=args.steps, num_leapfrog=args.leapfrog)

    def ours(compile=False):
        return ais_evidence(
            vae.model, vae.guide, x, settings=settings, progress=False, compile=compile
        ).log_px

    names = {"pyro_vae": ours, "pyro_vae, compiled": lambda: ours(compile=True)}
    if not args.compiled:
        names.pop("pyro_vae, compiled")
    else:
        _, compile_s = _timed(names["pyro_vae, compiled"])
        print(f"pyro_vae capture + compile + first run: {compile_s:.1f} s")

    reference = None
    if jax is not None:
        reference = jax_ais(vae, x, settings, jax)
        _, compile_s = _timed(lambda: reference(jax.random.PRNGKey(0)).block_until_ready())
        print(f"JAX compile + first run: {compile_s:.1f} s")
    times = {name: [] for name in [*names, "JAX"]}
    means = {name: [] for name in [*names, "JAX"]}
    for r in range(args.rounds):
        for name, fn in names.items():
            value, seconds = _timed(fn)
            times[name].append(seconds)
            means[name].append(value.mean().item())
        if reference is not None:
            key = jax.random.PRNGKey(r + 1)
            value, seconds = _timed(lambda key=key: reference(key).block_until_ready())
            times["JAX"].append(seconds)
            means["JAX"].append(float(value.mean()))
    rate = {k: args.num_points / statistics.median(v) for k, v in times.items() if v}
    setting = (
        f"{args.num_points} points, S = {args.chains} (+{settings.num_pilot_chains} pilots), "
        f"T = {args.steps}, L = {args.leapfrog}, {args.threads} thread(s), median of "
        f"{args.rounds} alternating rounds"
    )
    print(f"AIS of the 784-400-20 Bernoulli VAE: {setting}")
    print("| implementation | datapoints/s | mean log p(x) | ratio to JAX |")
    print("|---|---|---|---|")
    for name, value in rate.items():
        ratio = value / rate["JAX"] if "JAX" in rate else float("nan")
        mean = statistics.mean(means[name])
        print(f"| {name} | {value:.2f} | {mean:.2f} | {ratio:.2f} |")
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(ours)
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    return {"datapoints_per_s": rate, "mean_log_px": means}


if __name__ == "__main__":
    main()
