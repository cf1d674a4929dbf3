"""Generative models as Pyro model/guide pairs."""
