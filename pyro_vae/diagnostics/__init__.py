"""Judge a trained pair: NUTS reference posteriors, ArviZ export, latent-space checks, plots.

Import the submodules on their own (``posterior``, ``latent``, ``amortization``, ``arviz_io``,
``plots``), so that nothing imports arviz unless asked; PSIS k-hat is
:func:`pyro_vae.infer.evidence.psis.pareto_khat`.
"""
