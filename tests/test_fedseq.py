"""FedSeq and FedSeqInter: chains, equivalences with FedAvg/FedSeq, FedDyn/Prox rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from helpers import assert_trees_close
from fedjax_seq.algorithms.fedavg import fedavg
from fedjax_seq.algorithms import rules
from fedjax_seq.algorithms.fedseq import fedseq, make_superclients
from fedjax_seq.algorithms.fedseq_inter import fedseq_inter
from fedjax_seq.core.rounds import make_round, round_keys, sample_ids

SIZES = [5, 3, 8, 2, 4, 6]
K = len(SIZES)
GROUPS = [np.array([2, 0, 5]), np.array([1, 4]), np.array([3])]  # padded to width 3


def trainer():
  return ref.trainer(lr=0.4, momentum=0.5, weight_decay=0.01, epochs=2, batch_size=3)


def leaves_close(a, b, **kw):
  assert_trees_close(a, b, **kw)


def test_chain_equals_members_one_after_another():
  _, _, data = ref.tiny_data(SIZES)
  sc = make_superclients(GROUPS, np.array(SIZES))
  tr = trainer()
  alg = fedseq(tr, sc, K, 1.0, shuffle=False)
  key = jax.random.key(7)
  state, _ = make_round(alg, "vmap")(alg.init(ref.init_params()), data, key)
  k_sample, k_train = round_keys(key)
  models, weights = [], []
  for group in GROUPS:
    params = ref.init_params()
    for cid in group:  # in table order: shuffling is off
      params = tr.train(params, data, jnp.int32(cid), jax.random.fold_in(k_train, cid)).params
    models.append(params)
    weights.append(sum(SIZES[c] for c in group))
  w = np.array(weights) / sum(weights)
  expected = jax.tree.map(lambda *m: sum(a * x for a, x in zip(w, m, strict=True)), *models)
  leaves_close(state.params, expected, rtol=1e-5, atol=1e-6)


def test_single_member_superclients_are_fedavg():
  _, _, data = ref.tiny_data(SIZES)
  sc = make_superclients([np.array([k]) for k in range(K)], np.array(SIZES))
  a, b = fedseq(trainer(), sc, K, 0.5), fedavg(trainer(), K, 0.5)
  sa, sb = a.init(ref.init_params()), b.init(ref.init_params())
  round_a, round_b = make_round(a, "vmap"), make_round(b, "vmap")  # each compiled once
  for r in range(2):
    sa, _ = round_a(sa, data, jax.random.key(r))
    sb, _ = round_b(sb, data, jax.random.key(r))
  leaves_close(sa.params, sb.params, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", [rules.plain(), rules.prox(mu=0.5), rules.dyn(alpha=0.3)],
                         ids=lambda r: r.name)
def test_inter_with_reset_every_round_is_fedseq(rule):
  _, _, data = ref.tiny_data(SIZES)
  sc = make_superclients(GROUPS, np.array(SIZES))
  a = fedseq(trainer(), sc, K, 0.67, rule=rule)
  b = fedseq_inter(trainer(), sc, K, 0.67, rule=rule, period=1)
  sa, sb = a.init(ref.init_params()), b.init(ref.init_params())
  round_a, round_b = make_round(a, "vmap"), make_round(b, "loop")  # each compiled once
  for r in range(3):
    sa, _ = round_a(sa, data, jax.random.key(r))
    sb, _ = round_b(sb, data, jax.random.key(r))
  leaves_close(sa.params, sb.params, rtol=1e-5, atol=1e-6)
  if sa.clients is not None:  # FedDyn's g_i
    leaves_close(sa.clients, sb.clients, rtol=1e-5, atol=1e-6)


def test_inter_bank_continues_and_weights_accumulate():
  """Never resetting: each slot continues its own model; weights are running sizes."""
  _, _, data = ref.tiny_data(SIZES)
  sc = make_superclients(GROUPS, np.array(SIZES))
  tr = trainer()
  alg = fedseq_inter(tr, sc, K, 0.67, period="never", shuffle=False)
  round_fn = make_round(alg, "vmap")
  state = alg.init(ref.init_params())
  bank = [ref.init_params(), ref.init_params()]
  weights = np.zeros(2)
  for r in range(2):
    key = jax.random.key(10 + r)
    state, _ = round_fn(state, data, key)
    k_sample, k_train = round_keys(key)
    for slot, s in enumerate(np.asarray(sample_ids(k_sample, 3, 2))):
      for cid in GROUPS[s]:
        bank[slot] = tr.train(bank[slot], data, jnp.int32(cid),
                              jax.random.fold_in(k_train, cid)).params
      weights[slot] += sum(SIZES[c] for c in GROUPS[s])
  w = weights / weights.sum()
  leaves_close(state.params, jax.tree.map(lambda x, y: w[0] * x + w[1] * y, *bank),
               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state.weights), weights)


def test_fedseq_dyn_members_keep_their_own_state():
  """Against the float64 NumPy reference: each member anchors on the model it
  receives and updates its own g_i; the server is FedDyn's over superclients."""
  images, labels, data = ref.tiny_data(SIZES)
  sc = make_superclients(GROUPS, np.array(SIZES))
  lr, momentum, wd, alpha = 0.4, 0.5, 0.01, 0.3
  tr = trainer()
  rule = rules.dyn(alpha=alpha, variant="paper")
  alg = fedseq(tr, sc, K, 0.34, rule=rule, shuffle=False)  # one superclient per round
  key = jax.random.key(3)
  state, _ = make_round(alg, "vmap")(alg.init(ref.init_params()), data, key)
  k_sample, k_train = round_keys(key)
  (s,) = np.asarray(sample_ids(k_sample, 3, 1))
  w, b = ref.to_np(ref.init_params())
  expected_rows = {}
  for cid in GROUPS[s]:
    w0, b0 = w, b
    w, b = ref.local_sgd(w0, b0, images, labels,
                         ref.batches(data, cid, jax.random.fold_in(k_train, cid), 2, 3), lr,
                         momentum, wd,
                         grad_term=lambda w, b, w0=w0, b0=b0: (alpha * (w - w0), alpha * (b - b0)))
    expected_rows[cid] = (-alpha * (w - w0), -alpha * (b - b0))
  for cid in range(K):
    row = jax.tree.map(lambda x: x[cid], state.clients.rows)
    got = ref.to_np(row)
    want = expected_rows.get(cid, (np.zeros_like(w), np.zeros_like(b)))
    for g, e in zip(got, want, strict=True):
      np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
  # Server: FedDyn's update over the one superclient's final model, K clients.
  w_init, b_init = ref.to_np(ref.init_params())
  h = (-alpha / K * (w - w_init), -alpha / K * (b - b_init))
  got_w, got_b = ref.to_np(state.params)
  np.testing.assert_allclose(got_w, w - h[0] / alpha, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_b, b - h[1] / alpha, rtol=1e-5, atol=1e-6)


def test_dropout_and_shuffle_keep_vmap_equal_to_loop():
  _, _, data = ref.tiny_data(SIZES)
  sc = make_superclients(GROUPS, np.array(SIZES))
  alg = fedseq(trainer(), sc, K, 1.0, sequential_rounds=2, dropout=0.4)
  sv, sl = alg.init(ref.init_params()), alg.init(ref.init_params())  # rounds donate state
  vmap_round, loop_round = make_round(alg, "vmap"), make_round(alg, "loop")  # compiled once
  for r in range(2):
    sv, mv = vmap_round(sv, data, jax.random.key(r))
    sl, ml = loop_round(sl, data, jax.random.key(r))
  leaves_close(sv.params, sl.params, rtol=1e-5, atol=1e-6)
  assert np.isfinite(float(mv["train_loss"]))
