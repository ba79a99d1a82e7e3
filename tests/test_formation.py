"""Superclient formation: vectorized pre-training, representers, superclients.json."""

import json

import jax
import jax.numpy as jnp
import numpy as np

import reference as ref
from configs import default
from fedjax_seq.algorithms.fedseq import pass_order
from fedjax_seq.data.federated import make_fed_data
from fedjax_seq.superclients import formation
from fedjax_seq.training.train import train_and_evaluate


def test_vectorized_pretraining_equals_one_client_alone():
  _, _, data = ref.tiny_data([5, 3, 8, 2, 6])
  trainer = ref.trainer(lr=0.3, epochs=3, batch_size=2)
  init, key = ref.init_params(), jax.random.key(4)
  chunked = formation.pretrain(trainer, init, data, key, strategy="vmap", chunk=2)  # 2+2+1 (padded)
  looped = formation.pretrain(trainer, init, data, key, strategy="loop", chunk=2)
  for cid in range(5):
    alone = trainer.train(init, data, jnp.int32(cid), jax.random.fold_in(key, cid)).params
    for a, b, c in zip(jax.tree.leaves(alone), jax.tree.leaves(chunked), jax.tree.leaves(looped),
                       strict=True):
      np.testing.assert_allclose(np.asarray(b[cid]), np.asarray(a), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(np.asarray(c[cid]), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_one_class_client_has_confidence_peaking_at_its_class():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (60, 2, 2, 1), dtype=np.uint8)
  labels = np.repeat(np.arange(3), 20).astype(np.int32)
  clients = [np.arange(c * 20, c * 20 + 20) for c in range(3)]  # client c holds only class c
  data = make_fed_data(images, labels, clients)
  trainer = ref.trainer(lr=0.5, epochs=20, batch_size=10)
  models = formation.pretrain(trainer, ref.init_params(), data, jax.random.key(0),
                              strategy="vmap", chunk=3)
  exemplars = np.concatenate([np.arange(c * 20, c * 20 + 4) for c in range(3)])
  conf = formation.confidence_vectors(ref.MODEL.apply, ref.PREPROCESS, models, images[exemplars],
                                      labels[exemplars], 3)
  np.testing.assert_allclose(conf.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(conf.argmax(1), [0, 1, 2])
  assert conf.max(1).min() > 0.6


def test_classifier_representers_are_dense_kernels():
  models = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), ref.init_params())
  last = formation.classifier_representers(models, "classifier_last", ("fc1",))
  kernel = np.asarray(ref.init_params()["params"]["fc1"]["kernel"]).reshape(-1)
  np.testing.assert_allclose(last, np.stack([kernel, 2 * kernel]))


def test_pass_order_drops_and_shuffles_present_members_only():
  real = jnp.array([True, True, True, False])
  for seed in range(5):
    order, active = pass_order(jax.random.key(seed), real, shuffle=True, dropout=0.4)
    active = np.asarray(active)
    assert active.sum() == 1 and not active[3]  # max(1, min(2, ceil(1.2))) = 2 of 3 dropped
    assert active[np.asarray(order)[0]]  # the active member comes first
  order, active = pass_order(jax.random.key(0), real, shuffle=False, dropout=0.0)
  np.testing.assert_array_equal(order, [0, 1, 2, 3])
  np.testing.assert_array_equal(active, real)


def test_fedseq_run_writes_superclients_json(tmp_path):
  c = default.get_config()
  c.algorithm.name = "fedseq"
  c.data.name = "synthetic"
  c.data.synthetic.update(train_size=1200, test_size=300)
  c.data.num_clients = 40  # one class per client, 30 examples each
  c.model.name = "mlp"
  c.fedseq.update(evaluator_model="mlp", pretrain_epochs=2, max_clients=5, min_examples=100)
  c.rounds, c.eval_every = 2, 1
  train_and_evaluate(c, str(tmp_path / "run"))
  info = json.loads((tmp_path / "run" / "superclients.json").read_text())
  members = sorted(m for s in info["superclients"] for m in s["clients"])
  assert members == list(range(40))  # every client in exactly one superclient
  for s in info["superclients"]:
    assert len(s["clients"]) <= 5 and s["num_examples"] == 30 * len(s["clients"])
    assert sum(s["class_counts"]) == s["num_examples"]
  assert np.array(info["representers"]).shape == (40, 10)
  stats = info["statistics"]
  assert stats["kl_from_uniform_superclients_mean"] < stats["kl_from_uniform_clients_mean"]
  assert abs(stats["kl_from_uniform_clients_mean"] - np.log(10)) < 1e-6
