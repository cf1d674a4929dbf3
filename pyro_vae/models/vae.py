"""The variational autoencoder as a Pyro model/guide pair (Kingma & Welling 2014; 2019, ch. 2).

Generative model (``model``), a deep latent variable model (K&W 2019, sec. 1.7):

    z ~ p(z) = N(0, I)                      site "z"
    x ~ p_theta(x|z), params = f_theta(z)   site "x", e.g. Bernoulli(logits = f_theta(z))

Inference model (``guide``), the amortized approximate posterior (K&W 2019, sec. 2.1, 2.5):

    (mu, log sigma) = f_phi(x)
    z ~ q_phi(z|x) = N(mu, diag sigma^2)    site "z", reparameterized: z = mu + sigma * eps

Pyro's ``Trace_ELBO`` then estimates the ELBO (K&W 2019, sec. 2.2)
E_q[log p_theta(x, z) - log q_phi(z|x)] <= log p_theta(x) per datapoint, and its gradient with
the reparameterization trick (sec. 2.4), exactly Algorithm 2 of K&W 2019 for the Bernoulli case.

To write your own pair, copy ``model`` and ``guide``: keep every per-datapoint site inside
``pyro.plate("data", N)``, declare the pixel/latent dimension with ``.to_event(1)``, and
register networks with ``pyro.module``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.models.likelihoods import Likelihood, get_likelihood
from pyro_vae.nets import ARCHS, Decoder, GaussianEncoder, check_hidden, check_image_shape

__all__ = ["VAE"]


def _check_args(data_dim, latent_dim, hidden, arch, image_shape):
    """Validate the VAE's size arguments; return ``hidden`` as a tuple and ``image_shape``."""
    for name, value in (("data_dim", data_dim), ("latent_dim", latent_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    hidden = check_hidden(hidden)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    if arch == "conv":
        return hidden, check_image_shape(data_dim, image_shape)
    if image_shape is not None:  # only metadata for an MLP (e.g. for plotting)
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 2 or image_shape[0] * image_shape[1] != data_dim:
            raise ValueError(f"image_shape {image_shape} does not match data_dim={data_dim}")
    return hidden, image_shape


class VAE(nn.Module):
    """Variational autoencoder with a N(0, I) prior and a diagonal Gaussian encoder.

    Args:
        data_dim: number of pixels D (data are flattened, shape ``(N, D)``).
        latent_dim: dimension M of z.
        hidden: hidden layer sizes of the encoder MLP; the decoder uses them reversed
            (``(400,)`` gives the classic 784-400-20 net).
        likelihood: "bernoulli" (logits; binary or [0, 1] data), "gaussian" (learned per-pixel
            scale) or a :class:`~pyro_vae.models.likelihoods.Likelihood` instance.
        activation: hidden-layer nonlinearity, see :data:`pyro_vae.nets.ACTIVATIONS`.
        arch: "mlp" or "conv" (two stride-2 convolutions for single-channel images).
        image_shape: ``(H, W)`` with ``H * W == D``; for "conv", defaults to a square image.

    ``model(x)`` and ``guide(x)`` take ``x`` of shape ``(N, D)`` and also run vectorized under an
    outer ``pyro.plate("particles", S, dim=-2)``, where z has shape ``(S, N, M)``.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 20,
        hidden: Sequence[int] = (400,),
        likelihood: str | Likelihood = "bernoulli",
        activation: str = "relu",
        arch: str = "mlp",
        image_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        hidden, image_shape = _check_args(data_dim, latent_dim, hidden, arch, image_shape)
        self._config = dict(
            data_dim=data_dim,
            latent_dim=latent_dim,
            hidden=hidden,
            likelihood=likelihood,
            activation=activation,
            arch=arch,
            image_shape=image_shape,
        )
        if not isinstance(likelihood, Likelihood):
            likelihood = get_likelihood(likelihood, data_dim)
        self.data_dim, self.latent_dim, self.image_shape = data_dim, latent_dim, image_shape
        net = dict(activation=activation, arch=arch, image_shape=image_shape)
        self.encoder = GaussianEncoder(data_dim, latent_dim, hidden, **net)
        out = likelihood.num_params(data_dim)
        self.decoder = Decoder(latent_dim, out, tuple(reversed(hidden)), **net)
        self.likelihood = likelihood
        self._likelihood_has_params = any(True for _ in likelihood.parameters())

    @property
    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture: ``VAE(**vae.config)``.

        A likelihood given as an instance is deep-copied, so the rebuilt VAE owns its own.
        """
        config = dict(self._config)
        if isinstance(config["likelihood"], Likelihood):
            config["likelihood"] = copy.deepcopy(config["likelihood"])
        return config

    def model(self, x: torch.Tensor) -> None:
        """p_theta(x, z) = p(z) p_theta(x|z) for a batch ``x`` of shape ``(N, D)``."""
        pyro.module("decoder", self.decoder)
        if self._likelihood_has_params:
            pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            # p(z) = N(z; 0, I), batch (N,), event (M,): scalar 0 and 1 on x's device, expanded
            # (not copied); constants, so argument validation is skipped
            prior = dist.Normal(x.new_zeros(()), x.new_ones(()), validate_args=False)
            z = pyro.sample("z", prior.expand([x.shape[0], self.latent_dim]).to_event(1))
            # p_theta(x|z) with parameters f_theta(z) (K&W 2019, Alg. 2: Bernoulli logits);
            # z may be (S, N, M) under an outer particle plate
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q_phi(z|x) = N(z; mu, diag sigma^2) with (mu, log sigma) = f_phi(x)."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            # reparameterized draw z = mu + sigma * eps, eps ~ N(0, I) (K&W 2019, sec. 2.4)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ----- helpers (plain PyTorch, no Pyro sites) -----

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(loc, scale)``, each ``(..., M)``, for ``x`` of ``(..., D)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood mean E[x|z], ``(..., D)``, e.g. sigmoid(logits) for Bernoulli."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the encoder mean: E[x | z = mu_phi(x)], shape of ``x``."""
        return self.decode(self.encoder(x)[0])

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Mean images ``(n, D)`` of ``n`` draws z ~ p(z) = N(0, I) (uses the torch RNG)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        weight = next(self.decoder.parameters())
        z = torch.randn(n, self.latent_dim, dtype=weight.dtype, device=weight.device)
        return self.decode(z)
