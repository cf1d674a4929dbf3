"""What the ranks of simulation-based calibration say, per latent dimension, with a verdict.

Every number has its source:

- **Uniformity**: Pearson's chi-square test of the ranks binned into ``RANK_BINS`` (20) bins of
  (nearly) equal width, each with its exact probability under the discrete uniform on
  {0, ..., L} (Talts et al. 2018, sec. 4.1, who bin ranks for the same reason).
- **Bias**: the mean rank against L / 2, a z-test with the exact null variance of a discrete
  uniform, ((L + 1)^2 - 1) / 12. A guide whose mean sits above the truth gives low ranks.
- **Width**: the mean of (r - L / 2)^2, a z-test with its exact null mean and variance
  (enumerated over the L + 1 ranks). An over-confident guide (too narrow) leaves the truth in
  its tails: ranks pile at both ends (Talts et al.'s U shape) and the statistic rises; an
  under-confident one gives a hump and it falls.
- **Coverage** of the central 50, 80, 90 and 95% intervals of the draws: the truth is inside
  when its fractional rank (r + 1/2) / (L + 1) lies in [(1 - c) / 2, (1 + c) / 2]; the exact
  null probability of that (close to c) and the binomial standard error sqrt(p (1 - p) / N)
  are given beside it.
- **z-score and contraction** (Schad, Betancourt & Vasishth 2021): z_n = (z_n - mean_q) / sd_q,
  with mean and sd over n (0 and about 1 for a calibrated guide), and 1 - E[var_q] / var_prior,
  the prior variance being the variance of the simulated truths. These see the *width* that
  ranks alone do not: a guide equal to the prior ranks uniformly but contracts by 0.
- **Joint density rank**: the rank of log q(z_n | x_n) among the draws' (in the spirit of TARP,
  Lemos et al. 2023), tested like a dimension (uniformity and bias); low ranks put the truth in
  the guide's low-density region (over-confident or biased), high ranks too central.

**The verdict and its false-alarm rate.** The three p-values of every dimension and the two of
the joint check are corrected together by Holm's step-down procedure (Holm 1979), valid under
any dependence, so with the exact posterior the chance that *any* dimension of a run is flagged
is at most ``alpha`` (0.05). Exact rank tests decide *whether* a dimension is off; the z-score
says *how*, since the rank statistics saturate when the guide is far off (every rank 0 says
"the guide sits above the truth" but not by how much, nor whether it is also too narrow):
*biased* when ``|mean z|`` >= ``BIAS_Z`` (0.2 posterior sds), *over-confident* when the sd of z is
above ``WIDTH_RATIO`` (1.15; the guide's spread too small by that factor), *under-confident*
below 1 / 1.15, both named when both hold, and the one of the larger relative size when a
flagged dimension is below both thresholds. An unflagged dimension whose contraction is below
``PRIOR_LIKE`` (0.1; its standard error is about sqrt(2 / N) = 0.045 at N = 1000) is
*prior-like*: the guide hardly uses x there, either because the posterior is that wide (an
inactive unit of a VAE) or because the guide ignores x, which SBC cannot tell apart.

The reliability of a discrete guide site q(y|x) (M2's classifier) on simulated data: accuracy,
and the expected calibration error over 10 equal-width confidence bins (Guo, Pleiss, Sun &
Weinberger 2017, eq. 3), with the bins for a reliability diagram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "COVERAGE_LEVELS",
    "PRIOR_LIKE",
    "RANK_BINS",
    "VERDICTS",
    "SBCStatistics",
    "flatten_sites",
    "holm",
    "reliability",
    "sbc_statistics",
]

RANK_BINS = 20
COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)
PRIOR_LIKE = 0.1
BIAS_Z = 0.2  # |mean z-score| in posterior sds; its SE is 1 / sqrt(N) = 0.03 at N = 1000
WIDTH_RATIO = 1.15  # sd of the z-score beyond 1.15 or below 1 / 1.15; SE 1 / sqrt(2N) = 0.02
RELIABILITY_BINS = 10
VERDICTS = (
    "calibrated",
    "prior-like",
    "over-confident",
    "under-confident",
    "biased",
    "biased, over-confident",
    "biased, under-confident",
)


@dataclass(frozen=True)
class SBCStatistics:
    """Per-dimension statistics and verdicts of one SBC run.

    Attributes
    ----------
    rows : list of dict
        One per latent dimension, in site order: ``name``, ``verdict``, ``p_uniform``,
        ``p_bias``, ``p_width`` (Holm-corrected) and ``p_min`` (their smallest), ``bias_z``,
        ``width_z``, ``coverage``
        ({level: {"value", "expected", "se"}}), ``z_mean``, ``z_sd``, ``contraction``,
        ``ecdf_max_diff``.
    joint : dict
        The density rank: ``p_uniform``, ``p_bias`` (corrected), ``bias_z``, ``verdict``.
    fractional : torch.Tensor of shape (N, M)
        (r + 1/2) / (L + 1) per simulation and dimension, for the figures.
    density_fractional : torch.Tensor of shape (N,)
        The same of the density ranks.
    num_draws : int
        L.
    alpha : float
        Family-wise false-alarm rate of the verdicts.
    """

    rows: list
    joint: dict
    fractional: torch.Tensor
    density_fractional: torch.Tensor
    num_draws: int
    alpha: float

    def summary(self) -> str:
        """One line: how many dimensions got each verdict, and the joint check."""
        counts = {v: sum(r["verdict"] == v for r in self.rows) for v in VERDICTS}
        parts = [f"{n} {v}" for v, n in counts.items() if n]
        parts = [p.replace(", ", " and ") for p in parts]
        return (
            f"{len(self.rows)} latent dimensions: {', '.join(parts) or 'none'}; joint density "
            f"rank {self.joint['verdict']} (family-wise false-alarm rate {self.alpha:g})"
        )


def flatten_sites(per_site: dict) -> tuple[list[str], torch.Tensor]:
    """Dict of (N,) + event tensors -> dimension names ("z[3]") and one (N, M) matrix."""
    names, columns = [], []
    for site, value in per_site.items():
        flat = value.reshape(value.shape[0], -1)
        shape = value.shape[1:]
        for j in range(flat.shape[1]):
            if not shape:
                names.append(site)
            else:
                index = [str(int(k)) for k in torch.unravel_index(torch.tensor(j), shape)]
                names.append(f"{site}[{','.join(index)}]")
        columns.append(flat)
    return names, torch.cat(columns, 1) if columns else torch.zeros(0, 0)


def holm(p: torch.Tensor) -> torch.Tensor:
    """Holm's (1979) step-down adjusted p-values of a 1-d tensor, valid under any dependence."""
    m = p.numel()
    order = torch.argsort(p)
    scaled = p[order] * torch.arange(m, 0, -1, dtype=p.dtype)
    adjusted = torch.cummax(scaled, 0).values.clamp(max=1.0)
    out = torch.empty_like(p)
    out[order] = adjusted
    return out


