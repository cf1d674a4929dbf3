"""Measure how often AIS certifies a wrong value: the false-pass rate of the per-point criterion.

``pyro-vae evaluate`` certifies an AIS estimate when at least ``AIS_MIN_CHAINS`` chains ran and
its standard error over them is at most ``AIS_MAX_STDERR`` (:mod:`pyro_vae.runs.certified`). Here
that criterion meets pairs whose log p(x) is known in closed form: every pair of the test
catalogue (``tests/pairs.py``) with an exact log p(x) and a latent, scored with its own guide,
plus three whose guide is deliberately poor (factor analysis from a shifted prior, a log-normal
latent from a shifted guide, a Gaussian mixture with a continuous latent, its label enumerated).
For each number of chains S and steps T, AIS scores every point; a point whose guide is exact
(standard error 0: every chain's weight is log p(x)) proves nothing and is left out. A *false
pass* is a certified point with |AIS - exact| > ``AIS_FALSE_PASS``.

    python experiments/ais_certification.py                  # several minutes on a CPU
    python experiments/ais_certification.py --chains 8 --steps 1 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae.infer.evidence.enumerated import enumerated_ais
from pyro_vae.runs.certified import AIS_FALSE_PASS, AIS_MAX_STDERR, ais_certified

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the catalogue
from pairs import CATALOGUE, FactorAnalysis, LogNormalLatent, MixtureWithLatent  # noqa: E402


def pairs() -> list[tuple]:
    """(name, model, guide, x, args, exact log p(x)) for every pair with a closed form."""
    out = []
    for case in CATALOGUE:
        if case.exact_log_px is None or case.refusal or not case.latent:
            continue
        pyro.clear_param_store()
        pair = case.make()
        exact = case.exact_log_px(pair).detach()
        out.append((case.name, pair.model, pair.guide, pair.x, pair.args, exact))
    fa, mixture, log_normal = FactorAnalysis(), MixtureWithLatent(), LogNormalLatent()
    x = fa.sample(20)
    out.append(("factor-analysis", fa.model, fa.guide, x, (), fa.log_px(x)))
    x = torch.linspace(-5.0, 4.0, 10)
    exact = mixture.exact_log_px(x)
    out.append(("mixture-with-latent", mixture.model, mixture.guide, x, (), exact))
    x = torch.randn(10)
    guide = log_normal.guide_shifted_by(1.5)
    out.append(("log-normal-shifted", log_normal.model, guide, x, (), log_normal.exact_log_px(x)))
    return out


def measure(chains: list[int], steps: list[int], leapfrog: int) -> dict:
    """Per S: points scored (guide not exact), points certified, false passes; and the same
    for the standard error alone (no minimum of chains), which shows what the minimum buys."""
    fields = ("points", "certified", "false_passes", "stderr_alone", "stderr_alone_false")
    counts = {s: dict.fromkeys(fields, 0) for s in chains}
    for name, model, guide, x, args, exact in pairs():
        for num_chains in chains:
            for num_steps in steps:
                pyro.clear_param_store()  # every pair starts from its initial parameters
                result = enumerated_ais(
                    model, guide, x, *args, num_chains=num_chains, num_steps=num_steps,
                    num_leapfrog=leapfrog, progress=False,
                )  # fmt: skip
                informative = ~(result.stderr.nan_to_num(1.0) < 1e-6)
                certified, _ = ais_certified(result.stderr, num_chains)
                certified &= informative
                wrong = (result.log_px - exact).abs() > AIS_FALSE_PASS
                row = counts[num_chains]
                row["points"] += int(informative.sum())
                row["certified"] += int(certified.sum())
                row["false_passes"] += int((certified & wrong).sum())
                alone = informative & (result.stderr <= AIS_MAX_STDERR)
                row["stderr_alone"] += int(alone.sum())
                row["stderr_alone_false"] += int((alone & wrong).sum())
        print(f"done: {name}", flush=True)
    return counts


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3, 10, 30])
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pyro.set_rng_seed(args.seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the closed forms in float64; restored for callers
    try:
        counts = measure(args.chains, args.steps, args.leapfrog)
    finally:
        torch.set_default_dtype(default_dtype)
    print(
        f"\ncertified: standard error <= {AIS_MAX_STDERR:g} nats (and the chain minimum); false "
        f"pass: certified with |AIS - exact| > {AIS_FALSE_PASS:g} nats; T in {args.steps}\n"
    )
    print("| S | points | certified | false passes | by the standard error alone: certified, "
          "false |\n|---|---|---|---|---|")  # fmt: skip
    for s, r in counts.items():
        print(f"| {s} | {r['points']} | {r['certified']} | {r['false_passes']} | "
              f"{r['stderr_alone']}, {r['stderr_alone_false']} |")  # fmt: skip
    return counts


if __name__ == "__main__":
    main()
