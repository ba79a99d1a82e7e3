"""One run per workdir: an OS lock that a second run is refused by and a killed run leaves free."""

import os
import signal
import socket
import subprocess
import sys

import pytest

import helpers
from helpers import Command, tiny_config, tiny_flags
from fedjax_seq.errors import InputError
from fedjax_seq.training.workdir import LOCK_FILE, WorkdirLock
from fedjax_seq.training.train import train_and_evaluate

SMALL = {"rounds": 2, "eval_every": 1}  # on the tiny run (tests/helpers.py)
# A process that takes the lock, says so, and holds it until killed or its stdin closes.
HOLDER = ("import sys; from fedjax_seq.training.workdir import WorkdirLock; "
          "lock = WorkdirLock(sys.argv[1]); print('locked', flush=True); sys.stdin.read()")


def config(**overrides):
  return tiny_config(**{**SMALL, **overrides})


def main_py(workdir, *extra):
  return helpers.main_py("--config=configs/fedavg.py", f"--workdir={workdir}",
                         *tiny_flags(**SMALL), *extra)


def snapshot(workdir) -> dict[str, bytes]:
  """Every file under workdir, by relative path, with its bytes."""
  out = {}
  for base, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(base, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, workdir)] = fh.read()
  return out


def test_a_second_run_is_refused_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  train_and_evaluate(config(), str(workdir))
  with WorkdirLock(str(workdir)):  # this test process now holds the workdir
    before = snapshot(workdir)
    # Same workdir, more rounds: unlocked, this would resume and rewrite every file.
    proc = main_py(workdir, "--config.rounds=4")
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines == [f"error: workdir {workdir} is in use by pid {os.getpid()} on host "
                     f"{socket.gethostname()}"], proc.stderr
    assert snapshot(workdir) == before
  assert set(before) >= {"config.json", "metrics.jsonl", "run.json", LOCK_FILE}


def test_in_process_refusal_names_the_holder_and_leaves_a_new_workdir_alone(tmp_path):
  workdir = tmp_path / "new"
  with WorkdirLock(str(workdir)):
    with pytest.raises(InputError, match=f"workdir {workdir} is in use by pid {os.getpid()} "):
      train_and_evaluate(config(), str(workdir))
    assert os.listdir(workdir) == [LOCK_FILE]
  # The holder created the workdir and nothing else was written: releasing removes it.
  assert not workdir.exists()


def test_a_killed_holder_leaves_the_workdir_free(tmp_path):
  workdir = tmp_path / "run"
  with Command([sys.executable, "-c", HOLDER, str(workdir)], read="stdout",
               stdin=subprocess.PIPE) as holder:
    assert holder.wait_for_line("", timeout=120) == "locked\n"  # its first line
    refused = main_py(workdir)
    assert refused.returncode == 1
    assert f"is in use by pid {holder.pid} on host {socket.gethostname()}" in refused.stderr
    assert sorted(os.listdir(workdir)) == [LOCK_FILE]
    holder.send_signal(signal.SIGKILL)
    holder.finish(timeout=60)
  assert holder.returncode == -signal.SIGKILL
  done = main_py(workdir)  # at once: the kernel dropped the lock with its process
  assert done.returncode == 0, done.stderr
  assert "final test accuracy" in done.stderr


def test_compare_with_locks_each_sub_workdir_without_deadlock(tmp_path):
  workdir = tmp_path / "run"
  c = config(compare_with="fairavg")
  with WorkdirLock(str(workdir / "fairavg")):
    with pytest.raises(InputError, match=f"workdir {workdir / 'fairavg'} is in use"):
      train_and_evaluate(c, str(workdir))
  train_and_evaluate(c, str(workdir))  # the parent holds its lock while the sub-run takes its own
  for d in (workdir, workdir / "fairavg"):
    assert (d / "metrics.jsonl").read_text().count("\n") == 2
    with WorkdirLock(str(d)):  # both released at the end
      pass
