"""From a config to the pieces of a run: data, model, algorithm, round, evaluator.

This is the only place that reads the config; everything below it takes plain
values. `validate` runs before anything is loaded or written.
"""

import json
import os
from typing import Callable, NamedTuple, TypeVar

import jax
import ml_collections
import numpy as np

from fedjax_seq import registry as registry_lib
from fedjax_seq.algorithms import fedseq as fedseq_lib
from fedjax_seq.algorithms import fedseq_inter, registry, rules
from fedjax_seq.api import Experiment
from fedjax_seq.core import engine
from fedjax_seq.core import server as server_lib
from fedjax_seq.core.rounds import (CLIENT_STATES, Algorithm, make_round, num_sampled,
                                    with_host_client_state)
from fedjax_seq.core.sharding import globalize, make_mesh
from fedjax_seq.data import partition as partition_lib
from fedjax_seq.data import sources
from fedjax_seq.data.arrays import FederatedArrays
from fedjax_seq.data.federated import FedData, Preprocess, make_fed_data
from fedjax_seq.errors import InputError
from fedjax_seq.models import initialize
from fedjax_seq.models import registry as model_registry
from fedjax_seq.superclients import formation
from fedjax_seq.training import components
from fedjax_seq.training import superclients as superclients_lib
from fedjax_seq.training.evaluate import make_evaluator

ALGORITHMS = registry.ALGORITHMS  # the one list of names (a live view: `register` adds to it)
T = TypeVar("T")


def _check(cond: bool, msg: str):
  if not cond:
    raise InputError(msg)


def _named(error: ValueError, paths: dict[str, str]) -> InputError:
  """A library error as an InputError naming the config field its `argument` maps to.

  "mu must be >= 0" about argument `mu`, mapped to config.algorithm.fedprox.mu,
  reads "config.algorithm.fedprox.mu must be >= 0"; a message that does not
  start with the argument gets the field in front. A ValueError about no
  mapped argument (e.g. a user's constructor) keeps its message.
  """
  message, argument = str(error), getattr(error, "argument", None)
  path = paths.get(argument) if argument else None
  if path is None:
    return InputError(message)
  if message.startswith(argument + " "):
    return InputError(path + message[len(argument):], argument=path)
  return InputError(f"{path}: {message}", argument=path)


def _checked(call: Callable[[], T], paths: dict[str, str]) -> T:
  """call(), with a ValueError it raises turned into an InputError naming the config field."""
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


def validate(config: ml_collections.ConfigDict, *, user_model: bool = False,
             user_data: bool = False) -> None:
  """Raises InputError for any out-of-range or unknown value, naming its config field.

  Reads only the config and the registries' declarations: nothing is loaded.
  `user_model` / `user_data`: a module / arrays are passed to `build`, so the
  config's model / dataset name is not used.

  Algorithm, rule, server-optimizer and FedSeq chain settings are checked by
  the constructors that use them (a ValueError, named here by its field).
  """
  c = config
  _check(c.algorithm.name in ALGORITHMS,
         f"unknown algorithm {c.algorithm.name!r}; valid: {', '.join(ALGORITHMS)}")
  _validate_data(c, user_data)
  _validate_models(c, user_model)
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
  _validate_formation(c, user_model)
  _check(f.max_clients >= 1, f"config.fedseq.max_clients must be >= 1, got {f.max_clients}")
  _check(f.min_examples >= 0, f"config.fedseq.min_examples must be >= 0, got {f.min_examples}")
  _check(f.pretrain_epochs >= 1,
         f"config.fedseq.pretrain_epochs must be >= 1, got {f.pretrain_epochs}")
  _check(f.pretrain_chunk >= 1, f"config.fedseq.pretrain_chunk must be >= 1, got {f.pretrain_chunk}")
  _check(0 < f.pca_variance <= 1, f"config.fedseq.pca_variance must be in (0, 1], got {f.pca_variance}")


def _validate_data(config, user_data: bool = False) -> None:
  """The dataset's name, argument and own section, from its registry entry (nothing loaded)."""
  d = config.data
  if user_data:
    return
  base, sep, argument = d.name.partition(":")
  names = [f"{n}:{e.argument}" if e.argument else n for n, e in registry_lib.DATASETS.items()]
  _check(base in registry_lib.DATASETS,
         f"unknown config.data.name {d.name!r}; valid: {', '.join(names)}")
  entry = registry_lib.DATASETS.get(base)
  _check(not (entry.argument and not argument),
         f"config.data.name={d.name}: dataset {base} is named as {base}:{entry.argument}")
  _check(entry.argument or not sep, f"config.data.name={d.name}: dataset {base} takes no argument")
  if entry.argument:
    try:
      entry.check(argument)
    except ValueError as e:
      raise InputError(f"config.data.name={d.name}: {e}") from None
  own = components.section(d, base, entry.hyperparameters)
  unknown = sorted(set(own) - set(entry.hyperparameters))
  _check(not unknown, f"config.data.{base} has fields {unknown} that dataset {base} does not take")


