"""Groups clients into FedSeq superclients.

A superclient is a set of clients trained one after another within a round;
the more its members' label distributions complement each other, the closer
it behaves to a client holding i.i.d. data. Everything here is host numpy,
and all randomness comes from the caller's `np.random.Generator`.
"""

import itertools
from typing import Callable

import numpy as np

from fedjax_seq import registry

_PROB_TOL = 1e-6


def requires_probabilities(measure: str) -> bool:
  """Whether a registered measure only makes sense on probability vectors."""
  return registry.MEASURES.get(measure).needs_probabilities


# The built-in measures, batched: score(group representer (D,), client representers (n, D)).


def kullback(g: np.ndarray, c: np.ndarray) -> np.ndarray:
  """1 - KL(m || uniform) with natural log, m = (g + c) / 2; 0 log 0 counts as 0.

  m is not renormalised (unlike `kl_rows`): the representers are probability
  vectors already, and the reference scores them as they are.
  """
  return 1 - kl_rows((g + c) / 2, normalise=False)


def gini(g: np.ndarray, c: np.ndarray) -> np.ndarray:
  """1 - sum(m**2), m = (g + c) / 2."""
  m = (g + c) / 2
  return 1 - np.sum(m * m, axis=-1)


def cosine(g: np.ndarray, c: np.ndarray) -> np.ndarray:
  """1 - cos(g, c)."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return 1 - (c @ g) / (np.linalg.norm(g) * np.linalg.norm(c, axis=-1))


def wasserstein_rows(g: np.ndarray, c: np.ndarray) -> np.ndarray:
  """1-D Wasserstein distance between the entries of g and of each row of c (equal lengths)."""
  return np.mean(np.abs(np.sort(c, axis=-1) - np.sort(g)), axis=-1)


def _wasserstein(u: np.ndarray, v: np.ndarray) -> float:
  """1-D earth mover's distance between the entries of `u` and of `v`."""
  u, v = np.sort(np.ravel(u)), np.sort(np.ravel(v))
  points = np.sort(np.concatenate([u, v]))
  cdf_u = np.searchsorted(u, points[:-1], side="right") / len(u)
  cdf_v = np.searchsorted(v, points[:-1], side="right") / len(v)
  return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(points)))


def measure_fn(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
  """Returns measure(group_representer, client_representer) of a registered measure.

  * kullback: 1 - KL(m || uniform), m = (a + b) / 2, natural log.
  * gini: 1 - sum(m**2), m = (a + b) / 2.
  * cosine: 1 - cos(a, b).
  * wasserstein: the 1-D Wasserstein distance between the entries of `a`
    and of `b`, each taken as an equally weighted empirical sample (lengths
    may differ).
  """
  score = registry.MEASURES.get(name).score
  if name == "wasserstein":
    return _wasserstein
  return lambda a, b: float(score(np.asarray(a, float), np.asarray(b, float)[None])[0])


def pca_reduce(x: np.ndarray, variance: float) -> np.ndarray:
  """Projects rows (clients) onto their leading principal components.

  scikit-learn's `PCA(n_components=variance, svd_solver="full")`, as the
  original: the fewest components whose cumulative explained-variance ratio
  exceeds `variance` (all of them at 1). Signs follow the `svd_flip` rule of
  the scikit-learn release the original ran (1.0, decided on U): in each
  output column the entry of largest magnitude is positive (releases from
  1.5 decide on the components instead). With zero total variance one
  all-zero column is returned.
  """
  from sklearn.decomposition import PCA
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f"pca_reduce needs a non-empty 2-D array, got {x.shape}")
  if not 0 < variance <= 1:
    raise ValueError(f"PCA variance must be in (0, 1], got {variance}")
  if x.shape[0] < 2 or not np.any(x != x[0]):
    return np.zeros((x.shape[0], 1))
  out = PCA(n_components=None if variance == 1 else variance, svd_solver="full").fit_transform(x)
  signs = np.sign(out[np.argmax(np.abs(out), axis=0), np.arange(out.shape[1])])
  return out * np.where(signs == 0, 1.0, signs)


def kmeans_labels(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """scikit-learn's KMeans as the original ran it: a label per row.

  Greedy k-means++ seeding, 10 initialisations keeping the lowest inertia,
  Lloyd iterations (at most 300), empty clusters relocated; the seed is
  drawn from `rng`, so a run is reproducible.
  """
  from sklearn.cluster import KMeans
  seed = int(rng.integers(2**31 - 1))
  return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x).labels_


