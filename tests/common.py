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
