"""pyro_vae: latent variable models in Pyro, trained by SVI and judged by their evidence."""

__version__ = "0.1.0"
