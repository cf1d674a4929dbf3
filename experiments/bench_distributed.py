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
    python experiments/bench_distributed.py --compile off on --epochs 2   # compiled steps too
    python experiments/bench_distributed.py --compile off on --numpyro --epochs 2

``--numpyro`` adds, for each process count P, NumPyro's data parallelism on P CPU devices of
one thread each (``experiments/numpyro_data_parallel.py``: ``jax.pmap`` with the gradients
averaged by ``lax.pmean``), the same VAE, data and global batch; it needs the ``bench`` extra.

``--ais RUN_DIR`` times annealed importance sampling instead: ``pyro-vae evaluate RUN_DIR
--estimator ais`` on ``--ais-points`` test points (T = ``--ais-steps``), whose points the ranks
share; the rate is points per second of the AIS pass as rank 0's ``evaluation.json`` records it
(``trusted.ais.seconds``, after the gathered IS pass), e.g.

    python experiments/bench_distributed.py --ais runs/vae --processes 1 2 --rounds 3

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


def run_once(processes: int, compile: str, args, out: Path) -> float:
    """Train once with ``processes`` ranks and ``--compile compile``; examples/s of the last
    epoch (with ``on``, pass ``--epochs 2`` or more: the first epoch compiles)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "-m", "pyro_vae.cli", "train",
        "--dataset", args.dataset, "--epochs", str(args.epochs), "--threads", "1",
        "--batch-size", str(args.batch_size), "--out", str(out), "--overwrite", "--quiet",
        "--compile", compile,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{processes} processes failed:\n{done.stderr[-3000:]}")
    history = json.loads((out / "history.json").read_text())
    return history[-1]["examples_per_s"]


def run_ais(processes: int, args) -> float:
    """``evaluate --estimator ais`` of ``args.ais`` on ``processes`` ranks: AIS points/s."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "-m", "pyro_vae.cli", "evaluate", args.ais,
        "--estimator", "ais", "--num-points", str(args.ais_points), "--num-samples", "10",
        "--ais-steps", str(args.ais_steps), "--threads", "1", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"AIS on {processes} processes failed:\n{done.stderr[-3000:]}")
    ais = json.loads((Path(args.ais) / "evaluation.json").read_text())["trusted"]["ais"]
    return ais["num_points"] / ais["seconds"]


def run_numpyro(devices: int, args) -> float:
    """NumPyro's ``pmap`` on ``devices`` CPU devices: examples/s of the last epoch."""
    script = Path(__file__).parent / "numpyro_data_parallel.py"
    command = [
        sys.executable, str(script), "--devices", str(devices), "--dataset", args.dataset,
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"NumPyro on {devices} devices failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["examples_per_s"][-1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compile", nargs="+", choices=["off", "on"], default=["off"],
        help="each process count with the eager step (off) and/or the compiled one (on)",
    )  # fmt: skip
    parser.add_argument(
        "--numpyro", action="store_true", help="also NumPyro's pmap on as many CPU devices"
    )
    parser.add_argument("--ais", metavar="RUN_DIR", help="time AIS of this run instead")
    parser.add_argument("--ais-points", type=int, default=20, help="test points AIS scores")
    parser.add_argument("--ais-steps", type=int, default=100, help="AIS distributions T")
    args = parser.parse_args(argv)
    configs = [(p, c) for p in args.processes for c in args.compile]
    configs += [(p, "numpyro") for p in args.processes] if args.numpyro else []
    if args.ais:
        configs = [(p, "ais") for p in args.processes]

    rates = {config: [] for config in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for p, c in configs:
                if c == "numpyro":
                    rates[p, c].append(run_numpyro(p, args))
                elif c == "ais":
                    rates[p, c].append(run_ais(p, args))
                else:
                    rates[p, c].append(run_once(p, c, args, Path(tmp) / f"p{p}{c}"))
    medians = {config: statistics.median(r) for config, r in rates.items()}
    base = medians[configs[0]]
    what = (
        f"AIS of {args.ais}, {args.ais_points} points, T = {args.ais_steps}"
        if args.ais
        else (f"{args.dataset}, {args.epochs} epoch(s), global batch {args.batch_size}")
    )
    print(f"\n{what}, one thread per process, median of {args.rounds} alternating rounds")
    unit = "AIS points/s" if args.ais else "examples/s"
    print(f"| processes | step | {unit} | vs {configs[0][0]} process(es), {configs[0][1]} |")
    print("|---|---|---|---|")
    for (p, c), rate in medians.items():
        step = {"on": "compiled", "off": "eager", "numpyro": "NumPyro pmap", "ais": "AIS"}[c]
        print(f"| {p} | {step} | {rate:.3g} | {rate / base:.2f}x |")
    return {"examples_per_s": medians, "rates": rates}


if __name__ == "__main__":
    main()
