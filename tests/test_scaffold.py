"""SCAFFOLD against a NumPy reference of the original's update rules."""

import jax
import numpy as np
import pytest

import reference as ref
from helpers import assert_leaves_match, assert_trees_close
from fedjax_seq.algorithms.fedavg import fedavg, scaffold
from fedjax_seq.core.rounds import make_round, round_keys, sample_ids

SIZES = [5, 3, 8, 2]  # with B=3: 2, 1, 3 and 1 steps per epoch
K, FRACTION, LR, EPOCHS, BATCH, WD = 4, 0.5, 0.5, 2, 3, 0.01


def make(strategy="vmap"):
  alg = scaffold(ref.trainer(lr=LR, weight_decay=WD, epochs=EPOCHS, batch_size=BATCH), K,
                 FRACTION)
  return alg, make_round(alg, strategy)


def numpy_rounds(images, labels, data, keys):
  w, b = ref.to_np(ref.init_params())
  c = (np.zeros_like(w), np.zeros_like(b))
  cs = [(np.zeros_like(w), np.zeros_like(b)) for _ in SIZES]
  for key in keys:
    k_sample, k_train = round_keys(key)
    ids = np.asarray(sample_ids(k_sample, K, int(FRACTION * K)))
    models, new_cs = [], {}
    for cid in ids:
      k = jax.random.fold_in(k_train, cid)
      ci = cs[cid]
      corr = (c[0] - ci[0], c[1] - ci[1])
      models.append(ref.local_sgd(w, b, images, labels, ref.batches(data, cid, k, EPOCHS, BATCH),
                                  LR, weight_decay=WD, grad_term=lambda *_: corr))
      new_cs[cid] = ref.mean_grad(w, b, images, labels,
                                  ref.batches(data, cid, jax.random.fold_in(k, 1), EPOCHS, BATCH))
    weights = np.array([SIZES[i] for i in ids], np.float64)
    weights /= weights.sum()
    w = sum(a * m[0] for a, m in zip(weights, models, strict=True))
    b = sum(a * m[1] for a, m in zip(weights, models, strict=True))
    c = tuple(c[j] + sum(new_cs[i][j] - cs[i][j] for i in ids) / K for j in range(2))
    for i in ids:
      cs[i] = new_cs[i]
  return (w, b), c, cs


@pytest.mark.parametrize("num_rounds", [1, 2])
def test_rounds_match_numpy_reference(num_rounds):
  images, labels, data = ref.tiny_data(SIZES)
  alg, round_fn = make()
  state = alg.init(ref.init_params())
  keys = [jax.random.key(20 + r) for r in range(num_rounds)]
  for key in keys:
    state, _ = round_fn(state, data, key)
  (w, b), c, cs = numpy_rounds(images, labels, data, keys)
  assert_leaves_match(state.params, (w, b))
  assert_leaves_match(state.server, c)  # SCAFFOLD's c
  for i in range(K):
    assert_leaves_match(jax.tree.map(lambda x: x[i], state.clients.rows), cs[i])  # c_i
  assert np.abs(c[0]).max() > 1e-3  # controls really moved


def test_unselected_client_controls_are_untouched():
  _, _, data = ref.tiny_data(SIZES)
  alg, round_fn = make()
  state, _ = round_fn(alg.init(ref.init_params()), data, jax.random.key(1))
  ids = set(np.asarray(sample_ids(round_keys(jax.random.key(1))[0], K, 2)).tolist())
  for i in range(K):
    row = np.asarray(state.clients.rows["params"]["fc1"]["kernel"][i])
    assert (np.abs(row).max() > 0) == (i in ids)


def test_first_round_equals_fedavg():
  """With c = c_i = 0 the local steps are FedAvg's."""
  _, _, data = ref.tiny_data(SIZES)
  alg, round_fn = make()
  s1, _ = round_fn(alg.init(ref.init_params()), data, jax.random.key(3))
  fa = fedavg(ref.trainer(lr=LR, weight_decay=WD, epochs=EPOCHS, batch_size=BATCH), K, FRACTION)
  s2, _ = make_round(fa, "vmap")(fa.init(ref.init_params()), data, jax.random.key(3))
  assert_trees_close(s1.params, s2.params, rtol=1e-6, atol=1e-7)


def test_controls_average_over_each_clients_own_batches():
  """A 2-example client (1 real step per epoch) and an 8-example one (3 steps)."""
  images, labels, data = ref.tiny_data(SIZES)
  trainer = ref.trainer(epochs=EPOCHS, batch_size=BATCH)
  params = ref.init_params()
  w, b = ref.to_np(params)
  for cid in (2, 3):
    key = jax.random.key(cid)
    got = jax.jit(trainer.mean_gradient)(params, data, cid, key)
    want = ref.mean_grad(w, b, images, labels, ref.batches(data, cid, key, EPOCHS, BATCH))
    assert len(ref.batches(data, cid, key, EPOCHS, BATCH)) == EPOCHS * -(-SIZES[cid] // BATCH)
    assert_leaves_match(got, want, atol=1e-7)


def test_vmap_equals_loop():
  _, _, data = ref.tiny_data(SIZES)
  alg, vmap_round = make("vmap")
  _, loop_round = make("loop")
  sv, sl = alg.init(ref.init_params()), alg.init(ref.init_params())  # rounds donate state
  for r in range(2):
    sv, _ = vmap_round(sv, data, jax.random.key(r))
    sl, _ = loop_round(sl, data, jax.random.key(r))
  assert_trees_close(sv, sl, rtol=1e-5, atol=1e-6)
