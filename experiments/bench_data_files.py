"""Benchmark: reading your own data files, and encoding them.

Times, in this process (median of ``--rounds``):

- ``read_file`` of an N x D ``.npy`` of float32 grey levels (memory-mapped, checked, hashed);
  target under 1 s for 60,000 x 784;
- ``read_file`` of the same table as ``.csv`` (pandas' C parser);
- ``load_file`` of the ``.npy`` (read, split, transforms decided and applied);
- ``pyro-vae encode`` of the N points by a VAE trained one epoch on them
  (:func:`pyro_vae.runs.usage.encode_file`, chunks of 10,000); target a few seconds.

    python experiments/bench_data_files.py            # 60,000 x 784; a few minutes on 2 cores
    python experiments/bench_data_files.py --rows 6000 --csv-columns 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pyro_vae.cli import main as pyro_vae
from pyro_vae.datafiles import load_file, read_file
from pyro_vae.runs import load_run
from pyro_vae.runs.usage import encode_file


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--columns", type=int, default=784)
    p.add_argument("--csv-columns", type=int, default=784, help="columns of the CSV table")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x = rng.random((args.rows, args.columns), dtype=np.float32)
        np.save(tmp / "x.npy", x)
        pd.DataFrame(x[:, : args.csv_columns]).to_csv(tmp / "x.csv", index=False)
        seconds = {
            f"read_file .npy {args.rows:,} x {args.columns}": median_seconds(
                lambda: read_file(tmp / "x.npy"), args.rounds
            ),
            f"read_file .csv {args.rows:,} x {args.csv_columns}": median_seconds(
                lambda: read_file(tmp / "x.csv"), args.rounds
            ),
            f"load_file .npy {args.rows:,} x {args.columns}": median_seconds(
                lambda: load_file(tmp / "x.npy"), args.rounds
            ),
        }
        train = ["train", "--data", str(tmp / "x.npy"), "--epochs", "1", "--quiet"]
        assert pyro_vae([*train, "--out", str(tmp / "run"), "--compile", "off"]) == 0
        run = load_run(tmp / "run")
        seconds[f"encode {args.rows:,} points (VAE {args.columns}-400-20)"] = median_seconds(
            lambda: encode_file(run, tmp / "x.npy", progress=False), args.rounds
        )
    print("| what | median seconds |\n|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.3f} |")
    return seconds


if __name__ == "__main__":
    main()
