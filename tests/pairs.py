"""Every model/guide pair the tests use, with what is known about each: the catalogue.

A pair is made fresh by its :class:`Case` (``case.make()``, the same numbers on every call, in
the default dtype of the moment) and comes with what is known about it in closed form:

- ``exact_log_px(pair)``: log p(x) per datapoint, where a closed form exists;
- ``exact_guide(pair)``: the exact posterior p(z | x) as a guide, where one can be written;
  with it every importance weight log p(x, z) - log q(z | x) equals log p(x);
- ``refusal``: ``(error, match)`` that every per-datapoint tool must raise, where the site
  convention (docs/design.md) refuses the pair (e.g. a global latent);
- the facts the tools' own refusals follow from: ``reparameterized`` (every guide site has
  ``rsample``), ``trainable`` (the pair registers a parameter), ``latent`` (the guide samples a
  latent site), ``guide_factorized`` and ``prior_factorized`` (the guide's, the prior's
  density at ``site`` splits by latent dimension: what a per-dimension KL needs of both),
  ``enumerated`` (a guide site is marked for parallel enumeration), ``continuous`` (the model
  has a continuous latent, which NUTS draws), and ``site``, the latent site that the per-site
  diagnostics (active units, KL per dimension) read.

The sweeps iterate :data:`CATALOGUE` the way zuko's tests iterate every flow:
``tests/test_evidence.py`` (every estimator is exact with the exact guide, or refuses),
``tests/test_contract.py`` (every tool on every pair returns per-datapoint results or the
refusal these facts prescribe) and ``tests/test_compiled.py`` (compiled log weights equal
eager ones). ``tests/test_objectives.py`` trains :class:`ConjugateGaussian` and
:class:`GaussianMixture` to their analytic optima with every built-in loss.

Pairs that exist to provoke one behaviour (a likelihood that turns NaN, a guide that creates a
parameter late, a data-dependent Python float) stay next to the one test that needs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_vae.infer.pair.sites import GlobalLatentError
from pyro_vae.models import CVAE, M2, PPCA, VAE, CollapsedPPCA, VampVAE
from pyro_vae.models.vamp import MixtureSameSupport

__all__ = [
    "CATALOGUE",
    "GLOBAL",
    "NO_LATENT",
    "BernoulliLatent",
    "Case",
    "ConjugateGaussian",
    "CorrelatedPrior",
    "DeterministicSites",
    "FactorAnalysis",
    "GaussianMixture",
    "GlobalAndLocal",
    "GlobalMean",
    "GlobalObservation",
    "LinearGaussian",
    "LogNormalLatent",
    "MeanOnly",
    "MixturePrior",
    "MixtureWithLatent",
    "NestedPlate",
    "Pair",
    "ParamPPCA",
    "Plateless",
    "PositiveFeatures",
    "SparseLoadings",
    "TwoSite",
    "case",
    "make_ppca",
]

# the refusals the site convention prescribes (docs/design.md)
GLOBAL = (GlobalLatentError, "lies outside the data plate")
NO_LATENT = (ValueError, "has no latent")


@dataclass
class Pair:
    """A made pair: ``model(x, *args)``, ``guide(x, *args)``, its data, and the object that
    holds it (the exact formulas read its settings)."""

    model: Callable
    guide: Callable
    x: torch.Tensor
    args: tuple = ()
    owner: object = None

    @property
    def data(self):
        """``x``, or ``(x, *args)`` for the tools that batch the data themselves."""
        return (self.x, *self.args) if self.args else self.x


@dataclass(frozen=True)
class Case:
    """One catalogue entry: how to make the pair, and what is known about it."""

    name: str
    make: Callable[[], Pair]
    exact_log_px: Callable[[Pair], torch.Tensor] | None = None
    exact_guide: Callable[[Pair], Callable] | None = None
    refusal: tuple[type[Exception], str] | None = None
    reparameterized: bool = True
    trainable: bool = True
    latent: bool = True
    guide_factorized: bool = True
    prior_factorized: bool = True
    enumerated: bool = False
    continuous: bool = True
    site: str = "z"

    def __str__(self) -> str:  # the test id
        return self.name


def _own_guide(pair: Pair) -> Callable:
    return pair.guide


def _owner(method: str) -> Callable:
    """``pair -> pair.owner.<method>``, e.g. the owner's exact guide."""
    return lambda pair: getattr(pair.owner, method)


