"""The batch schedule and the cohort sampler against independent models of what they must be.

tests/reference.py takes batch orders from `client_schedule` and cohorts
from `sample_ids` themselves, so the NumPy references cannot catch a bias in
either; these tests can. Statistical margins are 5 standard deviations of
the counts; the keys are fixed, so every test is deterministic.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_seq.core.rounds import num_sampled, sample_ids, uniform_sampler
from fedjax_seq.data.federated import client_schedule

ROW = np.array([20, 21, 22, 23, 24, 25, 26, 0, 0, 0])  # a client of 7 examples padded to 10
SIZE, BATCH, EPOCHS = 7, 3, 2


def schedules(num_keys: int, size: int = SIZE, row=ROW, epochs: int = EPOCHS,
              batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
  keys = jax.random.split(jax.random.key(7), num_keys)
  # Jitted: one program instead of an op-by-op compile of every primitive (same values).
  idx, mask = jax.jit(jax.vmap(lambda k: client_schedule(k, jnp.asarray(row), jnp.int32(size),
                                                         epochs, batch)))(keys)
  return np.asarray(idx), np.asarray(mask)


def epoch_orders(idx: np.ndarray, mask: np.ndarray, epochs: int) -> np.ndarray:
  """(keys, epochs, size): the real examples of each epoch in the order they are trained."""
  per_epoch = idx.shape[1] // epochs
  return np.stack([np.stack([idx[k, e * per_epoch:(e + 1) * per_epoch][
      mask[k, e * per_epoch:(e + 1) * per_epoch]] for e in range(epochs)])
      for k in range(idx.shape[0])])


@pytest.mark.parametrize("size,row_len,batch", [(7, 10, 3), (6, 6, 3), (1, 5, 4), (5, 5, 8)])
def test_every_real_example_once_per_epoch_in_dataloader_batches(size, row_len, batch):
  """PyTorch's DataLoader(shuffle=True, drop_last=False), padded to the largest client."""
  row = np.concatenate([np.arange(100, 100 + size), np.zeros(row_len - size, int)])
  idx, mask = schedules(50, size, row, EPOCHS, batch)
  steps = -(-row_len // batch)  # per epoch, set by the padded row length
  assert idx.shape == mask.shape == (50, EPOCHS * steps, batch)
  # Batch sizes: full batches, then the partial last one, then empty steps.
  want = [batch] * (size // batch) + ([size % batch] if size % batch else [])
  want = np.array(want + [0] * (steps - len(want)))
  np.testing.assert_array_equal(mask.sum(-1), np.tile(want, (50, EPOCHS)))
  # Real slots come first in every batch: padding is masked, never interleaved.
  assert (np.sort(mask, axis=-1)[..., ::-1] == mask).all()
  orders = epoch_orders(idx, mask, EPOCHS)
  assert (np.sort(orders, axis=-1) == np.arange(100, 100 + size)).all()  # each once per epoch


def test_positions_are_uniform_and_epochs_reshuffle():
  """Every example is equally likely at every position, and each epoch draws afresh."""
  n = 2100
  orders = epoch_orders(*schedules(n), EPOCHS) - 20  # example number 0..6
  for e in range(EPOCHS):
    # counts[p, i]: how often example i sits at position p; uniform: n / 7 = 300.
    counts = np.stack([np.bincount(orders[:, e, p], minlength=SIZE) for p in range(SIZE)])
    sd = np.sqrt(n / SIZE * (1 - 1 / SIZE))  # 16.0
    assert np.abs(counts - n / SIZE).max() < 5 * sd, counts
  # Epoch 2 independent of epoch 1: the same first example 1/7 of the time (sd 0.0076).
  same_first = (orders[:, 0, 0] == orders[:, 1, 0]).mean()
  assert abs(same_first - 1 / SIZE) < 0.04
  # Different keys give different orders (not one order for every key).
  assert len({tuple(o) for o in orders[:, 0]}) > 1000  # of 5040 permutations


def test_sampled_ids_are_distinct_and_uniform():
  """n of K ids without replacement: each id in 3/10 of cohorts, each pair in 1/15, any first."""
  k, n, draws = 10, 3, 3000
  keys = jax.random.split(jax.random.key(3), draws)
  ids = np.asarray(jax.vmap(lambda key: sample_ids(key, k, n))(keys))
  assert ids.shape == (draws, n) and ids.dtype == np.int32
  assert ((ids >= 0) & (ids < k)).all()
  assert all(len(set(row)) == n for row in ids.tolist())
  inclusion = np.bincount(ids.ravel(), minlength=k)
  p = n / k
  assert np.abs(inclusion - draws * p).max() < 5 * np.sqrt(draws * p * (1 - p))  # 900 +- 125
  first = np.bincount(ids[:, 0], minlength=k)
  assert np.abs(first - draws / k).max() < 5 * np.sqrt(draws / k * (1 - 1 / k))  # 300 +- 82
  pair_p = n * (n - 1) / (k * (k - 1))
  members = [set(row) for row in ids.tolist()]
  pairs = np.array([sum(a in m and b in m for m in members)
                    for a, b in itertools.combinations(range(k), 2)])
  assert np.abs(pairs - draws * pair_p).max() < 5 * np.sqrt(draws * pair_p * (1 - pair_p))


@pytest.mark.parametrize("fraction,population,n", [(0.2, 500, 100), (0.25, 20, 5), (0.001, 10, 1),
                                                   (1.0, 7, 7), (0.35, 10, 3)])
def test_uniform_sampler_takes_max_int_c_k_1(fraction, population, n):
  """The original's max(int(C * K), 1) distinct clients; sampling all K is a permutation."""
  assert num_sampled(fraction, population) == n
  sample = uniform_sampler(population, fraction)
  ids = np.asarray(sample(None, jax.random.key(0)))
  assert len(ids) == n == len(set(ids.tolist())) and ids.max() < population
  if n == population:
    assert sorted(ids.tolist()) == list(range(population))
