"""What the data imply, decided once from the training part, and stored with the run.

:func:`decide_transforms` chooses the likelihood (``"auto"``: binary values -> Bernoulli; grey
levels in [0, 1] -> Bernoulli on the grey levels, the cross-entropy of
:class:`~pyro_vae.models.likelihoods.BernoulliLikelihood`; other reals -> Gaussian), the
standardization of a real-valued table (z = (x - mean) / sd per column, the training part's
mean and sd; log p(x) = log p(z) - sum_j log sd_j) and the binarization of images (as the
built-in sets: "static" under a Bernoulli likelihood, "dynamic" for M2). :class:`Transforms`
holds the decision, applies it, and is what ``config.json`` stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pyro_vae.datafiles.errors import DataFileError

__all__ = ["Transforms", "decide_transforms"]


@dataclass(frozen=True)
class Transforms:
    """What the data imply, decided once from the training part (:func:`decide_transforms`).

    Attributes
    ----------
    likelihood : {"bernoulli", "gaussian"}
        p(x|z).
    binarize : {None, "static", "dynamic"}
        Of images in [0, 1] (:mod:`pyro_vae.data`).
    mean, std : tuple of float or None
        The standardization x -> (x - mean) / std of a real-valued table (None: none).
    reason : str
        Why, for the line that says it.
    """

    likelihood: str
    binarize: str | None = None
    mean: tuple | None = None
    std: tuple | None = None
    reason: str = ""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The standardized values (``x`` itself without standardization).

        Parameters
        ----------
        x : torch.Tensor of shape (N, D)

        Returns
        -------
        torch.Tensor of shape (N, D)
        """
        if self.mean is None:
            return x
        mean, std = (torch.tensor(v, dtype=x.dtype) for v in (self.mean, self.std))
        return (x - mean) / std

    @property
    def log_jacobian(self) -> float:
        """log ``|dz/dx|`` of the standardization, -sum_j log std_j: log p(x) = log p(z) + this."""
        return 0.0 if self.std is None else -float(np.log(np.asarray(self.std)).sum())

    def to_json(self) -> dict:
        """The record ``config.json`` stores."""
        return {
            "likelihood": self.likelihood,
            "binarize": self.binarize,
            "standardize": None if self.mean is None else {"mean": self.mean, "std": self.std},
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, record: dict) -> Transforms:
        """The transforms :meth:`to_json` stored."""
        standard = record.get("standardize") or {}
        mean, std = standard.get("mean"), standard.get("std")
        return cls(
            record["likelihood"],
            record.get("binarize"),
            None if mean is None else tuple(mean),
            None if std is None else tuple(std),
            record.get("reason", ""),
        )

    def said(self) -> str:
        """The one line that says what was decided."""
        parts = [f"{self.reason} -> {self.likelihood} likelihood"]
        if self.mean is not None:
            parts.append("columns standardized by the training part's mean and sd")
        if self.binarize:
            parts.append(f"binarized ({self.binarize})")
        return ", ".join(parts)


def decide_transforms(
    x: torch.Tensor, kind: str, likelihood: str = "auto", binarize: str | None = "auto", m2=False
) -> Transforms:
    """The likelihood, standardization and binarization that training data ``x`` imply.

    Parameters
    ----------
    x : torch.Tensor of shape (N, D)
        The training part.
    kind : {"table", "image"}
        Tables of reals are standardized for a Gaussian; images in [0, 1] never are.
    likelihood : {"auto", "bernoulli", "gaussian"}
        ``"auto"``: binary values or values in [0, 1] -> Bernoulli, else Gaussian.
    binarize : {"auto", "static", "dynamic", "none", None}
        ``"auto"``: images that are not binary are binarized "static" ("dynamic" for M2) under a
        Bernoulli likelihood, as the built-in sets; tables keep their grey levels.
    m2 : bool
        The model is M2 (dynamic binarization by default).

    Returns
    -------
    Transforms

    Raises
    ------
    DataFileError
        A Bernoulli likelihood or a binarization asked of values outside [0, 1].
    """
    low, high = float(x.min()), float(x.max())
    binary = bool(((x == 0) | (x == 1)).all())
    unit = 0 <= low and high <= 1
    reason = (
        "binary values"
        if binary
        else f"values in [0, 1]{' (grey levels)' if kind == 'image' else ''}"
        if unit
        else f"real values in [{low:.3g}, {high:.3g}]"
    )
    if likelihood == "auto":
        likelihood = "bernoulli" if unit else "gaussian"
    if not unit and (likelihood == "bernoulli" or binarize in ("static", "dynamic")):
        what = "--likelihood bernoulli" if likelihood == "bernoulli" else f"--binarize {binarize}"
        raise DataFileError(
            f"{what} needs values in [0, 1]; the data hold {reason}: use --likelihood gaussian "
            "(or auto)"
        )
    if binarize == "auto":
        images = kind == "image" and likelihood == "bernoulli" and not binary
        binarize = ("dynamic" if m2 else "static") if images else None
    binarize = None if binarize == "none" else binarize
    if likelihood == "gaussian" and kind == "table":
        mean, std = x.double().mean(0), x.double().std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column stays as is
        return Transforms(likelihood, binarize, tuple(mean.tolist()), tuple(std.tolist()), reason)
    return Transforms(likelihood, binarize, reason=reason)
