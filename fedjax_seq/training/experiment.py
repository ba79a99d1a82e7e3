"""From a config to the pieces of a run: data, model, algorithm, round, evaluator.

This is the only place that reads the config; everything below it takes plain
values. `validate` runs before anything is loaded or written.
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from fedjax_seq.algorithms.fairavg import fairavg
from fedjax_seq.algorithms.fedavg import fedavg
from fedjax_seq.algorithms.feddyn import VARIANTS as DYN_VARIANTS, feddyn
from fedjax_seq.algorithms.fedprox import fedprox
from fedjax_seq.algorithms.centralized import centralized
from fedjax_seq.algorithms.fedseq import DROPOUT_VARIANTS, LocalRule, fedseq, make_superclients
from fedjax_seq.algorithms.fedseq_inter import PERIODS, VARIANTS as INTER_VARIANTS, fedseq_inter
from fedjax_seq.algorithms.scaffold import scaffold
from fedjax_seq.core import engine
from fedjax_seq.core.rounds import Algorithm, make_round, num_sampled, with_host_client_state
from fedjax_seq.core.sharding import globalize, make_mesh
from fedjax_seq.data import partition as partition_lib
from fedjax_seq.data import sources
from fedjax_seq.data.federated import FedData, Preprocess, make_fed_data
from fedjax_seq.errors import UserError
from fedjax_seq.models import MODELS, get_model, uses_lax_conv
from fedjax_seq.superclients import formation, grouping
from fedjax_seq.training.evaluate import make_evaluator

# FedSeq family: name -> (inter, local rule)
FEDSEQ = {"fedseq": (False, "plain"), "fedseq_prox": (False, "prox"), "fedseq_dyn": (False, "dyn"),
          "fedseq_inter": (True, "plain"), "fedseq_inter_prox": (True, "prox"),
          "fedseq_inter_dyn": (True, "dyn")}
ALGORITHMS = ("fedavg", "fairavg", "fedprox", "scaffold", "feddyn", *FEDSEQ, "centralized")
STRATEGIES = ("auto", "vmap", "loop")
CENTRALIZED_VARIANTS = ("paper", "original")


def _check(cond: bool, msg: str):
  if not cond:
    raise UserError(msg)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError for any out-of-range or unknown value."""
  c = config
  _check(c.algorithm.name in ALGORITHMS,
         f"unknown algorithm {c.algorithm.name!r}; valid: {', '.join(ALGORITHMS)}")
  _check(c.data.name in sources.DATASETS,
         f"unknown dataset {c.data.name!r}; valid: {', '.join(sources.DATASETS)}")
  _check(c.model.name in MODELS, f"unknown model {c.model.name!r}; valid: {', '.join(MODELS)}")
  _check(c.engine.client_state in ("device", "host"),
         f"unknown engine.client_state {c.engine.client_state!r}; valid: device, host")
  _check(c.engine.chunk >= 0, f"config.engine.chunk must be >= 0, got {c.engine.chunk}")
  _check(c.engine.strategy in STRATEGIES,
         f"unknown engine.strategy {c.engine.strategy!r}; valid: {', '.join(STRATEGIES)}")
  for name in filter(None, (n.strip() for n in c.compare_with.split(","))):
    _check(name in ALGORITHMS and name != "centralized",
           f"unknown algorithm {name!r} in config.compare_with; valid: {', '.join(ALGORITHMS[:-1])}")
  _check(c.rounds >= 1, f"config.rounds must be >= 1, got {c.rounds}")
  _check(c.eval_every >= 1, f"config.eval_every must be >= 1, got {c.eval_every}")
  _check(c.checkpoint_every >= 1, f"config.checkpoint_every must be >= 1, got {c.checkpoint_every}")
  _check(c.eval_batch_size >= 1, f"config.eval_batch_size must be >= 1, got {c.eval_batch_size}")
  _check(c.data.num_clients >= 1, f"config.data.num_clients must be >= 1, got {c.data.num_clients}")
  _check(c.data.alpha >= 0, f"config.data.alpha must be >= 0, got {c.data.alpha}")
  _check(c.data.max_iter_dirichlet >= 1,
         f"config.data.max_iter_dirichlet must be >= 1, got {c.data.max_iter_dirichlet}")
  _check(c.data.exemplars_per_class >= 0,
         f"config.data.exemplars_per_class must be >= 0, got {c.data.exemplars_per_class}")
  _check(0 < c.client.fraction <= 1,
         f"config.client.fraction must be in (0, 1], got {c.client.fraction}")
  _check(c.client.local_epochs >= 1,
         f"config.client.local_epochs must be >= 1, got {c.client.local_epochs}")
  _check(c.client.batch_size >= 1, f"config.client.batch_size must be >= 1, got {c.client.batch_size}")
  _check(c.client.lr > 0, f"config.client.lr must be > 0, got {c.client.lr}")
  _check(c.client.max_steps >= 0, f"config.client.max_steps must be >= 0, got {c.client.max_steps}")
  _check(0 <= c.client.momentum < 1, f"config.client.momentum must be in [0, 1), got {c.client.momentum}")
  _check(c.client.weight_decay >= 0,
         f"config.client.weight_decay must be >= 0, got {c.client.weight_decay}")
  _check(c.algorithm.mu >= 0, f"config.algorithm.mu must be >= 0, got {c.algorithm.mu}")
  _check(c.algorithm.dyn_alpha > 0,
         f"config.algorithm.dyn_alpha must be > 0, got {c.algorithm.dyn_alpha}")
  _check(c.algorithm.dyn_variant in DYN_VARIANTS,
         f"unknown algorithm.dyn_variant {c.algorithm.dyn_variant!r}; valid: "
         f"{', '.join(DYN_VARIANTS)}")
  _check(c.algorithm.centralized_variant in CENTRALIZED_VARIANTS,
         f"unknown algorithm.centralized_variant {c.algorithm.centralized_variant!r}; valid: "
         f"{', '.join(CENTRALIZED_VARIANTS)}")
  _check(not (c.algorithm.name == "scaffold" and c.client.momentum > 0),
         f"SCAFFOLD takes no momentum (the original's SCAFFOLD optimizer has none); got "
         f"config.client.momentum={c.client.momentum}, use 0")
  f = c.fedseq
  _check(f.grouping in grouping.METHODS,
         f"unknown fedseq.grouping {f.grouping!r}; valid: {', '.join(grouping.METHODS)}")
  _check(f.measure in grouping.MEASURES,
         f"unknown fedseq.measure {f.measure!r}; valid: {', '.join(grouping.MEASURES)}")
  _check(f.representation in formation.REPRESENTATIONS,
         f"unknown fedseq.representation {f.representation!r}; valid: "
         f"{', '.join(formation.REPRESENTATIONS)}")
  _check(not (f.grouping == "greedy_mixture" and f.representation != "confidence"),
         "fedseq.grouping=greedy_mixture needs probability vectors: use "
         "fedseq.representation=confidence")
  _check(not (grouping.requires_probabilities(f.measure) and f.representation != "confidence"),
         f"fedseq.measure={f.measure} needs probability vectors: use "
         "fedseq.representation=confidence or measure cosine/wasserstein")
  _check(f.aggregation_period in PERIODS,
         f"unknown fedseq.aggregation_period {f.aggregation_period!r}; valid: {', '.join(PERIODS)}")
  _check(f.inter_variant in INTER_VARIANTS,
         f"unknown fedseq.inter_variant {f.inter_variant!r}; valid: {', '.join(INTER_VARIANTS)}")
  _check(f.dropout_variant in DROPOUT_VARIANTS,
         f"unknown fedseq.dropout_variant {f.dropout_variant!r}; valid: "
         f"{', '.join(DROPOUT_VARIANTS)}")
  _check(f.evaluator_model in MODELS,
         f"unknown fedseq.evaluator_model {f.evaluator_model!r}; valid: {', '.join(MODELS)}")
  _check(f.max_clients >= 1, f"config.fedseq.max_clients must be >= 1, got {f.max_clients}")
  _check(f.min_examples >= 0, f"config.fedseq.min_examples must be >= 0, got {f.min_examples}")
  _check(f.pretrain_epochs >= 1,
         f"config.fedseq.pretrain_epochs must be >= 1, got {f.pretrain_epochs}")
  _check(f.pretrain_chunk >= 1, f"config.fedseq.pretrain_chunk must be >= 1, got {f.pretrain_chunk}")
  _check(0 < f.pca_variance <= 1, f"config.fedseq.pca_variance must be in (0, 1], got {f.pca_variance}")
  _check(f.sequential_rounds >= 1,
         f"config.fedseq.sequential_rounds must be >= 1, got {f.sequential_rounds}")
  _check(0 <= f.dropout < 1, f"config.fedseq.dropout must be in [0, 1), got {f.dropout}")
  _check(c.model.compute_dtype in ("float32", "bfloat16"),
         f"unknown model.compute_dtype {c.model.compute_dtype!r}; valid: float32, bfloat16")
  _check(c.model.conv_impl in ("auto", "xla", "im2col"),
         f"unknown model.conv_impl {c.model.conv_impl!r}; valid: auto, xla, im2col")


