"""One registry: an algorithm's name -> how to build it and its own config section.

`ALGORITHMS` is the one list of algorithm names: experiment.py builds from
it, `default_config()` makes one section per entry (`config.algorithm.NAME`,
the entry's hyperparameters with their paper defaults, as big_vision's
per-model kwargs), `configs/paper.py`, `main.py --help`, the CLI's
validation, the tests and the documentation read it. An algorithm is built as

  entry.build(setup, **config.algorithm.NAME)

where `setup` holds what every algorithm is built over (the local trainer,
K, C, the server optimizer, FedSeq's superclients and chain options).
`entry.check(**hyperparameters)` runs before any data is loaded and raises
ValueError for a bad value (the CLI names the config field).

Adding an algorithm is one module and one line here (or a `register` call in
your own module, e.g. from your config file: see docs/algorithms.md, "Adding an
algorithm"). Importing this module is cheap (no JAX): config files read it.
"""

import importlib
from typing import Any, Callable, NamedTuple

PARTICIPANTS = ("clients", "superclients", "pooled")


class Setup(NamedTuple):
  """What the experiment builds for every algorithm from the shared config sections."""
  trainer: Any            # core.engine.LocalTrainer (config.client)
  num_clients: int        # K
  fraction: float         # C
  rounds: int
  server_optimizer: Any   # an optax transform or None (config.server; core/server.py)
  superclients: Any = None  # participants="superclients": fedseq.Superclients
  chain: dict = {}        # FedSeq family: sequential_rounds, shuffle, dropout, dropout_variant
  bank: dict = {}         # FedSeqInter: period, variant (config.fedseq)


class Entry(NamedTuple):
  """One algorithm: its builder, its hyperparameters (config section), what it trains on.

  build(setup, **hyperparameters) -> core.rounds.Algorithm.
  hyperparameters: its config section `config.algorithm.NAME`, every field
    with its default.
  participants: "clients" (one row per client), "superclients" (FedSeq:
    superclients are formed first) or "pooled" (one client holding all data).
  check(**hyperparameters): raises ValueError for a bad value before any data
    is loaded; returns the entry's client rule, if it has one (so the CLI can
    refuse a local optimizer the rule does not take).
  server_step: whether it takes a server optimizer.
  full_test_set(**hyperparameters): whether it is evaluated on the whole test
    set, FedSeq's held-out exemplars included (the original's centralized run).
  """
  build: Callable[..., Any]
  hyperparameters: dict = {}
  participants: str = "clients"
  check: Callable[..., Any] = lambda **hyperparameters: None
  server_step: bool = True
  full_test_set: Callable[..., bool] = lambda **hyperparameters: False


def _rule(rule: str | Callable[..., Any], hyperparameters: dict):
  """rule(**hyperparameters) for a rule constructor given as itself, as "package.module:name",
  or by its name in algorithms/rules.py (modules are imported on first use, so this module
  stays JAX-free)."""
  if callable(rule):
    return rule(**hyperparameters)
  module, _, name = rule.rpartition(":")
  constructor = getattr(importlib.import_module(module or "fedjax_seq.algorithms.rules"), name)
  return constructor(**hyperparameters)


def averaging(rule: str | Callable[..., Any], weighting: str = "size",
              **hyperparameters) -> Entry:
  """`fedavg.fedavg` with a client rule and a weighting ("size" or "uniform").

  `rule` is a rule constructor (called with the hyperparameters), or where to
  find one: "package.module:name", or a name in algorithms/rules.py.
  """

  def build(setup: Setup, **hp):
    from fedjax_seq.algorithms.fedavg import fedavg  # pylint: disable=import-outside-toplevel
    return fedavg(setup.trainer, setup.num_clients, setup.fraction, rule=_rule(rule, hp),
                  weighting=weighting, server_optimizer=setup.server_optimizer)

  return Entry(build, hyperparameters, check=lambda **hp: _rule(rule, hp))


def sequential(rule: str | Callable[..., Any], inter: bool = False, **hyperparameters) -> Entry:
  """FedSeq (or FedSeqInter) whose members train under a client rule (as in `averaging`)."""

  def build(setup: Setup, **hp):
    from fedjax_seq.algorithms import fedseq, fedseq_inter  # pylint: disable=import-outside-toplevel
    args = (setup.trainer, setup.superclients, setup.num_clients, setup.fraction)
    kwargs = dict(rule=_rule(rule, hp), server_optimizer=setup.server_optimizer, **setup.chain)
    if inter:
      return fedseq_inter.fedseq_inter(*args, **setup.bank, **kwargs)
    return fedseq.fedseq(*args, **kwargs)

  return Entry(build, hyperparameters, "superclients", check=lambda **hp: _rule(rule, hp))


def _centralized(setup: Setup, variant: str):
  from fedjax_seq.algorithms import centralized  # pylint: disable=import-outside-toplevel
  return centralized.baseline(setup.trainer, rounds=setup.rounds, variant=variant)


def _check_centralized(variant: str) -> None:
  from fedjax_seq.algorithms import centralized  # pylint: disable=import-outside-toplevel
  centralized.check_variant(variant)


ALGORITHMS: dict[str, Entry] = {
    "fedavg": averaging("plain"),
    "fairavg": averaging("plain", "uniform"),
    "fedprox": averaging("prox", mu=0.01),
    "scaffold": averaging("scaffold", control="gradient"),
    "feddyn": averaging("dyn", "uniform", alpha=0.1, variant="paper"),
    "fedseq": sequential("plain"),
    "fedseq_prox": sequential("prox", mu=0.01),
    "fedseq_dyn": sequential("dyn", alpha=0.1, variant="paper"),
    "fedseq_scaffold": sequential("scaffold", control="gradient"),
    "fedseq_inter": sequential("plain", inter=True),
    "fedseq_inter_prox": sequential("prox", inter=True, mu=1.0),
    "fedseq_inter_dyn": sequential("dyn", inter=True, alpha=1.0, variant="paper"),
    "fedseq_inter_scaffold": sequential("scaffold", inter=True, control="gradient"),
    "centralized": Entry(_centralized, {"variant": "paper"}, "pooled", _check_centralized,
                         server_step=False,
                         full_test_set=lambda variant: variant == "original"),
}


BUILTIN = frozenset(ALGORITHMS)


def register(name: str, entry: Entry) -> Entry:
  """Adds an algorithm (before `default_config()` is called, so it gets its config section).

  Registering a name again replaces it (a config file may be loaded twice);
  ValueError for a built-in name or a bad entry.
  """
  if name in BUILTIN:
    raise ValueError(f"algorithm {name!r} is built in; register yours under another name")
  if entry.participants not in PARTICIPANTS:
    raise ValueError(f"unknown participants {entry.participants!r}; valid: "
                     f"{', '.join(PARTICIPANTS)}")
  ALGORITHMS[name] = entry
  return entry