def _log_px(pair: Pair) -> torch.Tensor:
    return pair.owner.exact_log_px(pair.x, *pair.args)


def _seeded(fn: Callable[[], Pair]) -> Callable[[], Pair]:
    def make() -> Pair:
        torch.manual_seed(0)
        return fn()

    return make


# ------------------------------------------------------------------------------------------
# linear-Gaussian pairs
# ------------------------------------------------------------------------------------------
class LinearGaussian:
    """z ~ N(0, 1), x | z ~ N(a z, 1); guide q(z|x) = N(c x, s). Evidence: x ~ N(0, a^2 + 1).

    A pair written only in the tests, to show the tools know nothing of our models; ``a`` and
    ``c`` are the initial parameter values (one scalar latent per datapoint). The exact
    posterior is N(a x / (1 + a^2), 1 / (1 + a^2)): in the guide's family, with c = a / (1 + a^2)
    and s = (1 + a^2)^(-1/2), so maximum likelihood by SVI is exact.
    """

    def __init__(self, a=0.1, c=0.0):
        self.a0, self.c0 = a, c

    def _a(self):
        return pyro.param("a", torch.tensor(self.a0))

    def model(self, x):
        a = self._a()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(a * z, 1.0), obs=x)

    def guide(self, x):
        c = pyro.param("c", torch.tensor(self.c0))
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * x, s))

    def exact_log_px(self, x):
        return dist.Normal(0.0, (self._a().detach() ** 2 + 1).sqrt()).log_prob(x)

    def exact_guide(self, x):
        a = self._a().detach()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a * x / (1 + a**2), (1 + a**2).rsqrt()))


class ConjugateGaussian:
    """z ~ N(0, 1), x | z ~ N(z, s^2), no model parameter; guide q(z|x) = N(a x + b, exp(c)).

    The guide's family holds the exact posterior (Bishop 2006, eq. 2.116):
    p(z|x) = N(x / (1 + s^2), s^2 / (1 + s^2)), i.e. a = 1 / (1 + s^2), b = 0,
    exp(2 c) = s^2 / (1 + s^2); the evidence is x ~ N(0, 1 + s^2). The ELBO is maximized
    there for every x, so the optimum of any data set is this one point.
    """

    def __init__(self, noise=1.0, init=(0.0, 0.0, 0.0)):
        self.noise, self.init = noise, init

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, self.noise), obs=x)

    def guide(self, x):
        a, b, c = (pyro.param(n, torch.tensor(v)) for n, v in zip("abc", self.init, strict=True))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a * x + b, c.exp()))

    def optimum(self):
        """The exact posterior's (a, b, c)."""
        s2 = self.noise**2
        return {"a": 1 / (1 + s2), "b": 0.0, "c": 0.5 * math.log(s2 / (1 + s2))}

    def exact_log_px(self, x):
        return dist.Normal(0.0, math.sqrt(1 + self.noise**2)).log_prob(x)

    def exact_guide(self, x):
        opt = self.optimum()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(opt["a"] * x, math.exp(opt["c"])))


class NestedPlate:
    """z_nd ~ N(0, 1), x_nd | z_nd ~ N(z_nd, s^2): data plate dim -2, feature plate dim -1.

    p(x_nd) = N(0, 1 + s^2); the guide is the exact posterior N(x_nd / (1 + s^2),
    s^2 / (1 + s^2)), elementwise. ``keep`` (a feature mask) masks sites of both.
    """

    def __init__(self, noise=0.5):
        self.noise = noise

    def model(self, x, keep=None):
        N, D = x.shape
        with pyro.plate("data", N, dim=-2), pyro.plate("features", D, dim=-1):
            with poutine.mask(mask=keep if keep is not None else True):
                z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
                pyro.sample("x", dist.Normal(z, self.noise), obs=x)

    def guide(self, x, keep=None):
        N, D = x.shape
        shrink = 1.0 / (1.0 + self.noise**2)
        with pyro.plate("data", N, dim=-2), pyro.plate("features", D, dim=-1):
            with poutine.mask(mask=keep if keep is not None else True):
                pyro.sample("z", dist.Normal(shrink * x, math.sqrt(self.noise**2 * shrink)))

    def exact_log_px(self, x, keep=None):
        log_p = dist.Normal(0.0, math.sqrt(1.0 + self.noise**2)).log_prob(x)
        return (log_p if keep is None else log_p * keep).sum(-1)


