"""The variational autoencoder as a Pyro model/guide pair (Kingma & Welling 2014; 2019, ch. 2).

Generative model (``model``), a deep latent variable model (Kingma & Welling 2014, sec. 3;
2019, sec. 1.7):

    z ~ p(z) = N(0, I)                      site "z"
    x ~ p_theta(x|z), params = f_theta(z)   site "x", e.g. Bernoulli(logits = f_theta(z))

Inference model (``guide``), the amortized approximate posterior (2014, sec. 3 and
Appendix C.2; 2019, sec. 2.1, 2.5):

    (mu, log sigma) = f_phi(x)
    z ~ q_phi(z|x) = N(mu, diag sigma^2)    site "z", reparameterized: z = mu + sigma * eps

or, with ``flows=K >= 1``, an inverse autoregressive flow (Kingma et al. 2016, sec. 4; the
block is :class:`pyro_vae.models.flows.IAFlow`): the encoder also emits a context h(x) and ::

    (mu, log sigma, h) = f_phi(x)
    z0 ~ N(mu, diag sigma^2),  z_k = m_k(z_{k-1}, h) + s_k(z_{k-1}, h) * z_{k-1},  k = 1..K
    z = z_K                                 site "z", reparameterized
    log q_phi(z|x) = log N(z0; mu, diag sigma^2) - sum_k log |det dz_k/dz_{k-1}|

Pyro's ``Trace_ELBO`` then estimates the ELBO of Kingma & Welling (2014), eq. 3,
E_q[log p_theta(x, z) - log q_phi(z|x)] <= log p_theta(x) per datapoint, and its gradient with
the reparameterization trick (2014, sec. 2.4; 2019, sec. 2.4): for the Bernoulli case exactly
Algorithm 2 of Kingma & Welling (2019); ``TraceMeanField_ELBO`` gives the analytic-KL form of
Kingma & Welling (2014), eq. 10.

To write your own pair, copy ``model`` and ``guide``: keep every per-datapoint site inside
``pyro.plate("data", N)``, declare the pixel/latent dimension with ``.to_event(1)``, and
register networks with ``pyro.module`` (the convention is in docs/design.md).

References
----------
Kingma, D. P. and Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
Kingma, D. P. and Welling, M. (2019). An Introduction to Variational Autoencoders. Foundations
and Trends in Machine Learning 12(4).
Kingma, D. P., Salimans, T., Jozefowicz, R., Chen, X., Sutskever, I. and Welling, M. (2016).
Improving Variational Inference with Inverse Autoregressive Flow. NeurIPS.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.models.base import LatentGaussianModel, check_model_args, make_likelihood
from pyro_vae.models.flows import IAFlow
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.nets import Decoder, GaussianEncoder

__all__ = ["VAE"]


class VAE(LatentGaussianModel):
    """Variational autoencoder with a N(0, I) prior and a Gaussian or IAF encoder.

    The model of Kingma & Welling (2014), sec. 3: prior p(z) = N(0, I), decoder p_theta(x|z)
    and encoder q_phi(z|x) = N(mu_phi(x), diag sigma_phi(x)^2) given by neural networks
    (their Appendix C). With ``flows=K >= 1`` the encoder is an inverse autoregressive flow
    (Kingma et al. 2016, sec. 4): z0 ~ N(mu_phi(x), diag sigma_phi(x)^2) is mapped by K IAF
    steps conditioned on a context h_phi(x) to z = z_K, and ::

        log q_phi(z|x) = log N(z0; mu, diag sigma^2) - sum_k log |det dz_k/dz_{k-1}|.

    ``model(x)`` and ``guide(x)`` take ``x`` of shape ``(N, D)`` and also run vectorized under
    an outer ``pyro.plate("particles", S, dim=-2)``, where z has shape ``(S, N, M)``.

    Construction draws the initial weights from the global torch RNG (PyTorch's default
    initialization) and nothing else: after ``pyro.set_rng_seed(s)`` or ``torch.manual_seed(s)``
    the same arguments give bit-identical parameters. It touches no Pyro param store.

    Parameters
    ----------
    data_dim : int
        Number of pixels D (data are flattened, shape ``(N, D)``).
    latent_dim : int, default 20
        Dimension M of z.
    hidden : int or sequence of int, default (400,)
        Hidden layer sizes of the encoder MLP, at least one; the decoder uses them reversed
        (``(400,)`` gives the classic 784-400-20 net).
    likelihood : {"bernoulli", "gaussian"} or Likelihood, default "bernoulli"
        "bernoulli" (logits; binary or [0, 1] data, see
        :class:`~pyro_vae.models.likelihoods.BernoulliLikelihood`), "gaussian" (learned
        per-pixel scale) or a :class:`~pyro_vae.models.likelihoods.Likelihood` instance.
    activation : str, default "relu"
        Hidden-layer nonlinearity, a key of :data:`pyro_vae.nets.ACTIVATIONS`.
    arch : {"mlp", "conv"}, default "mlp"
        "conv" reads x as single-channel images through two stride-2 convolutions.
    image_shape : sequence of two int, optional
        ``(H, W)`` with ``H * W == D``; for "conv", defaults to a square image and needs H and
        W divisible by 4; for "mlp" it is metadata only (e.g. for plots).
    flows : int, default 0
        Number K of IAF steps after the Gaussian draw; 0 is the diagonal Gaussian guide (the
        same networks and initial weights as without the argument). With K >= 1 the encoder's
        output layer also emits a context h(x) of ``hidden[-1]`` numbers (the size of its last
        hidden layer), and each step is an autoregressive net with one hidden layer of
        ``10 * latent_dim`` units and ``activation``, started at the identity (see
        :class:`~pyro_vae.models.flows.IAFlow`).

    Raises
    ------
    ValueError
        When ``data_dim`` or ``latent_dim`` is not a positive integer; ``hidden`` is empty or
        holds a size that is not a positive integer; ``likelihood``, ``activation`` or ``arch``
        is unknown (the message lists the valid choices); ``image_shape`` does not fit
        ``data_dim`` (and ``arch``); or ``flows`` is not a non-negative integer.
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
        flows: int = 0,
    ):
        data_dim, latent_dim, hidden, image_shape, flows = check_model_args(
            data_dim, latent_dim, hidden, likelihood, activation, arch, image_shape, flows
        )
        super().__init__(
            dict(
                data_dim=data_dim,
                latent_dim=latent_dim,
                hidden=hidden,
                likelihood=likelihood,
                activation=activation,
                arch=arch,
                image_shape=image_shape,
                flows=flows,
            )
        )
        likelihood = make_likelihood(likelihood, data_dim)
        self.flows = flows
        net = dict(activation=activation, arch=arch, image_shape=image_shape)
        context_dim = hidden[-1] if flows else 0  # 0: exactly the Gaussian guide's encoder
        self.encoder = GaussianEncoder(data_dim, latent_dim, hidden, context_dim=context_dim, **net)
        out = likelihood.num_params(data_dim)
        self.decoder = Decoder(latent_dim, out, tuple(reversed(hidden)), **net)
        # after the networks: the VAE's submodule (state_dict, parameters()) order
        self._set_likelihood(likelihood)
        # built last, so that flows=0 makes the same RNG draws as before the flow existed
        self.flow = IAFlow(latent_dim, context_dim, flows, activation=activation) if flows else None

    def model(self, x: torch.Tensor) -> None:
        """The generative model p_theta(x, z) = p(z) p_theta(x|z) (Kingma & Welling 2014, sec. 3).

        Registers the decoder (and a likelihood with parameters) with ``pyro.module``, then
        samples site "z" from p(z) (:meth:`prior`: N(0, I) unless a subclass overrides it)
        and observes site "x" from p_theta(x|z), both
        inside ``pyro.plate("data", N)`` with event dimension 1.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
            A batch of data, with the dtype and device of the VAE's parameters. Under an outer
            ``pyro.plate("particles", S, dim=-2)``, z (and the decoder output) gets shape
            ``(S, N, M)`` (``(S, N, P)``) and x is broadcast against it.

        Raises
        ------
        ValueError
            When ``x`` is not a tensor of shape ``(N, D)`` (a 1-D ``(D,)`` is refused), or its
            dtype or device differs from the decoder's parameters.
        """
        self._check_x(x, self.decoder, "decoder")
        self._register_decoder()
        with pyro.plate("data", x.shape[0]):
            # p(z) = N(z; 0, I) or a subclass's prior, batch (N,), event (M,)
            z = pyro.sample("z", self.prior(x))
            # p_theta(x|z) with parameters f_theta(z) (K&W 2014, Appendix C.1; 2019, Alg. 2);
            # z may be (S, N, M) under an outer particle plate
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """The inference model q_phi(z|x) = N(z; mu, diag sigma^2), (mu, log sigma) = f_phi(x).

        Registers the encoder with ``pyro.module`` and samples site "z" inside
        ``pyro.plate("data", N)`` with event dimension 1, reparameterized as
        z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, sec. 2.4 and 3).

        With ``flows=K >= 1`` it also registers the flow (``pyro.module("flow", ...)``) and z is
        z_K = IAF_K(... IAF_1(z0; h) ...; h), z0 = mu + sigma * eps, with (mu, log sigma, h) =
        f_phi(x) and ``log q_phi(z|x) = log N(z0; mu, diag sigma^2) - sum_k log |det
        dz_k/dz_{k-1}|`` (Kingma et al. 2016, eq. 5 and 10; :class:`~pyro_vae.models.flows.IAFlow`).

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)
            A batch of data, with the dtype and device of the VAE's parameters. Under an outer
            ``pyro.plate("particles", S, dim=-2)`` the draw z has shape ``(S, N, M)``.

        Raises
        ------
        ValueError
            When ``x`` is not a tensor of shape ``(N, D)`` (a 1-D ``(D,)`` is refused), or its
            dtype or device differs from the encoder's parameters.
        """
        self._check_x(x, self.encoder, "encoder")
        pyro.module("encoder", self.encoder)
        if self.flow is not None:
            pyro.module("flow", self.flow)
        with pyro.plate("data", x.shape[0]):
            if self.flow is None:
                loc, scale = self.encoder(x)
                # reparameterized draw z = mu + sigma * eps, eps ~ N(0, I) (K&W 2014, sec. 2.4)
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            else:
                loc, scale, context = self.encoder(x, return_context=True)
                pyro.sample("z", self.flow.distribution(loc, scale, context))

    # ----- helpers (plain PyTorch, no Pyro sites) -----

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameters of q_phi(z|x) (Kingma & Welling 2014, sec. 3).

        With ``flows >= 1`` these are the parameters of the base Gaussian q(z0|x), not the
        mean and standard deviation of z = z_K.

        Parameters
        ----------
        x : torch.Tensor of shape (N, D) or (..., N, D)
            Data, with the dtype and device of the VAE's parameters.

        Returns
        -------
        loc : torch.Tensor of shape (N, M) or (..., N, M)
            The posterior mean mu_phi(x).
        scale : torch.Tensor of shape (N, M) or (..., N, M)
            The posterior standard deviation sigma_phi(x) > 0.

        Raises
        ------
        ValueError
            When ``x`` is not a tensor of at least two dimensions ending in D, or its dtype or
            device differs from the encoder's parameters.
        """
        self._check_x(x, self.encoder, "encoder", batched=True)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood mean E[x|z], e.g. sigmoid(f_theta(z)) for Bernoulli pixels.

        Parameters
        ----------
        z : torch.Tensor of shape (N, M) or (..., N, M)
            Codes, e.g. ``(S, N, M)``, with the dtype and device of the VAE's parameters.

        Returns
        -------
        torch.Tensor of shape (N, D) or (..., N, D)
            E[x|z] under p_theta(x|z).

        Raises
        ------
        ValueError
            When ``z`` is not a tensor of at least two dimensions ending in M, or its dtype or
            device differs from the decoder's parameters.
        """
        self._check_z(z)
        return self.likelihood.mean(self.decoder(z))

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """One point code per datapoint: the encoder mean mu_phi(x), or with ``flows >= 1``
        the base mean pushed through the flow, z_K(mu_phi(x)) (for plots and reconstructions).

        Parameters
        ----------
        x : torch.Tensor of shape (N, D) or (..., N, D)
            Data, with the dtype and device of the VAE's parameters.

        Returns
        -------
        torch.Tensor of shape (N, M) or (..., N, M)

        Raises
        ------
        ValueError
            As :meth:`encode`.
        """
        if self.flow is None:
            return self.encode(x)[0]
        self._check_x(x, self.encoder, "encoder", batched=True)
        loc, _, context = self.encoder(x, return_context=True)
        return self.flow(loc, context)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the point code of :meth:`code`: E[x | z = mu_phi(x)], without gradients.

        With ``flows >= 1`` the code decoded is the base mean pushed through the flow,
        z_K(mu_phi(x)).

        Parameters
        ----------
        x : torch.Tensor of shape (N, D) or (..., N, D)
            Data, with the dtype and device of the VAE's parameters.

        Returns
        -------
        torch.Tensor of the shape of ``x``
            The reconstructions.

        Raises
        ------
        ValueError
            As :meth:`encode`.
        """
        return self.decode(self.code(x))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Mean images of ``n`` draws z ~ p(z) (:meth:`prior`), from the global torch RNG.

        Parameters
        ----------
        n : int
            Number of draws.

        Returns
        -------
        torch.Tensor of shape (n, D)
            E[x|z] of each draw, on the device and in the dtype of the decoder's parameters.

        Raises
        ------
        ValueError
            When ``n`` is not a positive integer.
        """
        return self.decode(self.sample_prior(n))
