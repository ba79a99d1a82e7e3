"""Tests for fedjax_seq.superclients.grouping."""

import math

import numpy as np
import pytest
from scipy import stats

from fedjax_seq.registry import MEASURES
from fedjax_seq.superclients.grouping import group_clients
from fedjax_seq.superclients.grouping import measure_fn
from fedjax_seq.superclients.grouping import pca_reduce
from fedjax_seq.superclients.grouping import requires_probabilities

# Six clients over three classes, used by the hand-computed greedy tests.
HAND_REPS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1],
                      [.5, .5, 0], [.6, 0, .4], [0, .2, .8]])
HAND_SIZES = np.array([10, 20, 10, 20, 10, 30])

# 200 one-class clients, 20 per class over 10 classes, in shuffled order.
LABELS = np.random.default_rng(0).permutation(np.arange(200) % 10)
ONE_HOT = np.eye(10)[LABELS]


def _group(reps, sizes, method="greedy", measure="kullback", max_clients=3,
           min_examples=40, num_classes=3, seed=0):
  groups = group_clients(reps, sizes, method=method, measure=measure,
                         max_clients=max_clients, min_examples=min_examples,
                         num_classes=num_classes,
                         rng=np.random.default_rng(seed))
  for g in groups:
    assert g.dtype == np.int64
  return [g.tolist() for g in groups]


def _check_cover(groups, n):
  assert sorted(c for g in groups for c in g) == list(range(n))


def test_measure_values_by_hand():
  a, b = np.array([1., 0, 0]), np.array([0., 1, 0])
  # m = (.5, .5, 0): KL(m || 1/3) = 2 * .5 * ln(.5 * 3) = ln 1.5.
  assert measure_fn("kullback")(a, b) == pytest.approx(1 - math.log(1.5))
  # Uniform mean: KL = 0.
  u = np.full(4, .25)
  assert measure_fn("kullback")(u, u) == pytest.approx(1.0)
  assert measure_fn("gini")(a, b) == pytest.approx(1 - (.25 + .25))
  assert measure_fn("gini")(u, u) == pytest.approx(.75)
  assert measure_fn("cosine")(np.array([1., 0]), np.array([1., 1])) == (
      pytest.approx(1 - 1 / math.sqrt(2)))
  assert measure_fn("cosine")(a, b) == pytest.approx(1.0)
  w = measure_fn("wasserstein")
  assert w(np.array([0., 1, 3]), np.array([5., 6, 8])) == pytest.approx(5.0)
  # CDF gaps .25, .5, .25 over [0,1), [1,2), [2,3).
  assert w(np.array([0., 1]), np.array([0., 1, 2, 3])) == pytest.approx(1.0)
  assert w(a, b) == pytest.approx(0.0)


def test_wasserstein_matches_scipy():
  rng = np.random.default_rng(1)
  for n, m in [(10, 10), (7, 13), (1, 5), (50, 50)]:
    u, v = rng.normal(size=n), rng.exponential(size=m)
    assert measure_fn("wasserstein")(u, v) == pytest.approx(
        stats.wasserstein_distance(u, v), rel=1e-12, abs=1e-12)


def test_greedy_kullback_by_hand():
  # max_clients=3, min_examples=40. KL terms use natural logs.
  # Group 1, empty, representer (1/3, 1/3, 1/3): 1 - KL(m || uniform) is
  #   one-hot 0, 1, 2: m = (2/3, 1/6, 1/6) -> 1 - ln(2)/3 = .7690
  #   3: m = (5/12, 5/12, 1/6) -> .9296 (best); 4: .9236; 5: .8743.
  # Take 3 (20 examples). Representer (.5, .5, 0):
  #   0, 1: .4637; 2: .9411; 4: .8987; 5: .9819 (best).
  # Take 5 -> 50 examples >= 40: close [3, 5].
  # Group 2, empty: 0, 1, 2: .7690; 4: .9236 (best). Take 4 (10).
  #   Representer (.6, 0, .4): 0: .4018; 1: .9310 (best); 2: .5123.
  # Take 1 (30). Representer (.2, 2/3, 2/15): 0: .7546; 2: .8197 (best).
  # Take 2 -> 3 clients: close [4, 1, 2].
  # Group 3: [0] with 10 < 40 examples is redistributed: only [3, 5] has
  # room, so it becomes [3, 5, 0].
  assert _group(HAND_REPS, HAND_SIZES, measure="kullback") == [[3, 5, 0],
                                                               [4, 1, 2]]
  # Gini ranks every step the same way: first step .5, .5, .5, .625, .62,
  # .58; then (.5, .5, 0) -> 0, 1: .375; 2: .625; 4: .595; 5: .655; ...
  assert _group(HAND_REPS, HAND_SIZES, measure="gini") == [[3, 5, 0],
                                                           [4, 1, 2]]


