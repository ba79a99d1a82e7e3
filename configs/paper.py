"""The paper's Table I grid: one preset per (algorithm, dataset), alpha swept separately.

Select a preset with the config-file argument, ALGORITHM,DATASET:

  python main.py --config=configs/paper.py:fedseq,cifar10 --workdir=runs/paper/fedseq_cifar10

ALGORITHM is any registered algorithm (fedjax_seq/algorithms/registry.py:
fedavg fairavg fedprox scaffold feddyn fedseq fedseq_prox fedseq_dyn
fedseq_scaffold fedseq_inter fedseq_inter_prox fedseq_inter_dyn
fedseq_inter_scaffold centralized), DATASET is cifar10 (10,000 rounds) or
cifar100 (20,000 rounds); evaluation every 100 rounds. The algorithm's own
file in configs/ supplies its fields where it has one; its section
config.algorithm.ALGORITHM holds its paper values (e.g. FedSeqInter+Prox's
mu = 1). The alpha
dimension {0, 0.2, 0.5} and the seeds are swept with the sweep tool, one
workdir per point:

  python -m fedjax_seq.sweep --config=configs/paper.py:fedseq,cifar10 \
      --sweep=config.data.alpha=0,0.2,0.5 --workdir=runs/paper/fedseq_cifar10
  python -m fedjax_seq.sweep --config=configs/paper.py:fedavg,cifar100 \
      --sweep=config.data.alpha=0,0.2,0.5 --sweep=config.seed=0,1,2 \
      --workdir=runs/paper/fedavg_cifar100 --emit=slurm

The whole table is this for every algorithm and both datasets, e.g.

  for a in fedavg fedprox scaffold feddyn fedseq fedseq_inter fedseq_prox fedseq_dyn \
      fedseq_inter_prox fedseq_inter_dyn; do for d in cifar10 cifar100; do
    python -m fedjax_seq.sweep --config=configs/paper.py:$a,$d \
        --sweep=config.data.alpha=0,0.2,0.5 --workdir=runs/paper/${a}_$d --emit=slurm
  done; done

`centralized` keeps its own length (configs/centralized.py: one "round" is
an epoch over the whole training set), since 10,000 epochs is not the
paper's upper bound.

By default a preset reproduces the published code: every switch of the
table in docs/paper.md ("The paper and the published code") is set to the code's
behaviour (FedSeqInter's shared bank until the first reset, FedDyn's
original client, augmented exemplars, dropout with replacement, cosine lr
and full test set for centralized). Optional further parts:

  described   the algorithms as the paper describes them (the library's
              defaults), e.g. configs/paper.py:fedseq_inter,cifar10,described
  es2, es4    the E_S ablation (FedSeq family): sequential_rounds 2 with
              half the rounds, or 4 with a quarter, e.g.

  python -m fedjax_seq.sweep --config=configs/paper.py:fedseq,cifar10,es2 \
      --sweep=config.data.alpha=0,0.2,0.5 --workdir=runs/paper/fedseq_cifar10_es2
"""

import importlib
import os

from configs import default
from fedjax_seq.algorithms import registry
from fedjax_seq.errors import InputError

ROUNDS = {"cifar10": 10000, "cifar100": 20000}
EVAL_EVERY = 100


class PresetError(InputError, OSError):
  """A bad preset name.

  It is an OSError too because ml_collections defers only OSErrors raised
  while loading a config file to the config's first use, where main.py and
  the sweep turn them into a one-line `error:`; any other exception would
  surface as a flag-parsing traceback.
  """


def algorithms() -> list[str]:
  """The algorithm names, from the registry."""
  return sorted(registry.ALGORITHMS)


def algorithm_config(name: str):
  """configs/NAME.py's config, or the default config with algorithm.name = NAME."""
  if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")):
    return importlib.import_module(f"configs.{name}").get_config()
  c = default.get_config()
  c.algorithm.name = name
  return c


# E_S ablation: sequential_rounds -> divisor of the dataset's rounds.
SEQUENTIAL = {"es2": 2, "es4": 4}
OPTIONS = ("described", *SEQUENTIAL)


def published_code(c) -> None:
  """Sets every documented switch to the published code's behaviour (in place)."""
  for name in ("feddyn", "fedseq_dyn", "fedseq_inter_dyn", "centralized"):
    c.algorithm[name].variant = "original"
  c.fedseq.inter_variant = "original"
  c.fedseq.dropout_variant = "original"
  c.fedseq.augment_exemplars = True


def get_config(preset: str = ""):
  usage = (f"use configs/paper.py:ALGORITHM,DATASET[,OPTION...] with ALGORITHM one of "
           f"{', '.join(algorithms())}, DATASET one of {', '.join(ROUNDS)} and OPTION one of "
           f"{', '.join(OPTIONS)}")
  parts = [p.strip() for p in preset.split(",")]
  if len(parts) < 2 or not all(parts):
    raise PresetError(f"configs/paper.py needs a preset, got {preset!r}; {usage}")
  algorithm, dataset, options = parts[0], parts[1], parts[2:]
  if algorithm not in algorithms():
    raise PresetError(f"unknown algorithm {algorithm!r} in configs/paper.py:{preset}; {usage}")
  if dataset not in ROUNDS:
    raise PresetError(f"unknown dataset {dataset!r} in configs/paper.py:{preset}; the "
                      f"paper's Table I uses {' and '.join(ROUNDS)}")
  for option in options:
    if option not in OPTIONS:
      raise PresetError(f"unknown option {option!r} in configs/paper.py:{preset}; {usage}")
  es = [o for o in options if o in SEQUENTIAL]
  participants = registry.ALGORITHMS[algorithm].participants
  if len(es) > 1 or (es and participants != "superclients"):
    raise PresetError(f"configs/paper.py:{preset}: the E_S options (es2, es4) are for the "
                      "FedSeq family only, one at a time")
  c = algorithm_config(algorithm)
  c.data.name = dataset
  if participants != "pooled":  # centralized keeps its own length
    c.rounds = ROUNDS[dataset]
    c.eval_every = EVAL_EVERY
  if "described" not in options:
    published_code(c)
  if es:
    c.fedseq.sequential_rounds = SEQUENTIAL[es[0]]
    c.rounds //= SEQUENTIAL[es[0]]
  return c
