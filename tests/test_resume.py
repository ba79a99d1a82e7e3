"""Runs that last: exact resume, SIGKILL, Ctrl-C, refusals, divergence, run.json, TensorBoard."""

import dataclasses
import glob
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import sys

import jax
import numpy as np
import pytest

from helpers import (Command, assert_trees_equal, main_py, run, tiny_config, tiny_flags,
                     wait_until)
from fedjax_seq.core.server import FedOptState
from fedjax_seq.errors import InputError
from fedjax_seq.training import experiment as experiment_lib
from fedjax_seq.training.checkpoint import Checkpointer
from fedjax_seq.training.train import train_and_evaluate



def config(algorithm="fedavg", **overrides):
  return tiny_config(algorithm, **overrides)


TIMING = ("elapsed_s", "s_per_round", "device_peak_bytes")


def without_time(records):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def main_args(workdir, *extra):
  return ["--config=configs/fedavg.py", f"--workdir={workdir}", *tiny_flags(), *extra]


def start_and_wait_for(args, line_prefix):
  """Starts main.py and returns (the command, its stderr lines) once it has printed a line
  starting with `line_prefix` (within helpers.DEADLINE, or the command is killed).

  The runs started here have far more rounds than any test waits for, so
  they are still running when the line arrives. The caller kills it (`with`).
  """
  cmd = Command([sys.executable, "main.py", *args])
  cmd.wait_for_line(line_prefix)
  return cmd, cmd.lines


def checkpoint_rounds(workdir) -> list[int]:
  """Committed checkpoints (orbax writes a temporary directory, then renames it to the round)."""
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


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

    return dataclasses.replace(exp, round_fn=round_fn)  # an Experiment is frozen

  exp_seed = [0]
  monkeypatch.setattr(experiment_lib, "build", build)


