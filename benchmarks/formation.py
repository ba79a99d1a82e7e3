"""Times FedSeq's client evaluation (pre-training) per client, vectorized vs one at a time.

Run (from the repository root; `python benchmarks/formation.py` works too):
  python -m benchmarks.formation --config=configs/fedseq.py --config.data.name=synthetic \
      --clients=50 --strategies=vmap,loop

Pre-trains the first `--clients` clients with each strategy (chunks of
`config.fedseq.pretrain_chunk` vmapped clients, or a loop of one jitted
client update), after one compile, and prints one JSON line per strategy
with seconds per client and the projection to all K clients, and the
useful FLOPs of one client's evaluation (its pre-training epochs' forward
and backward, and the forward pass over the exemplars it scores) against
the backend's measured matmul peak (benchmarks/flops.py).
"""

import os
import sys

if __package__ in (None, ""):  # run as a path (python benchmarks/NAME.py): import from the checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # before anything allocates: jemalloc where installed
  from fedjax_seq import allocator
  allocator.reexec_or_exit()

import json
import time

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

from benchmarks import flops as flops_lib
from benchmarks.timing import quiet_logs
from fedjax_seq.data.federated import Preprocess, make_fed_data
from fedjax_seq.models import initialize
from fedjax_seq.superclients import formation
from fedjax_seq.training import components
from fedjax_seq.training import experiment as experiment_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_integer("clients", 50, "Clients timed per strategy.")
flags.DEFINE_list("strategies", ["vmap", "loop"], "Strategies to time.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  quiet_logs()
  config = FLAGS.config
  experiment_lib.validate(config)
  fed = experiment_lib.load_federated(config)
  ds, clients, exemplars = fed.ds, fed.clients, fed.exemplars
  f = config.fedseq
  evaluator = components.model_name(config, "evaluator")
  model, _ = components.build_model(config, evaluator, ds.num_classes)
  preprocess = Preprocess(ds.mean, ds.std, ds.augment and config.data.augment)
  shape = ds.image_shape
  trainer = components.make_trainer(config, model, preprocess, f.pretrain_epochs, shape)
  init = initialize(model, jax.random.key(0), ds.train_images)
  flops_per_client = (
      f.pretrain_epochs * np.mean([len(c) for c in clients])
      * flops_lib.train_flops_per_example(model, init, shape)
      + len(exemplars) * flops_lib.forward_flops_per_example(model, init, shape))
  peak = flops_lib.peak_flops_per_s()
  for strategy in FLAGS.strategies:
    chunk = min(f.pretrain_chunk, FLAGS.clients)
    warm = make_fed_data(ds.train_images, ds.train_labels, clients[:chunk])
    t = time.perf_counter()
    jax.block_until_ready(formation.pretrain(trainer, init, warm, jax.random.key(1),
                                             strategy=strategy, chunk=chunk))
    compile_s = time.perf_counter() - t
    data = make_fed_data(ds.train_images, ds.train_labels, clients[:FLAGS.clients])
    t = time.perf_counter()
    jax.block_until_ready(formation.pretrain(trainer, init, data, jax.random.key(2),
                                             strategy=strategy, chunk=chunk))
    per_client = (time.perf_counter() - t) / FLAGS.clients
    print(json.dumps({
        "strategy": strategy, "backend": jax.default_backend(), "evaluator": evaluator,
        "pretrain_epochs": f.pretrain_epochs, "chunk": chunk, "clients_timed": FLAGS.clients,
        "first_chunk_s_incl_compile": round(compile_s, 2),
        "seconds_per_client": round(per_client, 4),
        "projected_s_for_all_clients": round(per_client * len(clients), 1),
        "num_clients": len(clients),
        **flops_lib.efficiency(flops_per_client, per_client, peak, "client")}), flush=True)


if __name__ == "__main__":
  app.run(main)
