"""Builds a model from its registry entry (`fedjax_seq.registry.MODELS`)."""

import functools

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np

from fedjax_seq import registry
from fedjax_seq.errors import InputError

COMPUTE_DTYPES = ("float32", "bfloat16")
CONV_IMPLS = ("auto", "xla", "im2col")


def default_conv_impl(backend: str) -> str:
  """im2col on CPU (XLA:CPU's conv backward is slow), lax.conv elsewhere."""
  return "im2col" if backend == "cpu" else "xla"


@functools.partial(jax.jit, static_argnums=0)
def _init(model, key: jax.Array, example: jax.Array):
  return model.init(key, example)


def initialize(model, key: jax.Array, images: np.ndarray):
  """`model.init` on one example, jitted: one compile instead of one per initialiser.

  Same bits as the eager init (tests/test_models.py). Equal modules share the
  compiled init (modules compare by their fields).
  """
  return _init(model, key, np.asarray(images[:1], np.float32))


@functools.lru_cache(maxsize=64)
def _has_lax_conv(model, image_shape: tuple[int, ...]) -> bool:
  def forward(x):
    return model.apply(model.init(jax.random.key(0), x), x)

  jaxpr = jax.make_jaxpr(forward)(jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return any(e.primitive.name == "conv_general_dilated" for e in _equations(jaxpr.jaxpr))


def _equations(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax_core.jaxprs_in_params(eqn.params):
      yield from _equations(sub)


def uses_lax_conv(model, image_shape: tuple[int, ...]) -> bool:
  """Whether the model's forward pass holds `lax.conv` (slow inside loops on XLA:CPU).

  Read from the traced program, so it holds for any flax module.
  """
  return _has_lax_conv(model, tuple(image_shape))


def is_convolutional(model, image_shape: tuple[int, ...]) -> bool:
  """Whether the model convolves, however its convolutions are computed.

  A module with a `conv_impl` field (the registered convolutional models) is
  traced with `lax.conv`, so its im2col convolutions count; any other flax
  module as it is (e.g. `flax.linen.Conv`).
  """
  if "conv_impl" in getattr(model, "__dataclass_fields__", {}):
    model = model.clone(conv_impl="xla")
  return _has_lax_conv(model, tuple(image_shape))


def check_options(name: str, *, conv_impl: str = "auto", compute_dtype: str = "float32",
                  hyperparameters: dict | None = None) -> registry.Model:
  """Refuses settings the model's entry does not take, before anything is built."""
  entry = registry.MODELS.get(name)
  if compute_dtype not in COMPUTE_DTYPES:
    raise InputError(f"unknown compute_dtype {compute_dtype!r}; valid: "
                     f"{', '.join(COMPUTE_DTYPES)}", argument="compute_dtype")
  if conv_impl not in CONV_IMPLS:
    raise InputError(f"unknown conv_impl {conv_impl!r}; valid: {', '.join(CONV_IMPLS)}",
                     argument="conv_impl")
  if compute_dtype != "float32" and "dtype" not in entry.options:
    raise InputError(f"model {name} takes no compute_dtype (its computation is its own); "
                     "leave it float32", argument="compute_dtype")
  if conv_impl != "auto" and "conv_impl" not in entry.options:
    raise InputError(f"model {name} takes no conv_impl (it has no fedjax_seq.models.layers.Conv "
                     "to switch); leave it auto", argument="conv_impl")
  unknown = sorted(set(hyperparameters or {}) - set(entry.hyperparameters))
  if unknown:
    raise ValueError(f"model {name} has no setting {', '.join(unknown)}; its settings: "
                     f"{', '.join(entry.hyperparameters) or 'none'}")
  return entry


def get_model(name: str, num_classes: int, *, conv_impl: str = "auto",
              compute_dtype: str = "float32", hyperparameters: dict | None = None):
  """The flax module of a registered model; `conv_impl` "auto" picks per backend.

  `hyperparameters` are the model's own settings (its config section
  `config.model.NAME`); unset ones take the entry's defaults.
  """
  entry = check_options(name, conv_impl=conv_impl, compute_dtype=compute_dtype,
                        hyperparameters=hyperparameters)
  kwargs = {**entry.hyperparameters, **(hyperparameters or {})}
  if "dtype" in entry.options:
    kwargs["dtype"] = jnp.dtype(compute_dtype)
  if "conv_impl" in entry.options:
    kwargs["conv_impl"] = (default_conv_impl(jax.default_backend()) if conv_impl == "auto"
                           else conv_impl)
  return entry.build(num_classes, **kwargs)
