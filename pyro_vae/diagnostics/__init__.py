"""Diagnostics: ArviZ export, PSIS k-hat, NUTS reference posteriors, latent-space checks, plots."""