class SparseLoadings:
    """z ~ N(0, I_3), x | z ~ N(W z, I_2) with W = [[1, 0, 0], [-0.5, 0, 0]]: the likelihood
    reads dimension 0 of z only, so dimensions 1 and 2 matter to the KL alone.

    Guides: ``guide`` factorizes over the 3 dimensions (parameters m, s), ``full_cov_guide`` is
    one multivariate site. Closed forms: p(x) = N(0, W W^T + I); p(z|x) = N(S W^T x, S) with
    S = (I + W^T W)^-1 (Bishop 2006, eq. 2.116).
    """

    W = torch.tensor([[1.0, 0.0, 0.0], [-0.5, 0.0, 0.0]], dtype=torch.float64)
    M = 3

    def _W(self, x):
        return self.W.to(x)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(()), 1.0).expand([x.shape[0], self.M])
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", dist.Normal(z @ self._W(x).T, 1.0).to_event(1), obs=x)

    @staticmethod
    def guide_params():
        m = pyro.param("m", torch.tensor([0.3, -0.2, 0.1]))
        s = pyro.param("s", torch.tensor([0.5, 0.8, 1.2]), constraint=dist.constraints.positive)
        return m, s

    def guide(self, x):
        m, s = self.guide_params()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.sum(-1, keepdim=True) * 0.1 + m, s).to_event(1))

    def full_cov_guide(self, x):
        m, s = self.guide_params()
        tril = torch.diag(s) + torch.tril(torch.full((self.M, self.M), 0.2), diagonal=-1)
        with pyro.plate("data", x.shape[0]):
            loc = x.sum(-1, keepdim=True) * 0.1 + m
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))

    def exact_log_px(self, x):
        W = self._W(x)
        cov = W @ W.T + torch.eye(W.shape[0], dtype=x.dtype)
        return dist.MultivariateNormal(x.new_zeros(W.shape[0]), cov).log_prob(x)

    def exact_guide(self, x):
        W = self._W(x)
        cov = torch.linalg.inv(torch.eye(self.M, dtype=x.dtype) + W.T @ W)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(x @ W @ cov, covariance_matrix=cov))


class CorrelatedPrior:
    """z ~ N(0, S) with S = [[1, r], [r, 1]], x | z ~ N(z, I_2); guide q(z|x) = N(c x + m, s),
    factorized. The prior does not factorize (a per-dimension KL has no meaning for it), the
    guide does. Closed forms: p(x) = N(0, S + I); p(z|x) = N(A x, (S^-1 + I)^-1) with
    A = S (S + I)^-1 (Bishop 2006, eq. 2.116)."""

    r = 0.6

    def _S(self, x):
        return torch.tensor([[1.0, self.r], [self.r, 1.0]], dtype=x.dtype)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.MultivariateNormal(x.new_zeros(2), self._S(x)))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(self, x):
        c, m = pyro.param("c", torch.tensor(0.4)), pyro.param("m", torch.zeros(2))
        s = pyro.param("s", torch.full((2,), 0.8), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * x + m, s).to_event(1))

    def exact_log_px(self, x):
        S = self._S(x)
        return dist.MultivariateNormal(x.new_zeros(2), S + torch.eye(2, dtype=x.dtype)).log_prob(x)

    def exact_guide(self, x):
        S, eye = self._S(x), torch.eye(2, dtype=x.dtype)
        A, cov = S @ torch.linalg.inv(S + eye), torch.linalg.inv(torch.linalg.inv(S) + eye)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(x @ A.T, covariance_matrix=cov))


