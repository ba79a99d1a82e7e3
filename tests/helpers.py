"""What the test files share: the tiny run, commands under a deadline, tree comparisons.

- `tiny_config` / `TINY`: the one small synthetic run that tests use when
  all they need is "a run" (resume, locks, metrics files, refusals...). One
  shape everywhere, so the programs it compiles are compiled once per
  session: the JAX persistent compilation cache (tests/conftest.py) hits
  across files and across main.py subprocesses.
- `run`, `main_py`, `Command`, `wait_until`: every subprocess and every
  polling loop under a deadline. A command that overruns is killed with
  its whole process group (main.py re-executes itself; a sweep starts
  main.py) and the test fails saying which command and what it printed.
- `call_at_xla_default`, `call_with_fusion_emitters` (and
  `compile_with_fusion_emitters`, to call it again): a call compiled with
  XLA's own code generation (or nearer to it than the suite's), for claims
  of bit-for-bit equality between two programs;
  `with_user_xla_flags`: the environment of a command that runs with the
  XLA flags the suite was started with (long runs, the golden bytes).
- `assert_trees_equal` / `assert_trees_close`: two pytrees, leaf by leaf,
  refusing trees of different structure (a bare zip stops at the shorter).
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Seconds a command may take before it is killed: far more than any command here needs
# (the slowest main.py run of the suite takes about 20 s alone, 60 s on a busy machine),
# and less than the per-test timeout in setup.cfg, so a hang fails with this file's
# message (the command and its output) rather than pytest-timeout's.
DEADLINE = 300


# XLA's own code generation. The suite compiles with cheaper settings (tests/conftest.py); a
# test whose claim is bit-for-bit equality of two different programs compiles them with these,
# or at least with XLA's fusion emitters back on: without them XLA:CPU emits its fusions in
# other ways, which can round two formulations of one computation differently.
XLA_DEFAULT_CODEGEN = {"xla_backend_optimization_level": 3,
                       "xla_llvm_disable_expensive_passes": False,
                       "xla_cpu_use_fusion_emitters": True}
FUSION_EMITTERS = {"xla_cpu_use_fusion_emitters": True}


def call_at_xla_default(fn, *args):
  """fn(*args), jitted and compiled with XLA's default code generation."""
  return jax.jit(fn).lower(*args).compile(compiler_options=XLA_DEFAULT_CODEGEN)(*args)


def compile_with_fusion_emitters(fn, *args):
  """fn jitted and compiled for `args`' shapes at the suite's backend level with XLA's fusion
  emitters on (cheaper than XLA's defaults, for larger programs: a LeNet round); the compiled
  function takes any arguments of those shapes, so a loop of rounds compiles once."""
  return jax.jit(fn).lower(*args).compile(compiler_options=FUSION_EMITTERS)


def call_with_fusion_emitters(fn, *args):
  """fn(*args), compiled by `compile_with_fusion_emitters`."""
  return compile_with_fusion_emitters(fn, *args)(*args)


def with_user_xla_flags() -> dict:
  """This process's environment with XLA_FLAGS as the user started the suite: for a command
  whose numbers must be the defaults' (the golden bytes) or that runs long enough for the
  suite's cheaper compilation to cost more than it saves (tests/conftest.py)."""
  return dict(os.environ, XLA_FLAGS=os.environ.get("FEDJAX_SEQ_TESTS_XLA_FLAGS", ""))


# ----------------------------------------------------------------------- the tiny run

# 20 synthetic clients of 40 CIFAR-shaped images, the MLP, 5 clients a round; FedSeq's
# formation pre-trains 1 epoch and groups up to 4 clients of >= 100 examples.
TINY = {"data.name": "synthetic", "data.synthetic.train_size": 800,
        "data.synthetic.test_size": 200, "data.num_clients": 20, "model.name": "mlp",
        "client.fraction": 0.25, "client.lr": 0.05, "fedseq.evaluator_model": "mlp",
        "fedseq.pretrain_epochs": 1, "fedseq.min_examples": 100, "fedseq.max_clients": 4}


def override(config, overrides: dict):
  """Sets dotted config paths (e.g. "data.name") in place; returns the config."""
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_config(algorithm: str = "fedavg", **overrides):
  """The default config on the tiny run; `overrides` by dotted path ("rounds", "client.lr")."""
  from configs import default  # pylint: disable=import-outside-toplevel
  c = default.get_config()
  c.algorithm.name = algorithm
  return override(c, {**TINY, **overrides})


def tiny_flags(*, omit: tuple[str, ...] = (), **overrides) -> list[str]:
  """The tiny run as main.py flags (--config.PATH=VALUE), `overrides` by dotted path; the
  fields in `omit` are left out (e.g. one a sweep sets itself)."""
  return [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items() if k not in omit]