def group_clients(representers: np.ndarray, sizes: np.ndarray, *,
                  method: str, measure: str = "kullback", max_clients: int,
                  min_examples: int, num_classes: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
  """Forms superclients with a registered grouping: one int64 array of client ids each.

  Checks the arguments, calls the grouping's `group` (with the measure's
  score when it uses one) and checks that every client lands in exactly one
  non-empty superclient. The built-in groupings are `greedy`, `kmeans`,
  `random` and `greedy_mixture` (below).
  """
  entry = registry.GROUPINGS.get(method)
  score = registry.MEASURES.get(measure).score if entry.uses_measure else None
  if max_clients < 1:
    raise ValueError(f"max_clients must be >= 1, got {max_clients}")
  if min_examples < 0:
    raise ValueError(f"min_examples must be >= 0, got {min_examples}")
  sizes = np.asarray(sizes)
  n = len(sizes)
  if sizes.ndim != 1 or n < 1 or np.any(sizes < 0):
    raise ValueError("sizes must be a non-empty 1-D array of non-negative "
                     f"example counts, got shape {sizes.shape}")
  reps = np.asarray(representers, dtype=np.float64)
  if entry.needs_representers:
    if reps.ndim != 2 or len(reps) != n or not np.all(np.isfinite(reps)):
      raise ValueError(f"representers must be finite with shape ({n}, D), got shape {reps.shape}")
    needs = (entry.needs_probabilities or
             (entry.uses_measure and registry.MEASURES.get(measure).needs_probabilities))
    if needs and not is_probabilities(reps):
      what = f"measure {measure!r}" if not entry.needs_probabilities else f"grouping {method!r}"
      raise ValueError(f"{what} needs probability vectors (rows non-negative, summing to 1): "
                       "use the `confidence` representation or another measure")
  groups = entry.group(reps, sizes, measure=score, max_clients=max_clients,
                       min_examples=min_examples, num_classes=num_classes, rng=rng)
  groups = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups]
  ids = np.concatenate(groups) if groups else np.zeros(0, np.int64)
  if not groups or min(len(g) for g in groups) < 1 or np.sort(ids).tolist() != list(range(n)):
    raise ValueError(f"grouping {method!r} must put each of the {n} clients in exactly one "
                     "non-empty superclient")
  return groups


def is_probabilities(reps: np.ndarray) -> bool:
  """Whether every row is non-negative and sums to 1 (within 1e-6)."""
  return not (np.any(reps < 0) or np.any(np.abs(reps.sum(1) - 1) > _PROB_TOL))


def fill_groups(pick: Callable[[list[int]], int], sizes: np.ndarray, max_clients: int,
                min_examples: int) -> list[np.ndarray]:
  """Fills superclients one at a time with the clients `pick(group)` chooses.

  A group takes its next client while it is empty, or while it has fewer
  than `min_examples` examples and fewer than `max_clients` clients;
  otherwise it closes and the next one opens. `pick` is called once per
  client with the open group's members and returns a client not yet taken.

  Only the last group is checked against `min_examples` (earlier groups close
  short only on `max_clients`). If it is short and other groups exist, the
  groups with room are sorted once by example count (ascending, ties by
  order) and, cycling over them, each in turn receives the last remaining
  client of the short group while it has room. If it is the only group, it
  is kept. Clients appear in the order they were added.
  """
  groups, group, examples = [], [], 0
  for _ in range(len(sizes)):
    if group and not (examples < min_examples and len(group) < max_clients):
      groups.append(group)
      group, examples = [], 0
    client = pick(group)
    group.append(client)
    examples += int(sizes[client])
  if examples >= min_examples or not groups:
    groups.append(group)
  else:
    _redistribute(group, groups, sizes, max_clients, min_examples)
  return [np.asarray(g, dtype=np.int64) for g in groups]


# The built-in groupings (registered in fedjax_seq/registry.py).


