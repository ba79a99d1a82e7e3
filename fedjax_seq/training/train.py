"""The round loop: train, evaluate, checkpoint, resume, write metrics.

Rerunning the same command on the same workdir resumes from the latest
checkpoint and continues exactly (round keys are fold_in(root, round), the
state is restored bit for bit, superclients are read back from
superclients.json). A config may differ from the workdir's only in
`records.RESUMABLE_CHANGES`. One run at a time per workdir: an OS lock on
WORKDIR/.lock (workdir.WorkdirLock) is held from before anything is read or
written until the run ends.
"""

import contextlib
import io
import json
import math
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_seq import files
from fedjax_seq.core.sharding import localize
from fedjax_seq.errors import InputError
from fedjax_seq.training import experiment as experiment_lib
from fedjax_seq.training import records as records_lib
from fedjax_seq.training.checkpoint import Checkpointer
from fedjax_seq.training.progress import Progress
from fedjax_seq.training.workdir import lock_workdir


class Interrupted(KeyboardInterrupt):
  """Ctrl-C in the round loop, saying where the run stands (main.py prints it)."""

  def __init__(self, round_index: int, checkpoint: int | None):
    self.round, self.checkpoint = round_index, checkpoint
    where = (f"last checkpoint at round {checkpoint}; rerun the same command to resume"
             if checkpoint is not None else "no checkpoint yet; rerun the same command to start again")
    super().__init__(f"interrupted after round {round_index}; {where}")


@contextlib.contextmanager
def _deferred_ctrl_c():
  """Turns the first Ctrl-C into a flag the round loop checks between rounds.

  A KeyboardInterrupt raised inside orbax, TensorBoard's writer or a JAX
  call can leave their locks held (closing the writer then hangs), so the
  loop stops at a round boundary instead. A second Ctrl-C interrupts at
  once. Outside the main thread signals cannot be handled: nothing changes.
  """
  requested = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield requested
    return

  def handler(signum, frame):
    if requested.is_set():
      raise KeyboardInterrupt
    requested.set()

  previous = signal.signal(signal.SIGINT, handler)
  try:
    yield requested
  finally:
    signal.signal(signal.SIGINT, previous)


@jax.jit
def _finite(leaves: list[jax.Array]) -> jax.Array:
  """One call and one host read for all device leaves, not one per leaf."""
  return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all()


def _all_finite(tree) -> bool:
  """Checked where each leaf lives: host-resident client state is not copied over,
  and sharded state is reduced across processes before it is read."""
  leaves = jax.tree.leaves(tree)
  host = [x for x in leaves if isinstance(x, np.ndarray)]
  device = [x for x in leaves if not isinstance(x, np.ndarray)]
  return (all(bool(np.isfinite(x).all()) for x in host)
          and (not device or bool(localize(_finite(device)))))


def _diverged(r: int, first_bad: int | None):
  return InputError(f"training diverged at round {first_bad or r} (non-finite loss or "
                    "parameters); the last good checkpoint is kept; lower config.client.lr or "
                    "the algorithm's mu/alpha")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stream=None) -> list[dict]:
  """Runs (or resumes) `config.rounds` rounds; returns every evaluation record.

  Evaluates on the exemplar-reduced test set every `config.eval_every`
  rounds and at the last round, appending to `workdir/metrics.jsonl`;
  checkpoints every `config.checkpoint_every` rounds and at the end. A
  non-finite loss or parameter stops the run with an InputError naming the
  round; no non-finite state is ever checkpointed. The workdir is locked
  for the whole run (InputError if another run holds it) and every start
  appends its resolved choices and environment to `workdir/run.json`.
  Ctrl-C in the round loop stops it after the round in progress (a second
  Ctrl-C at once) and raises `Interrupted` (a KeyboardInterrupt) naming the
  last round and checkpoint.
  """
  stream = stream or sys.stderr
  experiment_lib.validate(config)
  files.check_directory(workdir)
  lock = lock_workdir(workdir)
  try:
    resuming = records_lib.previous_config(workdir, config) is not None
    loaded = records_lib.load_groups(workdir) if resuming else None
    exp = experiment_lib.build(config, stream, superclients=loaded)
    try:
      os.makedirs(workdir, exist_ok=True)
      checkpointer = Checkpointer(workdir)
    except OSError as e:
      raise InputError(f"cannot write to workdir {workdir}: {e.strerror}") from None
    try:
      return _Run(config, workdir, exp, checkpointer, stream)(write_superclients=loaded is None)
    finally:
      checkpointer.close()
  finally:
    if lock is not None:
      lock.release()


