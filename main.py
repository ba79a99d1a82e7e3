"""Runs one experiment: python main.py --config=configs/fedseq.py --workdir=DIR.

Flags live here only; everything else is in fedjax_seq.training.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from fedjax_seq.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for config.json, metrics and checkpoints.")
flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """absl parsing, with bad flags (e.g. a misspelt override) as one line."""
  try:
    return FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    _fail(f"invalid flags: {e}")


def _fail(message: str):
  message = " ".join(message.replace("\\n", " ").replace("\\'", "").split())
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # JAX and orbax log progress at INFO; the run prints its own.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  from fedjax_seq.core.sharding import initialize_distributed
  from fedjax_seq.training.train import train_and_evaluate
  try:
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except UserError as e:
    _fail(str(e))
  config = FLAGS.config
  try:
    config.seed  # config_flags defers a config file's load error to first use.
  except OSError as e:
    _fail(f"cannot load --config: {e}")
  try:
    train_and_evaluate(config, FLAGS.workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
