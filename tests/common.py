"""Shared test helpers: markers and small builders, e.g. ``from common import requires_cuda``.

Every model/guide pair lives in tests/pairs.py (the catalogue); the ``mnist`` fixture in
tests/conftest.py.
"""

import re
from pathlib import Path

import pytest
import torch

from pyro_vae.models.vae import VAE

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_vae(seed=0, **kwargs):
    """A VAE for 784-pixel images (8 latent dimensions, one hidden layer of 64 by default),
    its weights drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return VAE(
        784, latent_dim=kwargs.pop("latent_dim", 8), hidden=kwargs.pop("hidden", (64,)), **kwargs
    )


ROOT = Path(__file__).resolve().parent.parent
"""The repository root."""


def python_examples(page):
    """The ``python`` code blocks of a Markdown page of the repository, in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)


def run_example(page, marker):
    """Execute the one example of ``page`` (relative to the root) containing ``marker``;
    returns its namespace."""
    (source,) = [example for example in python_examples(page) if marker in example]
    namespace = {}
    exec(compile(source, str(page), "exec"), namespace)
    return namespace
