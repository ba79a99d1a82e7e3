"""Runs one experiment: python main.py --config=configs/fedseq.py --workdir=DIR.

Flags live here only; everything else is in fedjax_seq.training.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from fedjax_seq.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for config.json, metrics and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from fedjax_seq.training.train import train_and_evaluate
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