# SCAFFOLD with FedAdam on the server: per-client rows and the server optimizer's moments
# both resume through the checkpoint.
@pytest.mark.parametrize("algorithm,server", [
    ("fedavg", {}), ("scaffold", {"server.optimizer": "adam", "server.lr": 0.03}),
    ("fedseq_inter", {})])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, algorithm, server):
  full = config(algorithm, rounds=6, eval_every=2, checkpoint_every=1, **server)
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
  final_a, final_b = final_state(tmp_path / "a", full), final_state(tmp_path / "b", full)
  assert_trees_equal(final_a, final_b)
  if server:  # the states compared above hold the optimizer's moments
    assert isinstance(final_b.opt[0], FedOptState), final_b.opt
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
  workdir = tmp_path / "run"
  # 100,000 rounds: the run cannot finish before it is killed.
  args = main_args(workdir, "--config.eval_every=3", "--config.checkpoint_every=1")
  with start_and_wait_for(args + ["--config.rounds=100000"], "round 9/100000")[0] as proc:
    # A checkpoint of round 9 or later is committed (the write is asynchronous). Not "9 is
    # there": rounds 10-12 may commit between two looks, and only 3 are kept.
    def committed():
      assert proc.returncode is None, "the run stopped by itself"
      return max(checkpoint_rounds(workdir), default=0) >= 9

    wait_until(committed, timeout=120, what="a checkpoint of round 9 or later")
    proc.send_signal(signal.SIGKILL)
    proc.finish(timeout=60)
    assert proc.returncode == -signal.SIGKILL
  # Rerun (rounds may change on resume): it continues from round 9 or later, and its
  # metrics equal an uninterrupted run's, of 15 rounds or, had the killed run passed
  # round 12, of 6 rounds more than it reached.
  rounds = max(15, 3 * (max(checkpoint_rounds(workdir)) // 3) + 6)
  done = main_py(*args, f"--config.rounds={rounds}")
  assert done.returncode == 0, done.stderr
  resumed_after = int(re.search(r"resuming after round (\d+)", done.stderr).group(1))
  assert resumed_after >= 9
  resumed = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  reference = train_and_evaluate(config(rounds=rounds, eval_every=3, checkpoint_every=1),
                                 str(tmp_path / "ref"))
  assert [r["round"] for r in reference] == list(range(3, rounds + 1, 3))
  assert without_time(resumed) == without_time(reference)


@pytest.fixture(scope="module")
def ctrl_c_run(tmp_path_factory):
  """main.py stopped by Ctrl-C after round 4 or later, then the same command rerun to two
  rounds past its last checkpoint; what the tests below read of the two (one pair of
  main.py runs for both: mark them xdist_group("ctrl_c_run"))."""
  workdir = tmp_path_factory.mktemp("ctrl_c") / "run"
  args = main_args(workdir, "--config.eval_every=2", "--config.checkpoint_every=2")
  with start_and_wait_for(args + ["--config.rounds=100000"], "round 4/100000")[0] as proc:
    proc.send_signal(signal.SIGINT)
    rest = proc.finish(timeout=120)
  out = {"workdir": workdir, "args": args, "returncode": proc.returncode, "rest": rest,
         "stderr": "".join(proc.lines), "checkpoints": checkpoint_rounds(workdir), "rerun": None}
  m = re.search(r"last checkpoint at round (\d+)", rest)
  if proc.returncode == 130 and m:
    out["rerun"] = main_py(*args, f"--config.rounds={int(m.group(1)) + 2}")
  return out


@pytest.mark.xdist_group("ctrl_c_run")
def test_ctrl_c_says_where_the_run_stands_and_the_rerun_resumes(ctrl_c_run):
  workdir, rest = ctrl_c_run["workdir"], ctrl_c_run["rest"]
  assert ctrl_c_run["returncode"] == 130, rest
  assert "Traceback" not in rest
  lines = [l for l in rest.splitlines() if l.strip()]
  m = re.fullmatch(r"interrupted after round (\d+); last checkpoint at round (\d+); "
                   r"rerun the same command to resume", lines[-1])
  assert m, rest
  stopped, checkpoint = int(m.group(1)), int(m.group(2))
  # The loop stops after the round in progress; every second round was checkpointed.
  assert stopped >= 4 and checkpoint == stopped - stopped % 2
  assert ctrl_c_run["checkpoints"][-1] == checkpoint
  done = ctrl_c_run["rerun"]
  assert done.returncode == 0, done.stderr
  assert f"resuming after round {checkpoint}" in done.stderr
  # The lock died with the interrupted process, and the rerun released its own.
  rounds = [json.loads(l)["round"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rounds == list(range(2, checkpoint + 3, 2))


@pytest.mark.xdist_group("ctrl_c_run")
def test_run_json_records_every_start(ctrl_c_run):
  """The interrupted run and its rerun: two starts, the second after its checkpoint."""
  workdir = ctrl_c_run["workdir"]
  checkpoint = ctrl_c_run["checkpoints"][-1]
  assert ctrl_c_run["rerun"] is not None and ctrl_c_run["rerun"].returncode == 0
  # fraction 0.25 of 20 clients
  assert "strategy vmap, 5 clients per round" in ctrl_c_run["stderr"]
  starts = json.loads((workdir / "run.json").read_text())
  assert [s["resumed_after_round"] for s in starts] == [0, checkpoint]
  first = starts[0]
  assert first["command"][0] == "main.py" and f"--workdir={workdir}" in first["command"]
  assert "--config.rounds=100000" in first["command"]
  assert f"--config.rounds={checkpoint + 2}" in starts[1]["command"]
  assert (first["strategy"], first["conv_impl"], first["unroll"]) == ("vmap", None, 1)
  assert (first["participants"], first["participants_per_round"]) == ("clients", 5)
  assert first["mesh_devices"] == 1
  assert (first["backend"], first["device_kinds"], first["device_count"]) == ("cpu", ["cpu"], 1)
  assert first["process_count"] == 1 and first["hostname"] == socket.gethostname()
  import fedjax_seq, flax, jaxlib, optax
  assert first["versions"] == {"fedjax_seq": fedjax_seq.__version__, "jax": jax.__version__,
                               "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                               "optax": optax.__version__}
  # A commit of this checkout (HEAD may move while the test runs), or None outside git.
  if run(["git", "rev-parse", "HEAD"], timeout=60).returncode:
    assert first["git_commit"] is None
  else:
    assert re.fullmatch(r"[0-9a-f]{40}", first["git_commit"])
    assert run(["git", "cat-file", "-e", first["git_commit"] + "^{commit}"],
               timeout=60).returncode == 0
  assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", first["start_time"])
  assert starts[1]["start_time"] >= first["start_time"]


def test_fedseq_run_json_counts_superclients(tmp_path):
  c = config("fedseq", rounds=1, eval_every=1)
  train_and_evaluate(c, str(tmp_path / "run"))
  (info,) = json.loads((tmp_path / "run" / "run.json").read_text())
  groups = json.loads((tmp_path / "run" / "superclients.json").read_text())["superclients"]
  assert info["participants"] == "superclients"
  assert info["participants_per_round"] == max(int(0.25 * len(groups)), 1)


def test_metrics_record_seconds_per_round_since_the_last_evaluation(tmp_path):
  records = train_and_evaluate(config(rounds=6, eval_every=2), str(tmp_path / "run"))
  on_disk = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert on_disk == records
  for r in records:
    assert r["s_per_round"] > 0
    # On CPU the backend reports no memory statistics, so no memory field is written.
    assert ("device_peak_bytes" in r) == (jax.local_devices()[0].memory_stats() is not None)
  # Evaluation 2 covers rounds 3-4 only, after everything compiled; the elapsed time
  # from evaluation 1 to 2 covers those rounds plus evaluation 1 itself.
  assert records[1]["s_per_round"] * 2 <= records[1]["elapsed_s"] - records[0]["elapsed_s"]


def test_resume_with_another_config_is_refused(tmp_path):
  train_and_evaluate(config(rounds=2, eval_every=1), str(tmp_path / "run"))
  before = sorted(os.listdir(tmp_path / "run"))
  metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
  with pytest.raises(InputError, match=r"differs in: client.lr, seed\)"):
    train_and_evaluate(config(rounds=2, eval_every=1, seed=3, **{"client.lr": 0.1}),
                       str(tmp_path / "run"))
  assert sorted(os.listdir(tmp_path / "run")) == before
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
  train_and_evaluate(config("scaffold", rounds=2, eval_every=1), str(tmp_path / "scaffold"))
  # Foreign: SCAFFOLD's checkpoints under a FedAvg run's workdir.
  os.makedirs(tmp_path / "fedavg")
  shutil.copytree(tmp_path / "scaffold" / "checkpoints", tmp_path / "fedavg" / "checkpoints")
  with pytest.raises(InputError, match="cannot restore checkpoint"):
    train_and_evaluate(config("fedavg", rounds=4, eval_every=1), str(tmp_path / "fedavg"))
  assert not (tmp_path / "fedavg" / "metrics.jsonl").exists()
  # Corrupt: every file of the latest checkpoint overwritten with garbage.
  for path in glob.glob(str(tmp_path / "scaffold/checkpoints/2/**/*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"\x00garbage")
  metrics = (tmp_path / "scaffold" / "metrics.jsonl").read_text()
  with pytest.raises(InputError, match="cannot restore checkpoint") as e:
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

    return dataclasses.replace(exp, round_fn=round_fn)  # an Experiment is frozen

  monkeypatch.setattr(experiment_lib, "build", build)
  with pytest.raises(InputError, match=r"diverged at round 4 .*last good checkpoint is kept"):
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
  with pytest.raises(InputError, match=r"training diverged at round \d+"):
    train_and_evaluate(config(rounds=8, eval_every=1, **{"client.lr": 1e20}),
                       str(tmp_path / "run"))
  for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
    assert all(v == v for v in json.loads(line).values())  # no NaN written


@pytest.mark.parametrize("overrides,message", [
    ({"checkpoint_every": 0}, "checkpoint_every must be >= 1"),
])
def test_bad_checkpoint_settings(tmp_path, overrides, message):
  with pytest.raises(InputError, match=message):
    train_and_evaluate(config(**overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_unwritable_workdir_is_refused(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(InputError, match="not a writable directory"):
    train_and_evaluate(config(rounds=1), str(tmp_path / "file" / "run"))


def test_eta_counts_only_steady_state_rounds():
  """A fake clock: round 1 compiles for 10 s, then 1 s per round, the first evaluation 5 s."""
  from fedjax_seq.training.progress import Progress
  clock = [0.0]
  out = io.StringIO()
  progress = Progress(0, 101, out, clock=lambda: clock[0])
  clock[0] = 10.0
  progress.warmed_up(1)                       # as the loop does after the first round
  clock[0] = 20.0                             # rounds 2-11 took 1 s each
  progress.accuracy = 0.5
  clock[0] = 25.0                             # evaluating round 11 took 5 s (it compiled)
  progress.update(11, evaluated=True, now=20.0)
  # 10 rounds in 10 s: 1 round/s, 90 rounds left (not 11 rounds in 25 s: 205 s left).
  assert out.getvalue() == "round 11/101 | test acc 0.5000 | 1.00 rounds/s | ETA 0:01:30\n"
  clock[0] = 45.0                             # rounds 12-21: 2 s each, counted from the
  progress.update(21, evaluated=True, now=45.0)  # end of the first evaluation
  assert out.getvalue().splitlines()[-1].endswith("0.50 rounds/s | ETA 0:02:40")


def test_device_memory_is_recorded_where_the_backend_reports_it(tmp_path, monkeypatch):
  from fedjax_seq.training import records as records_lib

  class Device:
    def __init__(self, stats):
      self.stats = stats

    def memory_stats(self):
      return self.stats

  for stats, want in (({"peak_bytes_in_use": 123, "bytes_in_use": 5}, 123), ({}, None),
                      (None, None)):
    monkeypatch.setattr(jax, "local_devices", lambda stats=stats: [Device(stats)])
    assert records_lib.peak_device_bytes() == want
  monkeypatch.undo()
  monkeypatch.setattr(records_lib, "peak_device_bytes", lambda: 4096)
  records = train_and_evaluate(config(rounds=2, eval_every=1), str(tmp_path / "run"))
  assert [r["device_peak_bytes"] for r in records] == [4096, 4096]
  on_disk = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert on_disk == records


def read_events(path):
  """The Event protos of a TFRecord event file, checking every record's CRCs."""
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import masked_crc32c
  data, pos, events = open(path, "rb").read(), 0, []
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
    body = data[pos + 12:pos + 12 + length]
    assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(body)
    events.append(event_pb2.Event.FromString(body))
    pos += 16 + length
  return events


def test_tensorboard_scalars_equal_the_metrics(tmp_path):
  records = train_and_evaluate(config(rounds=4, eval_every=2), str(tmp_path / "run"))
  events = glob.glob(str(tmp_path / "run" / "tensorboard" / "events.out.tfevents.*"))
  assert len(events) == 1
  scalars, tags = {}, set()
  for event in read_events(events[0]):
    for value in event.summary.value:
      tags.add(value.tag)
      if value.HasField("simple_value"):
        scalars[value.tag, event.step] = value.simple_value
  assert "_hparams_/experiment" in tags and "_hparams_/session_start_info" in tags
  assert {t for t, _ in scalars} == {"test_accuracy", "test_loss", "train_loss", "rounds_per_s"}
  for r in records:
    for k in ("test_accuracy", "test_loss", "train_loss"):
      assert scalars[k, r["round"]] == pytest.approx(r[k], rel=1e-6)  # stored as float32
    assert scalars["rounds_per_s", r["round"]] > 0
  assert sorted({s for _, s in scalars}) == [2, 4]


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
  for a, b in zip(device, resumed, strict=True):
    for k in ("test_accuracy", "test_loss", "train_loss"):
      assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7)
