"""Flax models and how a registered model is built from its name."""

from fedjax_seq.models.registry import get_model, initialize, is_convolutional, uses_lax_conv

__all__ = ["get_model", "initialize", "is_convolutional", "uses_lax_conv"]