class TwoSite:
    """Two latent sites, a positive parameter and a Python branch on the data.

    z1 ~ N(0, 1), z2 | z1 ~ N(z1, 1), x | z2 ~ N(w z2 + u, sigma) with u = 0 if every x > 0
    else 1; guide N(c x, s) for both. The branch (``if (x > 0).all()``) is a decision a
    capture must guard. Closed forms: x ~ N(u, 2 w^2 + sigma^2); the exact posterior is
    z2 | x ~ N(m, 1 / P) with P = 1/2 + w^2 / sigma^2, m = w (x - u) / (sigma^2 P), then
    z1 | z2 ~ N(z2 / 2, 1/2) (z1 is independent of x given z2).
    """

    @staticmethod
    def _model_params():
        w = pyro.param("w", torch.tensor(0.5))
        sigma = pyro.param("sigma", torch.tensor(1.0), constraint=dist.constraints.positive)
        return w, sigma

    def model(self, x):
        w, sigma = self._model_params()
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            loc = w * z2 if (x > 0).all() else w * z2 + 1.0
            pyro.sample("x", dist.Normal(loc, sigma), obs=x)

    def guide(self, x):
        c = pyro.param("c", torch.tensor(0.1))
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(c * x, s))
            pyro.sample("z2", dist.Normal(c * x, s))

    def exact_log_px(self, x):
        w, sigma = (p.detach() for p in self._model_params())
        shift = 0.0 if (x > 0).all() else 1.0
        return dist.Normal(shift, (2 * w**2 + sigma**2).sqrt()).log_prob(x)

    def exact_guide(self, x):
        w, sigma = (p.detach() for p in self._model_params())
        shift = 0.0 if (x > 0).all() else 1.0
        precision = 0.5 + w**2 / sigma**2
        loc = w * (x - shift) / sigma**2 / precision
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(loc, precision.rsqrt()))
            pyro.sample("z1", dist.Normal(z2 / 2, math.sqrt(0.5)))


class DeterministicSites:
    """z ~ N(0, 1), x | z ~ N(z, 1), with ``pyro.deterministic`` sites inside and outside the
    data plate and a plate given its (full) ``subsample_size``; guide N(0.5 x, 0.8).

    x ~ N(0, 2); the exact posterior is N(x / 2, 1/2).
    """

    def model(self, x):
        shift = pyro.deterministic("shift", torch.tensor(0.5))  # global, not a random variable
        with pyro.plate("data", x.shape[0], subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.deterministic("z_shifted", z + shift)
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x, 0.8))

    def exact_log_px(self, x):
        return dist.Normal(0.0, math.sqrt(2.0)).log_prob(x)

    def exact_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x, math.sqrt(0.5)))


class LogNormalLatent:
    """log z ~ N(0, 1), x | z ~ N(log z, 0.5^2): a positive latent whose posterior is log-normal.

    log z | x ~ N(v x / 0.25, v) with v = 1 / (1 + 1 / 0.25) = 0.2; x ~ N(0, 1.25).
    ``guide_shifted_by(d)`` shifts the posterior's log-mean by d (d = 0: exact).
    """

    noise2 = 0.25
    post_var = 1 / (1 + 1 / 0.25)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.LogNormal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z.log(), math.sqrt(self.noise2)), obs=x)

    def guide_shifted_by(self, shift):
        def guide(x):
            with pyro.plate("data", x.shape[0]):
                loc = self.post_var * x / self.noise2 + shift
                pyro.sample("z", dist.LogNormal(loc, math.sqrt(self.post_var)))

        return guide

    def exact_log_px(self, x):
        return dist.Normal(0.0, math.sqrt(1 + self.noise2)).log_prob(x)


def make_ppca(data_dim=5, latent_dim=2, sigma2=0.5, scale=1.0):
    """A pPCA with W ~ scale * N(0, 1) and b ~ N(0, 1) drawn from the global RNG."""
    W = scale * torch.randn(data_dim, latent_dim)
    return PPCA(W, torch.randn(data_dim), torch.tensor(sigma2))


class ParamPPCA:
    """pPCA written only in the tests, with W, b, sigma as ``pyro.param`` s, and its exact
    guide (the posterior of the current parameters, from :class:`PPCA`)."""

    def __init__(self, ppca):
        self.init = dict(W=ppca.W.clone(), b=ppca.b.clone(), sigma=ppca.sigma2.sqrt().clone())

    def params(self):
        W, b = pyro.param("W", self.init["W"]), pyro.param("b", self.init["b"])
        return W, b, pyro.param("sigma", self.init["sigma"], constraint=dist.constraints.positive)

    def model(self, x):
        W, b, sigma = self.params()
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(torch.zeros(()), 1.0).expand([x.shape[0], W.shape[1]])
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)

    def guide(self, x):
        W, b, sigma = self.params()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", PPCA(W, b, sigma**2).posterior(x))

    def exact_log_px(self, x):
        W, b, sigma = (p.detach() for p in self.params())
        return PPCA(W, b, sigma**2).log_marginal(x)


