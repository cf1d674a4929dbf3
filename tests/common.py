"""Shared test helpers, e.g. ``from common import LinearGaussian, requires_cuda``."""

import pyro
import pyro.distributions as dist
import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class LinearGaussian:
    """z ~ N(0, 1), x | z ~ N(a z, 1); guide q(z|x) = N(c x, s). Evidence: x ~ N(0, a^2 + 1).

    A pair written only in the tests, to show the tools know nothing of our models; ``a`` and
    ``c`` are the initial parameter values (one scalar latent per datapoint).
    """

    def __init__(self, a=0.1, c=0.0):
        self.a0, self.c0 = a, c

    def model(self, x):
        a = pyro.param("a", torch.tensor(self.a0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(a * z, 1.0), obs=x)

    def guide(self, x):
        c = pyro.param("c", torch.tensor(self.c0))
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * x, s))


def bernoulli_latent_pair():
    """A pair whose latent z ~ Bernoulli has no reparameterized draw: (model, guide)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(p))

    return model, guide


class GaussianMixture:
    """y ~ Cat(softmax(w)), x | y ~ N(mu_y, 1); guide q(y|x) = Cat(softmax(a x + b)), y marked
    for parallel enumeration. A discrete-latent pair written only in the tests.

    Closed forms: log p(x) = logsumexp_y [log p(y) + log N(x; mu_y, 1)], and for any q the ELBO
    sum_y q(y|x) [log p(y) + log N(x; mu_y, 1) - log q(y|x)]. With ``exact=True`` the guide is
    the posterior p(y|x) itself (read from the model's parameters), so every importance weight
    equals p(x).
    """

    def __init__(self, mu=(-2.0, 0.0, 3.0), exact=False):
        self.mu0, self.exact = torch.tensor(mu), exact

    def params(self):
        k = self.mu0.numel()
        mu = pyro.param("mu", self.mu0.to(torch.get_default_dtype()))
        w = pyro.param("w", torch.linspace(-0.5, 0.5, k))
        return mu, w

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

    def exact_elbo(self, x):
        log_q = self.q_logits(x).log_softmax(-1)
        return (log_q.exp() * (self.joint(x) - log_q)).sum(-1)
