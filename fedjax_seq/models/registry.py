"""Builds a model from `config.model.name`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_seq.errors import UserError
from fedjax_seq.models.lenet import LeNet, MLP

MODELS = ("lenet", "mlp")


def default_conv_impl(backend: str) -> str:
  """im2col on CPU (XLA:CPU's conv backward is slow), lax.conv elsewhere."""
  return "im2col" if backend == "cpu" else "xla"


@functools.partial(jax.jit, static_argnums=0)
def _init(model, key: jax.Array, example: jax.Array):
  return model.init(key, example)


def initialize(model, key: jax.Array, images: np.ndarray):
  """`model.init` on one example, jitted: one compile instead of one per initialiser.

  Eagerly, every weight's uniform draw compiled a program of its own (~1 s at
  a command's start); the jitted init gives the same bits (tests/test_models.py).
  Equal modules share the compiled init (modules compare by their fields).
  """
  return _init(model, key, np.asarray(images[:1], np.float32))


def uses_lax_conv(model) -> bool:
  """Whether the model has `lax.conv` layers (slow inside loops on XLA:CPU)."""
  return getattr(model, "conv_impl", None) == "xla"


def get_model(name: str, num_classes: int, *, conv_impl: str = "auto",
              compute_dtype: str = "float32"):
  """Returns a Flax module; `conv_impl` "auto" picks per backend."""
  if compute_dtype not in ("float32", "bfloat16"):
    raise UserError(f"unknown compute dtype {compute_dtype!r}; valid: float32, bfloat16")
  dtype = jnp.dtype(compute_dtype)
  if name == "lenet":
    if conv_impl == "auto":
      conv_impl = default_conv_impl(jax.default_backend())
    if conv_impl not in ("xla", "im2col"):
      raise UserError(f"unknown conv impl {conv_impl!r}; valid: auto, xla, im2col")
    return LeNet(num_classes=num_classes, conv_impl=conv_impl, dtype=dtype)
  if name == "mlp":
    return MLP(num_classes=num_classes, dtype=dtype)
  raise UserError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
