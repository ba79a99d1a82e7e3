"""Two processes on localhost share one mesh (jax.distributed, gloo) and match one process."""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/scaffold.py", "--config.data.name=synthetic",
        "--config.model.name=mlp", "--config.data.synthetic.train_size=800",
        "--config.data.synthetic.test_size=200", "--config.data.num_clients=20",
        "--config.client.fraction=0.3", "--config.rounds=4", "--config.eval_every=2",
        "--config.checkpoint_every=2", "--config.engine.strategy=vmap"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path):
  address = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "main.py", *ARGS, f"--workdir={tmp_path / 'multi'}",
       f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  assert "final test accuracy" in outs[0][1] and "final test accuracy" not in outs[1][1]
  single = subprocess.run([sys.executable, "main.py", *ARGS, f"--workdir={tmp_path / 'single'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-2000:]
  a, b = records(tmp_path / "multi"), records(tmp_path / "single")
  assert [r["round"] for r in a] == [r["round"] for r in b] == [2, 4]
  for x, y in zip(a, b):
    for k in ("test_accuracy", "test_loss", "train_loss"):
      assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), (k, x, y)
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["2", "4"]
