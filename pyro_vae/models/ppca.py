"""Probabilistic PCA: the one latent-variable model here whose evidence and posterior are exact.

Generative model (Tipping & Bishop 1999; Bishop PRML 12.2)::

    z ~ N(0, I_M),    x = W z + b + eps,    eps ~ N(0, sigma^2 I_D)

so that p(x) = N(x | b, C) with C = W W^T + sigma^2 I_D (PRML eq. 12.35-12.36) and the
posterior p(z | x) is Gaussian (PRML eq. 12.42). :class:`PPCA` holds fixed parameters (the
closed-form MLE from :meth:`PPCA.fit`, or any W, b, sigma^2) and exposes them as a Pyro
model/guide pair whose guide is the exact posterior, so that every single-sample ELBO estimate
equals log p(x). :class:`CollapsedPPCA` integrates z out and learns W, b, sigma by SVI.

Shapes: ``x`` is (N, D); ``W`` is (D, M); ``b`` is (D,); ``sigma2`` is a 0-dim tensor.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions import constraints

__all__ = ["PPCA", "CollapsedPPCA", "PPCAMarginal"]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _check_data(x, data_dim=None, like=None, min_rows=1):
    """Validate a data matrix x of shape (N, D); ``like`` is a model tensor to match."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} datapoints, got {x.shape[0]}")
    if data_dim is not None and x.shape[1] != data_dim:
        raise ValueError(f"x has {x.shape[1]} columns but the model has data_dim={data_dim}")
    if like is not None and (x.dtype != like.dtype or x.device != like.device):
        raise ValueError(
            f"x is {x.dtype} on {x.device} but the model's tensors are {like.dtype} on "
            f"{like.device}; convert one of them (e.g. x.to(model.W))"
        )
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf values")
    return x


def _check_latent_dim(latent_dim, data_dim):
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int):
        raise ValueError(f"latent_dim must be an int, got {latent_dim!r}")
    if not 1 <= latent_dim < data_dim:
        raise ValueError(
            f"latent_dim must satisfy 1 <= latent_dim < D={data_dim}, got {latent_dim}"
        )


# --------------------------------------------------------------------------------------------
# the Gaussian algebra, written once
# --------------------------------------------------------------------------------------------
def _woodbury_log_prob(x, W, b, sigma2):
    """log N(x | b, W W^T + sigma^2 I) for x of shape (..., D); returns shape (...).

    Never forms the D x D covariance C: with M = W^T W + sigma^2 I_M (PRML eq. 12.41),
    C^-1 = sigma^-2 (I - W M^-1 W^T) (Woodbury, PRML eq. 12.40) and
    log|C| = (D - M) log sigma^2 + log|M| (matrix determinant lemma), so the cost is
    O(N D M + M^3). With M = L L^T and a = L^-1 W^T r, r^T C^-1 r = (|r|^2 - |a|^2) / sigma^2.
    """
    D, M = W.shape
    eye = torch.eye(M, dtype=W.dtype, device=W.device)
    L = torch.linalg.cholesky(W.T @ W + sigma2 * eye)
    L_inv = torch.linalg.solve_triangular(L, eye, upper=False)
    r = x - b
    a = (r @ W) @ L_inv.T  # (..., M)
    quad = (r.pow(2).sum(-1) - a.pow(2).sum(-1)) / sigma2
    log_det = (D - M) * torch.log(sigma2) + 2.0 * torch.log(torch.diagonal(L)).sum()
    return -0.5 * (D * math.log(2 * math.pi) + log_det + quad)