def _validate_models(config, user_model: bool = False) -> None:
  """The training and evaluator models and their settings, from their registry entries."""
  m = config.model
  names = {"model.name": m.name} if not user_model else {}
  evaluator = config.fedseq.evaluator_model
  if evaluator:
    names["fedseq.evaluator_model"] = evaluator
  for path, name in names.items():
    _check(name in registry_lib.MODELS,
           f"unknown config.{path} {name!r}; valid: {', '.join(registry_lib.MODELS)}")
    entry = registry_lib.MODELS.get(name)
    _checked(lambda: model_registry.check_options(
        name, conv_impl=m.conv_impl, compute_dtype=m.compute_dtype,
        hyperparameters=components.section(m, name, entry.hyperparameters)),
        {"compute_dtype": "config.model.compute_dtype", "conv_impl": "config.model.conv_impl"})
  if user_model:
    _check(m.compute_dtype == "float32" and m.conv_impl == "auto",
           "config.model.compute_dtype and config.model.conv_impl apply to registered models; a "
           "model passed to build() computes as it is written: leave them float32 and auto")


def _validate_formation(config, user_model: bool = False) -> None:
  """Grouping x measure x representation x evaluator model, from their declarations."""
  f = config.fedseq
  for seam, name in ((registry_lib.GROUPINGS, f.grouping), (registry_lib.MEASURES, f.measure),
                     (registry_lib.REPRESENTATIONS, f.representation)):
    _check(name in seam, f"unknown config.fedseq.{seam.kind} {name!r}; valid: "
                         f"{', '.join(seam.names())}")
  runs = [config.algorithm.name, *(n.strip() for n in config.compare_with.split(",") if n.strip())]
  if f.superclients_from or all(ALGORITHMS[n].participants != "superclients" for n in runs):
    return
  evaluator = f.evaluator_model or (None if user_model else config.model.name)
  has_classifier = (registry_lib.MODELS.get(evaluator).classifier is not None
                    if evaluator else False)
  label = evaluator or "(the model passed to build)"
  try:
    registry_lib.check_formation(f.grouping, f.measure, f.representation, evaluator=label,
                                 has_classifier=has_classifier,
                                 exemplars=config.data.exemplars_per_class)
  except ValueError as e:
    raise InputError(f"config.fedseq (grouping={f.grouping}, measure={f.measure}, "
                     f"representation={f.representation}, evaluator model {label}): {e}") from None


class Federated(NamedTuple):
  """The loaded data split across clients, with the test exemplars held out."""
  ds: FederatedArrays
  clients: list[np.ndarray]  # training-example indices per client
  kept: np.ndarray           # test examples evaluated on
  exemplars: np.ndarray      # test examples held out as FedSeq's exemplars
  partition: str


def load_federated(config, data: FederatedArrays | None = None) -> Federated:
  """Loads the dataset (or takes `data`), splits it across clients, holds out test exemplars.

  Arrays with client ids are split by them (a natural partition); otherwise
  the config's partition applies.
  """
  d = config.data
  if data is None:
    base = d.name.partition(":")[0]
    entry = registry_lib.DATASETS.get(base)
    ds = _checked(lambda: sources.load_dataset(
        d.name, d.dir, seed=config.seed, **components.section(d, base, entry.hyperparameters)),
        {"data_dir": "config.data.dir"})
  else:
    ds = data
  rng = np.random.default_rng(config.seed)
  if ds.client_ids is not None:
    clients = ds.natural_clients()
    partition = f"natural partition: {len(clients)} clients"
  else:
    clients = _checked(lambda: partition_lib.partition(
        ds.train_labels, d.num_clients, ds.num_classes, alpha=d.alpha, iid=d.iid,
        max_iter=d.max_iter_dirichlet, rebalance=d.rebalance, rng=rng),
        {"num_clients": "config.data.num_clients"})
    partition = f"{len(clients)} clients, " + ("iid" if d.iid else f"alpha={d.alpha}")
    if min(len(c) for c in clients) == 0:
      raise InputError("a client received no data; lower config.data.num_clients or raise "
                       "config.data.alpha")
  kept, exemplars = _checked(lambda: partition_lib.hold_out_exemplars(
      ds.test_labels, ds.num_classes, d.exemplars_per_class, rng),
      {"per_class": "config.data.exemplars_per_class"})
  if len(kept) == 0:
    raise InputError(f"no test examples left after holding out {d.exemplars_per_class} "
                     "exemplars per class; lower config.data.exemplars_per_class")
  return Federated(ds, clients, kept, exemplars, partition)


def build_algorithm(config, trainer, num_clients: int, superclients=None) -> Algorithm:
  """The configured algorithm from its registry entry and its section `config.algorithm.NAME`."""
  name = config.algorithm.name
  setup = registry.Setup(trainer, num_clients, config.client.fraction, config.rounds,
                         server_optimizer(config), superclients, chain_options(config),
                         bank_options(config))
  hp = hyperparameters(config, name)
  return _checked(lambda: registry.ALGORITHMS[name].build(setup, **hp), _section(name, hp))