@dataclasses.dataclass
class Experiment:
  """Everything a run needs, built once."""
  data: FedData
  model: Any
  algorithm: Algorithm
  round_fn: Callable
  evaluate: Callable
  init_params: Any
  strategy: str
  superclients: dict | None = None  # FedSeq family: what superclients.json records


def load_federated(config) -> tuple[sources.Dataset, list[np.ndarray], np.ndarray, np.ndarray]:
  """Loads the dataset, splits it across clients, holds out test exemplars."""
  d, s = config.data, config.data.synthetic
  ds = sources.load_dataset(
      d.name, d.dir, synthetic_train_size=s.train_size, synthetic_test_size=s.test_size,
      synthetic_image_shape=(s.height, s.width, s.channels),
      synthetic_num_classes=s.num_classes, seed=config.seed)
  rng = np.random.default_rng(config.seed)
  clients = partition_lib.partition(
      ds.train_labels, d.num_clients, ds.num_classes, alpha=d.alpha, iid=d.iid,
      max_iter=d.max_iter_dirichlet, rebalance=d.rebalance, rng=rng)
  if min(len(c) for c in clients) == 0:
    raise UserError("a client received no data; lower config.data.num_clients or raise "
                    "config.data.alpha")
  kept, exemplars = partition_lib.hold_out_exemplars(
      ds.test_labels, ds.num_classes, d.exemplars_per_class, rng)
  if len(kept) == 0:
    raise UserError(f"no test examples left after holding out {d.exemplars_per_class} "
                    "exemplars per class; lower config.data.exemplars_per_class")
  return ds, clients, kept, exemplars


