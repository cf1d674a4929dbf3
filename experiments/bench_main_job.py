"""Benchmark: the README's main job end to end, whole process, against the same job in NumPyro.

Times, in fresh processes alternating over ``--rounds`` rounds, the command a user runs,
``pyro-vae train --epochs 50 --out DIR`` (data, 50 epochs with validation, a checkpoint every
epoch, the test -ELBO, the figures), with ``--compile`` off, on and auto (the default), beside
``experiments/numpyro_main_job.py --epochs 50``, the same VAE, data and epochs written as a
NumPyro user writes them (``jax.jit(svi.update)``, no checkpoints or figures). Each process is
timed from its start to its exit (imports included); the table gives the median per command
and its ratio to NumPyro's (above 1: faster than NumPyro). Both runtimes use the machine's
cores as they do by default (2 here). Run it with nothing else running: the commands are timed
one after the other, never two at once.

    python experiments/bench_main_job.py --rounds 3          # ~7 minutes on 2 CPU cores
    python experiments/bench_main_job.py --compile auto --rounds 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # bench_train's check for the bench extra
from bench_train import load_numpyro  # noqa: E402


def commands(epochs: int, compile_modes, numpyro: bool) -> dict:
    """label -> argv (with "{out}" where the run folder goes)."""
    runs = {
        f"pyro-vae train --compile {mode}": [
            *(sys.executable, "-m", "pyro_vae.cli", "train", "--epochs", str(epochs)),
            *("--out", "{out}", "--compile", mode, "--quiet"),
        ]
        for mode in compile_modes
    }
    if numpyro:
        script = str(HERE / "numpyro_main_job.py")
        runs["NumPyro, jit(svi.update)"] = [sys.executable, script, "--epochs", str(epochs)]
    return runs


def wall_seconds(argv: list[str]) -> float:
    """Seconds from the start of a fresh process running ``argv`` to its exit."""
    out = tempfile.mkdtemp(prefix="bench_main_job_")
    try:
        tic = time.perf_counter()
        subprocess.run([a.replace("{out}", out) for a in argv], check=True, capture_output=True)
        return time.perf_counter() - tic
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument(
        "--compile", nargs="+", default=["off", "on", "auto"], choices=["off", "on", "auto"]
    )
    parser.add_argument("--no-numpyro", action="store_true", help="skip the NumPyro command")
    args = parser.parse_args(argv)
    numpyro = not args.no_numpyro and load_numpyro() is not None  # says why when it is not
    runs = commands(args.epochs, args.compile, numpyro)
    times = {label: [] for label in runs}
    for r in range(args.rounds):
        for label, command in runs.items():
            times[label].append(wall_seconds(command))
            print(f"round {r + 1}: {label}: {times[label][-1]:.1f} s", flush=True)
    medians = {label: statistics.median(t) for label, t in times.items()}
    reference = medians.get("NumPyro, jit(svi.update)")
    print(f"\nwhole process, {args.epochs} epochs, median of {args.rounds} rounds")
    print("| command | seconds (each round) | median | vs NumPyro |\n|---|---|---|---|")
    for label, median in medians.items():
        each = ", ".join(f"{t:.1f}" for t in times[label])
        ratio = f"{reference / median:.2f}x" if reference else "-"
        print(f"| {label} | {each} | {median:.1f} | {ratio} |")
    return {"seconds": times, "median": medians}


if __name__ == "__main__":
    main()