# ------------------------------------------------------------------ commands, deadlines


class DeadlineExceeded(AssertionError):
  """A command or a wait ran past its deadline (the command was killed)."""


_LIVE = weakref.WeakSet()  # processes started here and not yet reaped


def _kill_group(proc: subprocess.Popen) -> None:
  """SIGKILL to the process and everything it started (its own session)."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  try:
    proc.wait(timeout=30)
  except subprocess.TimeoutExpired:
    pass


def kill_leftovers() -> None:
  """Kills every command started here that is still running (a test that failed midway)."""
  for proc in list(_LIVE):
    if proc.poll() is None:
      _kill_group(proc)


def _tail(text, n: int = 3000) -> str:
  if isinstance(text, bytes):
    text = text.decode(errors="replace")
  return (text or "")[-n:]


def run(args, *, timeout: float = DEADLINE, cwd: str = ROOT, env=None,
        input: str | None = None  # pylint: disable=redefined-builtin
        ) -> subprocess.CompletedProcess:
  """subprocess.run(args, capture_output=True, text=True) from the repository root, with a
  deadline: past `timeout` seconds the command and its children are killed and
  DeadlineExceeded is raised with what it had printed."""
  proc = subprocess.Popen(args, cwd=cwd, env=env, text=True, start_new_session=True,
                          stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  _LIVE.add(proc)
  try:
    out, err = proc.communicate(input, timeout=timeout)
  except subprocess.TimeoutExpired:
    _kill_group(proc)
    try:
      out, err = proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError):
      out, err = "", ""
    raise DeadlineExceeded(f"{' '.join(map(str, args))} ran past its {timeout} s deadline and "
                           f"was killed; stdout: {_tail(out)!r}; stderr: {_tail(err)!r}") from None
  except BaseException:
    _kill_group(proc)
    raise
  return subprocess.CompletedProcess(args, proc.returncode, out, err)


def python(*args, **kwargs) -> subprocess.CompletedProcess:
  """`run` of this Python interpreter with `args` (a script or -m/-c and its arguments)."""
  return run([sys.executable, *map(str, args)], **kwargs)


def main_py(*args, **kwargs) -> subprocess.CompletedProcess:
  """`run` of python main.py ARGS from the repository root."""
  return python("main.py", *args, **kwargs)


class Command:
  """A command running in the background whose output lines are read under deadlines.

  One stream (stderr by default) is read line by line by a thread, so a wait
  for a line never blocks past its deadline. Use as a context manager: on
  leaving, a command still running is killed with its process group.
  """

  def __init__(self, args, *, read: str = "stderr", cwd: str = ROOT, env=None,
               stdin=subprocess.DEVNULL):
    self.args = list(map(str, args))
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    streams[read] = subprocess.PIPE
    self.proc = subprocess.Popen(self.args, cwd=cwd, env=env, text=True, stdin=stdin,
                                 start_new_session=True, **streams)
    _LIVE.add(self.proc)
    self.lines: list[str] = []  # every line read so far
    self._queue: queue.Queue = queue.Queue()
    self._reader = threading.Thread(target=self._read, args=(getattr(self.proc, read),),
                                    daemon=True)
    self._reader.start()

  def _read(self, stream) -> None:
    for line in stream:
      self._queue.put(line)
    self._queue.put(None)  # end of the stream

  @property
  def pid(self) -> int:
    return self.proc.pid

  def _fail(self, what: str) -> DeadlineExceeded:
    self.kill()
    return DeadlineExceeded(f"{' '.join(self.args)}: {what}; it printed: "
                            f"{_tail(''.join(self.lines))!r}")

  def _next_line(self, end: float, what: str) -> str | None:
    """The next line (None: the stream closed); past the monotonic time `end`, kills the
    command and raises DeadlineExceeded saying `what`."""
    try:
      return self._queue.get(timeout=max(end - time.monotonic(), 0))
    except queue.Empty:
      raise self._fail(what) from None

  def wait_for_line(self, prefix: str, timeout: float = DEADLINE) -> str:
    """The first new line starting with `prefix`; fails if the command ends or the deadline
    passes first (and kills it)."""
    end = time.monotonic() + timeout
    while True:
      line = self._next_line(end, f"no line starting with {prefix!r} within {timeout} s")
      if line is None:
        self.proc.wait()
        raise AssertionError(f"{' '.join(self.args)} exited ({self.proc.returncode}) before "
                             f"printing {prefix!r}: {_tail(''.join(self.lines))}")
      self.lines.append(line)
      if line.startswith(prefix):
        return line

  def finish(self, timeout: float = DEADLINE) -> str:
    """Waits for the command to exit and its stream to close; the lines not yet returned."""
    end = time.monotonic() + timeout
    rest = []
    while True:
      line = self._next_line(end, f"did not finish within {timeout} s")
      if line is None:
        break
      self.lines.append(line)
      rest.append(line)
    try:
      self.proc.wait(timeout=max(end - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      raise self._fail(f"closed its output but did not exit within {timeout} s") from None
    return "".join(rest)

  @property
  def returncode(self) -> int | None:
    return self.proc.poll()

  def send_signal(self, sig: int) -> None:
    self.proc.send_signal(sig)

  def kill(self) -> None:
    """SIGKILL to the command's process group; waits for it."""
    if self.proc.poll() is None:
      _kill_group(self.proc)

  def __enter__(self) -> "Command":
    return self

  def __exit__(self, *exc) -> None:
    self.kill()