def greedy(reps: np.ndarray, sizes: np.ndarray, *, measure: Callable, max_clients: int,
           min_examples: int, num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
  """The paper's greedy fill: the remaining client maximising measure(group, client).

  The group representer is the size-weighted mean of its members (the
  uniform vector 1/D while empty; the plain mean if its members hold no
  examples). As in the reference, a client is chosen only if its value is
  > 0 (NaN never is) and the first one wins ties; if none qualifies, the
  lowest-id remaining client is taken.
  """
  del num_classes, rng
  left = list(range(len(sizes)))

  def pick(group: list[int]) -> int:
    if not group:
      rep = np.full(reps.shape[1], 1 / reps.shape[1])
    elif sizes[group].sum() > 0:
      rep = sizes[group] @ reps[group] / sizes[group].sum()
    else:
      rep = reps[group].mean(axis=0)
    values = np.nan_to_num(measure(rep, reps[left]), nan=-np.inf)
    best = int(np.argmax(values))
    return left.pop(best if values[best] > 0 else 0)

  return fill_groups(pick, sizes, max_clients, min_examples)


def kmeans(reps: np.ndarray, sizes: np.ndarray, *, measure: None, max_clients: int,
           min_examples: int, num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
  """k-means with k = min(num_classes, K) splits the clients into homogeneous clusters.

  One cycle over the clusters, kept across groups, takes the highest-id
  remaining client of each non-empty cluster in turn.
  """
  del measure
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  k = min(num_classes, len(sizes))
  labels = kmeans_labels(reps, k, rng)
  cycle = itertools.cycle([list(np.flatnonzero(labels == j)) for j in range(k)])

  def pick(group: list[int]) -> int:
    del group
    cluster = next(cycle)
    while not cluster:
      cluster = next(cycle)
    return int(cluster.pop())

  return fill_groups(pick, sizes, max_clients, min_examples)


def random(reps: np.ndarray, sizes: np.ndarray, *, measure: None, max_clients: int,
           min_examples: int, num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
  """Clients in the order of a permutation drawn from `rng`; `reps` is unused."""
  del reps, measure, num_classes
  order = iter(rng.permutation(len(sizes)).tolist())
  return fill_groups(lambda group: next(order), sizes, max_clients, min_examples)


def greedy_mixture(reps: np.ndarray, sizes: np.ndarray, *, measure: None, max_clients: int,
                   min_examples: int, num_classes: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
  """Ours, not in the paper: the client that leaves the group closest to uniform.

  The remaining client whose addition gives the lowest KL(size-weighted
  mixture of the group and the client || uniform), first one on ties; then,
  after redistribution, pairwise swaps between superclients on the estimated
  class counts (size x representer) while a swap lowers the sum of the two
  superclients' KL from uniform (`refine_by_swaps`). Needs probability
  vectors.
  """
  del measure, num_classes, rng
  groups = fill_groups(_mixture_picker(reps, sizes), sizes, max_clients, min_examples)
  groups = refine_by_swaps(groups, sizes[:, None] * reps, sizes, min_examples)
  return [np.asarray(g, dtype=np.int64) for g in groups]


def check_feasible(sizes: np.ndarray, max_clients: int, min_examples: int) -> None:
  """Refuses, before any client evaluation, constraints no grouping can meet.

  If even the `max_clients` largest clients hold fewer than `min_examples`
  examples, every group closes full and short, so the short last group has
  nowhere to go (unless all clients fit in one group).
  """
  sizes = np.sort(np.asarray(sizes))[::-1]
  if len(sizes) > max_clients and sizes[:max_clients].sum() < min_examples:
    raise ValueError(
        f"cannot form superclients: the {max_clients} largest clients hold "
        f"{int(sizes[:max_clients].sum())} < min_examples={min_examples} examples; raise "
        "max_clients or lower min_examples")


def _redistribute(short: list[int], groups: list[list[int]],
                  sizes: np.ndarray, max_clients: int,
                  min_examples: int) -> None:
  """Moves every client of the short last group into `groups`, in place."""
  room = sum(max_clients - len(g) for g in groups)
  if room < len(short):
    raise ValueError(
        f"cannot form superclients: the last group has {len(short)} clients "
        f"and {int(sizes[short].sum())} < min_examples={min_examples} "
        f"examples, and the others have room for {room} more clients; raise "
        "max_clients or lower min_examples")
  open_groups = sorted((g for g in groups if len(g) < max_clients),
                       key=lambda g: int(sizes[g].sum()))
  while short:
    for g in open_groups:
      if short and len(g) < max_clients:
        g.append(short.pop())


def kl_rows(counts: np.ndarray, normalise: bool = True) -> np.ndarray:
  """KL(row / row sum || uniform) of each row of (non-negative) class counts, in nats.

  0 log 0 counts as 0 and an all-zero row has KL 0. Works on any leading shape.
  `normalise=False` takes the rows as distributions already (the kullback
  measure scores mixtures of probability vectors as they are).
  """
  counts = np.asarray(counts, dtype=np.float64)
  if normalise:
    total = counts.sum(-1, keepdims=True)
    p = counts / np.where(total > 0, total, 1.0)
  else:
    p = counts
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p > 0, p * np.log(p * counts.shape[-1]), 0.0)
  return terms.sum(-1)


def _mixture_picker(reps: np.ndarray, sizes: np.ndarray) -> Callable[[list[int]], int]:
  """`greedy_mixture`'s choice: the client that leaves the group closest to uniform."""
  weights = np.asarray(sizes, dtype=np.float64)
  left = list(range(len(reps)))

  def pick(group: list[int]) -> int:
    cand = reps[left]
    # What the group would become with each candidate: its estimated class
    # counts plus the candidate's. Only the direction matters for the KL; a
    # group and candidate without examples fall back to the plain mean.
    mixed = weights[group] @ reps[group] + weights[left, None] * cand
    empty = mixed.sum(1) <= 0
    if np.any(empty):
      mixed[empty] = reps[group].sum(0) + cand[empty]
    return left.pop(int(np.argmin(kl_rows(mixed))))

  return pick


def refine_by_swaps(groups: list[list[int]], counts: np.ndarray, sizes: np.ndarray,
                    min_examples: int, max_passes: int = 100) -> list[list[int]]:
  """Pairwise client swaps between superclients that lower their summed KL from uniform.

  `counts` (K, C) are the class counts the swaps are judged on (true ones for
  an oracle, size x confidence vector for an estimate). Passes over the groups
  in order; for group a, every swap of one of its members with a client of
  another group b is scored by KL(a') + KL(b') - KL(a) - KL(b) and the lowest
  is made if it is below -1e-12 (first on ties: a's earlier member, then the
  lower client id). A swap keeps both groups' client counts (so max_clients
  holds) and never takes a group's examples below min(min_examples, what it
  held). Stops after a pass without a swap, or after `max_passes` passes.
  The swapped-in client takes the swapped-out one's position. Deterministic.
  """
  groups = [list(g) for g in groups]
  counts = np.asarray(counts, dtype=np.float64)
  sizes = np.asarray(sizes)
  if len(groups) < 2:
    return groups
  owner = np.empty(len(counts), dtype=np.int64)
  for s, g in enumerate(groups):
    owner[g] = s
  sums = np.stack([counts[g].sum(0) for g in groups])
  examples = np.array([int(sizes[g].sum()) for g in groups])
  kls = kl_rows(sums)
  for _ in range(max_passes):
    swapped = False
    for a in range(len(groups)):
      mine = np.asarray(groups[a])
      others = np.flatnonzero(owner != a)
      b = owner[others]
      gain = counts[others][None] - counts[mine][:, None]  # a gains j, loses i
      delta = (kl_rows(sums[a] + gain) + kl_rows(sums[b][None] - gain)
               - kls[a] - kls[b][None])
      moved = sizes[others][None].astype(np.int64) - sizes[mine][:, None]
      ok = ((examples[a] + moved >= min(min_examples, examples[a]))
            & (examples[b][None] - moved >= np.minimum(min_examples, examples[b])[None]))
      delta = np.where(ok, delta, np.inf)
      best = int(np.argmin(delta))
      if not delta.flat[best] < -1e-12:
        continue
      i, j = np.unravel_index(best, delta.shape)
      ci, cj, gb = int(mine[i]), int(others[j]), int(b[j])
      groups[a][i] = cj
      groups[gb][groups[gb].index(cj)] = ci
      owner[ci], owner[cj] = gb, a
      for s in (a, gb):  # recomputed from the members: no drift over many swaps
        sums[s] = counts[groups[s]].sum(0)
        examples[s] = int(sizes[groups[s]].sum())
      kls[[a, gb]] = kl_rows(sums[[a, gb]])
      swapped = True
    if not swapped:
      break
  return groups
