"""The round loop: train, evaluate, checkpoint, resume, write metrics.

Rerunning the same command on the same workdir resumes from the latest
checkpoint and continues exactly (round keys are fold_in(root, round), the
state is restored bit for bit, superclients are read back from
superclients.json). A config may differ from the workdir's only in
`RESUMABLE_CHANGES`. One run at a time per workdir: an OS lock on
WORKDIR/.lock (checkpoint.WorkdirLock) is held from before anything is read
or written until the run ends.
"""

import datetime
import importlib.metadata
import io
import json
import math
import os
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import fedjax_seq
from fedjax_seq import allocator
from fedjax_seq.core import engine
from fedjax_seq.core.sharding import localize
from fedjax_seq.errors import UserError
from fedjax_seq.models import uses_lax_conv
from fedjax_seq.training import experiment as experiment_lib
from fedjax_seq.training.checkpoint import Checkpointer, WorkdirLock

RESUMABLE_CHANGES = ("rounds", "eval_every", "checkpoint_every", "compare_with")


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


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


class Progress:
  """One updating line on a terminal; one plain line per evaluation otherwise.

  Rates and the ETA count only steady-state rounds: those after the first
  round and after the first evaluation, which both compile (they would
  make the ETA far too long at the start).
  """

  def __init__(self, first: int, total: int, stream, clock: Callable[[], float] = time.time):
    self.first, self.total, self.stream, self.clock = first, total, stream, clock
    self.tty = hasattr(stream, "isatty") and stream.isatty()
    self.start = clock()
    self.warm = None  # (round, time) at the end of the last compiling round or evaluation
    self.accuracy, self.evaluated = None, False

  def warmed_up(self, r: int) -> None:
    """Marks the end of a compiling round or evaluation: rates start from here."""
    self.warm = (r, self.clock())

  def rate(self, r: int, now: float | None = None) -> float:
    """Steady-state rounds per second up to `now` (all rounds, until one past warm-up)."""
    first, start = self.warm if self.warm and r > self.warm[0] else (self.first, self.start)
    elapsed = (now or self.clock()) - start
    return (r - first) / elapsed if elapsed > 0 else 0.0

  def line(self, r: int, now: float | None = None) -> str:
    """The progress line of round r: accuracy, steady-state rate, ETA."""
    rate = self.rate(r, now)
    eta = (self.total - r) / rate if rate > 0 else 0.0
    acc = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
    return f"round {r}/{self.total} | test acc {acc} | {rate:.2f} rounds/s | ETA {_fmt_time(eta)}"

  def update(self, r: int, evaluated: bool = False, now: float | None = None):
    """Shows round r: redraws the terminal line, or prints one line per evaluation.

    `now`: when round r's training ended, so the rate leaves out the
    evaluation that follows it (the first one compiles).
    """
    if self.tty:
      self.stream.write("\r\033[K" + self.line(r, now) + ("\n" if evaluated else ""))
      self.stream.flush()
    elif evaluated:
      print(self.line(r, now), file=self.stream, flush=True)
    if evaluated and not self.evaluated:
      self.evaluated = True
      self.warmed_up(r)


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _check_workdir(workdir: str) -> None:
  """A workdir must be a directory we can write, or creatable; nothing is written here."""
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise UserError(f"workdir {workdir} exists and is not a directory")
    if not os.access(workdir, os.W_OK):
      raise UserError(f"workdir {workdir} is not writable")
    return
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    raise UserError(f"cannot create workdir {workdir}: {parent} is not a writable directory")