def wait_until(condition, timeout: float, what: str, interval: float = 0.02):
  """Polls `condition()` until it returns a true value (returned); DeadlineExceeded after
  `timeout` seconds, naming `what` was awaited."""
  end = time.monotonic() + timeout
  while True:
    value = condition()
    if value:
      return value
    if time.monotonic() > end:
      raise DeadlineExceeded(f"waited {timeout} s for {what}")
    time.sleep(interval)


def run_module(module, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
  """`run` of python -m MODULE ARGS."""
  return python("-m", module, *args, env=env, timeout=timeout)


def assert_one_error_line(proc, fragment=""):
  """The command failed with one `error: ...` line on stderr (holding `fragment`)."""
  assert proc.returncode != 0, proc.stdout + proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert fragment in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------- fake workdirs


def write_run(path, config, records, superclients=None):
  """A workdir as a run leaves it: config.json, metrics.jsonl and superclients.json."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config))
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  if superclients is not None:
    (path / "superclients.json").write_text(json.dumps(superclients))
  return path


def fake_config(algorithm, alpha, seed, rounds=300, dataset="cifar10"):
  """The fields of a config.json that results and plots read."""
  return {"algorithm": {"name": algorithm}, "data": {"name": dataset, "alpha": alpha,
                                                     "iid": False},
          "rounds": rounds, "seed": seed}


def record(r, accuracy, elapsed):
  """One line of metrics.jsonl."""
  return {"round": r, "test_accuracy": accuracy, "test_loss": 1.0, "train_loss": 1.0,
          "elapsed_s": elapsed}


# ----------------------------------------------------------------------- FLOPs by hand

# LeNet on 32x32x3, multiply-adds per example, by hand:
# conv1 28*28 outputs x 5*5*3 inputs x 64; conv2 10*10 x 5*5*64 x 64; fc 1600x384, 384x192, 192x10.
LENET_MACS = [28 * 28 * 75 * 64, 10 * 10 * 1600 * 64, 1600 * 384, 384 * 192, 192 * 10]
MLP_MACS = [3072 * 200, 200 * 200, 200 * 10]


def train_flops(macs):
  """Forward + weight gradients + input gradients of all layers but the first, 2 FLOPs a MAC."""
  return 2 * sum(macs) + 2 * sum(macs) + 2 * sum(macs[1:])


# ------------------------------------------------------------------------- pytrees


def _pairs(a, b):
  """The leaves of two pytrees side by side; the trees must have one structure."""
  sa, sb = jax.tree.structure(a), jax.tree.structure(b)
  assert sa == sb, f"the trees differ in structure:\n{sa}\n{sb}"
  return zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)


def assert_leaves_match(tree, expected, rtol=1e-5, atol=1e-6):
  """Every leaf of a reference-model pytree (params or per-client state) against (w, b).

  The reference model (tests/reference.py) has exactly one layer, so (kernel,
  bias) is every leaf; a tree with any other leaf fails rather than going unchecked.
  """
  import reference as ref  # pylint: disable=import-outside-toplevel
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  names = sorted(jax.tree_util.keystr(path) for path, _ in leaves)
  assert names == ["['params']['fc1']['bias']", "['params']['fc1']['kernel']"], names
  got = ref.to_np(tree)
  np.testing.assert_allclose(got[0], expected[0], rtol=rtol, atol=atol)
  np.testing.assert_allclose(got[1], expected[1], rtol=rtol, atol=atol)


def assert_trees_equal(a, b) -> None:
  """Every leaf of `a` equals the same leaf of `b` bit for bit (shape and dtype too)."""
  for i, (x, y) in enumerate(_pairs(a, b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype, (i, x.dtype, y.dtype)
    np.testing.assert_array_equal(x, y, err_msg=f"leaf {i}", strict=True)


def assert_trees_close(a, b, rtol: float, atol: float) -> None:
  """Every leaf of `a` within (rtol, atol) of the same leaf of `b`, shapes equal."""
  for i, (x, y) in enumerate(_pairs(a, b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape, (i, x.shape, y.shape)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"leaf {i}")
