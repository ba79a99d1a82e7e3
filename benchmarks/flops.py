"""Useful FLOPs of a round, and the backend's attainable peak (defines no flags).

Convention: the useful work of one local step is the dense and convolution
layers' multiply-adds (2 FLOPs each) of the forward pass, of the weight
gradients, and of the input gradients of every layer but the first (nothing
needs the gradient of the images). Biases, activations, pooling, the loss,
augmentation and the optimizer update are not counted: they are a few
percent of the total and no library counts them the same way. The count is
made from the model's own layers (their input and output shapes), so it
holds for any model built from `models.layers.Dense` and `Conv` or from
flax's `nn.Dense` and `nn.Conv` (a user's model), and is checked against
XLA's cost analysis of a compiled gradient step (`xla_step_flops`).

The peak is measured, not taken from a datasheet: the best of several timed
square matmuls on the default device, float32 and (off CPU) bfloat16.
"""

import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_seq.models.layers import Conv, Dense


def layer_macs(model: nn.Module, params, input_shape: tuple[int, ...]) -> list[tuple[str, int]]:
  """(layer path, multiply-adds per example) of every Dense and Conv, in call order."""
  found = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__":
      macs = _macs(module, args[0], out)
      if macs is not None:
        found.append(("/".join(module.path), int(macs)))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((1,) + tuple(input_shape),
                                                             jnp.float32))
  return found


def _macs(module: nn.Module, x, out) -> int | None:
  """Multiply-adds per example of one dense or convolution layer (None: another module)."""
  if isinstance(module, (Dense, nn.Dense)):
    return x.shape[-1] * module.features
  if isinstance(module, Conv):
    k = module.kernel_size
    return out.shape[1] * out.shape[2] * k * k * x.shape[-1] * module.features
  if isinstance(module, nn.Conv):
    window = int(np.prod(module.kernel_size))
    return int(np.prod(out.shape[1:-1])) * window * x.shape[-1] // module.feature_group_count * (
        module.features)
  return None


def forward_flops_per_example(model: nn.Module, params, input_shape: tuple[int, ...]) -> float:
  """Forward FLOPs of one example (scoring, evaluation)."""
  return float(2 * sum(m for _, m in layer_macs(model, params, input_shape)))


def train_flops_per_example(model: nn.Module, params, input_shape: tuple[int, ...]) -> float:
  """Forward + backward FLOPs of one example (see the module docstring)."""
  macs = [m for _, m in layer_macs(model, params, input_shape)]
  forward, weight_grads = 2 * sum(macs), 2 * sum(macs)
  input_grads = 2 * sum(macs[1:])
  return float(forward + weight_grads + input_grads)


def round_flops(config, exp, examples_per_round: float) -> float:
  """Useful FLOPs of one round: every trained example's forward and backward.

  A client rule with `control="gradient"` (SCAFFOLD's option I) makes a
  second pass of forward and backward over the client's batches to compute
  its new control; that pass is useful work and is counted.
  """
  per_example = train_flops_per_example(exp.model, exp.init_params, exp.data.images.shape[1:])
  hyper = config.algorithm.get(config.algorithm.name, {})
  passes = 2 if hyper.get("control", None) == "gradient" else 1
  return passes * examples_per_round * per_example


def xla_step_flops(model: nn.Module, params, batch_shape: tuple[int, ...]) -> float:
  """XLA's own FLOP count of one compiled gradient step of the cross-entropy loss."""

  def loss(p, x, y):
    logits = model.apply(p, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  x = jax.ShapeDtypeStruct(batch_shape, jnp.float32)
  y = jax.ShapeDtypeStruct(batch_shape[:1], jnp.int32)
  compiled = jax.jit(jax.grad(loss)).lower(params, x, y).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))


def peak_flops_per_s(dtype: Any = jnp.float32, n: int = 2048, repeats: int = 20) -> float:
  """The best achieved FLOP/s of an n x n x n matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def efficiency(flops: float, seconds: float, peak: float, unit: str = "round") -> dict:
  """The JSON's FLOP fields for `flops` of work done in `seconds`."""
  achieved = flops / seconds
  return {f"flops_per_{unit}": flops, "flops_per_s": round(achieved, 1),
          "peak_flops_per_s": round(peak, 1), "fraction_of_peak": round(achieved / peak, 4)}
