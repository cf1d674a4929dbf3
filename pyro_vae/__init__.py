"""pyro_vae: latent variable models in Pyro, trained by SVI and judged by their evidence.

The diagnostics (ArviZ, NUTS, plots) live in :mod:`pyro_vae.diagnostics` and are imported from
their modules, so that ``import pyro_vae`` stays light.
"""

from pyro_vae.data import load_dataset
from pyro_vae.infer import dataset_nll, iwae_bound, log_evidence, train
from pyro_vae.models import CVAE, M2, PPCA, VAE, CollapsedPPCA

__version__ = "0.1.0"

__all__ = [
    "CVAE",
    "M2",
    "PPCA",
    "VAE",
    "CollapsedPPCA",
    "dataset_nll",
    "iwae_bound",
    "load_dataset",
    "log_evidence",
    "train",
]
