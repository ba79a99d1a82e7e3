"""Superclient formation from a config: the one path shared by training and the study.

Every key, generator and model that formation uses is made here: the
evaluator's initial parameters and pre-training key come from
`fold_in(key(seed), 1)`, exemplar augmentation from `fold_in(key(seed), 2)`,
and every grouping draws from a fresh `default_rng(seed + 1)`. The study
calls the same functions per combination, so its groups equal a training
run's by construction.
"""

import time
from typing import Any, Callable, NamedTuple, TextIO

import jax
import numpy as np

from fedjax_seq import registry
from fedjax_seq.data.arrays import FederatedArrays
from fedjax_seq.data.federated import FedData, Preprocess
from fedjax_seq.models import initialize
from fedjax_seq.superclients import formation
from fedjax_seq.superclients import grouping as grouping_lib
from fedjax_seq.training import components


class Evaluator(NamedTuple):
  """The model every client pre-trains in client evaluation, and where it starts."""
  model: Any                   # flax module
  classifier: tuple[str, ...]  # its declared classifier layers (may be empty)
  init: Any                    # initial parameters, the same for every client
  key: jax.Array               # pre-training key (folded with each client id)
  preprocess: Preprocess
  image_shape: tuple[int, ...]


def evaluator(config, ds: FederatedArrays, preprocess: Preprocess,
              model: tuple[Any, tuple[str, ...]] | None = None) -> Evaluator:
  """The configured evaluator; `model` (module, classifier) overrides the registry's."""
  if model is None:
    model = components.build_model(config, components.model_name(config, "evaluator"),
                                   ds.num_classes)
  module, classifier = model
  k_init, k_train = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))
  return Evaluator(module, tuple(classifier), initialize(module, k_init, ds.train_images),
                   k_train, preprocess, ds.image_shape)


def pretrain(config, ev: Evaluator, data: FedData, epochs: int,
             progress: Callable[[int, int], None] | None = None):
  """Every client's evaluator after `epochs` local epochs on its own data (leading axis K),
  vmapped or looped as the evaluator's strategy says (`components.strategy`)."""
  trainer = components.make_trainer(config, ev.model, ev.preprocess, epochs, ev.image_shape)
  strategy = components.strategy(config, ev.model, ev.image_shape, data)
  return formation.pretrain(trainer, ev.init, data, ev.key, strategy=strategy,
                            chunk=config.fedseq.pretrain_chunk, progress=progress)


def evaluation(config, ev: Evaluator, models, ds: FederatedArrays,
               exemplars: np.ndarray) -> formation.Evaluation:
  """What representations read: the pre-trained models, the exemplars, the PCA variance."""
  f = config.fedseq
  augment_key = (jax.random.fold_in(jax.random.key(config.seed), 2)
                 if f.augment_exemplars and ev.preprocess.augment else None)
  return formation.Evaluation(models, ev.model.apply, ev.classifier, ev.preprocess,
                              (ds.test_images[exemplars], ds.test_labels[exemplars]),
                              ds.num_classes, augment_key, f.pca_variance)


def representers(evaluation_: formation.Evaluation, representation: str) -> np.ndarray:
  """A registered representation of every client, (K, D)."""
  return np.asarray(registry.REPRESENTATIONS.get(representation).extract(evaluation_))


def form(config, sizes: np.ndarray, num_classes: int, *, grouping: str, measure: str,
         representation: str, evaluation_: formation.Evaluation | None = None,
         client_representers: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
  """(groups, representers) of one grouping setting under the config's constraints.

  Representers come from `client_representers` when given (the study's
  cache), else from `evaluation_`; a grouping that needs none gets (K, 0).
  """
  f = config.fedseq
  if not registry.GROUPINGS.get(grouping).needs_representers:
    reps = np.zeros((len(sizes), 0))
  elif client_representers is not None:
    reps = client_representers
  else:
    reps = representers(evaluation_, representation)
  groups = grouping_lib.group_clients(
      reps, sizes, method=grouping, measure=measure, max_clients=f.max_clients,
      min_examples=f.min_examples, num_classes=num_classes,
      rng=np.random.default_rng(config.seed + 1))
  return groups, reps


def form_superclients(config, ds: FederatedArrays, data: FedData, clients: list[np.ndarray],
                      exemplars: np.ndarray, preprocess: Preprocess,
                      stream: TextIO | None = None, model=None) -> tuple[list[np.ndarray], dict]:
  """A training run's formation: pre-train, represent, group; (groups, summary)."""
  f = config.fedseq
  start = time.time()
  sizes = np.asarray(data.client_sizes)
  grouping_lib.check_feasible(sizes, f.max_clients, f.min_examples)
  evaluation_ = None
  if registry.GROUPINGS.get(f.grouping).needs_representers:
    ev = evaluator(config, ds, preprocess, model)

    def progress(done, total):
      if stream is not None:
        print(f"superclient formation: pre-trained {done}/{total} clients "
              f"({time.time() - start:.0f} s)", file=stream, flush=True)

    models = pretrain(config, ev, data, f.pretrain_epochs, progress)
    evaluation_ = evaluation(config, ev, models, ds, exemplars)
  groups, reps = form(config, sizes, ds.num_classes, grouping=f.grouping, measure=f.measure,
                      representation=f.representation, evaluation_=evaluation_)
  info = formation.summary(groups, class_counts(ds, clients), reps, grouping=f.grouping,
                           measure=f.measure, representation=f.representation,
                           max_clients=f.max_clients, min_examples=f.min_examples,
                           formation_s=round(time.time() - start, 2))
  if stream is not None:
    st = info["statistics"]
    print(f"superclient formation: {len(groups)} superclients, "
          f"{st['clients_per_superclient_mean']:.1f} clients each on average, KL from uniform "
          f"{st['kl_from_uniform_superclients_mean']:.3f} (clients: "
          f"{st['kl_from_uniform_clients_mean']:.3f}), {info['formation_s']:.0f} s",
          file=stream, flush=True)
  return groups, info


def class_counts(ds: FederatedArrays, clients: list[np.ndarray]) -> np.ndarray:
  """(K, num_classes) training examples of each class per client."""
  return np.stack([np.bincount(ds.train_labels[c], minlength=ds.num_classes) for c in clients])
