"""FedAvg, FairAvg and FedProx rounds against a NumPy reference, and the round driver."""

import jax
import numpy as np
import pytest

import reference as ref
from helpers import assert_leaves_match, assert_trees_close, assert_trees_equal
from fedjax_seq.algorithms.fedavg import fairavg, fedavg, fedprox
from fedjax_seq.core.rounds import make_round, round_keys, sample_ids

SIZES = [5, 3, 8, 2]
LR, EPOCHS, BATCH = 0.5, 2, 3


def run_round(alg, data, key, strategy="vmap", state=None):
  state = state or alg.init(ref.init_params())
  return make_round(alg, strategy)(state, data, key)


def numpy_round(images, labels, data, params, key, n, weighting="size", mu=0.0):
  """The round written out: sample, train each client in NumPy, average."""
  k_sample, k_train = round_keys(key)
  ids = np.asarray(sample_ids(k_sample, len(SIZES), n))
  w0, b0 = ref.to_np(params)
  corr = (lambda w, b: (mu * (w - w0), mu * (b - b0))) if mu else None
  models, weights = [], []
  for cid in ids:
    batch_list = ref.batches(data, cid, jax.random.fold_in(k_train, cid), EPOCHS, BATCH)
    models.append(ref.local_sgd(w0, b0, images, labels, batch_list, LR, correction=corr))
    weights.append(SIZES[cid] if weighting == "size" else 1.0)
  weights = np.array(weights) / np.sum(weights)
  w = sum(a * m[0] for a, m in zip(weights, models, strict=True))
  b = sum(a * m[1] for a, m in zip(weights, models, strict=True))
  return ids, w, b


@pytest.mark.parametrize("name", ["fedavg", "fairavg", "fedprox"])
def test_one_round_matches_numpy(name):
  images, labels, data = ref.tiny_data(SIZES)
  trainer = ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH)
  alg = {"fedavg": lambda: fedavg(trainer, 4, 0.5),
         "fairavg": lambda: fairavg(trainer, 4, 0.5),
         "fedprox": lambda: fedprox(trainer, 4, 0.5, mu=0.7)}[name]()
  key = jax.random.key(11)
  state, metrics = run_round(alg, data, key)
  ids, w, b = numpy_round(images, labels, data, ref.init_params(), key, 2,
                          weighting="uniform" if name == "fairavg" else "size",
                          mu=0.7 if name == "fedprox" else 0.0)
  assert len(set(ids.tolist())) == 2  # int(0.5 * 4) distinct clients
  assert_leaves_match(state.params, (w, b))
  assert np.isfinite(float(metrics["train_loss"]))


def test_weighting_differs_between_fedavg_and_fairavg():
  _, _, data = ref.tiny_data(SIZES)
  trainer = ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH)
  key = jax.random.key(4)
  a, _ = run_round(fedavg(trainer, 4, 1.0), data, key)
  b, _ = run_round(fairavg(trainer, 4, 1.0), data, key)
  assert np.abs(ref.to_np(a.params)[0] - ref.to_np(b.params)[0]).max() > 1e-4


def test_fedprox_with_zero_mu_is_fedavg_bit_for_bit():
  _, _, data = ref.tiny_data(SIZES)
  trainer = ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH)
  key = jax.random.key(9)
  a, _ = run_round(fedavg(trainer, 4, 0.5), data, key)
  b, _ = run_round(fedprox(trainer, 4, 0.5, mu=0.0), data, key)
  assert_trees_equal(a.params, b.params)


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_vmap_round_equals_per_client_loop(name):
  _, _, data = ref.tiny_data(SIZES)
  trainer = ref.trainer(lr=LR, momentum=0.5, epochs=EPOCHS, batch_size=BATCH)
  make = {"fedavg": lambda: fedavg(trainer, 4, 0.75),
          "fedprox": lambda: fedprox(trainer, 4, 0.75, mu=0.3)}[name]
  sv, sl = make().init(ref.init_params()), make().init(ref.init_params())  # rounds donate state
  vmap_round, loop_round = make_round(make(), "vmap"), make_round(make(), "loop")  # compiled once
  for r in range(3):
    key = jax.random.key(r)
    sv, mv = vmap_round(sv, data, key)
    sl, ml = loop_round(sl, data, key)
  assert_trees_close(sv.params, sl.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(mv["train_loss"]), float(ml["train_loss"]), rtol=1e-5)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_round_compiles_once(strategy):
  _, _, data = ref.tiny_data(SIZES)
  traces = []
  base = ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH)

  def counting_train(*args, **kwargs):
    traces.append(1)
    return base.train(*args, **kwargs)

  alg = fedavg(base._replace(train=counting_train), 4, 0.5)
  round_fn = make_round(alg, strategy)
  state = alg.init(ref.init_params())
  for r in range(4):
    state, _ = round_fn(state, data, jax.random.key(r))
  assert len(traces) == 1


