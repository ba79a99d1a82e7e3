"""Runs that last: exact resume, SIGKILL, refusals, divergence, TensorBoard."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import default
from fedjax_seq.errors import UserError
from fedjax_seq.training import experiment as experiment_lib
from fedjax_seq.training.checkpoint import Checkpointer
from fedjax_seq.training.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"data.name": "synthetic", "data.synthetic.train_size": 800,
         "data.synthetic.test_size": 200, "data.num_clients": 20, "model.name": "mlp",
         "client.fraction": 0.25, "client.lr": 0.05, "fedseq.evaluator_model": "mlp",
         "fedseq.pretrain_epochs": 1, "fedseq.min_examples": 100, "fedseq.max_clients": 4}


def config(algorithm="fedavg", **overrides):
  c = default.get_config()
  c.algorithm.name = algorithm
  for path, value in {**SMALL, **overrides}.items():
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def without_time(records):
  return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


def final_state(workdir, c):
  exp = experiment_lib.build(c, superclients=None)
  ckpt = Checkpointer(str(workdir))
  state, _ = ckpt.restore(ckpt.latest(), exp.algorithm.init(exp.init_params))
  ckpt.close()
  return state


def interrupt_at(monkeypatch, stop_round):
  """Makes the next run raise KeyboardInterrupt (Ctrl-C) when it reaches `stop_round`."""
  real_build = experiment_lib.build

  def build(*args, **kwargs):
    exp = real_build(*args, **kwargs)
    inner = exp.round_fn

    def round_fn(state, data, key):
      if jax.random.key_data(key).tolist() == jax.random.key_data(
          experiment_lib.round_key(exp_seed[0], stop_round)).tolist():
        raise KeyboardInterrupt
      return inner(state, data, key)

    exp.round_fn = round_fn
    return exp

  exp_seed = [0]
  monkeypatch.setattr(experiment_lib, "build", build)


@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold", "fedseq_inter"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, algorithm):
  full = config(algorithm, rounds=6, eval_every=2, checkpoint_every=1)
  a = train_and_evaluate(full, str(tmp_path / "a"))
  # Interrupted in round 4, after round 3's checkpoint: between evaluations, so
  # round 3's training loss must survive in the checkpoint.
  interrupt_at(monkeypatch, 4)
  with pytest.raises(KeyboardInterrupt):
    train_and_evaluate(full, str(tmp_path / "b"))
  monkeypatch.undo()
  assert [json.loads(l)["round"] for l in
          (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()] == [2]
  b = train_and_evaluate(full, str(tmp_path / "b"))
  assert [r["round"] for r in b] == [2, 4, 6]
  assert without_time(a) == without_time(b)
  on_disk = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
  assert without_time(on_disk) == without_time(a)
  for x, y in zip(jax.tree.leaves(final_state(tmp_path / "a", full)),
                  jax.tree.leaves(final_state(tmp_path / "b", full))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  if algorithm.startswith("fedseq"):
    sa, sb = (json.loads((tmp_path / d / "superclients.json").read_text()) for d in "ab")
    sa.pop("formation_s"), sb.pop("formation_s")
    assert sa == sb


def test_finished_run_is_not_redone(tmp_path):
  c = config(rounds=2, eval_every=1)
  first = train_and_evaluate(c, str(tmp_path / "run"))
  before = (tmp_path / "run" / "metrics.jsonl").read_text()
  assert train_and_evaluate(c, str(tmp_path / "run")) == first
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_sigkill_mid_run_then_resume(tmp_path):
  args = [sys.executable, "main.py", "--config=configs/fedavg.py", f"--workdir={tmp_path / 'run'}",
          *(f"--config.{k}={v}" for k, v in SMALL.items()),
          "--config.rounds=40", "--config.eval_every=3", "--config.checkpoint_every=1"]
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    names = [os.path.basename(p) for p in glob.glob(str(tmp_path / "run/checkpoints/*"))]
    steps = [int(n) for n in names if n.isdigit()]
    if steps and max(steps) >= 8:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "resuming after round" in done.stderr
  resumed = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
  reference = train_and_evaluate(config(rounds=40, eval_every=3, checkpoint_every=1),
                                 str(tmp_path / "ref"))
  assert without_time(resumed) == without_time(reference)


def test_resume_with_another_config_is_refused(tmp_path):
  train_and_evaluate(config(rounds=2, eval_every=1), str(tmp_path / "run"))
  before = sorted(os.listdir(tmp_path / "run"))
  metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
  with pytest.raises(UserError, match=r"differs in: client.lr, seed\)"):
    train_and_evaluate(config(rounds=2, eval_every=1, seed=3, **{"client.lr": 0.1}),
                       str(tmp_path / "run"))
  assert sorted(os.listdir(tmp_path / "run")) == before
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
  train_and_evaluate(config("scaffold", rounds=2, eval_every=1), str(tmp_path / "scaffold"))
  # Foreign: SCAFFOLD's checkpoints under a FedAvg run's workdir.
  os.makedirs(tmp_path / "fedavg")
  shutil.copytree(tmp_path / "scaffold" / "checkpoints", tmp_path / "fedavg" / "checkpoints")
  with pytest.raises(UserError, match="cannot restore checkpoint"):
    train_and_evaluate(config("fedavg", rounds=4, eval_every=1), str(tmp_path / "fedavg"))
  assert not (tmp_path / "fedavg" / "metrics.jsonl").exists()
  # Corrupt: every file of the latest checkpoint overwritten with garbage.
  for path in glob.glob(str(tmp_path / "scaffold/checkpoints/2/**/*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"\x00garbage")
  metrics = (tmp_path / "scaffold" / "metrics.jsonl").read_text()
  with pytest.raises(UserError, match="cannot restore checkpoint") as e:
    train_and_evaluate(config("scaffold", rounds=4, eval_every=1), str(tmp_path / "scaffold"))
  assert "\n" not in str(e.value)
  assert (tmp_path / "scaffold" / "metrics.jsonl").read_text() == metrics


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  """Parameters turn NaN in round 4: the run stops naming round 4, checkpoint 3 stays good."""
  c = config(rounds=8, eval_every=2, checkpoint_every=1)
  real_build = experiment_lib.build

  def build(*args, **kwargs):
    exp = real_build(*args, **kwargs)
    inner, bad_key = exp.round_fn, experiment_lib.round_key(c.seed, 4)

    def round_fn(state, data, key):
      state, metrics = inner(state, data, key)
      if jax.random.key_data(key).tolist() == jax.random.key_data(bad_key).tolist():
        state = state._replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
      return state, metrics

    exp.round_fn = round_fn
    return exp

  monkeypatch.setattr(experiment_lib, "build", build)
  with pytest.raises(UserError, match=r"diverged at round 4 .*last good checkpoint is kept"):
    train_and_evaluate(c, str(tmp_path / "run"))
  monkeypatch.undo()
  ckpt = Checkpointer(str(tmp_path / "run"))
  assert ckpt.latest() == 3
  ckpt.close()
  state = final_state(tmp_path / "run", c)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in records] == [2]


def test_huge_learning_rate_stops_with_the_divergence_error(tmp_path):
  with pytest.raises(UserError, match=r"training diverged at round \d+"):
    train_and_evaluate(config(rounds=8, eval_every=1, **{"client.lr": 1e20}),
                       str(tmp_path / "run"))
  for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
    assert all(v == v for v in json.loads(line).values())  # no NaN written


@pytest.mark.parametrize("overrides,message", [
    ({"checkpoint_every": 0}, "checkpoint_every must be >= 1"),
])
def test_bad_checkpoint_settings(tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    train_and_evaluate(config(**overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_unwritable_workdir_is_refused(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match="not a writable directory"):
    train_and_evaluate(config(rounds=1), str(tmp_path / "file" / "run"))


def test_tensorboard_event_files_are_written(tmp_path):
  train_and_evaluate(config(rounds=2, eval_every=1), str(tmp_path / "run"))
  events = glob.glob(str(tmp_path / "run" / "tensorboard" / "events.out.tfevents.*"))
  assert len(events) == 1
  blob = open(events[0], "rb").read()
  for tag in (b"test_accuracy", b"test_loss", b"train_loss", b"rounds_per_s", b"_hparams_"):
    assert tag in blob


def test_host_resident_client_state_runs_checkpoints_and_resumes(tmp_path, monkeypatch):
  device = train_and_evaluate(config("scaffold", rounds=4, eval_every=2), str(tmp_path / "d"))
  host = config("scaffold", rounds=4, eval_every=2, checkpoint_every=1,
                **{"engine.client_state": "host"})
  interrupt_at(monkeypatch, 3)
  with pytest.raises(KeyboardInterrupt):
    train_and_evaluate(host, str(tmp_path / "h"))
  monkeypatch.undo()
  resumed = train_and_evaluate(host, str(tmp_path / "h"))
  assert [r["round"] for r in resumed] == [2, 4]
  for a, b in zip(device, resumed):
    for k in ("test_accuracy", "test_loss", "train_loss"):
      assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7)
