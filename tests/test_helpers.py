"""The suite's own mechanics (tests/helpers.py): deadlines kill what overruns, trees compare whole."""

import sys
import time

import numpy as np
import pytest

from helpers import (Command, DeadlineExceeded, assert_trees_close, assert_trees_equal, run,
                     wait_until)

# Sleeps, after starting a child that sleeps too and printing the child's pid.
SLEEPER = ("import subprocess, sys, time; "
           "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
           "print(child.pid, flush=True); print('started', file=sys.stderr, flush=True); "
           "time.sleep(600)")


def alive(pid: int) -> bool:
  """Whether pid is a running process (a zombie left for its parent to reap counts as gone)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_a_command_past_its_deadline_is_killed_with_its_children():
  start = time.monotonic()
  with pytest.raises(DeadlineExceeded, match=r"ran past its 3 s deadline and was killed") as e:
    run([sys.executable, "-c", SLEEPER], timeout=3)
  assert time.monotonic() - start < 60  # not the 600 s the command would sleep
  assert "started" in str(e.value)  # what it printed is in the message
  child = int(str(e.value).split("stdout: '")[1].split("\\n")[0])
  wait_until(lambda: not alive(child), timeout=30, what=f"the child {child} to be gone")


def test_a_command_within_its_deadline_returns_its_output():
  proc = run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
             timeout=120)
  assert (proc.returncode, proc.stdout, proc.stderr) == (0, "out\n", "err\n")


def test_waiting_for_a_line_that_never_comes_fails_at_the_deadline():
  start = time.monotonic()
  with Command([sys.executable, "-c", SLEEPER]) as cmd:
    assert cmd.wait_for_line("started", timeout=120) == "started\n"
    with pytest.raises(DeadlineExceeded, match="no line starting with 'round' within 2 s"):
      cmd.wait_for_line("round", timeout=2)
    assert cmd.returncode is not None  # killed by the failed wait
  assert time.monotonic() - start < 120
  with Command([sys.executable, "-c", SLEEPER]) as cmd:
    pid = cmd.pid
    with pytest.raises(DeadlineExceeded, match="did not finish within 1 s"):
      cmd.finish(timeout=1)
  assert not alive(pid)


def test_a_command_that_ends_without_the_line_fails_at_once():
  with Command([sys.executable, "-c", "import sys; print('bye', file=sys.stderr)"]) as cmd:
    with pytest.raises(AssertionError, match=r"exited \(0\) before printing 'round'"):
      cmd.wait_for_line("round", timeout=120)


def test_a_poll_past_its_deadline_fails():
  start = time.monotonic()
  with pytest.raises(DeadlineExceeded, match="waited 0.5 s for a thing that never happens"):
    wait_until(lambda: False, timeout=0.5, what="a thing that never happens")
  assert time.monotonic() - start < 30
  assert wait_until(lambda: 7, timeout=1, what="seven") == 7


def test_leftover_commands_are_killed_when_the_test_ends():
  """conftest.py's autouse fixture calls kill_leftovers after every test."""
  import helpers  # pylint: disable=import-outside-toplevel
  cmd = Command([sys.executable, "-c", SLEEPER])
  cmd.wait_for_line("started", timeout=120)
  helpers.kill_leftovers()
  assert cmd.returncode is not None and not alive(cmd.pid)


def test_trees_must_match_in_structure_not_only_in_common_leaves():
  a = {"w": np.ones(3), "b": np.zeros(2)}
  assert_trees_equal(a, {"w": np.ones(3), "b": np.zeros(2)})
  assert_trees_close(a, {"w": np.ones(3) + 1e-9, "b": np.zeros(2)}, rtol=1e-6, atol=0)
  for other in ({"w": np.ones(3)},                                  # a leaf fewer
                {"w": np.ones(3), "b": np.zeros(2), "c": np.ones(1)},  # a leaf more
                {"w": np.ones(3), "b": np.zeros(3)}):               # another shape
    with pytest.raises(AssertionError):
      assert_trees_equal(a, other)
    with pytest.raises(AssertionError):
      assert_trees_close(a, other, rtol=1e-6, atol=0)
  with pytest.raises(AssertionError):
    assert_trees_equal(a, {"w": np.ones(3, np.float32), "b": np.zeros(2)})  # another dtype
  with pytest.raises(AssertionError):
    assert_trees_equal(a, {"w": np.ones(3), "b": np.array([0.0, 1e-30])})
