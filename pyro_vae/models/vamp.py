"""The VAE with a VampPrior (Tomczak & Welling 2018): p(z) a mixture of the guide's posteriors.

Generative model (``model``)::

    z ~ p_lambda(z) = (1/K) sum_k q_phi(z | u_k)      site "z", K learned pseudo-inputs u_k
    x ~ p_theta(x|z)                                 site "x", as in the VAE

with q_phi(z|u) = N(mu_phi(u), diag sigma_phi(u)^2) the VAE's own encoder (Tomczak & Welling
2018, eq. 9: the "variational mixture of posteriors"), evaluated at K pseudo-inputs
u_1..u_K in data space that are learned with the rest. The guide is the VAE's Gaussian guide,
unchanged. The prior is an exact mixture (``MixtureSameFamily`` of a uniform ``Categorical`` and
K diagonal Gaussians, :class:`MixtureSameSupport`), so log p(z) and draws z ~ p(z) are exact,
and the ELBO's E_q[log p(z)] term sends gradient to the pseudo-inputs and to the encoder (phi
appears in both the prior and the guide, their sec. 3.2); the model registers both with
``pyro.module``.

References
----------
Tomczak, J. M. and Welling, M. (2018). VAE with a VampPrior. AISTATS.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.models.likelihoods import BernoulliLikelihood, Likelihood
from pyro_vae.models.vae import VAE
from pyro_vae.nets import check_positive_int

__all__ = ["MixtureSameSupport", "PseudoInputs", "VampVAE"]

#: The start of the pseudo-inputs' free parameters: N(PSEUDO_INIT_MEAN, PSEUDO_INIT_SD^2).
PSEUDO_INIT_MEAN, PSEUDO_INIT_SD = 0.05, 0.01


class MixtureSameSupport(dist.MixtureSameFamily):
    """Pyro's ``MixtureSameFamily`` whose support is its components' support.

    Torch gives a mixture the support ``MixtureSameFamilyConstraint(components' support)``,
    the same set but a constraint that ``torch.distributions.biject_to`` does not know, so NUTS
    (and anything that moves a model latent in the unconstrained space) fails on it with
    torch's ``NotImplementedError`` (the support rule, docs/design.md). Every component shares
    one support, so it is the mixture's: for Gaussian components the real vectors, whose
    bijection is the identity. Nothing else changes (``expand`` keeps the class).
    """

    @property
    def support(self):
        """The components' support (the same set as torch's, with a known bijection)."""
        return self._component_distribution.support


class PseudoInputs(nn.Module):
    """K learned pseudo-inputs u_k in data space, shape (K, D).

    Started as Tomczak & Welling start them for MNIST: small Gaussian noise around a constant
    (here N(0.05, 0.01^2)); for data in [0, 1] (``bounded``, the Bernoulli likelihood) the free
    parameters w are mapped by hardtanh into [0, 1], u = hardtanh(w), as their code does, so
    the encoder only ever sees inputs in the data's range. The constant lies inside (0, 1), so
    hardtanh passes gradient from the first step. Unbounded data (Gaussian) take u = w.

    Parameters
    ----------
    num : int
        K.
    data_dim : int
        D.
    bounded : bool
        Map into [0, 1] by hardtanh.
    """

    def __init__(self, num: int, data_dim: int, bounded: bool):
        super().__init__()
        self.weight = nn.Parameter(
            torch.empty(num, data_dim).normal_(PSEUDO_INIT_MEAN, PSEUDO_INIT_SD)
        )
        self.bounded = bounded

    def forward(self) -> torch.Tensor:
        """The pseudo-inputs u, a torch.Tensor of shape (K, D)."""
        return F.hardtanh(self.weight, 0.0, 1.0) if self.bounded else self.weight


class VampVAE(VAE):
    """A VAE whose prior is the VampPrior, p(z) = (1/K) sum_k q_phi(z | u_k).

    The VAE of :class:`~pyro_vae.models.vae.VAE` (the same networks, built in the same order
    from the same RNG draws, then the pseudo-inputs) with the prior of Tomczak & Welling
    (2018), eq. 9: the mixture of the encoder's Gaussian posteriors at K learned pseudo-inputs
    (:class:`PseudoInputs`). ``model``, ``guide``, ``sample`` and every tool use it through
    :meth:`prior`.

    Default K. Tomczak & Welling use K = 500 pseudo-inputs for MNIST's 50,000 training images,
    one per 100 images; MNIST-5k's 4,500 training images at that rate give 45, rounded to
    K = 50.

    Parameters
    ----------
    data_dim, latent_dim, hidden, likelihood, activation, arch, image_shape
        As for :class:`~pyro_vae.models.vae.VAE`.
    flows : int, default 0
        Must be 0: the VampPrior is a mixture of the guide's Gaussians, and an IAF guide's
        density at the pseudo-inputs is no Gaussian (scoring it means inverting the flow).
    pseudo_inputs : int, default 50
        K, the number of pseudo-inputs (mixture components).

    Raises
    ------
    ValueError
        For an argument :class:`VAE` refuses, ``pseudo_inputs`` that is not a positive integer
        (0, -1, a bool or a float), or ``flows`` above 0.
    """

    prior_factorizes = False  # a mixture: its KL does not split by latent dimension

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 20,
        hidden: Sequence[int] = (400,),
        likelihood: str | Likelihood = "bernoulli",
        activation: str = "relu",
        arch: str = "mlp",
        image_shape: Sequence[int] | None = None,
        flows: int = 0,
        pseudo_inputs: int = 50,
    ):
        num = check_positive_int("pseudo_inputs", pseudo_inputs)  # before any RNG draw
        if isinstance(flows, numbers.Integral) and not isinstance(flows, bool) and flows > 0:
            raise ValueError(
                f"flows must be 0 for VampVAE, got {flows}: the VampPrior mixes the guide's "
                "Gaussians q(z|u_k), and an IAF guide has no Gaussian density at u_k"
            )
        super().__init__(data_dim, latent_dim, hidden, likelihood, activation, arch, image_shape)
        self.extend_config(pseudo_inputs=num)
        # built last: a seed gives the VAE's networks, then the pseudo-inputs
        bounded = isinstance(self.likelihood, BernoulliLikelihood)
        self.pseudo_inputs = PseudoInputs(num, self.data_dim, bounded)

    def vamp_prior(self, n: int) -> dist.TorchDistribution:
        """The VampPrior (1/K) sum_k N(mu_phi(u_k), diag sigma_phi(u_k)^2), batch shape (n,).

        Plain PyTorch (no Pyro site, nothing registered): :meth:`prior` is the model's hook.

        Parameters
        ----------
        n : int
            The batch size N.

        Returns
        -------
        MixtureSameSupport
            Batch shape (n,), event shape (M,): a uniform ``Categorical`` over K components,
            each an ``Independent(Normal(loc_k, scale_k), 1)``.
        """
        loc, scale = self.encoder(self.pseudo_inputs())  # (K, M) each
        uniform = dist.Categorical(logits=loc.new_zeros(loc.shape[0]))
        mixture = MixtureSameSupport(uniform, dist.Normal(loc, scale).to_event(1))
        return mixture.expand([n])

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z) = (1/K) sum_k q_phi(z | u_k) for the batch ``x`` (Tomczak & Welling 2018, eq. 9).

        Registers the encoder and the pseudo-inputs with ``pyro.module``: both are parameters
        of the prior, so the model's log p(z) term trains them.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
            The data batch: gives N.

        Returns
        -------
        MixtureSameSupport
            Batch shape (N,), event shape (M,) (:meth:`vamp_prior`).
        """
        pyro.module("encoder", self.encoder)
        pyro.module("pseudo_inputs", self.pseudo_inputs)
        return self.vamp_prior(x.shape[0])
