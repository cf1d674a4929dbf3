"""Generative models as Pyro model/guide pairs."""

from pyro_vae.models.likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood
from pyro_vae.models.ppca import PPCA, CollapsedPPCA
from pyro_vae.models.vae import VAE

__all__ = [
    "PPCA",
    "VAE",
    "BernoulliLikelihood",
    "CollapsedPPCA",
    "GaussianLikelihood",
    "Likelihood",
]