def load_groups_file(path: str, num_clients: int) -> list[np.ndarray]:
  """Superclient membership from a superclients.json-style file (a study's grouping).

  The file's "superclients" list must cover the run's clients exactly once.
  """
  try:
    with open(path) as fh:
      groups = [np.asarray(s["clients"], np.int64) for s in json.load(fh)["superclients"]]
  except FileNotFoundError:
    raise InputError(f"config.fedseq.superclients_from: {path} does not exist") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InputError(f"config.fedseq.superclients_from: {path} is not a superclients file "
                     f"({type(e).__name__}: {e})") from None
  ids = np.concatenate(groups) if groups else np.zeros(0, np.int64)
  if not all(len(g) for g in groups) or np.sort(ids).tolist() != list(range(num_clients)):
    raise InputError(f"config.fedseq.superclients_from: the groups in {path} do not cover this "
                     f"run's {num_clients} clients exactly once (another partition or K?)")
  return groups


def groups_from_file(config, path: str, fed: Federated) -> tuple[list[np.ndarray], dict]:
  """(groups, summary) read from a grouping file instead of forming them."""
  groups = load_groups_file(path, len(fed.clients))
  f = config.fedseq
  info = formation.summary(groups, superclients_lib.class_counts(fed.ds, fed.clients),
                           np.zeros((len(fed.clients), 0)), grouping="file",
                           source=os.path.abspath(path), max_clients=f.max_clients,
                           min_examples=f.min_examples, formation_s=0.0)
  return groups, info


def _superclients(config, fed: Federated, data: FedData, preprocess: Preprocess, stream,
                  superclients, model) -> tuple[list[np.ndarray], dict]:
  """(groups, summary): from a previous run, a grouping file, or formed now."""
  if superclients is not None:  # resuming: formation is not redone
    return superclients
  if config.fedseq.superclients_from:
    return groups_from_file(config, config.fedseq.superclients_from, fed)
  evaluator = None if config.fedseq.evaluator_model else model  # "": the training model
  try:
    return superclients_lib.form_superclients(config, fed.ds, data, fed.clients, fed.exemplars,
                                              preprocess, stream, evaluator)
  except ValueError as e:  # infeasible constraints, a user grouping's bad output
    raise InputError(f"config.fedseq: {e}") from None


def build(config, stream=None, superclients=None, *, model=None,
          data: FederatedArrays | None = None) -> Experiment:
  """The run of a config; `model` (a flax module) and `data` replace the config's names.

  `superclients`: (groups, summary) from a previous run's superclients.json, or None.
  """
  validate(config, user_model=model is not None, user_data=data is not None)
  fed = load_federated(config, data)
  ds, clients, kept = fed.ds, fed.clients, fed.kept
  participants = ALGORITHMS[config.algorithm.name].participants
  if participants == "pooled":  # one client holding every training example
    clients = [np.concatenate(clients)]
  fed_data = make_fed_data(ds.train_images, ds.train_labels, clients)
  if model is None:
    module, classifier = components.build_model(config, config.model.name, ds.num_classes)
  else:
    module, classifier = model, ()
  preprocess = Preprocess(ds.mean, ds.std, ds.augment and config.data.augment)
  trainer = components.make_trainer(config, module, preprocess, config.client.local_epochs,
                                    ds.image_shape)
  strategy = components.strategy(config, module, ds.image_shape, fed_data)
  info = None
  if participants == "superclients":
    groups, info = _superclients(config, fed, fed_data, preprocess, stream,
                                 superclients, (module, classifier))
    superclients = fedseq_lib.make_superclients(groups, np.asarray(fed_data.client_sizes))
  algorithm = build_algorithm(config, trainer, fed_data.num_clients, superclients)
  k_init = jax.random.split(jax.random.key(config.seed))[0]
  init_params = initialize(module, k_init, ds.train_images)
  name = config.algorithm.name
  if ALGORITHMS[name].full_test_set(**hyperparameters(config, name)):
    kept = np.arange(len(ds.test_labels))  # e.g. the original's centralized run: all of it
  evaluate = make_evaluator(module.apply, preprocess, ds.test_images[kept], ds.test_labels[kept],
                            config.eval_batch_size)
  mesh = (_checked(lambda: make_mesh(config.mesh.num_devices),
                   {"num_devices": "config.mesh.num_devices"}) if strategy == "vmap" else None)
  fed_data = globalize(fed_data, mesh)  # several processes: one global copy, converted once
  round_fn = make_round(algorithm, strategy, mesh, config.engine.chunk, config.client.batch_size)
  if config.engine.client_state == "host":
    if jax.process_count() > 1:
      raise InputError("engine.client_state=host is for single-process runs")
    round_fn = with_host_client_state(algorithm, round_fn)
  return Experiment(config.copy_and_resolve_references(), fed_data, module, algorithm,
                    init_params, strategy, ds.image_shape, fed.partition, info, round_fn, evaluate)


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
