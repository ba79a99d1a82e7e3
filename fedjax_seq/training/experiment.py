"""From a config to the pieces of a run: data, model, algorithm, round, evaluator.

This is the only place that reads the config; everything below it takes plain
values. `validate` runs before anything is loaded or written.
"""

import dataclasses
import json
import os
import re
import time
from typing import Any, Callable, TypeVar

import jax
import ml_collections
import numpy as np

from fedjax_seq.algorithms import fedseq as fedseq_lib
from fedjax_seq.algorithms import fedseq_inter, registry, rules
from fedjax_seq.core import engine
from fedjax_seq.core import server as server_lib
from fedjax_seq.core.rounds import (CLIENT_STATES, Algorithm, make_round, num_sampled,
                                    with_host_client_state)
from fedjax_seq.core.sharding import globalize, make_mesh
from fedjax_seq.data import partition as partition_lib
from fedjax_seq.data import sources
from fedjax_seq.data.federated import FedData, Preprocess, make_fed_data
from fedjax_seq.errors import UserError
from fedjax_seq.models import MODELS, get_model, initialize, uses_lax_conv
from fedjax_seq.superclients import formation, grouping
from fedjax_seq.training.evaluate import make_evaluator

ALGORITHMS = registry.ALGORITHMS  # the one list of names (a live view: `register` adds to it)
T = TypeVar("T")


def _check(cond: bool, msg: str):
  if not cond:
    raise UserError(msg)


def _named(error: ValueError, paths: dict[str, str]) -> UserError:
  """A constructor's plain ValueError as a UserError naming the config field it is about.

  Constructors name an argument as "ARG must ...", "unknown ARG '...'" or
  "ARG=VALUE"; the first such mention of one of `paths` becomes its path.
  """
  message = str(error)
  for arg, path in paths.items():
    named = re.sub(rf"(?<![\w.]){re.escape(arg)}(?= must\b|=| ')", path, message, count=1)
    if named != message:
      return UserError(named)
  return UserError(message)


def _checked(call: Callable[[], T], paths: dict[str, str]) -> T:
  """call(), with a ValueError it raises turned into a UserError naming the config field."""
  try:
    return call()
  except ValueError as e:
    raise _named(e, paths) from None


def hyperparameters(config, name: str) -> dict:
  """An algorithm's own section `config.algorithm.NAME` as keyword arguments.

  An algorithm registered after the config was made has no section: its
  entry's defaults.
  """
  section = config.algorithm.get(name)
  own = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else {}
  return {**registry.ALGORITHMS[name].hyperparameters, **own}


def _section(name: str, hp: dict) -> dict[str, str]:
  return {field: f"config.algorithm.{name}.{field}" for field in hp}


def server_optimizer(config):
  """The server's optax transform from `config.server` (None: plain averaging, FedAvg)."""
  s = config.server
  return _checked(lambda: server_lib.server_optimizer(
      s.optimizer, lr=s.lr, momentum=s.momentum, b1=s.b1, b2=s.b2, eps=s.eps),
      {f: f"config.server.{f}" for f in ("optimizer", "lr", "momentum", "b1", "b2", "eps")})


def chain_options(config) -> dict:
  """FedSeq's chain options from `config.fedseq`, checked by `fedseq.chain_options`."""
  f = config.fedseq
  kwargs = dict(sequential_rounds=f.sequential_rounds, shuffle=f.shuffle, dropout=f.dropout,
                dropout_variant=f.dropout_variant)
  _checked(lambda: fedseq_lib.chain_options(**kwargs), {k: f"config.fedseq.{k}" for k in kwargs})
  return kwargs


def bank_options(config) -> dict:
  """FedSeqInter's bank options from `config.fedseq`, checked by `fedseq_inter.check_bank`."""
  kwargs = dict(period=config.fedseq.aggregation_period, variant=config.fedseq.inter_variant)
  _checked(lambda: fedseq_inter.check_bank(**kwargs),
           {"period": "config.fedseq.aggregation_period",
            "variant": "config.fedseq.inter_variant"})
  return kwargs


