"""The published code's behaviours as switches, each against a NumPy reference.

FedSeqInter's shared bank (variant="original"), FedProx's PGD momentum,
member dropout with replacement, centralized with a cosine learning rate,
and the refusals (SCAFFOLD with momentum, infeasible superclients before
pre-training).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from configs import default, paper
from helpers import assert_trees_equal, compile_with_fusion_emitters
from fedjax_seq.algorithms.centralized import centralized, cosine_factor
from fedjax_seq.algorithms import rules
from fedjax_seq.algorithms.fedavg import fedavg, fedprox
from fedjax_seq.algorithms.fedseq import make_superclients, pass_order
from fedjax_seq.algorithms.fedseq_inter import fedseq_inter
from fedjax_seq.core.rounds import make_round, round_keys, sample_ids
from fedjax_seq.errors import InputError
from fedjax_seq.superclients import grouping
from fedjax_seq.training import experiment

SIZES = [5, 3, 8, 2, 4, 6]
K = len(SIZES)
GROUPS = [np.array([2, 0, 5]), np.array([1, 4]), np.array([3])]
LR, MOMENTUM, WD, EPOCHS, BATCH = 0.4, 0.5, 0.01, 2, 3


def close(params, w, b, rtol=1e-5, atol=1e-6):
  """Every parameter leaf (kernel and bias) against the float64 reference."""
  got_w, got_b = ref.to_np(params)
  np.testing.assert_allclose(got_w, w, rtol=rtol, atol=atol)
  np.testing.assert_allclose(got_b, b, rtol=rtol, atol=atol)


# --- FedProx: the original PGD optimizer, written out as its in-place code ----------

def pgd(w, b, images, labels, batch_list, lr, momentum, weight_decay, mu):
  """The original `PGD.step`: d_p is the gradient, then the momentum buffer itself;
  the proximal term is added to d_p in place, so it lands in the buffer."""
  params, anchor = [w.copy(), b.copy()], [w.copy(), b.copy()]
  buffers = [None, None]
  x = ref.features(images)
  for batch in batch_list:
    grads = ref.grad(params[0], params[1], x[batch], labels[batch])
    for i in range(2):
      d_p = grads[i] + weight_decay * params[i]
      if momentum:
        if buffers[i] is None:
          buffers[i] = d_p.copy()
        else:
          buffers[i] *= momentum
          buffers[i] += d_p
        d_p = buffers[i]
      d_p += mu * (params[i] - anchor[i])  # in place: the buffer when momentum is on
      params[i] = params[i] - lr * d_p
  return params


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fedprox_matches_the_original_pgd_optimizer(momentum):
  images, labels, data = ref.tiny_data(SIZES)
  mu = 0.7
  tr = ref.trainer(lr=0.3, momentum=momentum, weight_decay=WD, epochs=EPOCHS, batch_size=2)
  alg = fedprox(tr, K, 0.5, mu=mu)
  key = jax.random.key(11)
  state, _ = make_round(alg, "loop")(alg.init(ref.init_params()), data, key)
  k_sample, k_train = round_keys(key)
  w0, b0 = ref.to_np(ref.init_params())
  ids = np.asarray(sample_ids(k_sample, K, 3))
  models = [pgd(w0, b0, images, labels,
                ref.batches(data, c, jax.random.fold_in(k_train, c), EPOCHS, 2),
                0.3, momentum, WD, mu) for c in ids]
  weights = np.array([SIZES[c] for c in ids], float) / sum(SIZES[c] for c in ids)
  close(state.params, sum(a * m[0] for a, m in zip(weights, models, strict=True)),
        sum(a * m[1] for a, m in zip(weights, models, strict=True)))


def test_prox_term_stays_in_the_momentum_buffer():
  """With momentum the PGD term keeps acting after it was added: step 2 differs
  from a buffer without it by exactly lr * momentum * mu * (w1 - w0)."""
  images, labels, data = ref.tiny_data([4])
  tr = ref.trainer(lr=0.5, momentum=0.9, epochs=1, batch_size=2)
  key = jax.random.key(2)
  anchor = ref.init_params()
  start = jax.tree.map(lambda p: p + 0.3, anchor)  # away from the anchor: the term is non-zero
  out = tr.train(start, data, jnp.int32(0), key, ctx=anchor,
                 correction=lambda w, a: jax.tree.map(lambda x, y: 0.2 * (x - y), w, a))
  w0, b0 = ref.to_np(anchor)
  ws, bs = ref.to_np(start)
  batch_list = ref.batches(data, 0, key, 1, 2)
  x = ref.features(images)
  # By hand: two steps, the buffer holds the prox term of step 1.
  gw, gb = ref.grad(ws, bs, x[batch_list[0]], labels[batch_list[0]])
  bw, bb = gw + 0.2 * (ws - w0), gb + 0.2 * (bs - b0)
  w1, b1 = ws - 0.5 * bw, bs - 0.5 * bb
  gw, gb = ref.grad(w1, b1, x[batch_list[1]], labels[batch_list[1]])
  bw, bb = 0.9 * bw + gw + 0.2 * (w1 - w0), 0.9 * bb + gb + 0.2 * (b1 - b0)
  close(out.params, w1 - 0.5 * bw, b1 - 0.5 * bb)


# --- FedSeqInter: the published code's shared bank --------------------------------

def reference_inter(data, images, labels, rule, rounds, keys, period, variant):
  """FedSeqInter in float64, written as the original runs it (shuffle off).

  `rule` is (name, hyperparameters) of a rule in RULES.
  """
  kind, hp = rule
  init = ref.to_np(ref.init_params())
  server, bank = init, [init, init]
  weights, h = np.zeros(2), (np.zeros_like(init[0]), np.zeros_like(init[1]))
  g = {c: (np.zeros_like(init[0]), np.zeros_like(init[1])) for c in range(K)}

  def member(model, cid, key):
    batch_list = ref.batches(data, cid, key, EPOCHS, BATCH)
    w0, b0 = model
    if kind == "plain":
      return ref.local_sgd(w0, b0, images, labels, batch_list, LR, MOMENTUM, WD)
    if kind == "prox":
      return ref.local_sgd(w0, b0, images, labels, batch_list, LR, MOMENTUM, WD,
                           correction=lambda w, b: (hp["mu"] * (w - w0), hp["mu"] * (b - b0)))
    gw, gb = g[cid]  # FedDyn, the paper's client: both terms differentiated
    w, b = ref.local_sgd(w0, b0, images, labels, batch_list, LR, MOMENTUM, WD,
                         grad_term=lambda w, b: (hp["alpha"] * (w - w0) - gw,
                                                 hp["alpha"] * (b - b0) - gb))
    g[cid] = (gw - hp["alpha"] * (w - w0), gb - hp["alpha"] * (b - b0))
    return w, b

  def superclient(model, s, k_train):
    for cid in GROUPS[s]:
      model = member(model, cid, jax.random.fold_in(k_train, cid))
    return model

  for r in range(1, rounds + 1):
    k_sample, k_train = round_keys(keys[r - 1])
    chosen = np.asarray(sample_ids(k_sample, len(GROUPS), 2))
    if r % period == 0:
      bank, weights = [server, server], np.zeros(2)
    if variant == "original" and r < period:  # one model object, trained in place
      model = bank[0]
      for s in chosen:
        model = superclient(model, s, k_train)
      outs = [model, model]
    else:
      outs = [superclient(bank[k], s, k_train) for k, s in enumerate(chosen)]
    weights = weights + [sum(SIZES[c] for c in GROUPS[s]) for s in chosen]
    bank = outs
    if kind == "dyn":
      n, a = len(outs), hp["alpha"]
      total = [sum(o[i] for o in outs) for i in range(2)]
      h = tuple(h[i] - a / K * (total[i] - n * server[i]) for i in range(2))
      server = tuple(total[i] / n - h[i] / a for i in range(2))
    else:
      wn = weights / weights.sum()
      server = tuple(sum(wk * o[i] for wk, o in zip(wn, outs, strict=True)) for i in range(2))
  return server, bank, g


RULES = [("plain", {}), ("prox", {"mu": 0.5}), ("dyn", {"alpha": 0.3})]


def make_rule(rule) -> rules.ClientRule:
  """The library's rule for (name, hyperparameters)."""
  kind, hp = rule
  return getattr(rules, kind)(**hp)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r[0])
