"""What the labelled models (CVAE, M2) share: label checks, e_y, the networks on [x, e_y], [z, e_y].

A labelled latent model reads a class label y in {0, ..., C-1} through its one-hot code e_y,
concatenated to the network inputs:

    z ~ p(z) = N(0, I)                            site "z"
    x ~ p_theta(x|z, y), params = f_theta([z, e_y]) site "x"
    z ~ q_phi(z|x, y) = N(mu, diag sigma^2), (mu, log sigma) = f_phi([x, e_y])

:class:`LabelledLatentModel` builds these two networks and the helpers that decode a code under
every label (the analogies of Kingma et al. 2014, fig. 1);
:class:`~pyro_vae.models.conditional.CVAE` (Sohn et al. 2015) and
:class:`~pyro_vae.models.m2.M2` (Kingma et al. 2014) add their own ``model`` and ``guide``.

Labels are integer tensors of shape (N,) (``torch.long``), as :class:`pyro_vae.data.ImageData`
holds them; :func:`check_labels` refuses anything else with one line.

References
----------
Sohn, K., Lee, H. and Yan, X. (2015). Learning Structured Output Representation using Deep
Conditional Generative Models. NeurIPS.
Kingma, D. P., Rezende, D. J., Mohamed, S. and Welling, M. (2014). Semi-Supervised Learning with
Deep Generative Models. NeurIPS.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch

from pyro_vae.models.base import LatentGaussianModel, check_model_args, make_likelihood
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.nets import Decoder, GaussianEncoder, check_positive_int

__all__ = ["LabelledLatentModel", "check_labels", "check_num_classes", "concat", "one_hot"]


def check_labels(y, num_data: int, num_classes: int) -> torch.Tensor:
    """Refuse labels that are not N integers in 0..C-1, with one line saying what is wrong.

    Parameters
    ----------
    y : torch.Tensor of shape (N,)
        Integer class labels.
    num_data : int
        N, the number of datapoints in ``x``.
    num_classes : int
        C.

    Returns
    -------
    torch.Tensor of shape (N,)
        ``y`` itself.

    Raises
    ------
    ValueError
        When ``y`` is None, not a 1-D integer tensor, holds another number of labels than
        ``x`` holds datapoints, or a label outside 0..C-1.
    """
    if y is None:
        raise ValueError(
            "this model is conditional: pass the labels y, a tensor of shape (N,), with x "
            "(e.g. log_evidence(model, guide, x, y) for log p(x|y))"
        )
    if not isinstance(y, torch.Tensor) or y.dim() != 1:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"labels y must be a tensor of shape (N,), got {shape}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"labels y must be integers (torch.long), got {y.dtype}")
    if y.shape[0] != num_data:
        raise ValueError(f"y holds {y.shape[0]} labels but x holds {num_data} datapoints")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got {int(y[bad][0])} "
            f"({int(bad.sum())} of {num_data} labels outside)"
        )
    return y


def one_hot(y: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """e_y: the one-hot code of integer labels, in the dtype and on the device of ``like``.

    Parameters
    ----------
    y : torch.Tensor of shape (...,)
        Integer labels, any batch shape (e.g. (C, 1) when enumerated, (S, N) under particles).
    num_classes : int
        C.
    like : torch.Tensor
        Gives the dtype and device.

    Returns
    -------
    torch.Tensor of shape (..., C)
    """
    # a comparison, not nn.functional.one_hot: that one reads y.min() and y.max() into Python,
    # a decision on the labels' values that a compiled step must guard on every batch
    classes = torch.arange(num_classes, device=y.device)
    return (y.unsqueeze(-1) == classes).to(like)


def concat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[a, b] along the last dimension, the other dimensions broadcast against each other.

    ``concat(x of shape (N, D), e_y of shape (C, 1, C))`` is ``(C, N, D + C)``: how one
    network reads a datapoint together with every enumerated (or sampled) label.

    Parameters
    ----------
    a : torch.Tensor of shape (..., A)
    b : torch.Tensor of shape (..., B)

    Returns
    -------
    torch.Tensor of shape (broadcast batch shape, A + B)
    """
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*batch, a.shape[-1]), b.expand(*batch, b.shape[-1])], dim=-1)


def check_num_classes(num_classes) -> int:
    """Refuse a number of classes that is not an integer C >= 2.

    Parameters
    ----------
    num_classes : int
        C.

    Returns
    -------
    int
        C.

    Raises
    ------
    ValueError
        When ``num_classes`` is not a positive integer, or is 1.
    """
    num_classes = check_positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return num_classes