class MeanOnly:
    """x_i ~ N(mu, 1) with mu a parameter (any event shape): no latent at all, an empty guide,
    so the ELBO is log p(x) exactly."""

    def model(self, x):
        mu = pyro.param("mu", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            event = dist.Normal(mu, 1.0).expand(x.shape[1:]).to_event(x.dim() - 1)
            pyro.sample("x", event, obs=x)

    def guide(self, x):
        pass

    def exact_log_px(self, x):
        mu = pyro.param("mu", torch.zeros(())).detach()
        return dist.Normal(mu, 1.0).log_prob(x).reshape(x.shape[0], -1).sum(-1)


# ------------------------------------------------------------------------------------------
# discrete latents
# ------------------------------------------------------------------------------------------
class BernoulliLatent:
    """z ~ Bernoulli(1/2), x | z ~ N(z, 1); guide Bernoulli(p): a latent with no
    reparameterized draw.

    p(x) = (N(x; 0, 1) + N(x; 1, 1)) / 2; p(z = 1 | x) = sigmoid(x - 1/2).
    """

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(p))

    def exact_log_px(self, x):
        both = torch.stack([dist.Normal(0.0, 1.0).log_prob(x), dist.Normal(1.0, 1.0).log_prob(x)])
        return both.logsumexp(0) - math.log(2.0)

    def exact_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=x - 0.5))


class GaussianMixture:
    """y ~ Cat(softmax(w)), x | y ~ N(mu_y, 1); guide q(y|x) = Cat(softmax(a x + b)), y marked
    for parallel enumeration. A discrete-latent pair written only in the tests.

    Closed forms: log p(x) = logsumexp_y [log p(y) + log N(x; mu_y, 1)], and for any q the ELBO
    sum_y q(y|x) [log p(y) + log N(x; mu_y, 1) - log q(y|x)]. The posterior's logits
    mu_y x + log softmax(w)_y - mu_y^2 / 2 (dropping -x^2 / 2, common to every y) are linear in
    x, so the guide's family holds it. With ``exact=True`` the guide is the posterior p(y|x)
    itself (read from the model's parameters), so every importance weight equals p(x). With
    ``fixed_model=True`` mu and w are constants, not parameters.
    """

    def __init__(self, mu=(-2.0, 0.0, 3.0), exact=False, fixed_model=False):
        self.mu0, self.exact, self.fixed_model = torch.tensor(mu), exact, fixed_model

    def params(self):
        k = self.mu0.numel()
        mu, w = self.mu0.to(torch.get_default_dtype()), torch.linspace(-0.5, 0.5, k)
        if self.fixed_model:
            return mu, w
        return pyro.param("mu", mu), pyro.param("w", w)

    def joint(self, x):
        """log p(y) + log p(x|y) for every y: shape (N, K)."""
        mu, w = self.params()
        return w.log_softmax(-1) + dist.Normal(mu, 1.0).log_prob(x[:, None])

    def model(self, x):
        mu, w = self.params()
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=w))
            pyro.sample("x", dist.Normal(mu[y], 1.0), obs=x)

    def q_logits(self, x):
        if self.exact:
            return self.joint(x)  # the posterior p(y|x), up to its normalizer
        k = self.mu0.numel()
        a = pyro.param("a", torch.linspace(-1.0, 1.0, k))
        b = pyro.param("b", torch.zeros(k))
        return a * x[:, None] + b

    def guide(self, x):
        logits = self.q_logits(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})

    def exact_log_px(self, x):
        return self.joint(x).logsumexp(-1)

    def posterior(self, x):
        """p(y | x): shape (N, K)."""
        return self.joint(x).softmax(-1)

    def exact_elbo(self, x):
        log_q = self.q_logits(x).log_softmax(-1)
        return (log_q.exp() * (self.joint(x) - log_q)).sum(-1)


class FactorAnalysis:
    """z ~ N(0, I_K), x | z ~ N(W z, diag(psi)); ``guide``: a deliberately poor fixed
    Gaussian (shifted prior); ``exact_guide``: p(z | x).

    p(x) = N(0, W W^T + diag(psi)) and p(z | x) = N(S W^T Psi^-1 x, S) with
    S = (I + W^T Psi^-1 W)^-1 (Bishop PRML eq. 12.66-12.68 with Psi for sigma^2 I).
    """

    def __init__(self, data_dim=8, latent_dim=3, seed=1):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(data_dim, latent_dim, generator=g)
        self.psi = 0.02 + 0.05 * torch.rand(data_dim, generator=g)
        self.K = latent_dim

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T, self.psi.sqrt()).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.full((x.shape[0], self.K), 0.3), 1.0).to_event(1))

    def exact_guide(self, x):
        cov = torch.linalg.inv(torch.eye(self.K) + self.W.T @ (self.W / self.psi[:, None]))
        mean = (x / self.psi) @ self.W @ cov
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(mean, cov))

    def log_px(self, x):
        cov = self.W @ self.W.T + torch.diag(self.psi)
        return dist.MultivariateNormal(torch.zeros(len(self.psi)), cov).log_prob(x)

    def sample(self, n):
        z = torch.randn(n, self.K)
        return z @ self.W.T + self.psi.sqrt() * torch.randn(n, len(self.psi))


