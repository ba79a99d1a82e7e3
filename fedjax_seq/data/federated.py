"""Device-resident federated data: one copy of the images, clients as index rows.

The training images live on the device once, as uint8. A client is a row of
indices into them, padded to the largest client, plus its true size. A round
builds every batch on the device by gathering these indices, so no image is
copied from the host after start-up.
"""

from typing import NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class FedData:
  """Device arrays for the clients' data; a jit argument, never a constant."""
  images: jax.Array        # (N, H, W, C) uint8
  labels: jax.Array        # (N,) int32
  client_idx: jax.Array    # (K, max_n) int32, rows padded with 0
  client_sizes: jax.Array  # (K,) int32
  # Static: every client holds exactly max_client_size examples (e.g. the paper's
  # 100 per client). The engine then computes each batch at its real size.
  equal_sizes: bool = flax.struct.field(pytree_node=False, default=False)
  # Static: the clients trained in this call hold at most this many examples, so the
  # engine schedules only ceil(size_cap / B) steps per epoch (0: max_client_size).
  size_cap: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def num_clients(self) -> int:
    return self.client_idx.shape[0]

  @property
  def max_client_size(self) -> int:
    return self.client_idx.shape[1]


def make_fed_data(images: np.ndarray, labels: np.ndarray,
                  clients: Sequence[np.ndarray]) -> FedData:
  """Puts images on the device once and the client lists as a padded table."""
  sizes = np.array([len(c) for c in clients], np.int32)
  table = np.zeros((len(clients), max(int(sizes.max()), 1)), np.int32)
  for k, c in enumerate(clients):
    table[k, :len(c)] = c
  return FedData(images=jnp.asarray(images, jnp.uint8),
                 labels=jnp.asarray(labels, jnp.int32),
                 client_idx=jnp.asarray(table), client_sizes=jnp.asarray(sizes),
                 equal_sizes=bool((sizes == table.shape[1]).all()))


class Preprocess(NamedTuple):
  """Static description of the on-device input pipeline."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool  # random crop (4-pixel zero padding) + horizontal flip

  def __call__(self, images: jax.Array, key: jax.Array | None) -> jax.Array:
    """uint8 (B, H, W, C) -> normalised float32; augments when a key is given."""
    x = images.astype(jnp.float32) / 255.0
    if self.augment and key is not None:
      x = random_crop_flip(x, key)
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    return (x - mean) / std


def random_crop_flip(x: jax.Array, key: jax.Array, pad: int = 4) -> jax.Array:
  """torchvision's RandomCrop(size, padding=4) then RandomHorizontalFlip()."""
  b, h, w, c = x.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))
  x = crop(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def steps_per_epoch(max_client_size: int, batch_size: int) -> int:
  """ceil(max_client_size / batch_size): local steps per epoch for every client."""
  return -(-max_client_size // batch_size)


def client_schedule(key: jax.Array, idx_row: jax.Array, size: jax.Array,
                    epochs: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Batches of one client for `epochs` epochs, as PyTorch's shuffled DataLoader.

  Each epoch is a fresh permutation of the client's `size` real examples,
  cut into batches of `batch_size` with a partial last batch (drop_last=False).
  Returns example indices (T, B) and a mask (T, B) of real examples, where
  T = epochs * ceil(max_n / B); steps past a client's own data are all-False.
  The real batches do not depend on max_n, only on the key and the client.
  """
  max_n = idx_row.shape[0]
  spe = steps_per_epoch(max_n, batch_size)
  slots = spe * batch_size
  position = jnp.arange(slots)
  real = position < size

  def one_epoch(epoch):
    # Sort keys drawn per position (fold_in), not per array shape, so a
    # client's order does not depend on how far its row is padded.
    k = jax.random.fold_in(key, epoch)
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k, i)))(jnp.arange(max_n))
    u = jnp.where(jnp.arange(max_n) < size, u, 2.0)
    order = idx_row[jnp.argsort(u)]
    order = jnp.pad(order, (0, slots - max_n))
    return order.reshape(spe, batch_size)

  idx = jax.vmap(one_epoch)(jnp.arange(epochs))
  mask = jnp.broadcast_to(real.reshape(spe, batch_size), idx.shape)
  return idx.reshape(-1, batch_size), mask.reshape(-1, batch_size)
