"""Times steady-state rounds of a config; prints one JSON line.

Run (from the repository root): python benchmarks/throughput.py --config=configs/fedavg.py \
       --config.data.name=synthetic --rounds=3     (or python -m benchmarks.throughput ...)

The round under test uses `config.engine.strategy` (auto: the engine's
per-backend choice). When that is the vmap strategy, it is compared with
the same round run as a plain Python loop of one jitted per-client update:
`loop_seconds_per_round` and `speedup_over_loop_strategy` (loop seconds /
vmap seconds). A round that already is the loop has no comparison.
"""

import os
import sys

if __package__ in (None, ""):  # run as a path (python benchmarks/NAME.py): import from the checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from benchmarks.timing import quiet_logs, time_rounds
from fedjax_seq.core.rounds import make_round
from fedjax_seq.training import experiment as experiment_lib
from fedjax_seq.training.train import resolved_choices

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_integer("rounds", 3, "Timed rounds after the compile round.")
flags.DEFINE_bool("compare_loop", True, "Also time the per-client loop (vmap strategy only).")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  quiet_logs()
  config = FLAGS.config
  exp = experiment_lib.build(config)
  # Rounds donate their input state, which may hold the initial parameters themselves.
  init = lambda: exp.algorithm.init(jax.tree.map(jnp.copy, exp.init_params))
  _, clients, examples = experiment_lib.round_workload(config, exp)
  compile_s, steady = time_rounds(exp.round_fn, init(), exp.data, config.seed, FLAGS.rounds)
  out = {
      "algorithm": config.algorithm.name, "model": config.model.name,
      "dataset": config.data.name, "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind, **resolved_choices(config, exp),
      "clients_per_round": round(clients, 1),
      "examples_per_round": round(examples, 1),
      "seconds_per_round": round(steady, 4),
      "examples_per_sec": round(examples / steady, 1), "compile_s": round(compile_s, 2),
  }
  if FLAGS.compare_loop and exp.strategy != "loop":
    _, loop_s = time_rounds(make_round(exp.algorithm, "loop"), init(), exp.data, config.seed,
                            FLAGS.rounds)
    out["loop_seconds_per_round"] = round(loop_s, 4)
    out["speedup_over_loop_strategy"] = round(loop_s / steady, 3)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
