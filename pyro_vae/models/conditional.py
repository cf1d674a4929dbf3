"""The conditional VAE as a Pyro model/guide pair (Sohn, Lee & Yan 2015).

Generative model (``model(x, y)``), conditioned on a class label y in {0, ..., C-1} (one-hot
e_y inside the networks):

    z ~ p(z) = N(0, I)                            site "z" (the prior does not depend on y)
    x ~ p_theta(x|z, y), params = f_theta(z, e_y)  site "x"

Inference model (``guide(x, y)``):

    (mu, log sigma) = f_phi(x, e_y)
    z ~ q_phi(z|x, y) = N(mu, diag sigma^2)       site "z", reparameterized

Its ELBO bounds the conditional evidence, E_q[log p_theta(x|z, y) + log p(z) - log q_phi(z|x,
y)] <= log p_theta(x|y) (Sohn et al. 2015, eq. 4, with p(z|y) = p(z)), so the unchanged
``log_evidence(cvae.model, cvae.guide, x, y)`` estimates log p(x|y) per datapoint. We choose the
fixed prior N(0, I): the label then only enters through the networks, and one code z decoded
under every label carries the same "style" across classes (the analogies of Kingma et al.
2014, fig. 1).

Labels are integer tensors of shape (N,) (``torch.long``), as :class:`pyro_vae.data.ImageData`
holds them; :func:`~pyro_vae.models.labelled.check_labels` refuses anything else with one line.
It, :func:`~pyro_vae.models.labelled.one_hot` and :func:`~pyro_vae.models.labelled.concat` are
defined in :mod:`pyro_vae.models.labelled` (with the networks the CVAE shares with M2) and can
be imported from here as well.

References
----------
Sohn, K., Lee, H. and Yan, X. (2015). Learning Structured Output Representation using Deep
Conditional Generative Models. NeurIPS.
Kingma, D. P., Rezende, D. J., Mohamed, S. and Welling, M. (2014). Semi-Supervised Learning with
Deep Generative Models. NeurIPS.
"""

from __future__ import annotations

import pyro
import torch

# check_labels, concat and one_hot live in labelled.py; imported from here too (their old home)
from pyro_vae.models.labelled import LabelledLatentModel, check_labels, concat, one_hot

__all__ = ["CVAE", "check_labels", "concat", "one_hot"]


class CVAE(LabelledLatentModel):
    """Conditional VAE (Sohn, Lee & Yan 2015): p(z) p_theta(x|z, y) and q_phi(z|x, y).

    ``model(x, y)`` and ``guide(x, y)`` take images ``x`` of shape (N, D) and integer labels
    ``y`` of shape (N,); they also run vectorized under an outer particle plate (dim -2),
    where z has shape (S, N, M). Networks: encoder MLP on [x, e_y] (D + C inputs), decoder MLP
    on [z, e_y] (M + C inputs), ``hidden`` and ``hidden`` reversed as in :class:`VAE`.

    Parameters
    ----------
    data_dim : int
        Number of pixels D.
    num_classes : int, default 10
        Number of labels C >= 2.
    latent_dim : int, default 20
        Dimension M of z.
    hidden : int or sequence of int, default (400,)
        Hidden layer sizes of the encoder MLP; the decoder uses them reversed.
    likelihood : {"bernoulli", "gaussian"} or Likelihood, default "bernoulli"
        The observation model, as for :class:`VAE`.
    activation : str, default "relu"
        Hidden-layer nonlinearity.
    image_shape : sequence of two int, optional
        ``(H, W)`` with ``H * W == D`` (metadata, for plots).

    Raises
    ------
    ValueError
        For an argument :class:`VAE` would refuse, or ``num_classes`` below 2.
    """

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(z) p_theta(x|z, y): site "z" from N(0, I), site "x" observed, in plate "data".

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
            Images, in the dtype and on the device of the parameters.
        y : torch.Tensor of shape (N,)
            Integer labels in 0..C-1 (required: the model is conditional).

        Raises
        ------
        ValueError
            Bad ``x``; ``y`` missing, of another length, or outside 0..C-1.
        """
        self._check_x(x, self.decoder, "decoder")
        y = check_labels(y, x.shape[0], self.num_classes)
        self._register_decoder()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            # p_theta(x|z, y) with parameters f_theta([z, e_y]) (Sohn et al. 2015, sec. 4)
            logits = self.decoder(concat(z, one_hot(y, self.num_classes, x)))
            pyro.sample("x", self.likelihood(logits), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q_phi(z|x, y) = N(mu, diag sigma^2) with (mu, log sigma) = f_phi([x, e_y]).

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
        y : torch.Tensor of shape (N,)
            Integer labels in 0..C-1.

        Raises
        ------
        ValueError
            As :meth:`model`.
        """
        self._check_x(x, self.encoder, "encoder")
        y = check_labels(y, x.shape[0], self.num_classes)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self._q_z(x, y))