class LabelledLatentModel(LatentGaussianModel):
    """Base of the CVAE and M2: the encoder q_phi(z|x, y) and decoder p_theta(x|z, y) on e_y.

    Networks (MLPs, ``activation`` after each hidden layer), built in this order: the encoder,
    [x, e_y] (D + C inputs) -> ``hidden`` -> (mu, log sigma); the decoder, [z, e_y] (M + C
    inputs) -> ``hidden`` reversed -> likelihood parameters. A subclass builds any further
    network after them, and writes ``model(x, y)`` and ``guide(x, y)``.

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
        The observation model, as for :class:`~pyro_vae.models.vae.VAE`.
    activation : str, default "relu"
        Hidden-layer nonlinearity.
    image_shape : sequence of two int, optional
        ``(H, W)`` with ``H * W == D`` (metadata, for plots).

    Raises
    ------
    ValueError
        For an argument :class:`~pyro_vae.models.vae.VAE` would refuse, or ``num_classes``
        below 2 (checked first).
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
    ):
        num_classes = check_num_classes(num_classes)
        data_dim, latent_dim, hidden, image_shape, _ = check_model_args(
            data_dim, latent_dim, hidden, likelihood, activation, "mlp", image_shape, 0
        )
        super().__init__(
            dict(
                data_dim=data_dim,
                num_classes=num_classes,
                latent_dim=latent_dim,
                hidden=hidden,
                likelihood=likelihood,
                activation=activation,
                image_shape=image_shape,
            )
        )
        likelihood = make_likelihood(likelihood, data_dim)
        self.num_classes, self.hidden, self.activation = num_classes, hidden, activation
        # before the networks: the labelled models' submodule (state_dict, parameters()) order
        self._set_likelihood(likelihood)
        # q_phi(z|x, y) reads [x, e_y]; p_theta(x|z, y) reads [z, e_y]
        self.encoder = GaussianEncoder(data_dim + num_classes, latent_dim, hidden, activation)
        out = likelihood.num_params(data_dim)
        self.decoder = Decoder(latent_dim + num_classes, out, tuple(reversed(hidden)), activation)

    def _q_z(self, x: torch.Tensor, y: torch.Tensor):
        """q_phi(z|x, y) = N(mu, diag sigma^2), (mu, log sigma) = f_phi([x, e_y])."""
        loc, scale = self.encoder(concat(x, one_hot(y, self.num_classes, x)))
        return dist.Normal(loc, scale).to_event(1)

    # ----- helpers (plain PyTorch, no Pyro sites) -----

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x|z, y] under p_theta(x|z, y), e.g. sigmoid(f_theta(z, e_y)) for Bernoulli pixels.

        Parameters
        ----------
        z : torch.Tensor of shape (..., N, M)
            Codes.
        y : torch.Tensor of shape (N,) or broadcastable to z's batch shape
            Integer labels.

        Returns
        -------
        torch.Tensor of shape (..., N, D)

        Raises
        ------
        ValueError
            When ``z`` is not a tensor of at least two dimensions ending in M, or its dtype or
            device differs from the decoder's parameters.
        """
        self._check_z(z)
        return self.likelihood.mean(self.decoder(concat(z, one_hot(y, self.num_classes, z))))

    def code(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The posterior mean mu_phi(x, y) of q_phi(z|x, y), one code per datapoint.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
        y : torch.Tensor of shape (N,)
            Integer labels in 0..C-1.

        Returns
        -------
        torch.Tensor of shape (N, M)

        Raises
        ------
        ValueError
            When ``x`` is not a tensor of shape ``(N, D)`` in the dtype and on the device of the
            encoder's parameters, or ``y`` is not N labels in 0..C-1 (:func:`check_labels`).
        """
        self._check_x(x, self.encoder, "encoder")
        y = check_labels(y, x.shape[0], self.num_classes)
        return self.encoder(concat(x, one_hot(y, self.num_classes, x)))[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | z = mu_phi(x, y), y]: decode the posterior mean under the same label.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
        y : torch.Tensor of shape (N,)
            Integer labels in 0..C-1.

        Returns
        -------
        torch.Tensor of shape (N, D)

        Raises
        ------
        ValueError
            As :meth:`code`.
        """
        return self.decode(self.code(x, y), y)

    @torch.no_grad()
    def sample_per_class(self, n: int) -> torch.Tensor:
        """Mean images of ``n`` draws z ~ p(z) decoded under every label, one row per class.

        The same ``n`` codes serve every class, so a column shows one "style" in every class.

        Parameters
        ----------
        n : int
            Draws per class.

        Returns
        -------
        torch.Tensor of shape (C * n, D)
            Row-major: the n images of class 0, then of class 1, ...

        Raises
        ------
        ValueError
            When ``n`` is not a positive integer.
        """
        z = self.sample_prior(n)  # checks n
        labels = torch.arange(self.num_classes, device=z.device)
        return self.decode(z.expand(self.num_classes, n, -1), labels[:, None]).reshape(
            -1, self.data_dim
        )

    @torch.no_grad()
    def analogies(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each datapoint's code mu_phi(x, y) decoded under every label (Kingma et al. 2014,
        fig. 1): the style of x in every class.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
        y : torch.Tensor of shape (N,)
            The labels used to encode.

        Returns
        -------
        torch.Tensor of shape (N, C, D)
            ``[n, c]`` is E[x | z = mu_phi(x_n, y_n), c].

        Raises
        ------
        ValueError
            As :meth:`code`.
        """
        z = self.code(x, y)  # (N, M)
        labels = torch.arange(self.num_classes, device=z.device)
        codes = z[:, None, :].expand(-1, self.num_classes, -1)  # (N, C, M)
        return self.decode(codes, labels.expand(x.shape[0], -1))