def _validate_algorithms(config, names: list[str]) -> None:
  """Every algorithm's section through its constructor's checks; for the ones that run
  (`names`), their rule against the local optimizer and the server optimizer."""
  sgd = engine.SGD(config.client.lr, config.client.momentum, config.client.weight_decay)
  optimizer = server_optimizer(config)
  for name, entry in registry.ALGORITHMS.items():
    hp = hyperparameters(config, name)
    rule = _checked(lambda: entry.check(**hp), _section(name, hp))
    if name not in names:
      continue
    if isinstance(rule, rules.ClientRule):
      _checked(lambda: rules.check_local_sgd(rule, sgd), {"momentum": "config.client.momentum"})
    _check(entry.server_step or optimizer is None,
           f"{name} has no server step: leave config.server.optimizer=sgd with "
           f"config.server.lr=1, got {config.server.optimizer} with lr {config.server.lr}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError for any out-of-range or unknown value, naming its config field.

  Algorithm, rule, server-optimizer and FedSeq chain settings are checked by
  the constructors that use them (a ValueError, named here by its field).
  """
  c = config
  _check(c.algorithm.name in ALGORITHMS,
         f"unknown algorithm {c.algorithm.name!r}; valid: {', '.join(ALGORITHMS)}")
  _check(c.data.name in sources.DATASETS,
         f"unknown dataset {c.data.name!r}; valid: {', '.join(sources.DATASETS)}")
  _check(c.model.name in MODELS, f"unknown model {c.model.name!r}; valid: {', '.join(MODELS)}")
  _check(c.engine.client_state in CLIENT_STATES,
         f"unknown engine.client_state {c.engine.client_state!r}; valid: "
         f"{', '.join(CLIENT_STATES)}")
  _check(c.engine.chunk >= 0, f"config.engine.chunk must be >= 0, got {c.engine.chunk}")
  _check(c.engine.strategy in engine.STRATEGIES,
         f"unknown engine.strategy {c.engine.strategy!r}; valid: {', '.join(engine.STRATEGIES)}")
  comparable = [n for n, e in ALGORITHMS.items() if e.participants != "pooled"]
  compared = [n for n in (n.strip() for n in c.compare_with.split(",")) if n]
  for name in compared:
    _check(name in comparable,
           f"unknown algorithm {name!r} in config.compare_with; valid: {', '.join(comparable)}")
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
  _validate_algorithms(c, [c.algorithm.name, *compared])
  chain_options(c)
  bank_options(c)
  f = c.fedseq
  _check(f.grouping in grouping.METHODS,
         f"unknown fedseq.grouping {f.grouping!r}; valid: {', '.join(grouping.METHODS)}")
  _check(f.measure in grouping.MEASURES,
         f"unknown fedseq.measure {f.measure!r}; valid: {', '.join(grouping.MEASURES)}")
  _check(f.representation in formation.REPRESENTATIONS,
         f"unknown fedseq.representation {f.representation!r}; valid: "
         f"{', '.join(formation.REPRESENTATIONS)}")
  _check(not (grouping.requires_probabilities(f.measure) and f.representation != "confidence"),
         f"fedseq.measure={f.measure} needs probability vectors: use "
         "fedseq.representation=confidence or measure cosine/wasserstein")
  _check(f.evaluator_model in MODELS,
         f"unknown fedseq.evaluator_model {f.evaluator_model!r}; valid: {', '.join(MODELS)}")
  _check(f.max_clients >= 1, f"config.fedseq.max_clients must be >= 1, got {f.max_clients}")
  _check(f.min_examples >= 0, f"config.fedseq.min_examples must be >= 0, got {f.min_examples}")
  _check(f.pretrain_epochs >= 1,
         f"config.fedseq.pretrain_epochs must be >= 1, got {f.pretrain_epochs}")
  _check(f.pretrain_chunk >= 1, f"config.fedseq.pretrain_chunk must be >= 1, got {f.pretrain_chunk}")
  _check(0 < f.pca_variance <= 1, f"config.fedseq.pca_variance must be in (0, 1], got {f.pca_variance}")
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
  """The configured algorithm from its registry entry and its section `config.algorithm.NAME`."""
  name = config.algorithm.name
  setup = registry.Setup(trainer, num_clients, config.client.fraction, config.rounds,
                         server_optimizer(config), superclients, chain_options(config),
                         bank_options(config))
  hp = hyperparameters(config, name)
  return _checked(lambda: registry.ALGORITHMS[name].build(setup, **hp), _section(name, hp))


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
    init = initialize(model, k_init, ds.train_images)

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
  participants = ALGORITHMS[config.algorithm.name].participants
  if participants == "pooled":  # one client holding every training example
    clients = [np.concatenate(clients)]
  data = make_fed_data(ds.train_images, ds.train_labels, clients)
  model = get_model(config.model.name, ds.num_classes, conv_impl=config.model.conv_impl,
                    compute_dtype=config.model.compute_dtype)
  preprocess = Preprocess(ds.mean, ds.std, ds.augment and config.data.augment)
  trainer = make_trainer(config, model, preprocess, config.client.local_epochs)
  strategy = engine.resolve_strategy(config.engine.strategy)
  exemplar_set = (ds.test_images[exemplars], ds.test_labels[exemplars])
  info = None
  if participants == "superclients":
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
    superclients = fedseq_lib.make_superclients(groups, np.asarray(data.client_sizes))
  algorithm = build_algorithm(config, trainer, data.num_clients, superclients)
  k_init = jax.random.split(jax.random.key(config.seed))[0]
  init_params = initialize(model, k_init, ds.train_images)
  if (config.algorithm.name == "centralized"
      and hyperparameters(config, "centralized")["variant"] == "original"):
    kept = np.arange(len(ds.test_labels))  # the original's centralized run tests on all of it
  evaluate = make_evaluator(model.apply, preprocess, ds.test_images[kept], ds.test_labels[kept],
                            config.eval_batch_size)
  mesh = (_checked(lambda: make_mesh(config.mesh.num_devices),
                   {"num_devices": "config.mesh.num_devices"}) if strategy == "vmap" else None)
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
