"""Splits a training set across clients as the reference implementation does.

Everything is host numpy and all randomness comes from the caller's
`np.random.Generator`, so a partition is reproducible from the run seed.
"""

import numpy as np

from fedjax_seq.errors import InputError


def partition(labels: np.ndarray, num_clients: int, num_classes: int, *,
              alpha: float, iid: bool = False, max_iter: int = 100,
              rebalance: bool = False,
              rng: np.random.Generator) -> list[np.ndarray]:
  """Returns one int64 array of training-example indices per client.

  * `iid`: a uniform shuffle cut into `num_clients` nearly equal parts.
  * `alpha == 0` (pathological): indices sorted by label are cut into shards
    of N // K examples, the shards are shuffled and each client takes the
    next `len(shards) // K` of them. When K does not divide N the shards
    left over are unused (and the short last shard may be one that is
    used); this is the reference behaviour. N=50000, K=500 gives one
    100-example, one-class shard per client.
  * `alpha > 0`: per-class Dirichlet(alpha) proportions, never giving more
    to a client that already holds N / K examples; of `max_iter` draws the
    one with the smallest std of client sizes is kept. Every example lands
    in exactly one client; a client may end up empty.
  * `rebalance` (Dirichlet only): excess examples of clients above N // K
    are pooled and handed to clients below it, so every client gets exactly
    N // K (the N % K left in the pool are unused).

  Args:
    labels: (N,) int class of every training example.
    num_clients: K.
    num_classes: number of classes; labels must lie in [0, num_classes).
    alpha: Dirichlet concentration; 0 selects the pathological split.
    iid: uniform split, ignoring `alpha`.
    max_iter: Dirichlet redraws to choose from.
    rebalance: equalise client sizes after a Dirichlet split.
    rng: the only source of randomness.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if num_clients < 1:
    raise InputError(f"num_clients must be >= 1, got {num_clients}")
  if num_clients > n:
    raise InputError(f"more clients than examples: {num_clients} clients, "
                     f"{n} training examples")
  if alpha < 0:
    raise InputError(f"Dirichlet alpha must be >= 0, got {alpha}")
  if max_iter < 1:
    raise InputError(f"max_iter must be >= 1, got {max_iter}")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise InputError(f"labels must lie in [0, {num_classes}), got "
                    f"[{labels.min()}, {labels.max()}]")

  if iid:
    return list(np.array_split(rng.permutation(n), num_clients))
  if alpha == 0:
    return _shards(labels, num_clients, rng)
  clients = _dirichlet(labels, num_clients, num_classes, alpha, max_iter, rng)
  if rebalance:
    clients = _rebalance(clients, n // num_clients, rng)
  return clients


def _shards(labels: np.ndarray, k: int, rng: np.random.Generator):
  """Pathological split: each client gets whole label-sorted shards."""
  n = len(labels)
  order = np.argsort(labels, kind="stable")
  shard_size = n // k
  starts = np.arange(0, n, shard_size)
  rng.shuffle(starts)
  per_client = len(starts) // k
  return [
      np.concatenate([order[s:s + shard_size]
                      for s in starts[c * per_client:(c + 1) * per_client]])
      for c in range(k)
  ]


def _dirichlet(labels, k, num_classes, alpha, max_iter, rng):
  """Best-balanced of `max_iter` per-class Dirichlet draws."""
  n = len(labels)
  by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
  best, best_std = None, np.inf
  for _ in range(max_iter):
    pieces = [[] for _ in range(k)]
    sizes = np.zeros(k, np.int64)
    for idx in by_class:
      idx = idx.copy()
      rng.shuffle(idx)
      p = rng.dirichlet(np.full(k, alpha))
      # Clients already holding their fair share N / K get nothing more.
      p = p * (sizes < n / k)
      p = p / p.sum()
      cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
      for c, part in enumerate(np.split(idx, cuts)):
        pieces[c].append(part)
        sizes[c] += len(part)
    std = np.std(sizes)
    if std < best_std:
      best, best_std = pieces, std
  clients = [np.concatenate(p).astype(np.int64) for p in best]
  for c in clients:
    rng.shuffle(c)
  return clients


def _rebalance(clients, shard_size, rng):
  """Moves random excess examples from large clients to small ones."""
  clients = list(clients)
  pool = []
  for c, idx in enumerate(clients):
    if len(idx) > shard_size:
      move = rng.choice(len(idx), len(idx) - shard_size, replace=False)
      pool.append(idx[move])
      clients[c] = np.delete(idx, move)
  pool = np.concatenate(pool) if pool else np.zeros(0, np.int64)
  for c, idx in enumerate(clients):
    if len(idx) < shard_size:
      take = rng.choice(len(pool), shard_size - len(idx), replace=False)
      clients[c] = np.concatenate([idx, pool[take]])
      pool = np.delete(pool, take)
  return clients


def hold_out_exemplars(labels: np.ndarray, num_classes: int, per_class: int,
                       rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Removes `per_class` random test examples of every class.

  The reference implementation takes these out of the test set; FedSeq uses
  them as its exemplar set.

  Returns:
    (kept_indices, exemplar_indices): kept sorted ascending; exemplars grouped
    by class (class 0 first), sorted within a class.
  """
  labels = np.asarray(labels)
  if per_class < 0:
    raise InputError(f"exemplars per class must be >= 0, got {per_class}")
  chosen = []
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    if len(idx) < per_class:
      raise InputError(f"class {c} has {len(idx)} test examples, fewer than "
                       f"the {per_class} exemplars per class to hold out")
    chosen.append(np.sort(rng.choice(idx, per_class, replace=False)))
  exemplars = np.concatenate(chosen).astype(np.int64)
  kept = np.setdiff1d(np.arange(len(labels)), exemplars)
  return kept, exemplars
