"""Generative models as Pyro model/guide pairs (the convention is in docs/design.md).

- :class:`VAE`: the variational autoencoder of Kingma & Welling (2014), with the observation
  models of :mod:`pyro_vae.models.likelihoods` (:class:`BernoulliLikelihood`,
  :class:`GaussianLikelihood`, or a user's :class:`Likelihood`), and a diagonal Gaussian or
  (``flows=K``) inverse autoregressive flow guide.
- :class:`VampVAE`: the VAE with the VampPrior of Tomczak & Welling (2018), p(z) the mixture
  of the encoder's Gaussians at K learned pseudo-inputs (:mod:`pyro_vae.models.vamp`).
- :class:`IAFlow`: K conditional IAF steps (Kingma et al. 2016), the building block of a flow
  guide of one's own (:mod:`pyro_vae.models.flows`).
- :class:`CVAE`: the conditional VAE of Sohn et al. (2015), p(z) p_theta(x|z, y) and
  q_phi(z|x, y), called with labels ``(x, y)``.
- :class:`M2`: the semi-supervised model of Kingma et al. (2014), p(y) p(z) p_theta(x|y, z)
  and q_phi(y|x) q_phi(z|x, y), y observed or (enumerated) latent.
- :class:`LatentGaussianModel`: the base of VAE, CVAE and M2 (:mod:`pyro_vae.models.base`:
  p(z) = N(0, I) as the ``prior`` hook a subclass overrides, ``extend_config``, the
  likelihood and its registration, the config, the input checks), and
  :class:`LabelledLatentModel`, the base of CVAE and M2 (:mod:`pyro_vae.models.labelled`: the
  networks on [x, e_y] and [z, e_y], the label helpers).
- :class:`PPCA`: probabilistic PCA, whose posterior and evidence are exact;
  :class:`CollapsedPPCA`: its marginal, with z integrated out (no latent sites).
"""

from pyro_vae.models.base import LatentGaussianModel
from pyro_vae.models.conditional import CVAE
from pyro_vae.models.flows import IAFlow
from pyro_vae.models.labelled import LabelledLatentModel
from pyro_vae.models.likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood
from pyro_vae.models.m2 import M2
from pyro_vae.models.ppca import PPCA, CollapsedPPCA
from pyro_vae.models.vae import VAE
from pyro_vae.models.vamp import VampVAE

__all__ = [
    "CVAE",
    "M2",
    "PPCA",
    "IAFlow",
    "VAE",
    "VampVAE",
    "BernoulliLikelihood",
    "CollapsedPPCA",
    "GaussianLikelihood",
    "Likelihood",
    "LabelledLatentModel",
    "LatentGaussianModel",
]
