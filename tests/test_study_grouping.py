"""greedy_mixture and refine_by_swaps (fedjax_seq.superclients.grouping), by hand."""

import math

import numpy as np
import pytest

from fedjax_seq.superclients.grouping import group_clients, kl_rows, refine_by_swaps


def _group(reps, sizes, method, max_clients, min_examples, measure="kullback"):
  groups = group_clients(np.asarray(reps, float), np.asarray(sizes), method=method,
                         measure=measure, max_clients=max_clients, min_examples=min_examples,
                         num_classes=np.shape(reps)[1], rng=np.random.default_rng(0))
  return [g.tolist() for g in groups]


def test_kl_rows_by_hand():
  assert kl_rows(np.array([2., 0])) == pytest.approx(math.log(2))
  assert kl_rows(np.array([1., 1])) == pytest.approx(0.0)
  assert kl_rows(np.array([0., 0, 0])) == 0.0  # no examples: 0, not NaN
  # (3/4, 1/4): 3/4 ln(3/2) + 1/4 ln(1/2) = .304099 - .173287.
  assert kl_rows(np.array([3., 1])) == pytest.approx(0.130812, abs=1e-6)
  np.testing.assert_allclose(kl_rows(np.array([[[2., 0], [1, 1]]])), [[math.log(2), 0.0]])


# X has 20 examples, the others 10 or 20. max_clients=2, min_examples=30.
#   0: X = (.3, .3, .4)   size 20
#   1: A = (.4, .4, .2)   size 10  (20 X + 10 A = (10, 10, 10): uniform by size)
#   2: B = (11, 11, 8)/30 size 10  ((X + B) / 2 = (1/3, 1/3, 1/3): uniform by equal weight)
#   3: (1, 0, 0)          size 20
MIX_REPS = [[.3, .3, .4], [.4, .4, .2], [11 / 30, 11 / 30, 8 / 30], [1, 0, 0]]
MIX_SIZES = [20, 10, 10, 20]


def test_greedy_mixture_weights_the_group_by_its_size():
  # greedy_mixture, group 1, empty: KL of each candidate alone:
  #   0: 2(.3 ln .9) + .4 ln 1.2 = .00971 (lowest); 1: .04369; 2: .01039; 3: ln 3.
  # Take 0; its estimated counts are 20 X = (6, 6, 8). With each candidate:
  #   1: (10, 10, 10): KL 0 (lowest); 2: (9.67, 9.67, 10.67): .00110; 3: (26, 6, 8): .2121.
  # Take 1: 30 examples, close [0, 1]. Group 2: 2 (.01039) before 3 (ln 3): [2, 3],
  # counts (23.67, 3.67, 2.67), KL .4395.
  # Swaps: {0, 3} / {1, 2} would sum to .2121 + .0239 < .4395, but {1, 2} holds
  # 20 < 30 examples, so neither swap leading there (0<->2, 1<->3) is allowed;
  # {0, 2} / {1, 3} sums to .0011 + .4709 > .4395. No swap.
  assert _group(MIX_REPS, MIX_SIZES, "greedy_mixture", 2, 30) == [[0, 1], [2, 3]]
  # The original's kullback scores (X + c) / 2 whatever the group's size:
  # group 1 empty, 1 - KL((uniform + c) / 2): 0: .99754 (best), 1: .98961,
  # 2: .99746, 3: .76895. Then 1 - KL((X + c) / 2): 1: .99746, 2: 1 (uniform,
  # best), 3: .78785. So it pairs X with B: [0, 2], [1, 3].
  assert _group(MIX_REPS, MIX_SIZES, "greedy", 2, 30) == [[0, 2], [1, 3]]
  counts = np.asarray(MIX_SIZES)[:, None] * np.asarray(MIX_REPS)
  mixture = sum(kl_rows(counts[g].sum(0)) for g in ([0, 1], [2, 3]))
  original = sum(kl_rows(counts[g].sum(0)) for g in ([0, 2], [1, 3]))
  assert mixture == pytest.approx(0.4395, abs=1e-4)
  assert original == pytest.approx(0.4720, abs=1e-4)


