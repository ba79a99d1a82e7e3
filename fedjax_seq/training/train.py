"""The round loop: train, evaluate every `eval_every` rounds, write metrics."""

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections

from fedjax_seq.errors import UserError
from fedjax_seq.training import experiment as experiment_lib


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """One updating line on a terminal; one plain line per evaluation otherwise."""

  def __init__(self, total: int, stream=None):
    self.total, self.stream = total, stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.start = time.time()
    self.accuracy = None

  def line(self, r: int) -> str:
    elapsed = time.time() - self.start
    rate = r / elapsed if elapsed > 0 else 0.0
    eta = (self.total - r) / rate if rate > 0 else 0.0
    acc = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
    return f"round {r}/{self.total} | test acc {acc} | {rate:.2f} rounds/s | ETA {_fmt_time(eta)}"

  def update(self, r: int, evaluated: bool = False):
    if self.tty:
      end = "\n" if evaluated else ""
      self.stream.write("\r\033[K" + self.line(r) + end)
      self.stream.flush()
    elif evaluated:
      print(self.line(r), file=self.stream, flush=True)


def _prepare_workdir(workdir: str) -> None:
  """Refuses a workdir that is a file or already holds a run; nothing is written here."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} exists and is not a directory")
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    raise UserError(f"workdir {workdir} already holds a run (metrics.jsonl); "
                    "choose another --workdir")


def _write_json_atomic(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stream=None) -> list[dict]:
  """Runs `config.rounds` rounds; returns the evaluation records it wrote.

  Evaluates on the exemplar-reduced test set every `config.eval_every`
  rounds and at the last round, appending one JSON object per evaluation to
  `workdir/metrics.jsonl`. A non-finite training loss or parameter stops
  the run with a UserError naming the round.
  """
  stream = stream or sys.stderr
  _prepare_workdir(workdir)
  exp = experiment_lib.build(config, stream)
  try:
    os.makedirs(workdir, exist_ok=True)
    _write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
    if exp.superclients is not None:
      _write_json_atomic(os.path.join(workdir, "superclients.json"), exp.superclients)
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir}: {e.strerror}") from None

  print(f"fedjax_seq: {config.algorithm.name} on {config.data.name} "
        f"({exp.data.num_clients} clients, alpha={config.data.alpha}), "
        f"model {config.model.name}, backend {jax.default_backend()}, "
        f"strategy {exp.strategy}", file=stream, flush=True)
  state = exp.algorithm.init(exp.init_params)
  progress = Progress(config.rounds, stream)
  records, losses = [], []
  start = time.time()
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  for r in range(1, config.rounds + 1):
    state, metrics = exp.round_fn(state, exp.data, experiment_lib.round_key(config.seed, r))
    losses.append(metrics["train_loss"])
    if r % config.eval_every == 0 or r == config.rounds:
      train_losses = jax.device_get(jnp.stack(losses))
      bad = [r - len(losses) + 1 + i for i, l in enumerate(train_losses) if not math.isfinite(l)]
      accuracy, loss = (exp.evaluate(state.params) if not bad and bool(_all_finite(state.params))
                        else (None, math.nan))
      if bad or not math.isfinite(loss):
        raise UserError(f"training diverged at round {bad[0] if bad else r} (non-finite loss "
                        "or parameters); lower config.client.lr or the algorithm's mu/alpha")
      record = {"round": r, "test_accuracy": accuracy, "test_loss": loss,
                "train_loss": float(train_losses.mean()),
                "elapsed_s": round(time.time() - start, 3)}
      records.append(record)
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
      losses = []
      progress.accuracy = accuracy
      progress.update(r, evaluated=True)
    else:
      progress.update(r)
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
    other.unlock()
    other.algorithm.name, other.compare_with = name.strip(), ""
    print(f"\ncomparison: the same clients with {other.algorithm.name}", file=stream, flush=True)
    records = train_and_evaluate(other, os.path.join(workdir, other.algorithm.name), stream)
    rows.append((other.algorithm.name, records[-1]["test_accuracy"]))
  print(f"\ntest accuracy after {final['round']} rounds: " +
        " | ".join(f"{n} {a:.4f}" for n, a in rows), file=stream, flush=True)
