"""Flax models and the registry that builds them from a name."""

from fedjax_seq.models.registry import MODELS, get_model, initialize, uses_lax_conv

__all__ = ["MODELS", "get_model", "initialize", "uses_lax_conv"]
