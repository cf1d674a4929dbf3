"""Pareto k-hat: how far an importance-sampling estimate can be trusted.

PSIS (Vehtari, Simpson, Gelman, Yao & Gabry 2015/2024, "Pareto smoothed importance
sampling", JMLR 25(72)) fits a generalized Pareto distribution (GPD) to the largest
importance weights; its shape k-hat estimates how heavy the weight tail is:

- k-hat <= ``KHAT_GOOD`` = 0.5: good, the weights have finite variance, the estimate
  converges at the usual rate;
- ``KHAT_GOOD`` < k-hat <= ``KHAT_OK`` = 0.7: ok, finite mean, slow but usable convergence;
- k-hat > ``KHAT_OK``: unreliable (the proposal misses much of the target).

These two constants are the one threshold set of the package: every report, plot and docstring
uses them, and ``k > KHAT_OK`` (strictly) is the one test of an unreliable estimate.

The tail is the M = ceil(min(L/5, 3 sqrt(L))) largest of L weights (r_eff = 1, i.e.
independent draws), the threshold is the (M+1)-th largest weight, and the exceedances
w - w_threshold are fit with the Zhang & Stephens (2009) estimator of
``pyro.ops.stats.fit_generalized_pareto``, which includes the same weak prior towards
k = 0.5 as ArviZ's ``psislw`` (to which ``tests/test_psis.py`` compares). It is computed
batched over rows (equal to Pyro's row-by-row function to 1e-10; N = 1000 rows of L = 5000
weights take well under a second); rows with ties at the threshold go through Pyro's
function one at a time.

Conventions (differ from ArviZ only where ArviZ cannot fit):

- a row whose M+1 largest log weights span at most sqrt(machine epsilon) of the input dtype
  (constant weights, e.g. the exact posterior as proposal) gets k-hat = -inf: the weights
  have no tail at all, the best possible case (ArviZ returns +inf there);
- a row with fewer than 5 tail weights above the threshold gets k-hat = +inf, as in ArviZ:
  too few samples (L < 21), ties, or weights so uneven that all but a handful underflow
  to 0 relative to the largest (a maximally degenerate estimate); treat it as unreliable;
- a row with a nan or +inf log weight, or only -inf ones, gets k-hat = nan.
"""

from __future__ import annotations

import math

import torch
from pyro.ops.stats import fit_generalized_pareto

__all__ = ["KHAT_GOOD", "KHAT_OK", "pareto_khat", "psis_tail_size"]

KHAT_GOOD = 0.5
"""k-hat <= KHAT_GOOD: good (finite variance of the importance weights)."""
KHAT_OK = 0.7
"""KHAT_GOOD < k-hat <= KHAT_OK: ok (usable); k-hat > KHAT_OK: unreliable."""

_MIN_TAIL = 5  # ArviZ refuses to fit a GPD to 4 or fewer exceedances