def build_algorithm(config, trainer, num_clients: int, superclients=None) -> Algorithm:
  """The configured algorithm over `trainer` (superclients for the FedSeq family)."""
  a, frac = config.algorithm, config.client.fraction
  if a.name == "fedavg":
    return fedavg(trainer, num_clients, frac)
  if a.name == "fairavg":
    return fairavg(trainer, num_clients, frac)
  if a.name == "fedprox":
    return fedprox(trainer, num_clients, frac, mu=a.mu)
  if a.name == "scaffold":
    return scaffold(trainer, num_clients, frac)
  if a.name == "feddyn":
    return feddyn(trainer, num_clients, frac, alpha=a.dyn_alpha, variant=a.dyn_variant)
  if a.name == "centralized":  # one client holding every training example
    if a.centralized_variant == "original":
      return centralized(trainer, rounds=config.rounds)
    return fedavg(trainer, 1, 1.0)
  if a.name in FEDSEQ:
    inter, rule_name = FEDSEQ[a.name]
    f = config.fedseq
    rule = LocalRule(rule_name, mu=a.mu, alpha=a.dyn_alpha, variant=a.dyn_variant)
    options = dict(rule=rule, sequential_rounds=f.sequential_rounds, shuffle=f.shuffle,
                   dropout=f.dropout, dropout_variant=f.dropout_variant)
    if inter:
      return fedseq_inter(trainer, superclients, num_clients, frac,
                          period=f.aggregation_period, variant=f.inter_variant, **options)
    return fedseq(trainer, superclients, num_clients, frac, **options)
  raise UserError(f"unknown algorithm {a.name!r}; valid: {', '.join(ALGORITHMS)}")


