"""Superclient formation, done once before round 0.

1. Client evaluation ("pre-training"): every client trains its own copy of
   the evaluator model from the same initial parameters for a few epochs of
   local SGD on its own data. Vectorized across clients in chunks (the
   original trains one client after another).
2. A representation of each pre-trained model: `confidence` (summed softmax
   confidence on the held-out exemplars, per true class, normalised: an
   estimate of the client's label distribution) or the weights of its last,
   last two or all dense layers, reduced across clients by PCA.
3. Grouping under max_clients / min_examples (`superclients.grouping`).
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_seq.data.federated import FedData, Preprocess
from fedjax_seq.superclients import grouping

def map_clients(fn: Callable, client_ids: np.ndarray, strategy: str, chunk: int,
                progress: Callable[[int, int], None] | None = None):
  """Stacks fn(client_id) over clients: chunks of vmap, or a loop of one jitted fn.

  The last chunk is padded with repeats of its first id (shapes stay fixed,
  one compile) and the padding is cut off.
  """
  outs, total = [], len(client_ids)
  if strategy == "loop":
    one = jax.jit(fn)
    for i, cid in enumerate(client_ids):
      outs.append(jax.tree.map(lambda x: x[None], one(jnp.int32(cid))))
      if progress is not None and ((i + 1) % chunk == 0 or i + 1 == total):
        progress(i + 1, total)
  else:
    many = jax.jit(jax.vmap(fn))
    for start in range(0, total, chunk):
      ids = client_ids[start:start + chunk]
      padded = np.concatenate([ids, np.full(chunk - len(ids), ids[0])]).astype(np.int32)
      outs.append(jax.tree.map(lambda x: x[:len(ids)], many(jnp.asarray(padded))))
      if progress is not None:
        progress(min(start + chunk, total), total)
  return jax.tree.map(lambda *x: jnp.concatenate(x), *outs)


def pretrain(trainer, init_params, data: FedData, key: jax.Array, *, strategy: str, chunk: int,
             progress=None):
  """Each client's own model after `trainer`'s epochs from `init_params` (leading axis K)."""

  def one(cid):
    return trainer.train(init_params, data, cid, jax.random.fold_in(key, cid)).params

  return map_clients(one, np.arange(data.num_clients), strategy, chunk, progress)


def confidence_vectors(apply_fn: Callable, preprocess: Preprocess, models, images: np.ndarray,
                       labels: np.ndarray, num_classes: int,
                       augment_key: jax.Array | None = None) -> np.ndarray:
  """(K, num_classes): per client, sum over exemplars of softmax[true class] at that class, normalised.

  With `augment_key` None the exemplars are not augmented (a deterministic
  estimate, the default here); with a key each client sees its own random
  crop/flip of every exemplar (key fold_in(augment_key, client)), as the
  original, which passes the exemplars through its training transform.
  """
  onehot = jax.nn.one_hot(jnp.asarray(labels), num_classes)
  images = jnp.asarray(images)
  fixed = preprocess(images, None)

  @jax.jit
  def one(params, key):
    x = fixed if key is None else preprocess(images, key)
    p = jax.nn.softmax(apply_fn(params, x))
    conf = onehot.T @ jnp.sum(p * onehot, axis=1)
    return conf / jnp.sum(conf)

  k = jax.tree.leaves(models)[0].shape[0]
  keys = [None if augment_key is None else jax.random.fold_in(augment_key, i) for i in range(k)]
  return np.stack([np.asarray(one(jax.tree.map(lambda m: m[i], models), keys[i]))
                   for i in range(k)])


class Evaluation(NamedTuple):
  """What a representation reads: the K pre-trained evaluator models and their context."""
  models: Any                   # the evaluator's parameters, stacked with leading axis K
  apply_fn: Callable            # the evaluator's `apply`
  classifier: tuple[str, ...]   # its declared classifier layers, in call order (may be empty)
  preprocess: Preprocess
  exemplars: tuple[np.ndarray, np.ndarray]  # held-out (images, labels)
  num_classes: int
  augment_key: jax.Array | None  # exemplar augmentation (the original's), or None
  pca_variance: float           # variance kept by PCA of weight representations


def confidence(ev: Evaluation) -> np.ndarray:
  """The `confidence` representation: `confidence_vectors` on the exemplars."""
  return confidence_vectors(ev.apply_fn, ev.preprocess, ev.models, ev.exemplars[0],
                            ev.exemplars[1], ev.num_classes, ev.augment_key)


def classifier_kernels(models, layers: Sequence[str]) -> list[np.ndarray]:
  """The kernels of the named classifier layers, each flattened to (K, -1)."""
  params = models["params"]
  k = jax.tree.leaves(models)[0].shape[0]
  missing = [n for n in layers if n not in params or "kernel" not in params[n]]
  if missing:
    raise ValueError(f"classifier layers {missing} have no kernel among the model's "
                     f"parameters ({', '.join(params)})")
  return [np.asarray(params[n]["kernel"]).reshape(k, -1) for n in layers]


def classifier_representers(models, which: str, layers: Sequence[str]) -> np.ndarray:
  """The original's classifierLast / classifierLast2 / classifierAll (weights, no biases).

  `layers` are the classifier's dense layers in call order: last = the last
  kernel; last2 = the last then the second-last; all = every kernel in order.
  """
  if not layers:
    raise ValueError(f"representation {which} needs the evaluator's classifier layers, and it "
                     "declares none")
  kernels = classifier_kernels(models, layers)
  if which == "classifier_last":
    return kernels[-1]
  if which == "classifier_last2":
    if len(kernels) < 2:
      raise ValueError("representation classifier_last2 needs a classifier of >= 2 layers, "
                       f"the evaluator declares {list(layers)}")
    return np.concatenate([kernels[-1], kernels[-2]], axis=1)
  if which == "classifier_all":
    return np.concatenate(kernels, axis=1)
  raise ValueError(f"unknown representation {which!r}")


def _classifier(ev: Evaluation, which: str) -> np.ndarray:
  return grouping.pca_reduce(classifier_representers(ev.models, which, ev.classifier),
                             ev.pca_variance)


def classifier_last(ev: Evaluation) -> np.ndarray:
  """The original's classifierLast: the last dense kernel, reduced by PCA."""
  return _classifier(ev, "classifier_last")