class PPCAMarginal(dist.TorchDistribution):
    """p(x) = N(x | b, W W^T + sigma^2 I) with z integrated out (PRML eq. 12.35).

    Batch shape (), event shape (D,); ``log_prob`` uses the O(D M^2) Woodbury form
    above. Used as the observation of :class:`CollapsedPPCA`.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, W, b, sigma2, validate_args=None):
        self.W, self.b, self.sigma2 = W, b, sigma2
        super().__init__(torch.Size(), b.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return TorchDistributionMixin.expand(self, batch_shape)

    @property
    def mean(self):
        return self.b

    @property
    def variance(self):
        return self.W.pow(2).sum(-1) + self.sigma2

    def rsample(self, sample_shape=()):
        shape = torch.Size(sample_shape)
        D, M = self.W.shape
        z = torch.randn(shape + (M,), dtype=self.W.dtype, device=self.W.device)
        eps = torch.randn(shape + (D,), dtype=self.W.dtype, device=self.W.device)
        return z @ self.W.T + self.b + self.sigma2.sqrt() * eps

    def log_prob(self, value):
        return _woodbury_log_prob(value, self.W, self.b, self.sigma2)


# --------------------------------------------------------------------------------------------
# PPCA with fixed parameters: MLE, exact evidence, exact posterior, Pyro model + exact guide
# --------------------------------------------------------------------------------------------
class PPCA:
    """Probabilistic PCA with parameters W (D, M), b (D,), sigma2 (scalar).

    :meth:`fit` gives the closed-form maximum-likelihood solution; :meth:`log_marginal`,
    :meth:`posterior` are exact; :meth:`model` / :meth:`guide` are a Pyro pair with latent
    site ``"z"``, observed site ``"x"`` and plate ``"data"``, the guide being p(z | x).
    """

    def __init__(self, W, b, sigma2):
        sigma2 = torch.as_tensor(sigma2, dtype=W.dtype, device=W.device)
        if W.dim() != 2 or b.shape != W.shape[:1] or sigma2.dim() != 0:
            raise ValueError(
                f"need W (D, M), b (D,), scalar sigma2; got {tuple(W.shape)}, "
                f"{tuple(b.shape)}, {tuple(sigma2.shape)}"
            )
        if b.dtype != W.dtype or b.device != W.device:
            raise ValueError(f"W ({W.dtype}, {W.device}) and b ({b.dtype}, {b.device}) differ")
        if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
            raise ValueError("W and b must be finite")
        if not (torch.isfinite(sigma2) and sigma2 > 0):
            raise ValueError(f"sigma2 must be positive and finite, got {sigma2.item()}")
        self.W, self.b, self.sigma2 = W, b, sigma2

    @property
    def data_dim(self):
        return self.W.shape[0]

    @property
    def latent_dim(self):
        return self.W.shape[1]

    def __repr__(self):
        return (
            f"PPCA(data_dim={self.data_dim}, latent_dim={self.latent_dim}, "
            f"sigma2={self.sigma2.item():.4g})"
        )

    @classmethod
    def fit(cls, x, latent_dim, ddof=0):
        """Closed-form MLE (Tipping & Bishop 1999; PRML eq. 12.45-12.46).

        b = mean(x); sigma^2 = mean of the D - M discarded eigenvalues of the covariance
        S = X_c^T X_c / (N - ddof); W = U_M (L_M - sigma^2 I)^(1/2) (rotation R = I).
        ``ddof=0`` is the MLE; ``ddof=1`` uses sklearn's N - 1 covariance.
        """
        _check_data(x, min_rows=2)
        N, D = x.shape
        _check_latent_dim(latent_dim, D)
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
        b = x.mean(0)
        xc = x - b
        # eigendecomposition of the D x D covariance (cheap for D <= ~1000, exact for N > D)
        evals, evecs = torch.linalg.eigh(xc.T @ xc / (N - ddof))
        evals, evecs = evals.flip(0), evecs.flip(1)  # descending
        sigma2 = evals[latent_dim:].mean()
        if not sigma2 > 0:
            raise ValueError(
                f"the data lie in a subspace of dimension <= latent_dim={latent_dim} "
                f"(discarded eigenvalues average {sigma2.item():.3g}): sigma^2 would be 0"
            )
        U = evecs[:, :latent_dim]
        # fix the eigenvectors' signs: largest-magnitude entry positive (deterministic output)
        U = U * torch.sign(U.gather(0, U.abs().argmax(0, keepdim=True)))
        W = U * (evals[:latent_dim] - sigma2).clamp_min(0).sqrt()
        return cls(W, b, sigma2)

    def marginal(self):
        """p(x) as a distribution with event shape (D,) (PRML eq. 12.35)."""
        return PPCAMarginal(self.W, self.b, self.sigma2)

    def log_marginal(self, x):
        """Exact log p(x_n) = log N(x_n | b, W W^T + sigma^2 I) per datapoint: (N, D) -> (N,)."""
        _check_data(x, self.data_dim, like=self.W)
        return _woodbury_log_prob(x, self.W, self.b, self.sigma2)

    def posterior(self, x):
        """Exact p(z | x) (PRML eq. 12.42): batch (N,), event (M,) MultivariateNormal.

        Mean M^-1 W^T (x - b), covariance sigma^2 M^-1 with M = W^T W + sigma^2 I
        (so sigma^-2 M is the precision).
        """
        _check_data(x, self.data_dim, like=self.W)
        eye = torch.eye(self.latent_dim, dtype=self.W.dtype, device=self.W.device)
        L = torch.linalg.cholesky(self.W.T @ self.W + self.sigma2 * eye)
        mean = torch.cholesky_solve(self.W.T @ (x - self.b).T, L).T  # (N, M)
        cov = self.sigma2 * torch.cholesky_inverse(L)
        return dist.MultivariateNormal(mean, covariance_matrix=cov)

    def model(self, x):
        """Pyro model p(z) p(x | z), z explicit; vectorizes under outer plates (z: (..., N, M))."""
        _check_data(x, self.data_dim, like=self.W)
        N, M = x.shape[0], self.latent_dim
        with pyro.plate("data", N):
            prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([N, M]).to_event(1)
            z = pyro.sample("z", prior)
            loc = z @ self.W.T + self.b  # (..., N, D)
            pyro.sample("x", dist.Normal(loc, self.sigma2.sqrt()).to_event(1), obs=x)

    def guide(self, x):
        """Exact posterior guide q(z | x) = p(z | x): every ELBO sample equals log p(x)."""
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))

    def sample(self, n):
        """Draw n datapoints x ~ p(x): returns (n, D). Uses the global torch RNG."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        return self.marginal().sample((n,))


