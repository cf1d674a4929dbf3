"""The one place pyro_vae reads something Pyro offers no public API for.

Pyro 1.9 turns ``pyro.deterministic(name, value)`` into an *observed* sample site of a masked
``Delta`` and marks it only with the private infer key ``"_deterministic"`` (its docstring says
the encoding "may change in the future"). Such a site contributes nothing to any density, but it
looks like an observation, and one outside the data plate would be refused as a global site.
``tests/test_sites.py`` pins this behaviour, so a Pyro upgrade that changes it fails loudly.
"""

from __future__ import annotations

__all__ = ["is_deterministic"]


def is_deterministic(site: dict) -> bool:
    """Whether a trace site or message was recorded by ``pyro.deterministic``.

    Parameters
    ----------
    site : dict
        A Pyro trace node or effect-handler message.

    Returns
    -------
    bool
        True for a site of ``pyro.deterministic``, which adds nothing to any density.
    """
    return bool(site.get("infer", {}).get("_deterministic", False))
