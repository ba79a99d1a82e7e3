"""Layers with PyTorch's default initialisation and a CPU-friendly convolution.

PyTorch initialises Linear/Conv2d weights and biases from U(-1/sqrt(fan_in),
1/sqrt(fan_in)); using the same scheme keeps learning curves comparable with
the original implementation.

`Conv` computes a VALID, stride-1 convolution either with `lax.conv` or as an
im2col matmul (concatenate the kh*kw shifted views, one matmul). Both use the
same parameters, so the choice is a per-backend speed decision only: XLA:CPU
runs the im2col form (and its gradient) faster than its convolution.

The im2col matmul has its own VJP only to steer how XLA:CPU lays out the
kernel gradient; its numbers are those of plain autodiff, bit for bit
(tests/test_models.py checks the paper's shapes). Left to itself, XLA fuses the
ReLU/pooling backward into a transposing copy of the output gradient and
multiplies the large patch matrix in its transposed layout; computing the
product the other way round, behind optimization barriers, avoids both and is
faster on XLA:CPU (benchmarks/RESULTS.md, section 4).
"""

import functools
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


# Patch widths from which the kernel gradient is computed as (g^T patches)^T:
# XLA:CPU's matmul then reads the patches in their stored layout. That product
# sums in the same order as autodiff's patches^T g wherever the two orientations
# are blocked and split across threads alike: true for every shape of width >= 400
# checked (LeNet's conv2: 1,600) at one and two threads, not for conv1's 75 at the
# paper's batch of 64 on two threads (its long contraction is split differently).
# tests/test_models.py checks it on the machine that runs it.
SWAPPED_KERNEL_GRAD_MIN_WIDTH = 400
_ROWS = (((0,), (0,)), ((), ()))  # dot_general: contract the rows of both


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def patch_matmul(patches: jax.Array, kernel: jax.Array, swapped: bool) -> jax.Array:
  """patches @ kernel; the VJP below only changes how XLA schedules it."""
  return jnp.dot(patches, kernel)


def _patch_matmul_fwd(patches: jax.Array, kernel: jax.Array, swapped: bool):
  return jnp.dot(patches, kernel), (patches, kernel)


def _patch_matmul_bwd(swapped: bool, residuals: tuple[jax.Array, jax.Array], g: jax.Array):
  patches, kernel = residuals
  d_patches = jax.vjp(lambda p: jnp.dot(p, kernel), patches)[1](g)[0]  # autodiff's own
  p2 = patches.reshape(-1, patches.shape[-1])
  g2 = g.reshape(-1, g.shape[-1])
  # The barriers keep XLA from fusing the producer of g into a transposing
  # copy and from folding the final transpose back into the product.
  if swapped:
    d_kernel = jax.lax.optimization_barrier(jax.lax.dot_general(g2, p2, _ROWS)).T
  else:
    d_kernel = jax.lax.dot_general(p2, jax.lax.optimization_barrier(g2), _ROWS)
  return d_patches, d_kernel.astype(kernel.dtype)


patch_matmul.defvjp(_patch_matmul_fwd, _patch_matmul_bwd)


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
      width = k * k * cin
      y = patch_matmul(patches, w.reshape(width, self.features),
                       width >= SWAPPED_KERNEL_GRAD_MIN_WIDTH)
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
