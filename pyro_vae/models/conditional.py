"""The conditional VAE as a Pyro model/guide pair (Sohn, Lee & Yan 2015), and its label helpers.

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
holds them; :func:`check_labels` refuses anything else with one line.

References
----------
Sohn, K., Lee, H. and Yan, X. (2015). Learning Structured Output Representation using Deep
Conditional Generative Models. NeurIPS.
Kingma, D. P., Rezende, D. J., Mohamed, S. and Welling, M. (2014). Semi-Supervised Learning with
Deep Generative Models. NeurIPS.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.models.likelihoods import Likelihood, get_likelihood
from pyro_vae.models.vae import _check_args, _check_tensor
from pyro_vae.nets import Decoder, GaussianEncoder, check_positive_int

__all__ = ["CVAE", "check_labels", "concat", "one_hot"]


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
    return nn.functional.one_hot(y, num_classes).to(like)


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


def _check_num_classes(num_classes) -> int:
    num_classes = check_positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return num_classes


class _LabelledVAE(nn.Module):
    """What the CVAE and M2 share: validated arguments, the decoder p_theta(x|z, y), helpers."""

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
        super().__init__()
        num_classes = _check_num_classes(num_classes)
        data_dim, latent_dim, hidden, image_shape, _ = _check_args(
            data_dim, latent_dim, hidden, likelihood, activation, "mlp", image_shape, 0
        )
        self._config = dict(
            data_dim=data_dim,
            num_classes=num_classes,
            latent_dim=latent_dim,
            hidden=hidden,
            likelihood=likelihood,
            activation=activation,
            image_shape=image_shape,
        )
        if not isinstance(likelihood, Likelihood):
            likelihood = get_likelihood(likelihood, data_dim)
        self.data_dim, self.num_classes, self.latent_dim = data_dim, num_classes, latent_dim
        self.image_shape, self.hidden, self.activation = image_shape, hidden, activation
        self.likelihood = likelihood
        self._likelihood_has_params = any(True for _ in likelihood.parameters())
        # q_phi(z|x, y) reads [x, e_y]; p_theta(x|z, y) reads [z, e_y]
        self.encoder = GaussianEncoder(data_dim + num_classes, latent_dim, hidden, activation)
        out = likelihood.num_params(data_dim)
        self.decoder = Decoder(latent_dim + num_classes, out, tuple(reversed(hidden)), activation)

    @property
    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture: ``type(m)(**m.config)``.

        Returns
        -------
        dict
            ``data_dim``, ``num_classes``, ``latent_dim``, ``hidden``, ``likelihood``,
            ``activation`` and ``image_shape`` (a likelihood instance is deep-copied).
        """
        config = dict(self._config)
        if isinstance(config["likelihood"], Likelihood):
            config["likelihood"] = copy.deepcopy(config["likelihood"])
        return config

    def _weight(self, net: nn.Module) -> torch.Tensor:
        return next(net.parameters())

    def _check_x(self, x, net: nn.Module, what: str) -> None:
        _check_tensor("x", x, self.data_dim, self._weight(net), False, what)

    def _register_decoder(self) -> None:
        pyro.module("decoder", self.decoder)
        if self._likelihood_has_params:
            pyro.module("likelihood", self.likelihood)

    def _prior_z(self, x: torch.Tensor):
        """p(z) = N(0, I) with batch shape (N,) and event shape (M,), on x's device."""
        prior = dist.Normal(x.new_zeros(()), x.new_ones(()), validate_args=False)
        return prior.expand([x.shape[0], self.latent_dim]).to_event(1)

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
        """
        weight = self._weight(self.decoder)
        _check_tensor("z", z, self.latent_dim, weight, True, "decoder")
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
        """
        self._check_x(x, self.encoder, "encoder")
        y = check_labels(y, x.shape[0], self.num_classes)
        return self.encoder(concat(x, one_hot(y, self.num_classes, x)))[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | z = mu_phi(x, y), y]: decode the posterior mean under the same label.

        Returns
        -------
        torch.Tensor of shape (N, D)
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
        """
        n = check_positive_int("n", n)
        weight = self._weight(self.decoder)
        z = torch.randn(n, self.latent_dim, dtype=weight.dtype, device=weight.device)
        labels = torch.arange(self.num_classes, device=weight.device)
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
        """
        z = self.code(x, y)  # (N, M)
        labels = torch.arange(self.num_classes, device=z.device)
        codes = z[:, None, :].expand(-1, self.num_classes, -1)  # (N, C, M)
        return self.decode(codes, labels.expand(x.shape[0], -1))


class CVAE(_LabelledVAE):
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
            z = pyro.sample("z", self._prior_z(x))
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
