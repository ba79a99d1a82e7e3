"""Timing of steady-state rounds, shared by the benchmarks (defines no flags)."""

import logging
import time

from absl import logging as absl_logging
import jax

from fedjax_seq.training import experiment as experiment_lib


def time_rounds(round_fn, state, data, seed, rounds):
  """(compile+first-round seconds, median steady-state seconds per round)."""
  t = time.perf_counter()
  state, _ = round_fn(state, data, experiment_lib.round_key(seed, 0))
  jax.block_until_ready(state)
  first = time.perf_counter() - t
  times = []
  for r in range(1, rounds + 1):
    t = time.perf_counter()
    state, _ = round_fn(state, data, experiment_lib.round_key(seed, r))
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  steady = sorted(times)[len(times) // 2]
  return first - steady, steady


def quiet_logs() -> None:
  """Drops JAX's INFO lines (e.g. the TPU probe's "Unable to initialize backend 'tpu'")."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