def test_inter_original_shares_one_model_until_the_first_reset(rule, strategy):
  """Rounds 1-2 chain both sampled superclients on one model; round 3 resets."""
  images, labels, data = ref.tiny_data(SIZES)
  sc = make_superclients(GROUPS, np.array(SIZES))
  tr = ref.trainer(lr=LR, momentum=MOMENTUM, weight_decay=WD, epochs=EPOCHS, batch_size=BATCH)
  alg = fedseq_inter(tr, sc, K, 0.67, rule=make_rule(rule), shuffle=False, variant="original")
  round_fn = make_round(alg, strategy)
  keys = [jax.random.key(40 + r) for r in range(4)]
  state = alg.init(ref.init_params())
  for r in range(4):  # the period is S = 3: shared in rounds 1, 2; reset at 3
    state, _ = round_fn(state, data, keys[r])
    server, bank, g = reference_inter(data, images, labels, rule, r + 1, keys, 3, "original")
    close(state.params, *server)
    for k in range(2):
      close(jax.tree.map(lambda x: x[k], state.bank), *bank[k])
  if rule[0] == "dyn":
    for c in range(K):
      close(jax.tree.map(lambda x: x[c], state.clients.rows), *g[c])


def test_inter_original_differs_from_paper_only_before_the_first_reset():
  images, labels, data = ref.tiny_data(SIZES)
  keys = [jax.random.key(40 + r) for r in range(2)]
  shared, _, _ = reference_inter(data, images, labels, RULES[0], 2, keys, 3, "original")
  separate, _, _ = reference_inter(data, images, labels, RULES[0], 2, keys, 3, "paper")
  assert np.abs(shared[0] - separate[0]).max() > 1e-3
  # With a reset every round there is no shared round: both variants agree.
  sc = make_superclients(GROUPS, np.array(SIZES))
  tr = ref.trainer(lr=LR, momentum=MOMENTUM, weight_decay=WD, epochs=EPOCHS, batch_size=BATCH)
  a, b = (fedseq_inter(tr, sc, K, 0.67, period=1, variant=v) for v in ("paper", "original"))
  sa, sb = a.init(ref.init_params()), b.init(ref.init_params())
  # Two programs, equal bit for bit: compiled (once each) with XLA's fusion emitters.
  round_a = compile_with_fusion_emitters(make_round(a, "loop"), sa, data, keys[0])
  round_b = compile_with_fusion_emitters(make_round(b, "loop"), sb, data, keys[0])
  for r in range(2):
    sa, _ = round_a(sa, data, keys[r])
    sb, _ = round_b(sb, data, keys[r])
  assert_trees_equal(sa.params, sb.params)


