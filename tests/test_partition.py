"""Tests for fedjax_seq.data.partition."""

import numpy as np
import pytest

from fedjax_seq.data.partition import hold_out_exemplars
from fedjax_seq.data.partition import partition
from fedjax_seq.errors import InputError

# CIFAR-10-like training labels: 5000 per class, shuffled.
LABELS = np.random.default_rng(0).permutation(np.arange(50000) % 10)


def _rng(seed=0):
  return np.random.default_rng(seed)


def _check_disjoint_cover(clients, n):
  everything = np.concatenate(clients)
  assert len(everything) == n
  np.testing.assert_array_equal(np.sort(everything), np.arange(n))


def _classes_per_client(clients):
  return np.array([len(np.unique(LABELS[c])) for c in clients])


def test_pathological_one_class_per_client():
  clients = partition(LABELS, 500, 10, alpha=0.0, rng=_rng())
  assert len(clients) == 500
  assert all(len(c) == 100 for c in clients)
  assert (_classes_per_client(clients) == 1).all()
  _check_disjoint_cover(clients, 50000)
  # Every class spread over exactly 50 clients.
  first = np.array([LABELS[c[0]] for c in clients])
  np.testing.assert_array_equal(np.bincount(first), [50] * 10)


def test_pathological_five_shards():
  clients = partition(LABELS, 100, 10, alpha=0.0, rng=_rng())
  assert all(len(c) == 500 for c in clients)
  for c in clients:
    # Five label-sorted 100-example shards, each of a single class.
    shards = LABELS[c].reshape(5, 100)
    assert (shards == shards[:, :1]).all()
  assert _classes_per_client(clients).max() <= 5
  _check_disjoint_cover(clients, 50000)


def test_pathological_leftover_shards_unused():
  labels = np.arange(105) % 3
  clients = partition(labels, 10, 3, alpha=0.0, rng=_rng())
  # 11 shards (the last has 5 examples), one per client, one left over.
  assert sum(len(c) for c in clients) in (95, 100)
  assert len(np.unique(np.concatenate(clients))) == sum(len(c) for c in clients)


def test_dirichlet_covers_and_is_non_iid():
  clients = partition(LABELS, 100, 10, alpha=0.5, max_iter=10, rng=_rng())
  assert len(clients) == 100
  assert sum(len(c) for c in clients) == 50000
  _check_disjoint_cover(clients, 50000)
  assert _classes_per_client(clients).mean() < 9
  top_share = [np.bincount(LABELS[c], minlength=10).max() / len(c)
               for c in clients if len(c)]
  assert np.mean(top_share) > 0.35
  # The final shuffle: a client's indices are not class-grouped.
  big = max(clients, key=len)
  assert (np.diff(LABELS[big]) != 0).mean() > 0.3


def test_dirichlet_more_iterations_more_balanced():
  one = partition(LABELS, 100, 10, alpha=0.5, max_iter=1, rng=_rng(5))
  many = partition(LABELS, 100, 10, alpha=0.5, max_iter=20, rng=_rng(5))
  # Same seed: the first draw of `many` is `one`, so its best is no worse.
  assert np.std([len(c) for c in many]) <= np.std([len(c) for c in one])
  assert np.std([len(c) for c in many]) < np.std([len(c) for c in one])


def test_smaller_alpha_more_skew():
  def mean_classes(alpha):
    return _classes_per_client(
        partition(LABELS, 100, 10, alpha=alpha, max_iter=5, rng=_rng())).mean()
  low, mid, high = mean_classes(0.05), mean_classes(0.5), mean_classes(100.0)
  assert low < mid < high
  assert low < 3 and high == 10


def test_dirichlet_deterministic():
  a = partition(LABELS, 50, 10, alpha=0.3, max_iter=3, rng=_rng(7))
  b = partition(LABELS, 50, 10, alpha=0.3, max_iter=3, rng=_rng(7))
  c = partition(LABELS, 50, 10, alpha=0.3, max_iter=3, rng=_rng(8))
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid():
  clients = partition(LABELS[:1003], 10, 10, alpha=0.0, iid=True, rng=_rng())
  sizes = [len(c) for c in clients]
  assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1003
  _check_disjoint_cover(clients, 1003)
  assert (_classes_per_client(clients) == 10).all()


def test_rebalance():
  clients = partition(LABELS, 100, 10, alpha=0.1, max_iter=2, rebalance=True,
                      rng=_rng())
  assert all(len(c) == 500 for c in clients)
  _check_disjoint_cover(clients, 50000)
  # Still skewed: rebalancing moves only the excess.
  assert _classes_per_client(clients).mean() < 9


def test_rebalance_not_divisible():
  labels = np.arange(1003) % 10
  clients = partition(labels, 10, 10, alpha=0.2, max_iter=2, rebalance=True,
                      rng=_rng())
  assert all(len(c) == 100 for c in clients)
  everything = np.concatenate(clients)
  assert len(np.unique(everything)) == 1000


def test_hold_out_exemplars():
  labels = np.random.default_rng(1).permutation(np.arange(10000) % 10)
  kept, ex = hold_out_exemplars(labels, 10, 10, _rng())
  assert len(ex) == 100 and len(kept) == 9900
  np.testing.assert_array_equal(labels[ex], np.repeat(np.arange(10), 10))
  np.testing.assert_array_equal(np.sort(kept), kept)
  assert not np.intersect1d(kept, ex).size
  np.testing.assert_array_equal(np.sort(np.concatenate([kept, ex])),
                                np.arange(10000))
  kept2, ex2 = hold_out_exemplars(labels, 10, 10, _rng(1))
  assert not np.array_equal(ex, ex2)
  with pytest.raises(InputError, match="class 3"):
    hold_out_exemplars(np.array([0, 1, 2] * 5), 4, 1, _rng())


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_clients=11, alpha=0.5), "more clients than examples"),
    (dict(num_clients=0, alpha=0.5), "num_clients"),
    (dict(num_clients=2, alpha=-0.1), "alpha"),
    (dict(num_clients=2, alpha=0.5, max_iter=0), "max_iter"),
])
def test_errors(kwargs, match):
  with pytest.raises(InputError, match=match):
    partition(np.arange(10) % 2, num_classes=2, rng=_rng(), **kwargs)


def test_label_out_of_range():
  with pytest.raises(InputError, match="labels"):
    partition(np.array([0, 1, 5]), 2, 3, alpha=0.5, rng=_rng())