def test_greedy_cosine_by_hand():
  # Group 1, empty, representer (1/3, 1/3, 1/3): 1 - cos is
  #   0, 1, 2: 1 - 1/sqrt(3) = .4226 (tie: lowest id 0 wins); 3: .1835;
  #   4: .1994; 5: .2999.
  # Take 0 (10). Representer (1, 0, 0): 1, 2, 5: exactly 1 (tie -> 1);
  #   3: .2929; 4: .1679.
  # Take 1 (30). Representer (1/3, 2/3, 0): 2: 1 (best); 3: .0513;
  #   4: .6279; 5: .7831.
  # Take 2 -> 40 examples: close [0, 1, 2].
  # Group 2: 3: .1835; 4: .1994; 5: .2999 (best). Take 5 (30).
  #   Representer (0, .2, .8): 3: .8285 (best); 4: .4619. Take 3 -> 50:
  #   close [5, 3].
  # Group 3: [4] with 10 examples moves to [5, 3], the only one with room.
  assert _group(HAND_REPS, HAND_SIZES, measure="cosine") == [[0, 1, 2],
                                                             [5, 3, 4]]


def _reference_greedy(reps, sizes, measure, max_clients, min_examples):
  """Straightforward greedy fill built on measure_fn (no redistribution)."""
  f = measure_fn(measure)
  left, groups, group = list(range(len(sizes))), [], []
  while left:
    if group and not (sizes[group].sum() < min_examples
                      and len(group) < max_clients):
      groups.append(group)
      group = []
    if group:
      rep = sizes[group] @ reps[group] / sizes[group].sum()
    else:
      rep = np.full(reps.shape[1], 1 / reps.shape[1])
    best, best_value = 0, 0.0
    for i, c in enumerate(left):
      value = f(rep, reps[c])
      if value > best_value:
        best, best_value = i, value
    group.append(left.pop(best))
  return groups + [group]


@pytest.mark.parametrize("measure", MEASURES)
def test_greedy_matches_reference(measure):
  rng = np.random.default_rng(2)
  reps = rng.dirichlet(np.full(5, .3), size=40)
  sizes = rng.integers(20, 80, size=40)
  # min_examples=1 never leaves a short last group, so nothing moves.
  expected = _reference_greedy(reps, sizes, measure, 4, 1)
  assert _group(reps, sizes, measure=measure, max_clients=4,
                min_examples=1) == expected
  # A short last group is spread over the others: they keep their reference
  # members first and gain only its clients.
  expected = _reference_greedy(reps, sizes, measure, 6, 160)
  assert sizes[expected[-1]].sum() < 160
  got = _group(reps, sizes, measure=measure, max_clients=6, min_examples=160)
  assert len(got) == len(expected) - 1
  for g, e in zip(got, expected[:-1], strict=True):  # the reference's last group was spread
    assert g[:len(e)] == e and set(g[len(e):]) <= set(expected[-1])
  _check_cover(got, 40)