class MixtureWithLatent:
    """y ~ Cat(softmax(w)), z ~ N(0, 1), x | y, z ~ N(mu_y + a z, s^2): a discrete component and
    a continuous latent, as M2 has. Guide q(y|x) = Cat(softmax(c x)), marked for parallel
    enumeration, and q(z | x, y) = N(shrink * m_y(x), 1), a poor fit for ``shrink`` != 1.

    Closed forms: p(x | y) = N(mu_y, a^2 + s^2), so log p(x) = logsumexp_y [log softmax(w)_y +
    log N(x; mu_y, a^2 + s^2)]; p(z | x, y) = N(m_y(x), s^2 / (a^2 + s^2)) with
    m_y(x) = a (x - mu_y) / (a^2 + s^2) (Bishop PRML eq. 2.116, one dimension).
    """

    def __init__(self, mu=(-3.0, 0.0, 2.0), a=1.5, s=0.5, shrink=0.5):
        self.mu, self.w = torch.tensor(mu), torch.linspace(-0.5, 0.5, len(mu))
        self.a, self.s, self.shrink = a, s, shrink

    def _posterior_mean(self, x, y):
        return self.a * (x - self.mu.to(x.dtype)[y]) / (self.a**2 + self.s**2)

    def model(self, x):
        mu, w = self.mu.to(x.dtype), self.w.to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=w))
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(mu[y] + self.a * z, self.s), obs=x)

    def guide(self, x):
        logits = x[:, None] * torch.linspace(-1.0, 1.0, len(self.mu), dtype=x.dtype)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Normal(self.shrink * self._posterior_mean(x, y), 1.0))

    def exact_log_px(self, x):
        mu, w = self.mu.to(x.dtype), self.w.to(x.dtype)
        scale = math.sqrt(self.a**2 + self.s**2)
        return (w.log_softmax(-1) + dist.Normal(mu, scale).log_prob(x[:, None])).logsumexp(-1)


class MixturePrior:
    """A fixed mixture-of-Gaussians prior z ~ (1/K) sum_k N(m_k, diag S_k) (the VampPrior's
    form, with fixed components) and a linear-Gaussian decoder x | z ~ N(W z + b, s^2 I);
    guide q(z|x) = N(c (x - b) W + m, diag sd^2), factorized; the prior is not.

    Closed form, one Gaussian marginal per component (Bishop PRML eq. 2.115):
    p(x) = (1/K) sum_k N(x; W m_k + b, W diag(S_k) W^T + s^2 I).
    """

    means = ((-2.0, 0.5), (1.5, 1.0), (0.5, -1.5))  # m_k, K = 3 components in M = 2
    variances = ((0.3, 0.5), (1.0, 0.2), (0.4, 0.4))  # diag S_k
    W = ((1.0, -0.5), (0.3, 0.8), (-0.6, 0.4))  # D = 3
    b, noise = (0.2, -0.1, 0.0), 0.5

    def _tensors(self, x):
        return (
            torch.tensor(v, dtype=x.dtype) for v in (self.means, self.variances, self.W, self.b)
        )

    def prior(self, x):
        m, S, _, _ = self._tensors(x)
        uniform = dist.Categorical(logits=x.new_zeros(len(self.means)))
        components = dist.Normal(m, S.sqrt()).to_event(1)
        # torch's own mixture support has no biject_to (NUTS fails): the support rule
        return MixtureSameSupport(uniform, components).expand([x.shape[0]])

    def model(self, x):
        _, _, W, b = self._tensors(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Normal(z @ W.T + b, self.noise).to_event(1), obs=x)

    def guide(self, x):
        _, _, W, b = self._tensors(x)
        c, m = pyro.param("c", torch.tensor(0.5)), pyro.param("m", torch.zeros(2))
        sd = pyro.param("sd", torch.full((2,), 0.9), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * (x - b) @ W + m, sd).to_event(1))

    def exact_log_px(self, x):
        m, S, W, b = self._tensors(x)
        cov = W @ torch.diag_embed(S) @ W.T + self.noise**2 * torch.eye(len(self.b), dtype=x.dtype)
        per_component = dist.MultivariateNormal(m @ W.T + b, cov).log_prob(x[:, None])  # (N, K)
        return per_component.logsumexp(-1) - math.log(len(self.means))

    def sample(self, n):
        x = torch.zeros(n, len(self.b))
        _, _, W, b = self._tensors(x)
        z = self.prior(x).sample()
        return z @ W.T + b + self.noise * torch.randn(n, len(self.b))