def test_refine_by_swaps_by_hand():
  # Two classes; groups [0, 1] = (20, 0) and [2, 3] = (0, 20): ln 2 each.
  counts = np.array([[10., 0], [10, 0], [0, 10], [0, 10]])
  sizes = np.array([10, 10, 10, 10])
  # Group 0's swaps: 0<->2, 0<->3, 1<->2, 1<->3 all give (10, 10) twice, delta
  # -2 ln 2; the first (its member 0, the lowest other id 2) is made.
  # Then group 1 = [0, 3] has no improving swap, nor has anyone in pass 2.
  assert refine_by_swaps([[0, 1], [2, 3]], counts, sizes, 20) == [[2, 1], [0, 3]]


def test_refine_by_swaps_keeps_min_examples():
  # Client 2 holds 5 examples: swapping it into [0, 1] (20 examples) would leave
  # 15 < min_examples=20 there. 0<->3 gives [3, 1] = (10, 10), KL 0, and
  # [2, 0] = (10, 5): 2/3 ln(4/3) + 1/3 ln(2/3) = .0566, with its 15 examples
  # unchanged (it held 15 already): made.
  counts = np.array([[10., 0], [10, 0], [0, 5], [0, 10]])
  sizes = np.array([10, 10, 5, 10])
  assert refine_by_swaps([[0, 1], [2, 3]], counts, sizes, 20) == [[3, 1], [2, 0]]
  assert kl_rows(np.array([10., 5])) == pytest.approx(0.0566, abs=1e-4)
  # With min_examples=0, 0<->2 ([2, 1] = (10, 5), [0, 3] = (10, 10)) is allowed
  # too and ties with 0<->3 (both .0566 - 2 ln 2); the first (other id 2) wins.
  assert refine_by_swaps([[0, 1], [2, 3]], counts, sizes, 0) == [[2, 1], [0, 3]]


def test_greedy_mixture_on_one_class_clients_reaches_the_bound():
  # 200 one-class clients, 20 per class, 10 examples each; groups of 5 clients.
  # The best any grouping can do is 5 distinct classes per group: KL = ln 2 each.
  labels = np.random.default_rng(0).permutation(np.arange(200) % 10)
  reps, sizes = np.eye(10)[labels], np.full(200, 10)
  mix = _group(reps, sizes, "greedy_mixture", 5, 50)
  assert sorted(c for g in mix for c in g) == list(range(200))
  assert len(mix) == 40
  assert all(len(set(labels[g])) == 5 for g in mix)
  np.testing.assert_allclose([kl_rows(reps[g].sum(0)) for g in mix], math.log(2))
  # The original greedy + kullback on the same exact distributions does not.
  greedy = _group(reps, sizes, "greedy", 5, 50)
  assert np.mean([kl_rows(reps[g].sum(0)) for g in greedy]) > math.log(2) + 0.1


def test_greedy_mixture_covers_every_client_with_ragged_sizes():
  rng = np.random.default_rng(3)
  reps = rng.dirichlet(np.full(4, 0.3), size=30)
  sizes = rng.integers(0, 40, size=30)
  sizes[:3] = 0  # clients without examples still land in exactly one group
  groups = _group(reps, sizes, "greedy_mixture", 6, 100)
  assert sorted(c for g in groups for c in g) == list(range(30))
  assert all(len(g) <= 6 for g in groups)
  # Only full groups may stay short of min_examples (as in every grouping).
  assert all(sizes[g].sum() >= 100 or len(g) == 6 for g in groups)


def test_greedy_mixture_needs_probability_vectors():
  with pytest.raises(ValueError, match="greedy_mixture.*probability vectors"):
    _group([[1., -1], [0, 2]], [10, 10], "greedy_mixture", 2, 10)