def _previous_config(workdir: str, config) -> dict | None:
  """The workdir's config.json, refusing one that differs beyond RESUMABLE_CHANGES."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      old = _flatten(json.load(f))
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path} ({e}); move it away to start over") from None
  new = _flatten(json.loads(config.to_json()))
  differ = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
  if differ:
    raise UserError(f"workdir {workdir} holds a run with another config (differs in: "
                    f"{', '.join(differ)}); only {', '.join(RESUMABLE_CHANGES)} may change on "
                    "resume: use another --workdir")
  return old


def _read_records(path: str, upto: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        break  # a line cut short by a kill
      if record.get("round", math.inf) <= upto:
        records.append(record)
  return records


def _peak_device_bytes() -> int | None:
  """Peak bytes in use on the first local device, where the backend reports it (not CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def resolved_choices(config, exp) -> dict:
  """What the config's `auto` settings became on this machine, and the cohort size."""
  n, _, _ = experiment_lib.round_workload(config, exp)
  unroll = engine.resolve_unroll(config.engine.unroll, uses_lax_conv(exp.model, exp.image_shape))
  return {"strategy": exp.strategy, "conv_impl": getattr(exp.model, "conv_impl", None),
          "unroll": "full" if unroll is True else unroll,
          "participants": "superclients" if exp.superclients is not None else "clients",
          "participants_per_round": n,
          "mesh_devices": (config.mesh.num_devices or len(jax.devices()))
                          if exp.strategy == "vmap" else 1}


def _git_commit() -> str | None:
  """HEAD of the checkout the package runs from; None when it is not a git checkout."""
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                         cwd=os.path.dirname(os.path.abspath(fedjax_seq.__file__)))
  except (OSError, subprocess.SubprocessError):
    return None
  return (out.stdout.strip() or None) if out.returncode == 0 else None


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def run_info(config, exp, start: int) -> dict:
  """One run.json entry: what this start resolved, ran on and was started with."""
  devices = jax.devices()
  return {
      "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "resumed_after_round": start, "command": sys.argv, "cwd": os.getcwd(),
      "hostname": socket.gethostname(), **resolved_choices(config, exp),
      "backend": jax.default_backend(), "device_kinds": sorted({d.device_kind for d in devices}),
      "device_count": len(devices), "process_count": jax.process_count(),
      "versions": {"fedjax_seq": fedjax_seq.__version__,
                   **{p: _version(p) for p in ("jax", "jaxlib", "flax", "optax")}},
      "git_commit": _git_commit(), "allocator": allocator.active(),
  }


def _append_run_info(path: str, info: dict) -> None:
  """run.json is a list with one entry per start (the first, then each resume)."""
  try:
    with open(path) as f:
      starts = json.load(f)
  except (OSError, ValueError):
    starts = []
  starts = starts if isinstance(starts, list) else []
  _write_atomic(path, json.dumps(starts + [info], indent=2) + "\n")


def _write_atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _load_groups(workdir: str) -> tuple[list[np.ndarray], dict] | None:
  """A previous run's superclients (groups, summary), so formation is not redone."""
  path = os.path.join(workdir, "superclients.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      info = json.load(f)
    return [np.asarray(s["clients"], np.int64) for s in info["superclients"]], info
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"cannot read {path} ({e}); move the workdir away to start over") from None


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
  return UserError(f"training diverged at round {first_bad or r} (non-finite loss or "
                   "parameters); the last good checkpoint is kept; lower config.client.lr or "
                   "the algorithm's mu/alpha")


def _tensorboard(workdir: str, config, purge_step: int | None):
  """TensorBoard event files without TensorFlow (tensorboardX), hparams included."""
  from tensorboardX import SummaryWriter
  from tensorboardX.summary import hparams
  writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge_step)
  flat = {k: v for k, v in _flatten(json.loads(config.to_json())).items()
          if isinstance(v, (bool, int, float, str))}
  for summary in hparams(flat, {"test_accuracy": 0.0, "test_loss": 0.0}):
    writer.file_writer.add_summary(summary)
  return writer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stream=None) -> list[dict]:
  """Runs (or resumes) `config.rounds` rounds; returns every evaluation record.

  Evaluates on the exemplar-reduced test set every `config.eval_every`
  rounds and at the last round, appending to `workdir/metrics.jsonl`;
  checkpoints every `config.checkpoint_every` rounds and at the end. A
  non-finite loss or parameter stops the run with a UserError naming the
  round; no non-finite state is ever checkpointed. The workdir is locked
  for the whole run (UserError if another run holds it) and every start
  appends its resolved choices and environment to `workdir/run.json`.
  Ctrl-C in the round loop stops it after the round in progress (a second
  Ctrl-C at once) and raises `Interrupted` (a KeyboardInterrupt) naming the
  last round and checkpoint.
  """
  stream = stream or sys.stderr
  experiment_lib.validate(config)
  _check_workdir(workdir)
  lock = _lock_workdir(workdir)
  try:
    resuming = _previous_config(workdir, config) is not None
    loaded = _load_groups(workdir) if resuming else None
    exp = experiment_lib.build(config, stream, superclients=loaded)
    try:
      os.makedirs(workdir, exist_ok=True)
      checkpointer = Checkpointer(workdir)
    except OSError as e:
      raise UserError(f"cannot write to workdir {workdir}: {e.strerror}") from None
    try:
      return _run(config, workdir, exp, checkpointer, stream, write_superclients=loaded is None)
    finally:
      checkpointer.close()
  finally:
    if lock is not None:
      lock.release()


