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

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

__all__ = ["PPCA", "CollapsedPPCA"]


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


def _marginal(W, b, sigma2):
    """p(x) = N(x | b, W W^T + sigma^2 I_D) with z integrated out (PRML eq. 12.35).

    ``LowRankMultivariateNormal`` is exactly this covariance, low rank plus diagonal: its
    log-density never forms the D x D matrix (Woodbury and the matrix determinant lemma,
    PRML eq. 12.40-12.41), O(N D M + M^3).
    """
    return dist.LowRankMultivariateNormal(b, W, sigma2.expand(W.shape[:1]))


# --------------------------------------------------------------------------------------------
# PPCA with fixed parameters: MLE, exact evidence, exact posterior, Pyro model + exact guide
# --------------------------------------------------------------------------------------------
class PPCA:
    """Probabilistic PCA with fixed parameters (Tipping & Bishop 1999; PRML 12.2).

    :meth:`fit` gives the closed-form maximum-likelihood solution; :meth:`log_marginal`,
    :meth:`posterior` are exact; :meth:`model` / :meth:`guide` are a Pyro pair with latent
    site ``"z"``, observed site ``"x"`` and plate ``"data"``, the guide being p(z | x).

    Parameters
    ----------
    W : torch.Tensor of shape (D, M)
        Factor loadings.
    b : torch.Tensor of shape (D,)
        Mean of x.
    sigma2 : float or torch.Tensor of shape ()
        Isotropic noise variance, positive.

    Raises
    ------
    ValueError
        Shapes, dtypes or devices that do not fit, non-finite values, sigma2 <= 0.
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

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
            Floating-point data, finite, with N > latent_dim + 1.
        latent_dim : int
            M, with 1 <= M < D.
        ddof : {0, 1}
            0 is the MLE; 1 uses scikit-learn's N - 1 covariance.

        Returns
        -------
        PPCA

        Raises
        ------
        ValueError
            Bad x, latent_dim or ddof, too few datapoints, or data in a subspace of dimension
            <= M (sigma^2 would be 0).
        """
        _check_data(x, min_rows=2)
        N, D = x.shape
        _check_latent_dim(latent_dim, D)
        if N - 1 <= latent_dim:  # centred data span at most N - 1 dimensions
            raise ValueError(
                f"PPCA.fit needs more than latent_dim + 1 = {latent_dim + 1} datapoints, got "
                f"N={N}: the centred data span at most N - 1 = {N - 1} dimensions, so sigma^2 "
                "would be 0"
            )
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
        """p(x) = N(b, W W^T + sigma^2 I) (PRML eq. 12.35).

        Returns
        -------
        pyro.distributions.LowRankMultivariateNormal
            Batch shape (), event shape (D,).
        """
        return _marginal(self.W, self.b, self.sigma2)

    def log_marginal(self, x):
        """Exact log p(x_n) = log N(x_n | b, W W^T + sigma^2 I) per datapoint, in nats.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)

        Returns
        -------
        torch.Tensor of shape (N,)
        """
        _check_data(x, self.data_dim, like=self.W)
        return _marginal(self.W, self.b, self.sigma2).log_prob(x)

    def posterior(self, x):
        """Exact p(z | x) (PRML eq. 12.42).

        Mean M^-1 W^T (x - b), covariance sigma^2 M^-1 with M = W^T W + sigma^2 I
        (so sigma^-2 M is the precision).

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)

        Returns
        -------
        pyro.distributions.MultivariateNormal
            Batch shape (N,), event shape (M,).
        """
        _check_data(x, self.data_dim, like=self.W)
        eye = torch.eye(self.latent_dim, dtype=self.W.dtype, device=self.W.device)
        L = torch.linalg.cholesky(self.W.T @ self.W + self.sigma2 * eye)
        mean = torch.cholesky_solve(self.W.T @ (x - self.b).T, L).T  # (N, M)
        cov = self.sigma2 * torch.cholesky_inverse(L)
        return dist.MultivariateNormal(mean, covariance_matrix=cov)

    def model(self, x):
        """Pyro model p(z) p(x | z) with z explicit; vectorizes under outer plates.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
            Observed at site ``"x"``; ``"z"`` has shape (..., N, M), in plate ``"data"``.
        """
        _check_data(x, self.data_dim, like=self.W)
        N, M = x.shape[0], self.latent_dim
        with pyro.plate("data", N):
            prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([N, M]).to_event(1)
            z = pyro.sample("z", prior)
            loc = z @ self.W.T + self.b  # (..., N, D)
            pyro.sample("x", dist.Normal(loc, self.sigma2.sqrt()).to_event(1), obs=x)

    def guide(self, x):
        """Exact posterior guide q(z | x) = p(z | x): every ELBO sample equals log p(x).

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
        """
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))

    def sample(self, n):
        """Draw datapoints x ~ p(x) with the global torch RNG.

        Parameters
        ----------
        n : int
            How many, at least 1.

        Returns
        -------
        torch.Tensor of shape (n, D)
        """
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

    Parameters
    ----------
    data_dim : int
        D, at least 2.
    latent_dim : int
        M, with 1 <= M < D.
    init_scale : float
        Scale of the initial W.
    seed : int
        Seeds the initial W.
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
        """Observe x ~ N(b, W W^T + sigma^2 I) in plate ``"data"``.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
        """
        _check_data(x, self.data_dim)
        W, b, sigma = self._params(x)
        _check_data(x, like=W)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", _marginal(W, b, sigma**2), obs=x)

    def guide(self, x):
        """No latent variables: nothing to sample."""

    def to_ppca(self):
        """A :class:`PPCA` holding (detached copies of) the current param-store values.

        Raises
        ------
        ValueError
            When the model has not run yet (no params).
        """
        store = pyro.get_param_store()
        if "W" not in store:
            raise ValueError("no params yet: run model(x) (e.g. train it) before to_ppca()")
        W, b, sigma = (pyro.param(name).detach().clone() for name in ("W", "b", "sigma"))
        return PPCA(W, b, sigma**2)