def test_inter_original_resumes_exactly(tmp_path):
  """Checkpointed inside the shared phase, restored, continued past the reset."""
  _, _, data = ref.tiny_data(SIZES)
  sc = make_superclients(GROUPS, np.array(SIZES))
  tr = ref.trainer(lr=LR, momentum=MOMENTUM, weight_decay=WD, epochs=EPOCHS, batch_size=BATCH)
  alg = fedseq_inter(tr, sc, K, 0.67, rule=make_rule(RULES[2]), variant="original")
  keys = [jax.random.key(60 + r) for r in range(4)]
  full, part = ref.resumed_and_uninterrupted(alg, make_round(alg, "loop"), data, keys,
                                             str(tmp_path))
  assert_trees_equal(full, part)


# --- member dropout -----------------------------------------------------------------

def test_original_dropout_draws_with_replacement():
  """Over many keys: the dropped set is what np.delete of randint draws gives."""
  dropout = 0.5
  real = jnp.array([True, True, True, True, False])
  seen_counts, lone_active = set(), []
  for s in range(300):
    _, active = pass_order(jax.random.key(s), real, False, dropout, "original")
    active = np.asarray(active)
    assert not active[4]
    seen_counts.add(int(4 - active[:4].sum()))
  # ceil(4 * 0.5) = 2 draws from 4 members: 1 or 2 distinct drops, never 0 or 3.
  assert seen_counts == {1, 2}
  # P(both draws hit one member) = 1/4: the distinct count varies, unlike "paper".
  for s in range(20):
    _, active = pass_order(jax.random.key(s), real, False, dropout, "paper")
    assert int(np.asarray(active)[:4].sum()) == 2
  # A lone member drops in the original, never in the paper's variant.
  lone = jnp.array([True, False, False])
  for s in range(5):
    lone_active.append(bool(np.asarray(pass_order(jax.random.key(s), lone, False, 0.3,
                                                   "original")[1])[0]))
    assert bool(np.asarray(pass_order(jax.random.key(s), lone, False, 0.3, "paper")[1])[0])
  assert not any(lone_active)


