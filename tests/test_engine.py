"""The local-training engine: PyTorch SGD semantics, batches, exact masking."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from helpers import (assert_leaves_match, assert_trees_close, assert_trees_equal,
                     call_at_xla_default)
from fedjax_seq.core import engine
from fedjax_seq.data.federated import client_schedule, make_fed_data, random_crop_flip


def test_schedule_is_a_shuffled_dataloader():
  row = jnp.array([10, 11, 12, 13, 14, 0, 0, 0])  # size 5 padded to 8
  idx, mask = client_schedule(jax.random.key(0), row, jnp.int32(5), epochs=2, batch_size=2)
  idx, mask = np.asarray(idx), np.asarray(mask)
  assert idx.shape == mask.shape == (8, 2)  # 2 epochs x ceil(8/2) steps
  # Per epoch: 3 real batches of sizes 2, 2, 1 (drop_last=False), then padding.
  np.testing.assert_array_equal(mask.sum(1), [2, 2, 1, 0, 2, 2, 1, 0])
  for e in range(2):
    epoch = idx[4 * e:4 * e + 4][mask[4 * e:4 * e + 4]]
    assert sorted(epoch) == [10, 11, 12, 13, 14]
  assert not np.array_equal(idx[:4][mask[:4]], idx[4:][mask[4:]])  # fresh shuffle per epoch


def test_schedule_does_not_depend_on_padding():
  short = jnp.array([3, 4, 5])
  padded = jnp.array([3, 4, 5, 0, 0, 0, 0])
  a, ma = client_schedule(jax.random.key(3), short, jnp.int32(3), 2, 2)
  b, mb = client_schedule(jax.random.key(3), padded, jnp.int32(3), 2, 2)
  np.testing.assert_array_equal(np.asarray(a)[np.asarray(ma)], np.asarray(b)[np.asarray(mb)])


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.0, 4e-2), (0.9, 4e-2)])
def test_local_sgd_matches_numpy_reference(momentum, weight_decay):
  images, labels, data = ref.tiny_data([7, 3])
  params = ref.init_params()
  train = ref.trainer(lr=0.5, momentum=momentum, weight_decay=weight_decay, epochs=2,
                      batch_size=3)
  key = jax.random.key(5)
  res = jax.jit(train.train)(params, data, jnp.int32(0), key)
  w, b = ref.local_sgd(*ref.to_np(params), images, labels,
                       ref.batches(data, 0, key, 2, 3), 0.5, momentum, weight_decay)
  assert_leaves_match(res.params, (w, b))
  assert int(res.num_steps) == 2 * 3  # ceil(7/3) = 3 steps per epoch
  assert np.abs(ref.to_np(res.params)[0] - ref.to_np(params)[0]).max() > 1e-2  # it did train


def test_padded_steps_are_exact_no_ops():
  """The same client, padded to many more steps, ends bit-identical."""
  images, labels, _ = ref.tiny_data([5])
  alone = make_fed_data(images, labels, [np.arange(5)])
  big = np.concatenate([images, images, images, images])
  padded = make_fed_data(big, np.tile(labels, 4), [np.arange(5), np.arange(5, 20)])
  params = ref.init_params()
  train = ref.trainer(lr=0.3, momentum=0.9, weight_decay=0.01, epochs=3, batch_size=2).train
  key = jax.random.key(1)
  a = call_at_xla_default(train, params, alone, jnp.int32(0), key)
  b = call_at_xla_default(train, params, padded, jnp.int32(0), key)
  assert padded.max_client_size == 15 and alone.max_client_size == 5
  assert_trees_equal(a.params, b.params)
  assert int(a.num_steps) == int(b.num_steps) == 9
  np.testing.assert_array_equal(np.asarray(a.loss), np.asarray(b.loss))


def test_padded_examples_contribute_nothing():
  """A partial batch's gradient is the mean over its real examples only."""
  images, labels, data = ref.tiny_data([1])
  params = ref.init_params()
  res = ref.trainer(lr=1.0, batch_size=4).train(params, data, jnp.int32(0), jax.random.key(0))
  w, b = ref.local_sgd(*ref.to_np(params), images, labels, [np.array([0])], 1.0)
  assert_leaves_match(res.params, (w, b))


def test_unrolled_equals_rolled():
  _, _, data = ref.tiny_data([6, 4])
  params = ref.init_params()
  key = jax.random.key(2)
  a = jax.jit(ref.trainer(epochs=2, unroll=1).train)(params, data, jnp.int32(1), key)
  b = jax.jit(ref.trainer(epochs=2, unroll=True).train)(params, data, jnp.int32(1), key)
  assert_trees_close(a.params, b.params, rtol=1e-6, atol=1e-7)


def crop_flip_draws(keys: int, batch: int, h: int = 6, pad: int = 4) -> np.ndarray:
  """(keys, batch, 3) = (row offset, column offset, flipped) of every augmented image.

  Each output must be exactly one of the 2 * (2 * pad + 1)^2 windows of its
  zero-padded image (pixel values are distinct and nonzero, so windows differ).
  """
  image = np.arange(1, h * h + 1, dtype=np.float32).reshape(h, h, 1)
  x = jnp.broadcast_to(jnp.asarray(image), (batch, h, h, 1))
  out = np.asarray(jax.vmap(lambda k: random_crop_flip(x, k, pad=pad))(
      jax.random.split(jax.random.key(0), keys)))
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  n = 2 * pad + 1
  labels = [(a, c, f) for f in (0, 1) for a in range(n) for c in range(n)]
  windows = np.stack([padded[a:a + h, c:c + h][:, ::-1] if f else padded[a:a + h, c:c + h]
                      for a, c, f in labels])
  match = (out.reshape(keys * batch, 1, -1) == windows.reshape(1, len(labels), -1)).all(-1)
  assert (match.sum(1) == 1).all(), "an output is not a padded crop (+ flip) of its image"
  return np.asarray(labels)[match.argmax(1)].reshape(keys, batch, 3)