def classifier_last2(ev: Evaluation) -> np.ndarray:
  """The original's classifierLast2: the last then the second-last kernel, reduced by PCA."""
  return _classifier(ev, "classifier_last2")


def classifier_all(ev: Evaluation) -> np.ndarray:
  """The original's classifierAll: every classifier kernel in call order, reduced by PCA."""
  return _classifier(ev, "classifier_all")


def kl_from_uniform(counts: np.ndarray) -> float:
  """KL(p || uniform) of a class-count vector, in nats (0 for a balanced one)."""
  return float(grouping.kl_rows(counts))


def superclient_rows(groups, class_counts: np.ndarray) -> list[dict]:
  """Per superclient: id, members, examples, class counts and KL from uniform."""
  rows = []
  for s, g in enumerate(groups):
    counts = class_counts[list(g)].sum(0)
    rows.append({"id": s, "clients": [int(c) for c in g], "num_examples": int(counts.sum()),
                 "class_counts": counts.astype(int).tolist(),
                 "kl_from_uniform": kl_from_uniform(counts)})
  return rows


def summary(groups: list[np.ndarray], class_counts: np.ndarray, representers: np.ndarray,
            **settings) -> dict:
  """What superclients.json records: membership, class counts, representers, statistics."""
  sc = superclient_rows(groups, class_counts)
  kls = np.array([s["kl_from_uniform"] for s in sc])
  client_kls = np.array([kl_from_uniform(c) for c in class_counts])
  return {
      **settings,
      "num_superclients": len(groups),
      "statistics": {
          "clients_per_superclient_mean": float(np.mean([len(g) for g in groups])),
          "clients_per_superclient_max": int(max(len(g) for g in groups)),
          "examples_per_superclient_min": int(min(s["num_examples"] for s in sc)),
          "kl_from_uniform_superclients_mean": float(kls.mean()),
          "kl_from_uniform_superclients_max": float(kls.max()),
          "kl_from_uniform_clients_mean": float(client_kls.mean()),
      },
      "superclients": sc,
      "client_class_counts": class_counts.astype(int).tolist(),
      "representers": np.asarray(representers, np.float64).round(6).tolist(),
  }
