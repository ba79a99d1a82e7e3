"""Flax models and how a registered model is built from its name."""

from fedjax_seq.models.registry import get_model, initialize, uses_lax_conv

__all__ = ["get_model", "initialize", "uses_lax_conv"]