def test_vmap_round_makes_no_host_transfers():
  """After compiling, a whole round runs on device: no implicit host<->device copies."""
  from fedjax_seq.algorithms.fedavg import scaffold
  _, _, data = ref.tiny_data(SIZES)
  trainer = ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH)
  for alg in (fedavg(trainer, 4, 0.5), scaffold(trainer, 4, 0.5)):
    round_fn = make_round(alg, "vmap")
    state, _ = round_fn(alg.init(ref.init_params()), data, jax.random.key(0))
    keys = [jax.random.key(r) for r in range(1, 4)]
    with jax.transfer_guard("disallow"):
      for key in keys:
        state, metrics = round_fn(state, data, key)
    assert np.isfinite(float(metrics["train_loss"]))


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_vmap_equals_whole_cohort(chunk):
  """A cohort of 3 in chunks of 1 or 2 (not dividing it) gives the same round."""
  _, _, data = ref.tiny_data(SIZES)
  trainer = ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH)
  alg = fedprox(trainer, 4, 0.75, mu=0.2)
  a, _ = make_round(alg, "vmap")(alg.init(ref.init_params()), data, jax.random.key(2))
  b, _ = make_round(alg, "vmap", chunk=chunk)(alg.init(ref.init_params()), data,
                                              jax.random.key(2))
  assert_trees_close(a, b, rtol=1e-6, atol=1e-7)


def test_step_bucket_bounds_the_programs():
  from fedjax_seq.core.rounds import step_bucket
  # B = 4, clients of up to 40 examples (10 steps): caps of 1, 2, 4, 8 or 10 steps.
  assert [step_bucket(s, 4, 40) for s in (0, 1, 4, 5, 8, 9, 13, 17, 33, 40)] == [
      4, 4, 4, 8, 8, 16, 16, 32, 40, 40]
  assert len({step_bucket(s, 4, 40) for s in range(41)}) == 5  # 1 + ceil(log2(10))


@pytest.mark.parametrize("family", ["fedavg", "fedseq"])
def test_loop_with_step_buckets_equals_the_padded_round(family):
  """Ragged clients (1 to 10 steps an epoch): each participant runs its bucket's steps only,
  with the same numbers as when every client runs the largest client's; one program per
  bucket."""
  from fedjax_seq.algorithms.fedseq import fedseq, make_superclients
  sizes = [3, 20, 7, 40, 1, 12, 9, 26]
  _, _, data = ref.tiny_data(sizes)
  traces = []
  base = ref.trainer(lr=LR, epochs=2, batch_size=4)

  def counting_train(*args, **kwargs):
    traces.append(args[1].size_cap)
    return base.train(*args, **kwargs)

  trainer = base._replace(train=counting_train)
  if family == "fedavg":
    alg = fedavg(trainer, len(sizes), 0.5)
  else:
    groups = [np.array(g) for g in ([0, 4], [1, 2], [3], [5, 6, 7])]
    alg = fedseq(trainer, make_superclients(groups, np.array(sizes)), len(sizes), 0.5)
  padded, bucketed = make_round(alg, "loop"), make_round(alg, "loop", batch_size=4)
  a = b = alg.init(ref.init_params())
  b = jax.tree.map(np.copy, b)
  for r in range(3):
    a, ma = padded(a, data, jax.random.key(r))
    b, mb = bucketed(b, data, jax.random.key(r))
  assert_trees_equal(a, b)
  assert float(ma["train_loss"]) == float(mb["train_loss"])
  caps = traces[1:]  # the padded round's one program first
  assert traces[0] == 0 and len(caps) == len(set(caps)) and set(caps) <= {4, 8, 16, 32, 40}
  assert len(caps) >= 2
