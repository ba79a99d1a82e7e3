"""The round loop: train, evaluate, checkpoint, resume, write metrics.

Rerunning the same command on the same workdir resumes from the latest
checkpoint and continues exactly (round keys are fold_in(root, round), the
state is restored bit for bit, superclients are read back from
superclients.json). A config may differ from the workdir's only in
`RESUMABLE_CHANGES`.
"""

import io
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_seq.core.sharding import localize
from fedjax_seq.errors import UserError
from fedjax_seq.training import experiment as experiment_lib
from fedjax_seq.training.checkpoint import Checkpointer

RESUMABLE_CHANGES = ("rounds", "eval_every", "checkpoint_every", "compare_with")


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """One updating line on a terminal; one plain line per evaluation otherwise."""

  def __init__(self, first: int, total: int, stream):
    self.first, self.total, self.stream = first, total, stream
    self.tty = hasattr(stream, "isatty") and stream.isatty()
    self.start = time.time()
    self.accuracy = None

  def rate(self, r: int) -> float:
    elapsed = time.time() - self.start
    return (r - self.first) / elapsed if elapsed > 0 else 0.0

  def line(self, r: int) -> str:
    rate = self.rate(r)
    eta = (self.total - r) / rate if rate > 0 else 0.0
    acc = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
    return f"round {r}/{self.total} | test acc {acc} | {rate:.2f} rounds/s | ETA {_fmt_time(eta)}"

  def update(self, r: int, evaluated: bool = False):
    if self.tty:
      self.stream.write("\r\033[K" + self.line(r) + ("\n" if evaluated else ""))
      self.stream.flush()
    elif evaluated:
      print(self.line(r), file=self.stream, flush=True)


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
def _finite(x: jax.Array) -> jax.Array:
  return jnp.isfinite(x).all()


def _all_finite(tree) -> bool:
  """Checked where each leaf lives: host-resident client state is not copied over,
  and sharded state is reduced across processes before it is read."""
  return all(bool(np.isfinite(x).all()) if isinstance(x, np.ndarray)
             else bool(localize(_finite(x))) for x in jax.tree.leaves(tree))


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
  round; no non-finite state is ever checkpointed.
  """
  stream = stream or sys.stderr
  experiment_lib.validate(config)
  _check_workdir(workdir)
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
  print(f"fedjax_seq: {config.algorithm.name} on {config.data.name} "
        f"({exp.data.num_clients} clients, alpha={config.data.alpha}), model "
        f"{config.model.name}, backend {jax.default_backend()}, strategy {exp.strategy}" +
        (f"; resuming after round {start}" if start else ""), file=stream, flush=True)

  writer = _tensorboard(workdir, config, start + 1 if start else None) if primary else None
  progress = Progress(start, config.rounds, stream)
  t0 = time.time()
  losses = list(pending)  # device scalars or floats since the last evaluation
  try:
    for r in range(start + 1, config.rounds + 1):
      state, metrics = exp.round_fn(state, exp.data, experiment_lib.round_key(config.seed, r))
      losses.append(localize(metrics["train_loss"]))
      evaluate = r % config.eval_every == 0 or r == config.rounds
      save = r % config.checkpoint_every == 0 or r == config.rounds
      if not (evaluate or save):
        progress.update(r)
        continue
      losses = [float(l) for l in losses]
      bad = [r - len(losses) + 1 + i for i, l in enumerate(losses) if not math.isfinite(l)]
      if bad or not _all_finite(state):
        raise _diverged(r, bad[0] if bad else None)
      elapsed = round(elapsed0 + time.time() - t0, 3)
      if evaluate:
        accuracy, loss = exp.evaluate(localize(state.params))
        if not math.isfinite(loss):
          raise _diverged(r, None)
        record = {"round": r, "test_accuracy": accuracy, "test_loss": loss,
                  "train_loss": float(np.mean(losses)), "elapsed_s": elapsed}
        records.append(record)
        if primary:
          with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
          for k in ("test_accuracy", "test_loss", "train_loss"):
            writer.add_scalar(k, record[k], r)
          writer.add_scalar("rounds_per_s", progress.rate(r), r)
        losses = []
        progress.accuracy = accuracy
      if save:
        checkpointer.save(r, state, {"round": r, "pending_losses": list(losses), "elapsed_s": elapsed})
      progress.update(r, evaluated=evaluate)
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
