"""Benchmark: the eager step's Adam against torch's, on the main job's parameters.

Times one optimizer step (gradients given) on the parameters of the README's main job, the
784-400-20-400-784 VAE (10 tensors, 648,404 numbers), three ways, alternating over ``--rounds``
rounds in one process at equal threads, each the median of its rounds:

- ``pyro_vae Adam``: :class:`pyro_vae.infer.training.adam.Adam`, the eager step's optimizer
  (torch's fused kernel on our own state bookkeeping);
- ``torch.optim.Adam(fused=True)``: what the eager step used before (its first call imports
  ``torch._dynamo``, outside the timing);
- ``written-out update``: :func:`~pyro_vae.infer.training.functional_adam.adam_update_` run
  eagerly, the compiled step's update, which an Adam without the fused kernel falls back to.

The first two do the same arithmetic bit for bit (``tests/test_svi_step.py``); the question is
what our bookkeeping costs per step against torch's.

    python experiments/bench_adam.py               # ~20 s
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyro_vae.infer.training.adam import Adam
from pyro_vae.infer.training.functional_adam import adam_coefficients, adam_state, adam_update_

SHAPES = [(400, 784), (400,), (20, 400), (20,), (20, 400), (20,), (400, 20), (400,), (784, 400)]
SHAPES += [(784,)]  # the main job's encoder (hidden, loc, scale) and decoder layers


def _params(seed: int) -> list[torch.Tensor]:
    """The main job's parameter shapes, with gradients."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=generator).requires_grad_() for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-2
    return params


def _written_out(params: list[torch.Tensor]):
    """One eager call of the compiled step's update per step, on an Adam's state tensors."""
    holder = Adam(params, lr=1e-3)
    ok = torch.ones((), dtype=torch.bool)

    @torch.no_grad()
    def step():
        m, v, steps = adam_state(holder, params)
        coefs = adam_coefficients(holder, steps)
        adam_update_(params, [p.grad for p in params], m, v, steps, coefs, (0.9, 0.999), 1e-8, ok)

    return step


def main(argv=None) -> dict:
    """Run the benchmark; returns the median microseconds per step of each row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per round")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {
        "pyro_vae Adam": Adam(_params(0), lr=1e-3).step,
        "torch.optim.Adam(fused=True)": torch.optim.Adam(_params(0), lr=1e-3, fused=True).step,
        "written-out update": _written_out(_params(0)),
    }
    for step in rows.values():  # warm-up: first-call imports and state creation
        step()
    times = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, step in rows.items():
            tic = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - tic) / args.steps * 1e6)
    result = {name: statistics.median(t) for name, t in times.items()}
    ours = result["pyro_vae Adam"]
    print(f"| Adam step, main job's VAE ({args.threads} threads) | us per step | / ours |")
    print("|---|---:|---:|")
    for name, us in result.items():
        print(f"| {name} | {us:.0f} | {us / ours:.2f}x |")
    return result


if __name__ == "__main__":
    main()