class _Run:
  """One start of a run in its workdir: restore, loop, evaluate, save."""

  def __init__(self, config, workdir: str, exp, checkpointer: Checkpointer, stream):
    self.config, self.workdir, self.exp, self.checkpointer = config, workdir, exp, checkpointer
    self.primary = jax.process_index() == 0  # with several processes, process 0 writes
    self.stream = stream if self.primary else io.StringIO()  # the others stay quiet
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")

  def restore(self):
    """(state, first round to run, pending losses, elapsed seconds) from the last checkpoint."""
    state = self.exp.algorithm.init(self.exp.init_params)
    latest = self.checkpointer.latest()
    if latest is None:
      return state, 0, [], 0.0
    state, meta = self.checkpointer.restore(latest, state)
    return state, latest, list(meta["pending_losses"]), float(meta["elapsed_s"])

  def write_start(self, start: int, write_superclients: bool) -> list[dict]:
    """config.json, superclients.json and metrics.jsonl up to `start`; the kept records.

    Written only once the previous state (if any) has been read back.
    """
    records = records_lib.read_records(self.metrics_path, start)
    if self.primary:
      files.write_atomic(os.path.join(self.workdir, "config.json"),
                         self.config.to_json(indent=2, sort_keys=True))
      if self.exp.superclients is not None and write_superclients:
        files.write_atomic(os.path.join(self.workdir, "superclients.json"),
                           json.dumps(self.exp.superclients))
      files.write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))
    return records

  def announce(self, start: int) -> None:
    """run.json's entry for this start, and the start-up line."""
    config, exp = self.config, self.exp
    info = records_lib.run_info(config, exp, start)
    if self.primary:
      records_lib.append_run_info(os.path.join(self.workdir, "run.json"), info)
    print(f"fedjax_seq: {config.algorithm.name} on {config.data.name} ({exp.partition}), model "
          f"{config.model.name}, backend {jax.default_backend()}, strategy {exp.strategy}, "
          f"{info['participants_per_round']} {info['participants']} per round" +
          (f"; resuming after round {start}" if start else ""), file=self.stream, flush=True)

  def evaluate(self, r: int, state, losses: list[float], elapsed: float, since) -> dict:
    """Round r's evaluation record (appended to metrics.jsonl and TensorBoard)."""
    accuracy, loss = self.exp.evaluate_params(localize(state.params))
    if not math.isfinite(loss):
      raise _diverged(r, None)
    record = {"round": r, "test_accuracy": accuracy, "test_loss": loss,
              "train_loss": float(np.mean(losses)), "elapsed_s": elapsed,
              "s_per_round": round((time.time() - since[1]) / (r - since[0]), 4)}
    peak = records_lib.peak_device_bytes()
    if peak is not None:
      record["device_peak_bytes"] = peak
    if self.primary:
      with open(self.metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
      for k in ("test_accuracy", "test_loss", "train_loss"):
        self.writer.add_scalar(k, record[k], r)
    return record

  def loop(self, state, start: int, pending: list, elapsed0: float,
           records: list[dict]) -> list[dict]:
    """Rounds start+1 .. config.rounds: evaluations and checkpoints as configured."""
    config, exp = self.config, self.exp
    progress = Progress(start, config.rounds, self.stream)
    t0 = time.time()
    mark = (start, t0)  # (round, time) of the last evaluation: s_per_round is measured since
    losses = list(pending)  # device scalars or floats since the last evaluation
    completed = start
    try:
      with _deferred_ctrl_c() as ctrl_c:
        for r in range(start + 1, config.rounds + 1):
          if ctrl_c.is_set():
            raise KeyboardInterrupt
          state, metrics = exp.round_fn(state, exp.data, experiment_lib.round_key(config.seed, r))
          losses.append(localize(metrics["train_loss"]))
          completed = r
          if r == start + 1:  # the compiling round: the ETA counts only the rounds after it
            jax.block_until_ready(losses[-1])
            progress.warmed_up(r)
          evaluate = r % config.eval_every == 0 or r == config.rounds
          save = r % config.checkpoint_every == 0 or r == config.rounds
          if not (evaluate or save):
            progress.update(r)
            continue
          losses = [float(l) for l in losses]
          bad = [r - len(losses) + 1 + i for i, l in enumerate(losses) if not math.isfinite(l)]
          if bad or not _all_finite(state):
            raise _diverged(r, bad[0] if bad else None)
          now = time.time()
          elapsed = round(elapsed0 + now - t0, 3)
          if evaluate:
            records.append(self.evaluate(r, state, losses, elapsed, mark))
            if self.primary:
              self.writer.add_scalar("rounds_per_s", progress.rate(r, now), r)
            losses = []
            progress.accuracy = records[-1]["test_accuracy"]
          if save:
            self.checkpointer.save(r, state, {"round": r, "pending_losses": list(losses),
                                              "elapsed_s": elapsed})
          if evaluate:
            mark = (r, time.time())
          progress.update(r, evaluated=evaluate, now=now)
    except KeyboardInterrupt:
      self.checkpointer.wait()  # a save in flight completes, so the last checkpoint is known
      raise Interrupted(completed, self.checkpointer.latest()) from None
    return records

  def __call__(self, write_superclients: bool) -> list[dict]:
    config = self.config
    state, start, pending, elapsed0 = self.restore()
    records = self.write_start(start, write_superclients)
    if start >= config.rounds:
      print(f"already finished: {start} rounds in {self.workdir}", file=self.stream, flush=True)
      if records and config.compare_with:
        _compare(config, self.workdir, records[-1], self.stream)
      return records
    self.announce(start)
    self.writer = (records_lib.tensorboard(self.workdir, config, start + 1 if start else None)
                   if self.primary else None)
    try:
      records = self.loop(state, start, pending, elapsed0, records)
    finally:
      if self.writer is not None:
        self.writer.close()
    final = records[-1]
    print(f"final test accuracy {final['test_accuracy']:.4f} after {final['round']} rounds; "
          f"results in {self.metrics_path}", file=self.stream, flush=True)
    if config.compare_with:
      _compare(config, self.workdir, final, self.stream)
    return records


def _compare(config, workdir: str, final: dict, stream) -> None:
  """Runs `config.compare_with` algorithms on the same clients; prints accuracies side by side."""
  rows = [(config.algorithm.name, final["test_accuracy"])]
  for name in config.compare_with.split(","):
    other = config.copy_and_resolve_references()
    other.algorithm.name, other.compare_with = name.strip(), ""
    print(f"\ncomparison: the same clients with {other.algorithm.name}", file=stream, flush=True)
    records = train_and_evaluate(other, os.path.join(workdir, other.algorithm.name), stream)
    rows.append((other.algorithm.name, records[-1]["test_accuracy"]))
  print(f"\ntest accuracy after {final['round']} rounds: " +
        " | ".join(f"{n} {a:.4f}" for n, a in rows), file=stream, flush=True)