def test_original_dropout_frequency_of_two_distinct_drops():
  real = jnp.ones(4, bool)
  n = 2000
  keys = jax.random.split(jax.random.key(0), n)
  active = jax.vmap(lambda k: pass_order(k, real, False, 0.5, "original")[1])(keys)
  two = np.mean(np.asarray(active).sum(1) == 2)
  # Two draws with replacement from 4: distinct with probability 3/4; 4 sigma margin.
  assert abs(two - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)


# --- centralized with the original's cosine schedule ----------------------------------

def test_centralized_cosine_learning_rate():
  images, labels, data = ref.tiny_data([7])
  tr = ref.trainer(lr=0.4, epochs=1, batch_size=3)
  rounds = 3
  alg = centralized(tr, rounds=rounds)
  round_fn = make_round(alg, "loop")
  state = alg.init(ref.init_params())
  w, b = ref.to_np(ref.init_params())
  for r in range(rounds):
    key = jax.random.key(r)
    state, _ = round_fn(state, data, key)
    lr = 0.4 * (1 + math.cos(math.pi * r / rounds)) / 2
    _, k_train = round_keys(key)
    w, b = ref.local_sgd(w, b, images, labels,
                         ref.batches(data, 0, jax.random.fold_in(k_train, 0), 1, 3), lr)
    close(state.params, w, b)
  assert float(cosine_factor(jnp.int32(0), rounds)) == 1.0
  # Round 1 (lr factor exactly 1) equals the constant-lr centralized run bit for bit.
  plain = fedavg(tr, 1, 1.0)
  a, _ = make_round(plain, "loop")(plain.init(ref.init_params()), data, jax.random.key(0))
  c, _ = make_round(alg, "loop")(alg.init(ref.init_params()), data, jax.random.key(0))
  assert_trees_equal(a.params, c.params)


# --- refusals and presets -------------------------------------------------------------

def test_scaffold_refuses_momentum():
  c = default.get_config()
  c.algorithm.name = "scaffold"
  c.client.momentum = 0.9
  with pytest.raises(InputError, match="SCAFFOLD takes no momentum"):
    experiment.validate(c)
  c.client.momentum = 0.0
  experiment.validate(c)


def test_infeasible_superclients_refused_before_pretraining():
  with pytest.raises(ValueError, match="3 largest clients hold 270 < min_examples=1000"):
    grouping.check_feasible(np.array([100, 90, 80, 70]), 3, 1000)
  grouping.check_feasible(np.array([100, 90, 80, 70]), 3, 270)  # feasible: a full group reaches it
  grouping.check_feasible(np.array([100, 90]), 3, 10**6)  # one group holds everyone: kept


def test_paper_presets_reproduce_the_published_code():
  c = paper.get_config("fedseq_inter_dyn,cifar10")
  assert (c.fedseq.inter_variant, c.algorithm.fedseq_inter_dyn.variant, c.fedseq.augment_exemplars,
          c.fedseq.dropout_variant, c.rounds) == ("original", "original", True, "original", 10000)
  d = paper.get_config("fedseq_inter_dyn,cifar10,described")
  assert (d.fedseq.inter_variant, d.algorithm.fedseq_inter_dyn.variant,
          d.fedseq.augment_exemplars) == ("paper", "paper", False)
  assert paper.get_config("feddyn,cifar100").algorithm.feddyn.variant == "original"
  assert paper.get_config("centralized,cifar10").algorithm.centralized.variant == "original"
  es = paper.get_config("fedseq,cifar100,es4")
  assert (es.fedseq.sequential_rounds, es.rounds) == (4, 5000)
  assert paper.get_config("fedseq_prox,cifar10,es2,described").rounds == 5000
  with pytest.raises(InputError, match="FedSeq family only"):
    paper.get_config("fedavg,cifar10,es2")
  with pytest.raises(InputError, match="unknown option 'es3'"):
    paper.get_config("fedseq,cifar10,es3")
  for algorithm in paper.algorithms():
    experiment.validate(paper.get_config(f"{algorithm},cifar10"))


# --- confidence vectors on augmented exemplars ----------------------------------------

