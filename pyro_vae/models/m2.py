"""The M2 semi-supervised model (Kingma, Rezende, Mohamed & Welling 2014, sec. 3.1.2).

Generative model (``model(x, y=None)``)::

    y ~ p(y) = Cat(1/C, ..., 1/C)                site "y" (observed when labels are given)
    z ~ p(z) = N(0, I)                           site "z"
    x ~ p_theta(x|y, z), params = f_theta(z, e_y) site "x"

Inference model (``guide(x, y=None)``), their eq. 4::

    y ~ q_phi(y|x) = Cat(softmax(g_phi(x)))      site "y", only when y is not given; marked
                                                 infer={"enumerate": "parallel"}
    z ~ q_phi(z|x, y) = N(mu_phi(x, y), diag sigma_phi(x, y)^2)   site "z"

Labelled datapoints (``y`` given) have the bound -L(x, y) of their eq. 6; unlabelled ones
(``y=None``) the bound -U(x) of eq. 7, in which ``TraceEnum_ELBO`` (``loss="enum"``) sums y out
exactly, U(x) = sum_y q(y|x) (L(x, y) + ... ) + H(q(y|x)), instead of sampling it. Labelled
data also get the classification term alpha * -log q_phi(y|x) of eq. 9
(:meth:`M2.classifier_nll`, added by :class:`~pyro_vae.infer.objectives.auxiliary.AuxiliaryTerm`).
Training on their J^alpha, divided by the number of datapoints, takes ``loss="enum"`` for the
unlabelled stream and, for the labelled one, that classification term with weight
alpha / N_l, so that summed over the N_l labelled datapoints it is
alpha * E_{p~_l}[-log q_phi(y|x)], as in their eq. 9 (they use alpha = 0.1 N, N the size of
the whole training set; the command line's default is Pyro's SS-VAE example's 46 per labelled
image). The recipe is written once, in :mod:`pyro_vae.runs.recipes` (``m2_alpha``,
``m2_labelled_stream``), which the command line and the experiments use; the trainer takes
the two streams in alternate steps (:class:`~pyro_vae.infer.training.options.LabelledStream`).

The evidence tools see the pure pair: ``log_evidence(m2.model, m2.guide, x)`` samples y from
q(y|x) as part of its proposal and estimates log p(x); with labels,
``log_evidence(m2.model, m2.guide, x, y)`` estimates log p(x, y) = log p(y) + log p(x|y),
so log p(x) = logsumexp_y log p(x, y) (the test checks the two agree).

References
----------
Kingma, D. P., Rezende, D. J., Mohamed, S. and Welling, M. (2014). Semi-Supervised Learning with
Deep Generative Models. NeurIPS.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.models.labelled import LabelledLatentModel, check_labels, concat, one_hot
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.nets import MLP, check_init, init_hidden_layers

__all__ = ["M2"]


class M2(LabelledLatentModel):
    """The M2 model: p(y) p(z) p_theta(x|y, z), guide q_phi(y|x) q_phi(z|x, y).

    ``model(x, y=None)`` and ``guide(x, y=None)`` take images ``x`` of shape (N, D) and,
    for labelled data, integer labels ``y`` of shape (N,). Without ``y`` the label is a latent
    site "y" that the guide draws from q_phi(y|x), marked for parallel enumeration; both run
    under ``TraceEnum_ELBO`` (y of shape (C, 1)) and under an outer particle plate at dim -2
    (y of shape (S, N), z of shape (S, N, M)).

    Networks (MLPs, ``activation`` after each hidden layer): the classifier g_phi,
    D -> ``hidden`` -> C logits; the encoder, [x, e_y] (D + C) -> ``hidden`` -> (mu, log
    sigma); the decoder, [z, e_y] (M + C) -> ``hidden`` reversed -> likelihood parameters.

    Parameters
    ----------
    data_dim : int
        Number of pixels D.
    num_classes : int, default 10
        Number of labels C >= 2.
    latent_dim : int, default 20
        Dimension M of z.
    hidden : int or sequence of int, default (400,)
        Hidden layer sizes of the classifier and encoder; the decoder uses them reversed.
    likelihood : {"bernoulli", "gaussian"} or Likelihood, default "bernoulli"
        The observation model, as for :class:`VAE`.
    activation : str, default "relu"
        Hidden-layer nonlinearity.
    image_shape : sequence of two int, optional
        ``(H, W)`` with ``H * W == D`` (metadata, for plots).
    init : {"small", "torch"}, default "small"
        Start weights of the three networks (:func:`pyro_vae.nets.init_hidden_layers`):
        ``"small"`` draws the hidden layers from N(0, 0.001^2), as Pyro's SS-VAE example
        does; ``"torch"`` keeps PyTorch's default. The measured difference is in
        ``experiments/semi_supervised.py`` (docs/results/semi_supervised.md).

    Raises
    ------
    ValueError
        For an argument :class:`VAE` would refuse, ``num_classes`` below 2 or an unknown
        ``init``.
    """

    def __init__(
        self,
        data_dim: int,
        num_classes: int = 10,
        latent_dim: int = 20,
        hidden: Sequence[int] = (400,),
        likelihood: str | Likelihood = "bernoulli",
        activation: str = "relu",
        image_shape: Sequence[int] | None = None,
        init: str = "small",
    ):
        check_init(init)  # before the networks are built
        super().__init__(
            data_dim, num_classes, latent_dim, hidden, likelihood, activation, image_shape
        )
        self.extend_config(init=init)
        # g_phi(x): the logits of q_phi(y|x), built last (after encoder and decoder)
        self.classifier = MLP(self.data_dim, self.hidden, self.num_classes, self.activation)
        init_hidden_layers(self, init)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(y) p(z) p_theta(x|y, z) (Kingma et al. 2014, eq. 3), in ``pyro.plate("data", N)``.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
            Images, in the dtype and on the device of the parameters.
        y : torch.Tensor of shape (N,), optional
            Integer labels in 0..C-1: site "y" is then observed; without them it is latent.

        Raises
        ------
        ValueError
            Bad ``x``, or ``y`` of another length than ``x`` or outside 0..C-1.
        """
        self._check_x(x, self.decoder, "decoder")
        if y is not None:
            check_labels(y, x.shape[0], self.num_classes)
        self._register_decoder()
        with pyro.plate("data", x.shape[0]):
            # p(y) = Cat(1/C, ..., 1/C): uniform logits
            prior_y = dist.Categorical(logits=x.new_zeros(self.num_classes))
            y = pyro.sample("y", prior_y.expand([x.shape[0]]), obs=y)
            z = pyro.sample("z", self.prior(x))
            # p_theta(x|y, z) with parameters f_theta([z, e_y]); y may be enumerated (C, 1)
            # or sampled (S, N), z (C, N, M) or (S, N, M): concat broadcasts them
            logits = self.decoder(concat(z, one_hot(y, self.num_classes, x)))
            pyro.sample("x", self.likelihood(logits), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q_phi(y|x) q_phi(z|x, y) (Kingma et al. 2014, eq. 4); q(y|x) only without ``y``.

        Registers the classifier on every call (so its parameters exist from the first batch
        of either stream).

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
        y : torch.Tensor of shape (N,), optional
            Integer labels in 0..C-1; without them site "y" is drawn from q_phi(y|x), marked
            ``infer={"enumerate": "parallel"}`` (as ``pyro.infer.config_enumerate`` would).

        Raises
        ------
        ValueError
            As :meth:`model`.
        """
        self._check_x(x, self.encoder, "encoder")
        if y is not None:
            check_labels(y, x.shape[0], self.num_classes)
        pyro.module("encoder", self.encoder)
        pyro.module("classifier", self.classifier)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                q_y = dist.Categorical(logits=self.classifier(x))
                y = pyro.sample("y", q_y, infer={"enumerate": "parallel"})
            pyro.sample("z", self._q_z(x, y))

    # ----- the classification term and predictions (plain PyTorch) -----

    def classifier_nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log q_phi(y_n|x_n) per datapoint, differentiable: the term of eq. 9.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
        y : torch.Tensor of shape (N,)
            Integer labels in 0..C-1.

        Returns
        -------
        torch.Tensor of shape (N,)
            Nats.
        """
        self._check_x(x, self.classifier, "classifier")
        y = check_labels(y, x.shape[0], self.num_classes)
        return torch.nn.functional.cross_entropy(self.classifier(x), y, reduction="none")

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_y q_phi(y|x) per datapoint.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)

        Returns
        -------
        torch.Tensor of shape (N,)
            Integer labels.
        """
        self._check_x(x, self.classifier, "classifier")
        return self.classifier(x).argmax(-1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The fraction of ``x`` whose :meth:`predict` equals ``y``.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
        y : torch.Tensor of shape (N,)

        Returns
        -------
        float
            In [0, 1].
        """
        y = check_labels(y, x.shape[0], self.num_classes)
        return (self.predict(x) == y.to(x.device)).double().mean().item()
