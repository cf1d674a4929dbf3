"""Benchmark: how long the pyro-vae command takes to start, against importing torch and pyro.

Times, each in a fresh Python process and alternating over ``--rounds`` rounds (so that a
change in the machine's load hits every command alike):

- ``python -c "import torch, pyro"``: the floor every pyro-vae command stands on;
- ``pyro-vae --help``;
- ``pyro-vae train --dataset digits --epochs 1 --out TMP``: a tiny run, start to finish
  (data, one epoch of 11 steps, the checkpoint, the test -ELBO, three figures).

It prints the median wall seconds of each and its ratio to the import (target: the tiny run
within 2x), then which heavy modules the tiny run imported: scikit-learn (only ``load_digits``'s
file is read), ``torch._dynamo`` (2 s: torch.optim imports it, and torchvision does), inductor
(only when a step is compiled), ArviZ (only ``diagnose``) and matplotlib (the figures, after
the result line).

    python experiments/bench_startup.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("sklearn", "scipy", "torch._dynamo", "torch._inductor", "torchvision", "arviz")
HEAVY += ("matplotlib",)
TINY_RUN = ["train", "--dataset", "digits", "--epochs", "1", "--quiet"]


def commands(out: Path) -> dict[str, list[str]]:
    """What is timed, by name: argv lists run with this Python."""
    cli = [sys.executable, "-m", "pyro_vae.cli"]
    return {
        "import torch, pyro": [sys.executable, "-c", "import torch, pyro"],
        "pyro-vae --help": [*cli, "--help"],
        "pyro-vae train (digits, 1 epoch)": [*cli, *TINY_RUN, "--out", str(out)],
    }


def seconds(argv: list[str], env: dict) -> float:
    """Wall seconds of one run of ``argv`` (which must succeed)."""
    tic = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - tic


def heavy_modules(out: Path, env: dict) -> list[str]:
    """The :data:`HEAVY` modules that the tiny run has imported when it ends."""
    code = (
        "import sys\nfrom pyro_vae.cli import main\n"
        f"main({[*TINY_RUN, '--out', str(out)]!r})\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True, cwd=REPO
    )
    return done.stdout.splitlines()[-1].split() if done.stdout.strip() else []


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args(argv)

    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}  # this checkout, whatever is installed
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, command in commands(Path(tmp) / f"run{r}").items():
                times.setdefault(name, []).append(seconds(command, env))
        heavy = heavy_modules(Path(tmp) / "heavy", env)
    median = {name: statistics.median(values) for name, values in times.items()}
    floor = median["import torch, pyro"]
    lines = ["| command | median s | vs import |", "|---|---|---|"]
    lines += [f"| `{name}` | {s:.2f} | {s / floor:.2f}x |" for name, s in median.items()]
    print("\n".join(lines))
    print(f"heavy modules the tiny run imported: {', '.join(heavy) or 'none'}")
    ratio = {name: s / floor for name, s in median.items()}
    return {"seconds": median, "ratio": ratio, "heavy_modules": heavy}


if __name__ == "__main__":
    main()