def test_confidence_vectors_on_augmented_exemplars():
  """Each client scores its own random crop/flip of the exemplars, keyed by client."""
  from fedjax_seq.data.federated import Preprocess, random_crop_flip
  from fedjax_seq.models.lenet import MLP
  from fedjax_seq.superclients import formation
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
  model = MLP(num_classes=3, hidden=(5,))
  models = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3))))(
      jax.random.split(jax.random.key(1), 2))
  pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment=True)
  key = jax.random.key(9)
  got = formation.confidence_vectors(model.apply, pre, models, images, labels, 3, key)
  plain = formation.confidence_vectors(model.apply, pre, models, images, labels, 3)
  for i in range(2):
    params = jax.tree.map(lambda m: m[i], models)
    x = random_crop_flip(jnp.asarray(images, jnp.float32) / 255.0, jax.random.fold_in(key, i))
    p = np.asarray(jax.nn.softmax(model.apply(params, (x - 0.5) / 0.25)), np.float64)
    conf = np.zeros(3)
    np.add.at(conf, labels, p[np.arange(6), labels])
    np.testing.assert_allclose(got[i], conf / conf.sum(), rtol=1e-5)
  assert np.abs(got - plain).max() > 1e-4  # the crops changed the estimate


# --- training on a grouping from a file (a study's) ------------------------------------

def small_fedseq_config(**fedseq):
  c = default.get_config()
  c.algorithm.name = "fedseq"
  c.data.name, c.data.num_clients, c.model.name = "synthetic", 12, "mlp"
  c.data.synthetic.train_size, c.data.synthetic.test_size = 240, 200
  c.fedseq.evaluator_model, c.fedseq.pretrain_epochs = "mlp", 1
  c.fedseq.min_examples, c.fedseq.max_clients = 60, 4
  for k, v in fedseq.items():
    c.fedseq[k] = v
  return c


def test_superclients_from_a_file(tmp_path):
  import json
  path = tmp_path / "grouping.json"
  groups = [[0, 5, 7], [1, 2, 3, 4], [6, 8, 9, 10, 11]]
  path.write_text(json.dumps({"superclients": [{"clients": g} for g in groups]}))
  exp = experiment.build(small_fedseq_config(superclients_from=str(path)))
  assert [s["clients"] for s in exp.superclients["superclients"]] == groups
  assert exp.superclients["grouping"] == "file"
  members = np.asarray(exp.algorithm.clients_of(jnp.arange(3)))
  assert [sorted(int(c) for c in row if c < 12) for row in members] == [sorted(g) for g in groups]
  path.write_text(json.dumps({"superclients": [{"clients": [0, 1]}, {"clients": [1, 2]}]}))
  with pytest.raises(InputError, match="do not cover this run's 12 clients exactly once"):
    experiment.build(small_fedseq_config(superclients_from=str(path)))
  with pytest.raises(InputError, match="does not exist"):
    experiment.build(small_fedseq_config(superclients_from=str(tmp_path / "missing.json")))
  path.write_text("{not json")
  with pytest.raises(InputError, match="is not a superclients file"):
    experiment.build(small_fedseq_config(superclients_from=str(path)))


# --- k-means and PCA as the original's scikit-learn ------------------------------------

def test_pca_reduce_is_full_svd_pca_with_u_based_signs():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(12, 5)) @ rng.normal(size=(5, 5)) + 2.0
  out = grouping.pca_reduce(x, 0.9)
  centred = x - x.mean(0)
  u, s, vt = np.linalg.svd(centred, full_matrices=False)
  keep = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.9, side="right")) + 1
  expected = u[:, :keep] * s[:keep]
  expected *= np.sign(expected[np.argmax(np.abs(expected), axis=0), np.arange(keep)])
  assert out.shape == (12, keep)
  np.testing.assert_allclose(out, expected, rtol=1e-8, atol=1e-10)


def test_kmeans_grouping_separates_clear_clusters():
  """Three tight blobs of 4 clients: round-robin groups take one client of each."""
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  blob = np.repeat(np.arange(3), 4)
  reps = centres[blob] + rng.normal(scale=0.01, size=(12, 2))
  groups = grouping.group_clients(reps, np.full(12, 10), method="kmeans", max_clients=3,
                                  min_examples=30, num_classes=3,
                                  rng=np.random.default_rng(1))
  assert len(groups) == 4
  for g in groups:
    assert sorted(blob[g].tolist()) == [0, 1, 2]
