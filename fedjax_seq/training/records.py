"""What a run records in its workdir besides checkpoints, and how a rerun reads it back.

config.json (compared on resume: only RESUMABLE_CHANGES may differ),
metrics.jsonl (one record per evaluation), superclients.json, run.json (one
entry per start: the resolved `auto` choices, the machine, the versions, the
git commit) and TensorBoard event files.
"""

import datetime
import importlib.metadata
import json
import math
import os
import socket
import subprocess
import sys

import jax
import numpy as np

import fedjax_seq
from fedjax_seq import allocator, files
from fedjax_seq.core import engine
from fedjax_seq.errors import InputError
from fedjax_seq.models import uses_lax_conv
from fedjax_seq.training import experiment as experiment_lib

RESUMABLE_CHANGES = ("rounds", "eval_every", "checkpoint_every", "compare_with")


def previous_config(workdir: str, config) -> dict | None:
  """The workdir's config.json, refusing one that differs beyond RESUMABLE_CHANGES."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      old = files.flatten(json.load(f))
  except (OSError, ValueError) as e:
    raise InputError(f"cannot read {path} ({e}); move it away to start over") from None
  new = files.flatten(json.loads(config.to_json()))
  differ = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
  if differ:
    raise InputError(f"workdir {workdir} holds a run with another config (differs in: "
                    f"{', '.join(differ)}); only {', '.join(RESUMABLE_CHANGES)} may change on "
                    "resume: use another --workdir")
  return old


def read_records(path: str, upto: int) -> list[dict]:
  """metrics.jsonl's records up to round `upto` (a line cut short by a kill ends the list)."""
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


def peak_device_bytes() -> int | None:
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


def git_commit() -> str | None:
  """HEAD of the checkout the package runs from; None when it is not a git checkout."""
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                         cwd=os.path.dirname(os.path.abspath(fedjax_seq.__file__)))
  except (OSError, subprocess.SubprocessError):
    return None
  return (out.stdout.strip() or None) if out.returncode == 0 else None


def version(package: str) -> str | None:
  """The installed version of `package`, or None."""
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
                   **{p: version(p) for p in ("jax", "jaxlib", "flax", "optax")}},
      "git_commit": git_commit(), "allocator": allocator.active(),
  }


def append_run_info(path: str, info: dict) -> None:
  """run.json is a list with one entry per start (the first, then each resume)."""
  try:
    with open(path) as f:
      starts = json.load(f)
  except (OSError, ValueError):
    starts = []
  starts = starts if isinstance(starts, list) else []
  files.write_atomic(path, json.dumps(starts + [info], indent=2) + "\n")


def load_groups(workdir: str) -> tuple[list[np.ndarray], dict] | None:
  """A previous run's superclients (groups, summary), so formation is not redone."""
  path = os.path.join(workdir, "superclients.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      info = json.load(f)
    return [np.asarray(s["clients"], np.int64) for s in info["superclients"]], info
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InputError(f"cannot read {path} ({e}); move the workdir away to start over") from None


def _tensorboardx():
  """tensorboardX's SummaryWriter and hparams, imported without PyTorch.

  tensorboardX imports torch wherever it is installed, only for a type
  hint; torch is slow to import and nothing here needs it. With torch
  marked absent, tensorboardX falls back to NumPy's types.
  """
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    from tensorboardX.summary import hparams  # pylint: disable=import-outside-toplevel
  finally:
    if blocked:
      del sys.modules["torch"]
  return SummaryWriter, hparams


def tensorboard(workdir: str, config, purge_step: int | None):
  """TensorBoard event files without TensorFlow (tensorboardX), hparams included."""
  SummaryWriter, hparams = _tensorboardx()  # pylint: disable=invalid-name
  writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge_step)
  flat = {k: v for k, v in files.flatten(json.loads(config.to_json())).items()
          if isinstance(v, (bool, int, float, str))}
  for summary in hparams(flat, {"test_accuracy": 0.0, "test_loss": 0.0}):
    writer.file_writer.add_summary(summary)
  return writer
