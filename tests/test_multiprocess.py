"""Two processes on localhost share one mesh (jax.distributed, gloo) and match one process."""

import json
import os
import socket
import sys

import pytest

from helpers import Command, main_py, tiny_flags

# SCAFFOLD on the tiny run (tests/helpers.py), 6 clients a round (3 per process).
ARGS = ["--config=configs/scaffold.py",
        *tiny_flags(**{"client.fraction": 0.3, "rounds": 4, "eval_every": 2,
                       "checkpoint_every": 2, "engine.strategy": "vmap"})]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path):
  address = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [Command([sys.executable, "main.py", *ARGS, f"--workdir={tmp_path / 'multi'}",
                    f"--coordinator_address={address}", "--num_processes=2",
                    f"--process_id={i}"], env=env) for i in range(2)]
  with procs[0], procs[1]:  # both killed if either fails or overruns
    errs = [p.finish(timeout=300) for p in procs]
  for p, err in zip(procs, errs, strict=True):
    assert p.returncode == 0, err[-2000:]
  assert "final test accuracy" in errs[0] and "final test accuracy" not in errs[1]
  single = main_py(*ARGS, f"--workdir={tmp_path / 'single'}", env=env)
  assert single.returncode == 0, single.stderr[-2000:]
  a, b = records(tmp_path / "multi"), records(tmp_path / "single")
  assert [r["round"] for r in a] == [r["round"] for r in b] == [2, 4]
  for x, y in zip(a, b, strict=True):
    for k in ("test_accuracy", "test_loss", "train_loss"):
      assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), (k, x, y)
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["2", "4"]