def make_trainer(config, model, preprocess, local_epochs: int):
  """Local SGD as configured (lr, momentum, weight decay, batch, unroll, step cap)."""
  c = config.client
  return engine.make_local_trainer(
      model.apply, preprocess, engine.SGD(c.lr, c.momentum, c.weight_decay),
      local_epochs=local_epochs, batch_size=c.batch_size,
      unroll=engine.resolve_unroll(config.engine.unroll, uses_lax_conv(model)),
      max_steps=c.max_steps)


def form_superclients(config, ds, data: FedData, client_labels: np.ndarray, exemplars,
                      preprocess: Preprocess, strategy: str, stream=None):
  """Pre-trains the clients, extracts representers and groups them: (groups, summary)."""
  f = config.fedseq
  start = time.time()
  rng = np.random.default_rng(config.seed + 1)
  sizes = np.asarray(data.client_sizes)
  grouping.check_feasible(sizes, f.max_clients, f.min_examples)
  if f.grouping == "random":  # needs no client evaluation
    representers = np.zeros((data.num_clients, 0))
  else:
    model = get_model(f.evaluator_model, ds.num_classes, conv_impl=config.model.conv_impl,
                      compute_dtype=config.model.compute_dtype)
    trainer = make_trainer(config, model, preprocess, f.pretrain_epochs)
    k_init, k_train = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))
    init = model.init(k_init, ds.train_images[:1].astype(np.float32))

    def progress(done, total):
      if stream is not None:
        print(f"superclient formation: pre-trained {done}/{total} clients "
              f"({time.time() - start:.0f} s)", file=stream, flush=True)

    models = formation.pretrain(trainer, init, data, k_train, strategy=strategy,
                                chunk=f.pretrain_chunk, progress=progress)
    if f.representation == "confidence":
      augment_key = (jax.random.fold_in(jax.random.key(config.seed), 2)
                     if f.augment_exemplars and preprocess.augment else None)
      representers = formation.confidence_vectors(model.apply, preprocess, models, exemplars[0],
                                                  exemplars[1], ds.num_classes, augment_key)
    else:
      representers = grouping.pca_reduce(
          formation.classifier_representers(models, f.representation), f.pca_variance)
  groups = grouping.group_clients(representers, sizes, method=f.grouping, measure=f.measure,
                                  max_clients=f.max_clients, min_examples=f.min_examples,
                                  num_classes=ds.num_classes, rng=rng)
  counts = np.stack([np.bincount(l, minlength=ds.num_classes) for l in client_labels])
  info = formation.summary(groups, counts, representers, grouping=f.grouping, measure=f.measure,
                           representation=f.representation, max_clients=f.max_clients,
                           min_examples=f.min_examples, formation_s=round(time.time() - start, 2))
  if stream is not None:
    st = info["statistics"]
    print(f"superclient formation: {len(groups)} superclients, "
          f"{st['clients_per_superclient_mean']:.1f} clients each on average, KL from uniform "
          f"{st['kl_from_uniform_superclients_mean']:.3f} (clients: "
          f"{st['kl_from_uniform_clients_mean']:.3f}), {info['formation_s']:.0f} s",
          file=stream, flush=True)
  return groups, info


def load_groups_file(path: str, num_clients: int) -> list[np.ndarray]:
  """Superclient membership from a superclients.json-style file (a study's grouping).

  The file's "superclients" list must cover the run's clients exactly once.
  """
  try:
    with open(path) as fh:
      groups = [np.asarray(s["clients"], np.int64) for s in json.load(fh)["superclients"]]
  except FileNotFoundError:
    raise UserError(f"config.fedseq.superclients_from: {path} does not exist") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"config.fedseq.superclients_from: {path} is not a superclients file "
                    f"({type(e).__name__}: {e})") from None
  ids = np.concatenate(groups) if groups else np.zeros(0, np.int64)
  if not all(len(g) for g in groups) or np.sort(ids).tolist() != list(range(num_clients)):
    raise UserError(f"config.fedseq.superclients_from: the groups in {path} do not cover this "
                    f"run's {num_clients} clients exactly once (another partition or K?)")
  return groups