@pytest.mark.parametrize("method", ["greedy", "kmeans", "random"])
@pytest.mark.parametrize("sizes_kind", ["equal", "varied"])
def test_constraints_hold(method, sizes_kind):
  rng = np.random.default_rng(3)
  sizes = (np.full(200, 100) if sizes_kind == "equal"
           else rng.integers(10, 200, size=200))
  groups = _group(ONE_HOT, sizes, method=method, measure="gini",
                  max_clients=11, min_examples=800, num_classes=10)
  _check_cover(groups, 200)
  assert max(len(g) for g in groups) <= 11
  # As in the reference, a group may end short of min_examples only because
  # it filled up before the last group was formed.
  for g in groups:
    assert sizes[g].sum() >= 800 or len(g) == 11
  if sizes_kind == "equal":
    assert [len(g) for g in groups] == [8] * 25


def test_greedy_groups_are_class_diverse():
  sizes = np.full(200, 100)
  coverage = {}
  for method, measure in [("greedy", "gini"), ("greedy", "cosine"),
                          ("kmeans", "gini"), ("random", "gini")]:
    groups = _group(ONE_HOT, sizes, method=method, measure=measure,
                    max_clients=11, min_examples=800, num_classes=10)
    coverage[method, measure] = [len(set(LABELS[g])) for g in groups]
  for measure in ("gini", "cosine"):
    # Eight distinct classes in every group until the classes run low.
    assert coverage["greedy", measure][:23] == [8] * 23
    assert np.mean(coverage["greedy", measure]) >= 7.8
  # k-means recovers the ten classes; the cycle over them gives each group
  # of eight consecutive clusters eight distinct classes.
  assert coverage["kmeans", "gini"] == [8] * 25
  assert np.mean(coverage["random", "gini"]) < 6.5


def test_greedy_takes_lowest_id_when_no_value_is_positive():
  # Ten classes; clients 0, 1 = (.5, .5, 0, ...), 2 = e2, 3 = (.9, .1, 0, ...)
  # with 10 examples each; max_clients=2.
  reps = np.zeros((4, 10))
  reps[[0, 1], :2] = .5
  reps[2, 2] = 1
  reps[3, :2] = [.9, .1]
  # Empty group, 1 - KL(m || uniform): 0, 1: 1 - (.6 ln 3 - .4 ln 2) = .618;
  # 2: 1 - (.55 ln 5.5 - .45 ln 2) = .374; 3: 1 - (.5 ln 5 - .4 ln 2) =
  # .473. Take 0. Representer (.5, .5, 0, ...): 1: 1 - ln 5 = -.609;
  # 2: 1 - (.5 ln 2.5 + .5 ln 5) = -.263; 3: 1 - (.7 ln 7 + .3 ln 3) =
  # -.692. None is > 0, so, as in the reference, the lowest id (1) is
  # taken rather than the largest value (2). Then 3 (.473) before 2.
  assert _group(reps, np.full(4, 10), max_clients=2,
                min_examples=20) == [[0, 1], [3, 2]]


def test_redistribution_by_hand():
  # Uniform representers tie on every step, so greedy takes ids in order.
  reps = np.full((8, 3), 1 / 3)
  sizes = np.array([30, 30, 10, 40, 10, 5, 5, 5])
  # max_clients=4, min_examples=50: [0, 1] (60), [2, 3] (50), then
  # [4, 5, 6, 7] closes full with 25 < 50 examples as the last group.
  # Groups with room sorted by examples: [2, 3] (50), [0, 1] (60); cycling
  # over them they receive 7, 6, 5, 4 (last client first).
  assert _group(reps, sizes, max_clients=4, min_examples=50) == [
      [0, 1, 6, 4], [2, 3, 7, 5]]
  # max_clients=3: [4, 5, 6] closes full with 20 < 50 examples; it is not
  # the last group, so it stays. The last, [7], goes to the group with room
  # and fewest examples, [2, 3].
  assert _group(reps, sizes, max_clients=3, min_examples=50) == [
      [0, 1], [2, 3, 7], [4, 5, 6]]
  # One group in all, below min_examples: nowhere to move it, kept.
  assert _group(reps[:2], sizes[:2], max_clients=5, min_examples=100) == [
      [0, 1]]
  # min_examples=0: every group closes after its first client.
  assert _group(reps[:3], sizes[:3], min_examples=0) == [[0], [1], [2]]


