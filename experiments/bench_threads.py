"""Benchmark: training speed with 1 and 2 CPU threads, on an idle machine and beside a load.

The README's VAE (784-400-20, Bernoulli, batch 128, Adam 1e-3) is stepped with
``pyro_vae.infer.training.svi.SVIStep`` on MNIST-5k for a fixed time per setting, once with no other
process running, once beside a pure-Python process that keeps one core busy, and once beside
another PyTorch process doing matrix products with torch's default thread count (what a second
training run started by someone else looks like). Settings alternate over ``--rounds`` rounds;
we report the median steps/s and the ratio to one thread on the idle machine. The numbers
choose ``pyro_vae.infer.runtime.devices.DEFAULT_THREADS``.

    python experiments/bench_threads.py            # about 1.5 minutes
    OMP_WAIT_POLICY=PASSIVE python experiments/bench_threads.py --threads 2

The OpenMP wait policy is read when torch loads its thread pool, so it is set in the
environment of the process, as above; the table's first line names the policy in force.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import pyro
import torch

from pyro_vae.data import load_dataset
from pyro_vae.infer.training.svi import SVIStep
from pyro_vae.models.vae import VAE

LOADS = {
    "idle": None,
    "busy core (Python loop)": "while True: pass",
    "torch process (default threads)": (
        "import torch\na = torch.randn(600, 600)\nwhile True: a = (a @ a).tanh()"
    ),
}


def steps_per_second(svi: SVIStep, x: torch.Tensor, seconds: float, batch_size: int) -> float:
    """Steps/s of ``svi`` over shuffled minibatches of ``x`` for about ``seconds`` seconds."""
    n, steps = x.shape[0], 0
    order = torch.randperm(n)
    tic = time.perf_counter()
    while time.perf_counter() - tic < seconds:
        start = (steps * batch_size) % (n - batch_size)
        svi.step(x[order[start : start + batch_size]], num_data=n)
        steps += 1
    return steps / (time.perf_counter() - tic)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts")
    parser.add_argument("--loads", nargs="+", default=list(LOADS), choices=list(LOADS))
    args = parser.parse_args(argv)

    x = load_dataset("mnist5k", binarize="static").train.x
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=20, hidden=(400,))
    svi = SVIStep(vae.model, vae.guide, lr=1e-3)
    svi.step(x[:128], num_data=x.shape[0])  # set-up and allocator warm-up, untimed
    rates = {(load, t): [] for load in args.loads for t in args.threads}
    for load in args.loads:
        process = None if LOADS[load] is None else subprocess.Popen(
            [sys.executable, "-c", LOADS[load]]
        )  # fmt: skip
        try:
            time.sleep(0.5 if process else 0.0)  # let the load start
            for _ in range(args.rounds):
                for t in args.threads:
                    torch.set_num_threads(t)
                    rates[(load, t)].append(steps_per_second(svi, x, args.seconds, 128))
        finally:
            if process is not None:
                process.kill()
                process.wait()
    median = {key: statistics.median(values) for key, values in rates.items()}
    reference = median.get(("idle", 1)) or next(iter(median.values()))
    policy = os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP's default)")
    lines = [
        f"OMP_WAIT_POLICY: {policy}",
        "| machine | threads | steps/s | vs 1 thread idle |",
        "|---|---|---|---|",
    ]
    for (load, t), value in median.items():
        lines.append(f"| {load} | {t} | {value:.1f} | {value / reference:.2f}x |")
    print("\n".join(lines))
    return {"steps_per_s": {f"{load}, {t} threads": v for (load, t), v in median.items()}}


if __name__ == "__main__":
    main()