def _lock_workdir(workdir: str) -> WorkdirLock | None:
  """Process 0 locks the workdir (creating it) before anything is written or loaded.

  With several processes, all of them learn whether it could, so none
  goes on alone. Raises UserError when another run holds the workdir.
  """
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir)
    except UserError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if not int(multihost_utils.broadcast_one_to_all(np.int32(error is None))) and error is None:
      error = UserError(f"process 0 could not lock workdir {workdir} (see its error)")
  if error is not None:
    raise error
  return lock


def _run(config, workdir: str, exp, checkpointer: Checkpointer, stream,
         write_superclients: bool) -> list[dict]:
  state = exp.algorithm.init(exp.init_params)
  start, pending, elapsed0 = 0, [], 0.0
  latest = checkpointer.latest()
  if latest is not None:
    state, meta = checkpointer.restore(latest, state)
    start, pending, elapsed0 = latest, list(meta["pending_losses"]), float(meta["elapsed_s"])
  # Written only once the previous state (if any) has been read back; with
  # several processes, process 0 writes files and prints.
  primary = jax.process_index() == 0
  if not primary:  # other processes stay quiet
    stream = io.StringIO()
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  records = _read_records(metrics_path, start)
  if primary:
    _write_atomic(os.path.join(workdir, "config.json"), config.to_json(indent=2, sort_keys=True))
    if exp.superclients is not None and write_superclients:
      _write_atomic(os.path.join(workdir, "superclients.json"), json.dumps(exp.superclients))
    _write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in records))
  if start >= config.rounds:
    print(f"already finished: {start} rounds in {workdir}", file=stream, flush=True)
    if records and config.compare_with:
      _compare(config, workdir, records[-1], stream)
    return records
  info = run_info(config, exp, start)
  if primary:
    _append_run_info(os.path.join(workdir, "run.json"), info)
  print(f"fedjax_seq: {config.algorithm.name} on {config.data.name} "
        f"({exp.partition}), model "
        f"{config.model.name}, backend {jax.default_backend()}, strategy {exp.strategy}, "
        f"{info['participants_per_round']} {info['participants']} per round" +
        (f"; resuming after round {start}" if start else ""), file=stream, flush=True)

  writer = _tensorboard(workdir, config, start + 1 if start else None) if primary else None
  progress = Progress(start, config.rounds, stream)
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
          accuracy, loss = exp.evaluate(localize(state.params))
          if not math.isfinite(loss):
            raise _diverged(r, None)
          record = {"round": r, "test_accuracy": accuracy, "test_loss": loss,
                    "train_loss": float(np.mean(losses)), "elapsed_s": elapsed,
                    "s_per_round": round((now - mark[1]) / (r - mark[0]), 4)}
          peak = _peak_device_bytes()
          if peak is not None:
            record["device_peak_bytes"] = peak
          records.append(record)
          if primary:
            with open(metrics_path, "a") as f:
              f.write(json.dumps(record) + "\n")
            for k in ("test_accuracy", "test_loss", "train_loss"):
              writer.add_scalar(k, record[k], r)
            writer.add_scalar("rounds_per_s", progress.rate(r, now), r)
          losses = []
          progress.accuracy = accuracy
        if save:
          checkpointer.save(r, state, {"round": r, "pending_losses": list(losses),
                                       "elapsed_s": elapsed})
        if evaluate:
          mark = (r, time.time())
        progress.update(r, evaluated=evaluate, now=now)
  except KeyboardInterrupt:
    checkpointer.wait()  # a save in flight completes, so the last checkpoint is known
    raise Interrupted(completed, checkpointer.latest()) from None
  finally:
    if writer is not None:
      writer.close()

  final = records[-1]
  print(f"final test accuracy {final['test_accuracy']:.4f} after {final['round']} rounds; "
        f"results in {metrics_path}", file=stream, flush=True)
  if config.compare_with:
    _compare(config, workdir, final, stream)
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