# ------------------------------------------------------------------------------------------
# pairs the convention refuses (for per-datapoint tools), and others
# ------------------------------------------------------------------------------------------
class PositiveFeatures:
    """Data plate at dim -2, feature plate at -1, a positive latent and a deterministic site."""

    def model(self, x):
        rate = pyro.param("rate", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
            z = pyro.sample("z", dist.LogNormal(0.0, 1.0))
            pyro.deterministic("mean", rate * z)
            pyro.sample("x", dist.Normal(rate * z, 1.0), obs=x)

    def guide(self, x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
            pyro.sample("z", dist.LogNormal(loc + 0.1 * x, 0.5))


class GlobalMean:
    """A global latent w ~ N(0, 1) shared by all datapoints, x_i ~ N(w, 1); guide N(m, scale):
    trainable, but no per-datapoint evidence."""

    def __init__(self, m=0.0, scale=0.1):
        self.m0, self.scale = m, scale

    def model(self, x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    def guide(self, x):
        m = pyro.param("m", torch.tensor(self.m0))
        pyro.sample("w", dist.Normal(m, self.scale))


class GlobalAndLocal:
    """A global latent w beside a local z: w ~ N(0, 1), z_i ~ N(w, 1), x_i ~ N(z_i, 1)."""

    def model(self, x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(w, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.7))


class GlobalObservation:
    """A local latent z and an observed site of all the data outside the data plate; the
    guide is empty (z drawn from the prior, marked so for the pair doctor)."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0), infer={"from_prior": True})
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        pyro.sample("total", dist.Normal(0.0, 10.0), obs=x.sum())

    def guide(self, x):
        pass


class Plateless:
    """No data plate at all: x observed as one event."""

    def model(self, x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)

    def guide(self, x):
        pass


# ------------------------------------------------------------------------------------------
# the catalogue
# ------------------------------------------------------------------------------------------
def _pair(owner, x, *args, guide=None) -> Pair:
    return Pair(owner.model, guide or owner.guide, x, args, owner)


def _ppca() -> Pair:
    ppca = make_ppca()
    return Pair(ppca.model, ppca.guide, ppca.sample(20), (), ppca)


def _collapsed_log_px(pair: Pair) -> torch.Tensor:
    pair.model(pair.x)  # creates the parameters on a first call
    return pair.owner.to_ppca().log_marginal(pair.x)


def _log_normal() -> Pair:
    pair = LogNormalLatent()
    return _pair(pair, torch.randn(6), guide=pair.guide_shifted_by(0.0))  # the exact guide


def _vae(x, *args, cls=VAE, **kwargs) -> Callable[[], Pair]:
    def make():
        vae = cls(*args, **kwargs)
        return _pair(vae, x())

    return make


def _labelled(cls, labels: bool) -> Callable[[], Pair]:
    def make():
        pair = cls(16, 10, 3, (8,))
        x, y = torch.bernoulli(torch.rand(6, 16)), torch.tensor([0, 1, 2, 9, 9, 3])
        return _pair(pair, x, y) if labels else _pair(pair, x)

    return make


def _binary(n, d, p=None):
    return lambda: torch.bernoulli(torch.full((n, d), p) if p else torch.rand(n, d))


def case(name: str) -> Case:
    """The catalogue entry called ``name``."""
    return _BY_NAME[name]


# fmt: off
CATALOGUE = [
    # closed forms: exact log p(x) and an exact guide
    Case("ppca", _seeded(_ppca), lambda p: p.owner.log_marginal(p.x), _own_guide,
         trainable=False, guide_factorized=False),
    Case("ppca-params", _seeded(lambda: _pair(ParamPPCA(make_ppca()), torch.randn(8, 5))),
         _log_px, _own_guide, guide_factorized=False),
    Case("collapsed-ppca", _seeded(lambda: _pair(CollapsedPPCA(5, 2), torch.randn(10, 5))),
         _collapsed_log_px, _own_guide, latent=False),
    Case("linear-gaussian", _seeded(lambda: _pair(LinearGaussian(a=0.5, c=0.1), torch.randn(6))),
         _log_px, _owner("exact_guide")),
    Case("conjugate-gaussian", _seeded(lambda: _pair(ConjugateGaussian(), torch.randn(8))),
         _log_px, _owner("exact_guide")),
    Case("nested-plate", _seeded(lambda: _pair(NestedPlate(), torch.randn(6, 4))),
         _log_px, _own_guide, trainable=False),
    Case("sparse-loadings", _seeded(lambda: _pair(SparseLoadings(), torch.randn(6, 2))),
         _log_px, _owner("exact_guide")),
    Case("correlated-prior", _seeded(lambda: _pair(CorrelatedPrior(), torch.randn(6, 2))),
         _log_px, _owner("exact_guide"), prior_factorized=False),
    Case("mixture-prior", _seeded(lambda: _pair(MixturePrior(), MixturePrior().sample(6))),
         _log_px, prior_factorized=False),
    Case("two-site", _seeded(lambda: _pair(TwoSite(), torch.rand(10) + 0.1)),
         _log_px, _owner("exact_guide"), site="z1"),
    Case("deterministic-sites", _seeded(lambda: _pair(DeterministicSites(), torch.randn(6))),
         _log_px, _owner("exact_guide"), trainable=False),
    Case("log-normal", _seeded(_log_normal), _log_px, _own_guide, trainable=False),
    Case("mean-only", _seeded(lambda: _pair(MeanOnly(), torch.randn(6, 3))),
         _log_px, _own_guide, latent=False),
    Case("bernoulli-latent", _seeded(lambda: _pair(BernoulliLatent(), torch.randn(6))),
         _log_px, _owner("exact_guide"), reparameterized=False, continuous=False),
    Case("gaussian-mixture",
         _seeded(lambda: _pair(GaussianMixture(), torch.linspace(-4.0, 5.0, 7))),
         _log_px, lambda p: GaussianMixture(exact=True).guide,
         reparameterized=False, enumerated=True, continuous=False, site="y"),
    # no closed form
    Case("vae-bernoulli", _seeded(_vae(_binary(10, 12, 0.4), 12, latent_dim=3, hidden=(8,)))),
    Case("vae-gaussian",
         _seeded(_vae(lambda: torch.rand(6, 16), 16, 3, (8,), likelihood="gaussian"))),
    Case("vae-conv", _seeded(_vae(_binary(6, 784), 784, 3, (8,), arch="conv"))),
    Case("vae-iaf", _seeded(_vae(_binary(6, 16), 16, 3, (8,), flows=2)),
         guide_factorized=False),
    Case("vae-vamp", _seeded(_vae(_binary(6, 16), 16, 3, (8,), pseudo_inputs=4, cls=VampVAE)),
         prior_factorized=False),
    Case("positive-features", _seeded(lambda: _pair(PositiveFeatures(), torch.rand(6, 3)))),
    Case("cvae", _seeded(_labelled(CVAE, labels=True))),
    Case("m2-labelled", _seeded(_labelled(M2, labels=True))),  # y observed
    Case("m2-unlabelled", _seeded(_labelled(M2, labels=False)),  # y latent, enumerated
         reparameterized=False, enumerated=True),
    # refused by every per-datapoint tool
    Case("global-latent", _seeded(lambda: _pair(GlobalMean(), torch.randn(6))),
         refusal=GLOBAL, site="w"),
    Case("global-and-local", _seeded(lambda: _pair(GlobalAndLocal(), torch.randn(6))),
         refusal=GLOBAL, trainable=False),
    Case("global-observation", _seeded(lambda: _pair(GlobalObservation(), torch.randn(6))),
         refusal=(GlobalLatentError, "observed site 'total'"), trainable=False, latent=False),
    Case("plateless", _seeded(lambda: _pair(Plateless(), torch.randn(3, 2))),
         refusal=(GlobalLatentError, "no site at all is inside a plate named 'data'"),
         trainable=False, latent=False),
]
# fmt: on
_BY_NAME = {c.name: c for c in CATALOGUE}
assert len(_BY_NAME) == len(CATALOGUE), "catalogue names must be unique"