def _normal_p(z: torch.Tensor) -> torch.Tensor:
    """Two-sided normal p-value, 2 Phi(-|z|)."""
    return torch.erfc(z.abs() / math.sqrt(2.0))


def _uniformity_p(ranks: torch.Tensor, num_draws: int) -> torch.Tensor:
    """Pearson chi-square p-value of ranks (N, M) in 0..L against the discrete uniform."""
    values = num_draws + 1
    bins = min(RANK_BINS, values)
    edges = torch.div(torch.arange(values) * bins, values, rounding_mode="floor")  # rank -> bin
    expected = torch.bincount(edges, minlength=bins).double() / values * ranks.shape[0]
    counts = torch.stack(
        [torch.bincount(edges[col], minlength=bins) for col in ranks.long().T], 1
    ).double()  # (bins, M)
    stat = ((counts - expected[:, None]) ** 2 / expected[:, None]).sum(0)
    df = bins - 1
    return torch.special.gammaincc(torch.tensor(df / 2.0, dtype=stat.dtype), stat / 2)


def _rank_z(ranks: torch.Tensor, num_draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z of the mean rank (bias) and of the mean squared deviation from L / 2 (width)."""
    n = ranks.shape[0]
    support = torch.arange(num_draws + 1, dtype=torch.float64)
    centre = num_draws / 2
    var = ((num_draws + 1) ** 2 - 1) / 12
    dev = (support - centre) ** 2
    dev_mean, dev_var = dev.mean(), dev.var(unbiased=False)
    r = ranks.double()
    bias_z = (r.mean(0) - centre) / math.sqrt(var / n)
    width_z = (((r - centre) ** 2).mean(0) - dev_mean) / (dev_var / n).sqrt()
    return bias_z, width_z


def _coverage(ranks: torch.Tensor, num_draws: int) -> list[dict]:
    """Per dimension, {level: value, exact null expectation, binomial SE} of central intervals."""
    frac = (ranks.double() + 0.5) / (num_draws + 1)
    support = (torch.arange(num_draws + 1, dtype=torch.float64) + 0.5) / (num_draws + 1)
    n, out = ranks.shape[0], [{} for _ in range(ranks.shape[1])]
    for level in COVERAGE_LEVELS:
        lo, hi = (1 - level) / 2, (1 + level) / 2
        expected = ((support >= lo) & (support <= hi)).double().mean().item()
        value = ((frac >= lo) & (frac <= hi)).double().mean(0)
        se = math.sqrt(expected * (1 - expected) / n)
        for j in range(ranks.shape[1]):
            out[j][str(level)] = {"value": value[j].item(), "expected": expected, "se": se}
    return out


def _ecdf_max_diff(ranks: torch.Tensor, num_draws: int) -> torch.Tensor:
    """max_r |ECDF(r) - (r + 1) / (L + 1)| per dimension (the ECDF-difference plot's extreme)."""
    if ranks.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    counts = torch.stack([torch.bincount(c, minlength=num_draws + 1) for c in ranks.long().T], 1)
    ecdf = counts.cumsum(0).double() / ranks.shape[0]
    uniform = torch.arange(1, num_draws + 2, dtype=torch.float64) / (num_draws + 1)
    return (ecdf - uniform[:, None]).abs().max(0).values


def _verdict(p_min, z_mean, z_sd, contraction, alpha) -> str:
    """The verdict of one dimension (module docstring): flagged by the ranks, named by the
    z-score's mean and sd."""
    if p_min >= alpha:
        return "prior-like" if contraction < PRIOR_LIKE else "calibrated"
    bias = abs(z_mean) / BIAS_Z
    width = abs(math.log(z_sd)) / math.log(WIDTH_RATIO) if z_sd > 0 else math.inf
    side = "over-confident" if z_sd > 1 else "under-confident"
    if bias >= 1 and width >= 1:
        return f"biased, {side}"
    return "biased" if bias >= width else side


def _joint_verdict(p_uniform, p_bias, bias_z, alpha) -> str:
    if p_bias < alpha:
        return "off: truth in the guide's tails" if bias_z < 0 else "off: truth too central"
    return "off: shape" if p_uniform < alpha else "consistent"


def _moments(truth, mean, sd) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z-score mean and sd, and contraction, per dimension (Schad et al. 2021)."""
    t, m, s = truth.double(), mean.double(), sd.double()
    z = (t - m) / s
    contraction = 1 - (s**2).mean(0) / t.var(0)
    return z.mean(0), z.std(0), contraction


def sbc_statistics(ranks, density_ranks, num_draws, truth, post_mean, post_sd, alpha=0.05):
    """Per-dimension statistics and verdicts of SBC ranks (module docstring).

    Parameters
    ----------
    ranks, truth, post_mean, post_sd : dict of str to torch.Tensor of shape (N,) + event_shape
        Per continuous latent site: the ranks (0..L), the simulated values, the mean and sd of
        the L guide draws.
    density_ranks : torch.Tensor of shape (N,)
        Ranks of log q at the truth among the draws'.
    num_draws : int
        L.
    alpha : float, default 0.05
        Family-wise false-alarm rate of all verdicts together.

    Returns
    -------
    SBCStatistics
    """
    names, r = flatten_sites(ranks)
    dens = density_ranks.reshape(-1, 1).cpu()
    r = r.cpu() if names else dens[:, :0]
    p_uniform = _uniformity_p(torch.cat([r, dens], 1), num_draws)
    bias_z, width_z = _rank_z(torch.cat([r, dens], 1), num_draws)
    m = len(names)
    family = torch.cat([p_uniform, _normal_p(bias_z), _normal_p(width_z[:m])])
    adjusted = holm(family)
    p_u, p_b, p_w = adjusted[: m + 1], adjusted[m + 1 : 2 * m + 2], adjusted[2 * m + 2 :]
    z_mean, z_sd, contraction = (
        (v.cpu() for v in _moments(*(flatten_sites(d)[1] for d in (truth, post_mean, post_sd))))
        if names
        else (None, None, None)
    )
    coverage, ecdf = _coverage(r, num_draws), _ecdf_max_diff(r, num_draws)
    rows = []
    for j, name in enumerate(names):
        rows.append(
            {
                "name": name,
                "verdict": _verdict(
                    min(p_u[j], p_b[j], p_w[j]).item(),
                    z_mean[j].item(),
                    z_sd[j].item(),
                    contraction[j].item(),
                    alpha,
                ),
                "p_min": min(p_u[j], p_b[j], p_w[j]).item(),
                "p_uniform": p_u[j].item(),
                "p_bias": p_b[j].item(),
                "p_width": p_w[j].item(),
                "bias_z": bias_z[j].item(),
                "width_z": width_z[j].item(),
                "coverage": coverage[j],
                "z_mean": z_mean[j].item(),
                "z_sd": z_sd[j].item(),
                "contraction": contraction[j].item(),
                "ecdf_max_diff": ecdf[j].item(),
            }
        )
    joint = {
        "p_uniform": p_u[m].item(),
        "p_bias": p_b[m].item(),
        "bias_z": bias_z[m].item(),
        "verdict": _joint_verdict(p_u[m], p_b[m], bias_z[m], alpha),
    }
    fractional = (r.double() + 0.5) / (num_draws + 1)
    return SBCStatistics(
        rows, joint, fractional, (dens[:, 0].double() + 0.5) / (num_draws + 1), num_draws, alpha
    )


def reliability(probs: torch.Tensor, truth: torch.Tensor, bins: int = RELIABILITY_BINS) -> dict:
    """Accuracy, expected calibration error and the reliability diagram of q(y|x).

    Parameters
    ----------
    probs : torch.Tensor of shape (N, K)
        q(y | x_n) over the K values of y.
    truth : torch.Tensor of shape (N,)
        The index of the true y_n.
    bins : int, default 10
        Equal-width bins of the confidence max_y q(y|x) (Guo et al. 2017).

    Returns
    -------
    dict
        ``accuracy``, ``ece`` (sum_b n_b / N ``|acc_b - conf_b|``), ``nll`` (mean -log q(y_n|x_n),
        nats) and ``bins``: per bin ``lower``, ``upper``, ``count``, ``confidence``,
        ``accuracy`` (None for an empty bin).
    """
    probs, truth = probs.double().cpu(), truth.long().cpu()
    confidence, predicted = probs.max(-1)
    correct = (predicted == truth).double()
    which = (confidence * bins).long().clamp(max=bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        conf = confidence[inside].mean().item() if count else None
        acc = correct[inside].mean().item() if count else None
        if count:
            ece += count / len(truth) * abs(acc - conf)
        rows.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": count,
                "confidence": conf,
                "accuracy": acc,
            }
        )
    nll = -probs.gather(1, truth[:, None]).clamp(min=1e-300).log().mean().item()
    return {"accuracy": correct.mean().item(), "ece": ece, "nll": nll, "bins": rows}
