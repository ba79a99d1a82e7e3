"""Layers with PyTorch's default initialisation and a CPU-friendly convolution.

PyTorch initialises Linear/Conv2d weights and biases from U(-1/sqrt(fan_in),
1/sqrt(fan_in)); using the same scheme keeps learning curves comparable with
the original implementation.

`Conv` computes a VALID, stride-1 convolution either with `lax.conv` or as an
im2col matmul (concatenate the kh*kw shifted views, one matmul). Both use the
same parameters, so the choice is a per-backend speed decision only: XLA:CPU
runs the im2col form (and its gradient) much faster than its convolution.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def torch_uniform(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for weights and biases."""
  bound = 1.0 / jnp.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Dense(nn.Module):
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
    bias = self.param("bias", torch_uniform(fan_in), (self.features,))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    return y.astype(jnp.float32) + bias


class Conv(nn.Module):
  """VALID stride-1 convolution, NHWC, kernel (kh, kw, cin, cout)."""
  features: int
  kernel_size: int
  impl: str = "xla"  # "xla" (lax.conv) or "im2col"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, cin = self.kernel_size, x.shape[-1]
    fan_in = k * k * cin
    kernel = self.param("kernel", torch_uniform(fan_in), (k, k, cin, self.features))
    bias = self.param("bias", torch_uniform(fan_in), (self.features,))
    x, w = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.impl == "im2col":
      ho, wo = x.shape[1] - k + 1, x.shape[2] - k + 1
      patches = jnp.concatenate(
          [x[:, i:i + ho, j:j + wo, :] for i in range(k) for j in range(k)], axis=-1)
      y = jnp.dot(patches, w.reshape(k * k * cin, self.features))
    elif self.impl == "xla":
      y = jax.lax.conv_general_dilated(
          x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      raise ValueError(f"unknown conv impl {self.impl!r}")
    return y.astype(jnp.float32) + bias


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/2 max pooling by reshape (floor on odd sizes, like PyTorch)."""
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
