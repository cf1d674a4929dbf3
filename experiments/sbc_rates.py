"""False-alarm rate and power of simulation-based calibration (``pyro-vae calibrate``'s verdicts).

pPCA with 2 latents (5 observed dimensions, sigma^2 = 0.5, seeded loadings) has an exact
posterior guide; this script runs :func:`pyro_vae.diagnostics.calibration.sbc` with that guide
and with wrong ones (posterior sd x 0.7 and x 1.4, the mean moved by 0.3 posterior sds, the
prior), ``--reps`` independent times each at the defaults N = 1000, L = 99, and counts the runs
with any flag and the verdicts. The repetitions are blocks of N rows of one vectorized run: the
simulations are independent, so each block is an independent run at the default size, scored by
:func:`pyro_vae.diagnostics.sbc_statistics.sbc_statistics`.

Run: ``python experiments/sbc_rates.py --reps 200`` (the table of
docs/results/calibration.md; a few minutes on 2 CPU cores). Prints a markdown table and returns
the counts.
"""

import argparse
import time
from collections import Counter

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.diagnostics.calibration import sbc
from pyro_vae.diagnostics.sbc_statistics import sbc_statistics
from pyro_vae.models.ppca import PPCA

__all__ = ["GUIDES", "block_verdicts", "flagged", "main", "perturbed_guide", "ppca", "prior_guide"]

GUIDES = ("exact", "sd0.7", "sd1.4", "shift0.3", "prior")
QUIET = ("calibrated", "prior-like", "consistent")  # verdicts that are not flags


def ppca(seed: int = 3) -> PPCA:
    """pPCA with W ~ N(0, 1) (5 x 2), b ~ N(0, 1), sigma^2 = 0.5, in float64."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(5, 2, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    return PPCA(W, b, torch.tensor(0.5, dtype=torch.float64))


def perturbed_guide(model: PPCA, sd: float = 1.0, shift: float = 0.0):
    """The exact posterior with its scale times ``sd`` and its mean moved by ``shift`` sds."""

    def guide(x):
        post = model.posterior(x)
        loc = post.loc + shift * post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=sd * post.scale_tril))

    return guide


def prior_guide(x):
    """q(z|x) = p(z) = N(0, I_2): ignores x."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))


def block_verdicts(result, reps: int, num: int, alpha: float = 0.05) -> list[list[str]]:
    """Per block of ``num`` rows: the verdict of every dimension, then of the joint check."""
    out = []
    for k in range(reps):
        rows = slice(k * num, (k + 1) * num)
        pick = [{n: v[rows] for n, v in d.items()} for d in (result.ranks, result.truth)]
        moments = [{n: v[rows] for n, v in d.items()} for d in (result.post_mean, result.post_sd)]
        stats = sbc_statistics(
            pick[0], result.density_ranks[rows], result.num_draws, pick[1], *moments, alpha=alpha
        )
        out.append([r["verdict"] for r in stats.rows] + [stats.joint["verdict"]])
    return out


def flagged(verdicts: list[str]) -> bool:
    """Whether a run flagged anything (a dimension or the joint check)."""
    return any(v not in QUIET for v in verdicts)


def _guide(name: str, model: PPCA):
    return {
        "exact": model.guide,
        "sd0.7": perturbed_guide(model, sd=0.7),
        "sd1.4": perturbed_guide(model, sd=1.4),
        "shift0.3": perturbed_guide(model, shift=0.3),
        "prior": prior_guide,
    }[name]


def main(argv=None) -> dict:
    """Count flags and verdicts over ``--reps`` runs per guide; print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200, help="independent runs per guide")
    p.add_argument("--num-simulations", type=int, default=1000, help="N per run")
    p.add_argument("--num-draws", type=int, default=99, help="L guide draws per simulation")
    p.add_argument("--guides", nargs="+", default=list(GUIDES), choices=GUIDES)
    p.add_argument("--seed", type=int, default=0, help="seeds the simulations and draws")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model, results = ppca(), {}
    print("| guide | runs with any flag | verdicts (dimensions..., joint) | s |")
    print("|---|---|---|---|")
    for name in args.guides:
        start = time.perf_counter()
        x = torch.zeros(args.reps * args.num_simulations, 5, dtype=torch.float64)
        result = sbc(model.model, _guide(name, model), x, num_draws=args.num_draws)
        verdicts = block_verdicts(result, args.reps, args.num_simulations)
        counts = Counter(" / ".join(v) for v in verdicts)
        results[name] = {"flagged": sum(map(flagged, verdicts)), "verdicts": dict(counts)}
        common = "; ".join(f"{v}: {n}" for v, n in counts.most_common(3))
        seconds = time.perf_counter() - start
        print(f"| {name} | {results[name]['flagged']} of {args.reps} | {common} | {seconds:.0f} |")
    return results


if __name__ == "__main__":
    main()
