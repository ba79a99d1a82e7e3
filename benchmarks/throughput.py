"""Times steady-state rounds of a config; prints one JSON line.

Run (from the repository root): python -m benchmarks.throughput --config=configs/fedavg.py \
       --config.data.name=synthetic --rounds=3

The round under test uses `config.engine.strategy` (auto: the engine's
per-backend choice); it is compared with the same round run as a plain
Python loop of one jitted per-client update (`speedup_vs_loop`).
"""

import json

from absl import app, flags
import jax
from ml_collections import config_flags

from benchmarks.timing import time_rounds
from fedjax_seq.core import engine
from fedjax_seq.core.rounds import make_round
from fedjax_seq.models import uses_lax_conv
from fedjax_seq.training import experiment as experiment_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_integer("rounds", 3, "Timed rounds after the compile round.")
flags.DEFINE_bool("compare_loop", True, "Also time the per-client loop baseline.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  config = FLAGS.config
  exp = experiment_lib.build(config)
  init = lambda: exp.algorithm.init(exp.init_params)  # rounds donate their input state
  n, clients, examples = experiment_lib.round_workload(config, exp)
  compile_s, steady = time_rounds(exp.round_fn, init(), exp.data, config.seed, FLAGS.rounds)
  out = {
      "algorithm": config.algorithm.name, "model": config.model.name,
      "dataset": config.data.name, "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind, "strategy": exp.strategy,
      "conv_impl": getattr(exp.model, "conv_impl", None),
      "unroll": str(engine.resolve_unroll(config.engine.unroll, uses_lax_conv(exp.model))),
      "participants_per_round": n, "clients_per_round": round(clients, 1),
      "examples_per_round": round(examples, 1),
      "seconds_per_round": round(steady, 4),
      "examples_per_sec": round(examples / steady, 1), "compile_s": round(compile_s, 2),
  }
  if FLAGS.compare_loop:
    _, loop_s = time_rounds(make_round(exp.algorithm, "loop"), init(), exp.data, config.seed,
                            FLAGS.rounds)
    out["loop_seconds_per_round"] = round(loop_s, 4)
    out["speedup_vs_loop"] = round(loop_s / steady, 3)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
