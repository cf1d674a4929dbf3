"""Inference: the SVI trainer and importance-sampled evidence, for any model/guide pair."""