def groups_from_file(config, path: str, client_sizes: np.ndarray, client_labels, num_classes: int):
  """(groups, summary) read from a grouping file instead of forming them."""
  groups = load_groups_file(path, len(client_sizes))
  counts = np.stack([np.bincount(l, minlength=num_classes) for l in client_labels])
  f = config.fedseq
  info = formation.summary(groups, counts, np.zeros((len(client_sizes), 0)), grouping="file",
                           source=os.path.abspath(path), max_clients=f.max_clients,
                           min_examples=f.min_examples, formation_s=0.0)
  return groups, info


def build(config, stream=None, superclients=None) -> Experiment:
  """`superclients`: (groups, summary) from a previous run's superclients.json, or None."""
  validate(config)
  ds, clients, kept, exemplars = load_federated(config)
  if config.algorithm.name == "centralized":
    clients = [np.concatenate(clients)]
  data = make_fed_data(ds.train_images, ds.train_labels, clients)
  model = get_model(config.model.name, ds.num_classes, conv_impl=config.model.conv_impl,
                    compute_dtype=config.model.compute_dtype)
  preprocess = Preprocess(ds.mean, ds.std, ds.augment and config.data.augment)
  trainer = make_trainer(config, model, preprocess, config.client.local_epochs)
  strategy = engine.resolve_strategy(config.engine.strategy)
  exemplar_set = (ds.test_images[exemplars], ds.test_labels[exemplars])
  info = None
  if config.algorithm.name in FEDSEQ:
    client_labels = [ds.train_labels[c] for c in clients]
    if superclients is None and config.fedseq.superclients_from:
      groups, info = groups_from_file(config, config.fedseq.superclients_from,
                                      np.asarray(data.client_sizes), client_labels,
                                      ds.num_classes)
    elif superclients is None:
      groups, info = form_superclients(config, ds, data, client_labels,
                                       exemplar_set, preprocess, strategy, stream)
    else:  # resuming: formation is not redone
      groups, info = superclients
    superclients = make_superclients(groups, np.asarray(data.client_sizes))
  algorithm = build_algorithm(config, trainer, data.num_clients, superclients)
  k_init = jax.random.split(jax.random.key(config.seed))[0]
  init_params = model.init(k_init, ds.train_images[:1].astype(np.float32))
  if config.algorithm.name == "centralized" and config.algorithm.centralized_variant == "original":
    kept = np.arange(len(ds.test_labels))  # the original's centralized run tests on all of it
  evaluate = make_evaluator(model.apply, preprocess, ds.test_images[kept], ds.test_labels[kept],
                            config.eval_batch_size)
  mesh = make_mesh(config.mesh.num_devices) if strategy == "vmap" else None
  data = globalize(data, mesh)  # several processes: one global copy, converted once
  round_fn = make_round(algorithm, strategy, mesh, config.engine.chunk)
  if config.engine.client_state == "host":
    if jax.process_count() > 1:
      raise UserError("engine.client_state=host is for single-process runs")
    round_fn = with_host_client_state(algorithm, round_fn)
  return Experiment(data, model, algorithm, round_fn, evaluate, init_params, strategy, info)


def round_key(seed: int, round_index: int) -> jax.Array:
  """Key of round r: fold_in of the run's root, so a resumed run continues exactly."""
  return jax.random.fold_in(jax.random.split(jax.random.key(seed))[1], round_index)


def round_workload(config, exp: Experiment) -> tuple[int, float, float]:
  """(participants, clients trained, training examples) per round, expected values."""
  epochs = config.client.local_epochs
  if exp.superclients is not None:
    sizes = [s["num_examples"] for s in exp.superclients["superclients"]]
    members = [len(s["clients"]) for s in exp.superclients["superclients"]]
    n = num_sampled(config.client.fraction, len(sizes))
    passes = epochs * config.fedseq.sequential_rounds
    return n, n * float(np.mean(members)), passes * n * float(np.mean(sizes))
  n = num_sampled(config.client.fraction, exp.data.num_clients)
  return n, float(n), epochs * n * float(np.mean(np.asarray(exp.data.client_sizes)))