def test_random_crop_flip_draws_every_window_uniformly_and_independently():
  """torchvision's RandomCrop(padding=4) + RandomHorizontalFlip, over 64 keys x 64 images.

  All 81 offsets occur, each about 1/81 of the time, and flips about half
  the time; images of one batch get independent draws. Margins are about 5
  standard deviations of the counts (the keys are fixed, so the test is
  deterministic; a broken augmentation misses them by far).
  """
  draws = crop_flip_draws(keys=64, batch=64)
  n = draws.shape[0] * draws.shape[1]                    # 4096 images
  offsets = draws[..., 0] * 9 + draws[..., 1]
  counts = np.bincount(offsets.ravel(), minlength=81)
  assert (counts > 0).all()                               # identity or a fixed offset fail here
  assert np.abs(counts - n / 81).max() < 5 * np.sqrt(n / 81)       # 50.6 +- 35
  assert abs(draws[..., 2].mean() - 0.5) < 0.04           # sd of the rate: 0.0078
  # Within a batch: neighbours share an offset about 1/81 of the time, a flip about half
  # (all of the time if one draw were broadcast over the batch).
  same_offset = (offsets[:, 1:] == offsets[:, :-1]).mean()
  same_flip = (draws[:, 1:, 2] == draws[:, :-1, 2]).mean()
  assert same_offset < 1 / 81 + 0.01 and abs(same_flip - 0.5) < 0.04
  assert min(len(set(row)) for row in offsets.tolist()) > 30  # ~44 distinct offsets of 64


def test_step_cap_truncates_only_larger_clients():
  images, labels, data = ref.tiny_data([7, 2])  # 3 and 1 real steps per epoch with B=3
  params, key = ref.init_params(), jax.random.key(6)
  full = jax.jit(ref.trainer(epochs=2, batch_size=3).train)
  capped = jax.jit(ref.trainer(epochs=2, batch_size=3, max_steps=2).train)
  a, b = full(params, data, jnp.int32(0), key), capped(params, data, jnp.int32(0), key)
  assert int(a.num_steps) == 6 and int(b.num_steps) == 2
  expected = ref.local_sgd(*ref.to_np(params), images, labels,
                           ref.batches(data, 0, key, 2, 3)[:2], 0.1)
  assert_leaves_match(b.params, expected)
  # A client with at most 2 steps is unchanged, bit for bit.
  a, b = full(params, data, jnp.int32(1), key), capped(params, data, jnp.int32(1), key)
  assert_trees_equal(a.params, b.params)


def batch_sizes_computed(train, params, data) -> list[int]:
  """The batch sizes of the gradient computations in `train`'s program (its dot operands)."""
  jaxpr = jax.make_jaxpr(train)(params, data, jnp.int32(0), jax.random.key(0))
  sizes = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general" and eqn.invars[0].aval.ndim == 2:
        sizes.append(eqn.invars[0].aval.shape[0])
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return sorted(set(sizes))


@pytest.mark.parametrize("epochs,batch_size,momentum", [(1, 3, 0.0), (2, 3, 0.9), (2, 7, 0.0),
                                                        (3, 4, 0.5)])
def test_equal_clients_compute_each_batch_at_its_real_size(epochs, batch_size, momentum):
  """Clients of 7: batches 3+3+1 (or one of 7, or 4+3) per epoch, each computed at that size.

  Same numbers as the float64 reference and as the masked schedule (which
  pads the last batch to B), to float32 rounding.
  """
  images, labels, data = ref.tiny_data([7, 7, 7])
  assert data.equal_sizes
  masked = data.replace(equal_sizes=False)
  params, key = ref.init_params(), jax.random.key(4)
  train = ref.trainer(lr=0.5, momentum=momentum, weight_decay=0.01, epochs=epochs,
                      batch_size=batch_size).train
  tail = 7 - (-(-7 // batch_size) - 1) * batch_size
  assert engine.last_batch_size(data, local_epochs=epochs, batch_size=batch_size) == tail
  assert batch_sizes_computed(train, params, data) == sorted({batch_size, tail})
  assert batch_sizes_computed(train, params, masked) == [batch_size]
  for client in range(3):
    exact = jax.jit(train)(params, data, jnp.int32(client), key)
    padded = jax.jit(train)(params, masked, jnp.int32(client), key)
    expected = ref.local_sgd(*ref.to_np(params), images, labels,
                             ref.batches(data, client, key, epochs, batch_size), 0.5, momentum,
                             0.01)
    assert_leaves_match(exact.params, expected)
    assert_trees_close(exact.params, padded.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(exact.loss), float(padded.loss), rtol=1e-6)
    assert int(exact.num_steps) == int(padded.num_steps) == epochs * -(-7 // batch_size)


def test_exact_schedule_only_where_it_applies():
  """Ragged clients, or a step cap below the clients' steps, keep the masked schedule."""
  _, _, ragged = ref.tiny_data([7, 5])
  _, _, equal = ref.tiny_data([7, 7])
  assert not ragged.equal_sizes and equal.equal_sizes
  assert engine.last_batch_size(ragged, local_epochs=1, batch_size=3) == 0
  assert engine.last_batch_size(equal, local_epochs=2, batch_size=3) == 1
  assert engine.last_batch_size(equal, local_epochs=2, batch_size=3, max_steps=5) == 0
  assert engine.last_batch_size(equal, local_epochs=2, batch_size=3, max_steps=6) == 1
  assert engine.last_batch_size(equal, local_epochs=1, batch_size=7) == 7
