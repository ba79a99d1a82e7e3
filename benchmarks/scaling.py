"""Scaling sweep: clients per round x devices, one JSON line per point.

Run (from the repository root; `python benchmarks/scaling.py` works too):
  python -m benchmarks.scaling --config=configs/fedavg.py --config.data.name=synthetic \
      --config.model.name=mlp --clients_per_round=10,100,1000 --devices=1
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.scaling \
      --config=configs/fedavg.py --config.data.name=synthetic --config.model.name=mlp \
      --clients_per_round=10,100,1000 --devices=1,2 --config.engine.strategy=vmap

Each point uses K = clients per round (C = 1) clients of
`--examples_per_client` synthetic examples, so a round trains
n x examples_per_client examples; devices > 1 shard the round over a mesh
(vmap strategy).
"""

import os
import sys

if __package__ in (None, ""):  # run as a path (python benchmarks/NAME.py): import from the checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # before anything allocates: jemalloc where installed
  from fedjax_seq import allocator
  allocator.reexec_or_exit()

import json

from absl import app, flags
import jax
from ml_collections import config_flags

from benchmarks.timing import quiet_logs, time_rounds
from fedjax_seq.training import experiment as experiment_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_list("clients_per_round", ["10", "100", "1000"], "Cohort sizes.")
flags.DEFINE_list("devices", ["1"], "Mesh sizes (0: all local devices).")
flags.DEFINE_integer("examples_per_client", 100, "Synthetic examples per client.")
flags.DEFINE_integer("rounds", 3, "Timed rounds per point.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  quiet_logs()
  for n in map(int, FLAGS.clients_per_round):
    for d in map(int, FLAGS.devices):
      c = FLAGS.config.copy_and_resolve_references()
      c.data.num_clients, c.client.fraction, c.data.iid = n, 1.0, True
      c.data.synthetic.train_size = n * FLAGS.examples_per_client
      c.mesh.num_devices = d
      exp = experiment_lib.build(c)
      compile_s, steady = time_rounds(exp.round_fn, exp.algorithm.init(exp.init_params), exp.data,
                                      c.seed, FLAGS.rounds)
      examples = c.client.local_epochs * n * FLAGS.examples_per_client
      print(json.dumps({
          "algorithm": c.algorithm.name, "model": c.model.name, "backend": jax.default_backend(),
          "strategy": exp.strategy, "devices": d or len(jax.devices()),
          "clients_per_round": n, "examples_per_round": examples,
          "seconds_per_round": round(steady, 4), "examples_per_sec": round(examples / steady, 1),
          "compile_s": round(compile_s, 2)}), flush=True)


if __name__ == "__main__":
  app.run(main)
