"""The paper's LeNet-style CNN and the small MLP used for fast runs."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_seq.models.layers import Conv, Dense, max_pool_2x2


class LeNet(nn.Module):
  """conv5x5-64, maxpool, conv5x5-64, maxpool, FC 384, FC 192, FC classes.

  Works for 32x32x3 (CIFAR: 5x5x64 features) and 28x28x1 (Fashion-MNIST:
  4x4x64 features).
  """
  num_classes: int = 10
  conv_impl: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(Conv(64, 5, self.conv_impl, self.dtype, name="conv1")(x))
    x = max_pool_2x2(x)
    x = nn.relu(Conv(64, 5, self.conv_impl, self.dtype, name="conv2")(x))
    x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(Dense(384, self.dtype, name="fc1")(x))
    x = nn.relu(Dense(192, self.dtype, name="fc2")(x))
    return Dense(self.num_classes, self.dtype, name="fc3")(x)


class MLP(nn.Module):
  """The FedAvg paper's 2NN: two hidden ReLU layers of 200 units."""
  num_classes: int = 10
  hidden: Sequence[int] = (200, 200)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for i, h in enumerate(self.hidden):
      x = nn.relu(Dense(h, self.dtype, name=f"fc{i + 1}")(x))
    return Dense(self.num_classes, self.dtype, name=f"fc{len(self.hidden) + 1}")(x)