# --------------------------------------------------------------------------------------------
# collapsed model: z integrated out, W, b, sigma learned by SVI on the exact likelihood
# --------------------------------------------------------------------------------------------
class CollapsedPPCA:
    """pPCA with z integrated out; W, b, sigma are ``pyro.param`` s named "W", "b", "sigma".

    ``model(x)`` observes x ~ N(b, W W^T + sigma^2 I) (PRML eq. 12.35) in plate "data";
    ``guide(x)`` is empty (no latents), so the ELBO is exactly log p(x) and SVI is maximum
    likelihood. Starting point: W ~ init_scale * N(0, 1) drawn from a generator seeded with
    ``seed`` (not the global RNG), b = 0, sigma = 1.
    """

    def __init__(self, data_dim, latent_dim, *, init_scale=0.1, seed=0):
        if isinstance(data_dim, bool) or not isinstance(data_dim, int) or data_dim < 2:
            raise ValueError(f"data_dim must be an int >= 2, got {data_dim!r}")
        _check_latent_dim(latent_dim, data_dim)
        self.data_dim, self.latent_dim = data_dim, latent_dim
        gen = torch.Generator().manual_seed(seed)
        self._W_init = init_scale * torch.randn(data_dim, latent_dim, generator=gen)

    def _params(self, like):
        W = pyro.param("W", lambda: self._W_init.to(like))
        b = pyro.param("b", lambda: like.new_zeros(self.data_dim))
        sigma = pyro.param("sigma", lambda: like.new_ones(()), constraint=constraints.positive)
        return W, b, sigma

    def model(self, x):
        _check_data(x, self.data_dim)
        W, b, sigma = self._params(x)
        _check_data(x, like=W)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", PPCAMarginal(W, b, sigma**2), obs=x)

    def guide(self, x):
        """No latent variables: nothing to sample."""

    def to_ppca(self):
        """A :class:`PPCA` holding (detached copies of) the current param-store values."""
        store = pyro.get_param_store()
        if "W" not in store:
            raise ValueError("no params yet: run model(x) (e.g. train it) before to_ppca()")
        W, b, sigma = (pyro.param(name).detach().clone() for name in ("W", "b", "sigma"))
        return PPCA(W, b, sigma**2)
