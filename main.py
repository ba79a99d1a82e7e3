"""Runs one experiment: python main.py --config=configs/fedseq.py --workdir=DIR.

Flags live here only; everything else is in fedjax_seq.training.
"""

import difflib
import glob
import importlib.util
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
import ml_collections
from ml_collections import config_flags

from fedjax_seq import allocator, cli

ROOT = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for config.json, metrics and checkpoints.")
flags.DEFINE_bool("show_config", False, "Print the resolved config (as JSON) and exit.")
flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")

HELP = """Runs one experiment (FedSeq or a baseline) in a workdir; rerun to resume.

usage: python main.py --config=configs/NAME.py --workdir=DIR [--config.FIELD=VALUE ...]
       python main.py --config=configs/NAME.py [--config.FIELD=VALUE ...] --show_config

config files (configs/): {configs}
  configs/paper.py takes a preset: --config=configs/paper.py:ALGORITHM,DATASET
algorithms (--config.algorithm.name=): {algorithms}
models (--config.model.name=, --config.fedseq.evaluator_model=): {models}
datasets (--config.data.name=): {datasets}
groupings (--config.fedseq.grouping=): {groupings}
measures (--config.fedseq.measure=): {measures}
representations (--config.fedseq.representation=): {representations}
  your own: register them in a module your config file imports (docs/bring_your_own.md)
config fields: every field, its default and what it means is in fedjax_seq/api.py
  (default_config; the field reference, docs/config_fields.md); --show_config prints a
  config's resolved fields; override any with --config.FIELD=VALUE,
  e.g. --config.client.lr=0.05 --config.data.alpha=0.2

flags:
{flags}"""


def config_files() -> list[str]:
  """The config files shipped in configs/, as --config values."""
  return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                if not p.endswith("__init__.py"))


def print_help() -> None:
  """--help: usage, the config files, the algorithms, where the fields are, the flags."""
  from fedjax_seq import registry
  from fedjax_seq.algorithms.registry import ALGORITHMS
  datasets = [f"{n}:{e.argument}" if e.argument else n for n, e in registry.DATASETS.items()]
  print(HELP.format(configs=" ".join(config_files()), algorithms=" ".join(ALGORITHMS),
                    models=" ".join(registry.MODELS), datasets=" ".join(datasets),
                    groupings=" ".join(registry.GROUPINGS), measures=" ".join(registry.MEASURES),
                    representations=" ".join(registry.REPRESENTATIONS),
                    flags=FLAGS.module_help(sys.modules[__name__])))


def _config_error(config_arg: str, error: Exception | None = None) -> str:
  """Why --config=PATH[:PRESET] does not load, with the file the user probably meant."""
  path = config_arg.split(":")[0]
  if not os.path.isfile(path):
    known = config_files()
    guess = path + ".py" if os.path.isfile(path + ".py") else next(iter(
        difflib.get_close_matches(os.path.relpath(os.path.abspath(path), ROOT), known, n=1)), None)
    return (f"cannot load --config: {path} does not exist" +
            (f"; did you mean {guess}?" if guess else f"; config files: {' '.join(known)}"))
  return f"cannot load --config {path}: {cli.config_error(error)}"


def _load_config(config_arg: str) -> ml_collections.ConfigDict:
  """The config --config=PATH[:PRESET] names, loaded as config_flags does, without overrides."""
  path, _, preset = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def _unknown_field(config: ml_collections.ConfigDict, argv) -> str | None:
  """The first --config.FIELD override that names no field, as a one-line message."""
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    path = arg[2:].split("=", 1)[0].split(".")[1:]
    node = config
    for i, name in enumerate(path):
      if isinstance(node, ml_collections.ConfigDict) and name in node.keys():
        node = node[name]
        continue
      parent = "config." + "".join(p + "." for p in path[:i])
      if not isinstance(node, ml_collections.ConfigDict):
        return f"{parent[:-1]} is a value, not a group of fields: {arg} names no field"
      close = difflib.get_close_matches(name, list(node.keys()), n=1)
      return (f"unknown config field {parent}{name}" +
              (f"; did you mean {parent}{close[0]}?" if close else
               f"; the fields of {parent[:-1]} are {', '.join(sorted(node.keys()))}"))
  return None


def _explain_bad_flags(argv) -> str | None:
  """A one-line reason for a failed parse: a config file that does not load, or a bad field."""
  config_arg = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if config_arg is None:
    return None
  try:
    config = _load_config(config_arg)
  except Exception as e:  # whatever the config file raises is the user's to fix
    return _config_error(config_arg, e)
  return _unknown_field(config, argv)


def parse_flags(argv):
  """absl parsing, with bad flags (e.g. a misspelt override) as one line; --help exits 0."""
  if any(a in ("-h", "--help", "-help", "--helpshort", "-?") for a in argv[1:]):
    print_help()
    sys.exit(0)
  return cli.parse_flags(FLAGS, argv, _explain_bad_flags)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.config is None:
    cli.fail("--config is required, e.g. --config=configs/fedseq.py (see --help)")
  try:
    config = FLAGS.config
    config.seed  # config_flags defers a config file's load error to first use.
  except OSError as e:
    cli.fail(_config_error(FLAGS["config"].config_filename, e))
  if FLAGS.show_config:
    from fedjax_seq.training.experiment import validate
    cli.run(lambda: validate(config))
    print(config.to_json(indent=2, sort_keys=True))
    return
  if not FLAGS.workdir:
    cli.fail("--workdir is required (or use --show_config to print the config)")
  # JAX and orbax log progress at INFO; the run prints its own.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  from fedjax_seq.core.sharding import initialize_distributed
  from fedjax_seq.training.train import Interrupted, train_and_evaluate
  cli.run(lambda: initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                         FLAGS.process_id), code=2)
  try:
    cli.run(lambda: train_and_evaluate(config, FLAGS.workdir))
  except Interrupted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(130)
  except KeyboardInterrupt:  # outside the round loop (e.g. superclient formation)
    print("interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
    sys.exit(130)


if __name__ == "__main__":
  allocator.reexec_or_exit()
  app.run(main, flags_parser=parse_flags)
