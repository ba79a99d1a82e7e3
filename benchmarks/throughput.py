"""Times steady-state rounds of a config; prints one JSON line.

Run (from the repository root): python benchmarks/throughput.py --config=configs/fedavg.py \
       --config.data.name=synthetic --rounds=3     (or python -m benchmarks.throughput ...)

The round under test uses `config.engine.strategy` (auto: the engine's
per-backend choice). When that is the vmap strategy, it is compared with
the same round run as a plain Python loop of one jitted per-client update:
`loop_seconds_per_round` and `speedup_over_loop_strategy` (loop seconds /
vmap seconds). A round that already is the loop has no comparison.

Efficiency (benchmarks/flops.py): `flops_per_round` (the useful forward and
backward FLOPs of every trained example), `flops_per_s`, the backend's
`peak_flops_per_s` measured in this process by a float32 matmul, and
`fraction_of_peak`; `xla_over_analytic` is XLA's FLOP count of one compiled
gradient step over the analytic count (a cross-check: near 1).

`--split` (algorithms whose participants are clients) adds where the round's
time goes: the model's own gradient steps, each participant's whole local
update as one jitted call, and the round (the rest is sampling, dispatch,
output rows and aggregation).
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
import jax.numpy as jnp
from ml_collections import config_flags

from benchmarks import flops as flops_lib
from benchmarks.timing import quiet_logs, time_rounds
from fedjax_seq import allocator
from fedjax_seq.core.engine import last_batch_size
from fedjax_seq.core.rounds import make_round
from fedjax_seq.data.federated import steps_per_epoch
from fedjax_seq.training import experiment as experiment_lib
from fedjax_seq.training.records import resolved_choices

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_integer("rounds", 3, "Timed rounds after the compile round.")
flags.DEFINE_bool("compare_loop", True, "Also time the per-client loop (vmap strategy only).")
flags.DEFINE_bool("split", False, "Also split the round's time: the model's own gradient steps, "
                  "the participants' local updates, the rest (algorithms whose participants "
                  "are clients).")
flags.mark_flags_as_required(["config"])


def cross_check(config, exp) -> float:
  """XLA's FLOPs of one gradient step of a full batch over the analytic count."""
  shape = (config.client.batch_size,) + tuple(exp.data.images.shape[1:])
  analytic = shape[0] * flops_lib.train_flops_per_example(exp.model, exp.init_params, shape[1:])
  return flops_lib.xla_step_flops(exp.model, exp.init_params, shape) / analytic


def median_s(fn, *args, calls: int = 10) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2]


def split(config, exp, participants: int, round_s: float) -> dict:
  """Where a round's time goes, in seconds per round (the FedAvg family, equal clients).

  model_steps_s: the model's gradient and SGD update alone, on random inputs of
  the schedule's batch sizes, for every step of every participant;
  local_updates_s: each participant's whole local update (schedule, gather,
  augmentation, steps) as one jitted call, times the participants; the rest
  of `round_s` is sampling, dispatch, the outputs' rows and aggregation.
  """
  data, c = exp.data, config.client
  last = last_batch_size(data, local_epochs=c.local_epochs, batch_size=c.batch_size,
                         max_steps=c.max_steps)
  spe = steps_per_epoch(data.max_client_size, c.batch_size)
  sizes = ([c.batch_size] * (spe - 1) + [last]) if last else [c.batch_size] * spe

  @jax.jit
  def step(params, x, y):
    def loss(p):
      logits = exp.model.apply(p, x)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    g = jax.grad(loss)(params)
    return jax.tree.map(lambda w, g: w - c.lr * (g + c.weight_decay * w), params, g)

  model_s = 0.0
  for b in sizes:
    x = jax.random.normal(jax.random.key(b), (b,) + tuple(exp.image_shape))
    model_s += median_s(step, exp.init_params, x, jnp.zeros((b,), jnp.int32))
  state = exp.algorithm.init(jax.tree.map(jnp.copy, exp.init_params))
  update = jax.jit(lambda state, i: exp.algorithm.participant_update(
      state, data, i, jax.random.key(0)))
  update_s = median_s(update, state, jnp.int32(0))
  return {"model_steps_s": round(c.local_epochs * participants * model_s, 4),
          "local_updates_s": round(participants * update_s, 4),
          "round_s": round(round_s, 4), "batch_sizes": sizes}


def main(argv):
  del argv
  quiet_logs()
  config = FLAGS.config
  exp = experiment_lib.build(config)
  # Rounds donate their input state, which may hold the initial parameters themselves.
  init = lambda: exp.algorithm.init(jax.tree.map(jnp.copy, exp.init_params))
  participants, clients, examples = experiment_lib.round_workload(config, exp)
  peak = flops_lib.peak_flops_per_s()
  compile_s, steady = time_rounds(exp.round_fn, init(), exp.data, config.seed, FLAGS.rounds)
  out = {
      "algorithm": config.algorithm.name, "model": config.model.name,
      "dataset": config.data.name, "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind, **resolved_choices(config, exp),
      "allocator": allocator.active(),
      "clients_per_round": round(clients, 1),
      "examples_per_round": round(examples, 1),
      "seconds_per_round": round(steady, 4),
      "examples_per_sec": round(examples / steady, 1), "compile_s": round(compile_s, 2),
      **flops_lib.efficiency(flops_lib.round_flops(config, exp, examples), steady, peak),
      "xla_over_analytic": round(cross_check(config, exp), 4),
  }
  if FLAGS.split and exp.superclients is None:
    out["split"] = split(config, exp, participants, steady)
  if FLAGS.compare_loop and exp.strategy != "loop":
    loop = make_round(exp.algorithm, "loop", batch_size=config.client.batch_size)
    _, loop_s = time_rounds(loop, init(), exp.data, config.seed, FLAGS.rounds)
    out["loop_seconds_per_round"] = round(loop_s, 4)
    out["speedup_over_loop_strategy"] = round(loop_s / steady, 3)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
