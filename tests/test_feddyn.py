"""FedDyn (both variants) against a NumPy reference of the update rules."""

import jax
import numpy as np
import pytest

import reference as ref
from helpers import assert_leaves_match
from fedjax_seq.algorithms.fedavg import feddyn
from fedjax_seq.core.rounds import make_round, round_keys, sample_ids

SIZES = [5, 3, 8, 2]
K, FRACTION, LR, EPOCHS, BATCH, ALPHA = 4, 0.5, 0.5, 2, 3, 0.3


def numpy_rounds(images, labels, data, keys, variant):
  w, b = ref.to_np(ref.init_params())
  h = [np.zeros_like(w), np.zeros_like(b)]
  gs = [[np.zeros_like(w), np.zeros_like(b)] for _ in SIZES]
  for key in keys:
    k_sample, k_train = round_keys(key)
    ids = np.asarray(sample_ids(k_sample, K, int(FRACTION * K)))
    models = []
    for cid in ids:
      k = jax.random.fold_in(k_train, cid)
      g = gs[cid]
      batch_list = ref.batches(data, cid, k, EPOCHS, BATCH)
      if variant == "paper":
        term = lambda w_, b_: (ALPHA * (w_ - w) - g[0], ALPHA * (b_ - b) - g[1])
        m = ref.local_sgd(w, b, images, labels, batch_list, LR, grad_term=term)
        gs[cid] = [g[0] - ALPHA * (m[0] - w), g[1] - ALPHA * (m[1] - b)]
      else:
        term = lambda w_, b_: (ALPHA * (w_ - w), ALPHA * (b_ - b))
        g = [g[0].copy(), g[1].copy()]

        def post(w_, b_, g=g):
          g[0] = g[0] - ALPHA * (w_ - w)
          g[1] = g[1] - ALPHA * (b_ - b)

        m = ref.local_sgd(w, b, images, labels, batch_list, LR, grad_term=term, post_step=post)
        gs[cid] = g
      models.append(m)
    n = len(ids)
    total = [sum(m[j] for m in models) for j in range(2)]
    h = [h[j] - ALPHA / K * (total[j] - n * (w, b)[j]) for j in range(2)]
    w, b = total[0] / n - h[0] / ALPHA, total[1] / n - h[1] / ALPHA
  return (w, b), h, gs


@pytest.mark.parametrize("variant", ["paper", "original"])
@pytest.mark.parametrize("num_rounds", [1, 2])
def test_rounds_match_numpy_reference(variant, num_rounds):
  images, labels, data = ref.tiny_data(SIZES)
  alg = feddyn(ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH), K, FRACTION, alpha=ALPHA,
               variant=variant)
  round_fn = make_round(alg, "vmap")
  state = alg.init(ref.init_params())
  keys = [jax.random.key(40 + r) for r in range(num_rounds)]
  for key in keys:
    state, _ = round_fn(state, data, key)
  (w, b), h, gs = numpy_rounds(images, labels, data, keys, variant)
  assert_leaves_match(state.params, (w, b))
  assert_leaves_match(state.server, h, atol=1e-7)  # FedDyn's h
  for i in range(K):
    assert_leaves_match(jax.tree.map(lambda x: x[i], state.clients.rows), gs[i], atol=1e-7)
  assert np.abs(h[0]).max() > 1e-4


def test_variants_differ_and_unselected_state_is_untouched():
  _, _, data = ref.tiny_data(SIZES)
  states = {}
  for variant in ("paper", "original"):
    alg = feddyn(ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH), K, FRACTION, alpha=ALPHA,
                 variant=variant)
    round_fn = make_round(alg, "loop")
    state = alg.init(ref.init_params())
    for r in range(2):
      state, _ = round_fn(state, data, jax.random.key(r))
    states[variant] = state
  a, b = ref.to_np(states["paper"].params)[0], ref.to_np(states["original"].params)[0]
  assert np.abs(a - b).max() > 1e-6
  ids = set()
  for r in range(2):
    ids |= set(np.asarray(sample_ids(round_keys(jax.random.key(r))[0], K, 2)).tolist())
  g = np.asarray(states["paper"].clients.rows["params"]["fc1"]["kernel"])  # g_i
  for i in range(K):
    assert (np.abs(g[i]).max() > 0) == (i in ids)
