"""Benchmark: data-parallel training on torch.distributed with 1, 2, ... processes.

Each configuration is the unchanged command line started by torchrun,

    torchrun --standalone --nproc-per-node P -m pyro_vae.cli train --threads 1 ...

(one CPU thread per process, gloo), training the README's 784-400-20 Bernoulli VAE for
``--epochs`` epochs of the whole training split (default: the full Fashion-MNIST from Debian's
dataset-fashion-mnist, 54,000 images after the validation split). Throughput is rank 0's
examples per second of the last epoch (every rank steps in lockstep, so it is the global rate),
the median over ``--rounds`` rounds that alternate the process counts; the ratio is against
one process, measured in the same run.

    python experiments/bench_distributed.py                # about 2 minutes on 2 CPU cores
    python experiments/bench_distributed.py --processes 1 2 4 --dataset mnist5k

On a multi-GPU node the same command line runs on NCCL, one GPU per process:

    torchrun --standalone --nproc-per-node 8 -m pyro_vae.cli train --device cuda ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["main"]


def run_once(processes: int, args, out: Path) -> float:
    """Train once with ``processes`` ranks; examples/s of the last epoch."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "-m", "pyro_vae.cli", "train",
        "--dataset", args.dataset, "--epochs", str(args.epochs), "--threads", "1",
        "--batch-size", str(args.batch_size), "--out", str(out), "--overwrite", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{processes} processes failed:\n{done.stderr[-3000:]}")
    history = json.loads((out / "history.json").read_text())
    return history[-1]["examples_per_s"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    rates = {p: [] for p in args.processes}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for p in args.processes:
                rates[p].append(run_once(p, args, Path(tmp) / f"p{p}"))
    medians = {p: statistics.median(r) for p, r in rates.items()}
    base = medians[args.processes[0]]
    print(
        f"\n{args.dataset}, {args.epochs} epoch(s), global batch {args.batch_size}, one thread "
        f"per process, median of {args.rounds} alternating rounds"
    )
    print(f"| processes | examples/s | vs {args.processes[0]} process(es) |\n|---|---|---|")
    for p, rate in medians.items():
        print(f"| {p} | {rate:.0f} | {rate / base:.2f}x |")
    return {"examples_per_s": medians, "rates": rates}


if __name__ == "__main__":
    main()