def test_infeasible_constraints_raise():
  reps = np.full((5, 3), 1 / 3)
  # [0, 1], [2, 3] are full; the short last [4] has nowhere to go.
  with pytest.raises(ValueError, match="max_clients.*min_examples"):
    _group(reps, np.full(5, 10), max_clients=2, min_examples=100)
  with pytest.raises(ValueError, match="max_clients.*min_examples"):
    _group(reps, np.full(5, 10), method="random", max_clients=2,
           min_examples=100)


def test_kmeans_deterministic_for_seed():
  rng = np.random.default_rng(4)
  reps = rng.dirichlet(np.full(10, .2), size=120)
  sizes = rng.integers(50, 150, size=120)
  kwargs = dict(method="kmeans", max_clients=10, min_examples=500,
                num_classes=10)
  first = _group(reps, sizes, seed=7, **kwargs)
  assert _group(reps, sizes, seed=7, **kwargs) == first
  _check_cover(first, 120)


def test_random_deterministic_for_seed():
  sizes = np.full(30, 10)
  first = _group(None, sizes, method="random", min_examples=30, seed=5)
  assert _group(None, sizes, method="random", min_examples=30,
                seed=5) == first
  assert _group(None, sizes, method="random", min_examples=30,
                seed=6) != first
  _check_cover(first, 30)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "spectral"}, "unknown grouping 'spectral'; valid: "
     "greedy, kmeans, random, greedy_mixture"),
    ({"measure": "l2"}, "unknown measure 'l2'; valid: kullback, gini, "
     "cosine, wasserstein"),
    ({"max_clients": 0}, "max_clients must be >= 1"),
    ({"min_examples": -1}, "min_examples must be >= 0"),
])
def test_bad_arguments(kwargs, message):
  args = dict(reps=HAND_REPS, sizes=HAND_SIZES)
  with pytest.raises(ValueError, match=message):
    _group(args["reps"], args["sizes"], **kwargs)


@pytest.mark.parametrize("measure", ["kullback", "gini"])
def test_probability_measures_need_probability_vectors(measure):
  assert requires_probabilities(measure)
  with pytest.raises(ValueError, match="confidence"):
    _group(HAND_REPS * 2, HAND_SIZES, measure=measure)
  with pytest.raises(ValueError, match="confidence"):
    _group(HAND_REPS - .1, HAND_SIZES, measure=measure)
  assert not requires_probabilities("cosine")
  _check_cover(_group(HAND_REPS * 2, HAND_SIZES, measure="cosine"), 6)


def test_pca_reduce_keeps_known_components():
  # Orthogonal centred columns with scales 4, 2, 1, 1 (variance 16:4:1:1,
  # cumulative ratios 16/22 = .727, .909, .955, 1), then rotated.
  cols = np.column_stack([np.tile([1., -1], 4), np.repeat([1., -1], 4),
                          np.tile([1., 1, -1, -1], 2),
                          np.array([1., -1, -1, 1, -1, 1, 1, -1])])
  x = cols * [4, 2, 1, 1]
  q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(4, 4)))
  x = x @ q.T + 3.0
  for variance, keep in [(.5, 1), (.72, 1), (.75, 2), (.9, 2), (.93, 3),
                         (.96, 4), (1.0, 4)]:
    out = pca_reduce(x, variance)
    assert out.shape == (8, keep)
    np.testing.assert_allclose(np.sum(out**2, axis=0),
                               8 * np.array([16., 4, 1, 1])[:keep])
  np.testing.assert_allclose(np.abs(pca_reduce(x, .8)), np.abs(cols[:, :2] *
                                                               [4, 2]))
  with pytest.raises(ValueError, match="variance"):
    pca_reduce(x, 0.0)
  np.testing.assert_array_equal(pca_reduce(np.ones((3, 2)), .9),
                                np.zeros((3, 1)))