def psis_tail_size(num_samples: int) -> int:
    """Number M of largest weights used for the Pareto fit: ceil(min(L/5, 3 sqrt(L))).

    The tail size of Vehtari et al. (2024), with relative efficiency r_eff = 1.

    Parameters
    ----------
    num_samples : int
        Total number L of importance weights, L >= 1.

    Returns
    -------
    int
        M, between 1 and L.

    Raises
    ------
    ValueError
        When ``num_samples`` < 1.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    return math.ceil(min(num_samples / 5.0, 3.0 * math.sqrt(num_samples)))


def pareto_khat(log_weights: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
    """PSIS Pareto shape estimate k-hat for each row of log importance weights.

    Vehtari, Simpson, Gelman, Yao & Gabry (2015/2024), "Pareto smoothed importance sampling";
    k-hat > ``KHAT_OK`` (0.7) marks an unreliable importance-sampling estimate.

    Parameters
    ----------
    log_weights : torch.Tensor of shape (..., K)
        Either all L = K log weights of each row (``num_samples=None``), or only the largest
        K >= M + 1 of ``num_samples`` log weights of each row (as kept by a running
        ``torch.topk``), in any order. Normalization does not matter: each row is shifted by
        its maximum.
    num_samples : int, optional
        Total number L of weights per row when only the largest are given.

    Returns
    -------
    torch.Tensor of shape (...)
        k-hat of each row, same dtype and device as ``log_weights`` (see the module docstring
        for the -inf / +inf / nan conventions).

    Raises
    ------
    ValueError
        When ``log_weights`` is 0-dim, ``num_samples`` is smaller than K, or fewer than the
        M + 1 largest log weights per row are given.
    """
    log_weights = torch.as_tensor(log_weights)
    if log_weights.dim() == 0:
        raise ValueError("log_weights must have at least one dimension (the samples)")
    kept = log_weights.shape[-1]
    total = kept if num_samples is None else int(num_samples)
    if total < kept:
        raise ValueError(f"num_samples={total} is smaller than the {kept} weights given")
    tail = psis_tail_size(total)
    needed = min(tail + 1, total)
    if kept < needed:
        raise ValueError(
            f"k-hat of {total} weights needs the {needed} largest log weights per row, got {kept}"
        )
    rows = log_weights.detach().reshape(-1, kept)
    top = rows.topk(needed, dim=-1).values.to("cpu", torch.float64)  # (R, M+1), descending
    flat = math.sqrt(torch.finfo(rows.dtype).eps) if rows.is_floating_point() else 0.0
    khat = _khat_from_top(top, tail, flat)
    return khat.reshape(log_weights.shape[:-1]).to(log_weights.device, log_weights.dtype)


def _khat_from_top(top: torch.Tensor, tail: int, flat: float) -> torch.Tensor:
    """k-hat of each row from its M+1 largest log weights ``top``: (R, M+1) -> (R,).

    ``top`` is float64 and sorted in descending order along each row.

    ``flat`` is the log-weight spread below which a row's tail counts as constant.
    """
    khat = torch.full(top.shape[:1], math.nan, dtype=torch.float64)
    finite = torch.isfinite(top[:, 0])
    shifted = top - torch.where(finite, top[:, 0], 0.0).unsqueeze(-1)  # max log weight is 0
    threshold = shifted[:, -1].clamp_min(math.log(torch.finfo(torch.float64).tiny))
    is_flat = finite & (-threshold <= flat)
    khat[is_flat] = -math.inf
    exceedances = (shifted[:, :-1].exp() - threshold.exp().unsqueeze(-1)).flip(-1)  # ascending
    count = (exceedances > 0).sum(-1)  # ties at the threshold (or underflow) do not count
    todo = finite & ~is_flat
    khat[todo & (count < _MIN_TAIL)] = math.inf
    full = todo & (count == tail) & (tail >= _MIN_TAIL)
    if full.any():
        khat[full] = _fit_gpd_shape(exceedances[full])
    for row in (todo & (count >= _MIN_TAIL) & (count < tail)).nonzero().flatten().tolist():
        k, _ = fit_generalized_pareto(exceedances[row][exceedances[row] > 0])
        khat[row] = k
    return khat


def _fit_gpd_shape(x: torch.Tensor, block: int = 2**22) -> torch.Tensor:
    """GPD shape k of each row of positive, ascending exceedances x: (R, n) -> (R,), float64.

    The Zhang & Stephens (2009) empirical-Bayes estimator with Vehtari et al.'s weak prior
    towards k = 0.5, exactly as ``pyro.ops.stats.fit_generalized_pareto`` computes it for one
    row, batched over rows (in blocks of ``block`` elements of the (rows, m, n) grid).
    """
    R, n = x.shape
    m = 30 + int(math.sqrt(n))
    grid = 1.0 - math.sqrt(m) / (torch.arange(1, m + 1, dtype=torch.float64) - 0.5).sqrt()
    out = []
    for rows in x.split(max(1, block // (m * n))):
        bs = grid / (3.0 * rows[:, int(n / 4 - 0.5)]).unsqueeze(-1)  # b = k / sigma grid
        bs = bs + (1.0 / rows[:, -1]).unsqueeze(-1)  # (r, m)
        ks = torch.log1p(-bs.unsqueeze(-1) * rows.unsqueeze(-2)).mean(-1)  # profile k(b)
        log_lik = n * (torch.log(-bs / ks) - (ks + 1.0))
        weights = 1.0 / torch.exp(log_lik.unsqueeze(-2) - log_lik.unsqueeze(-1)).sum(-1)
        weights = torch.where(weights > 1.0e-30, weights, 0.0)
        b = (bs * weights).sum(-1) / weights.sum(-1)  # posterior mean of b
        k = torch.log1p(-b.unsqueeze(-1) * rows).mean(-1)
        out.append(k * n / (n + 10.0) + 5.0 / (n + 10.0))
    return torch.cat(out)
