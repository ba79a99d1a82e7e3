"""Test-session settings: cheaper compilation, and one JAX compilation cache for the session.

The suite's time is mostly XLA compiling hundreds of small programs, so:

- XLA's backend (LLVM) optimises at level 0 without its expensive passes
  instead of its default level 3, and XLA:CPU emits fusions without its
  fusion emitters: the same programs compile faster and run slower
  (benchmarks/RESULTS.md, section 10). The few long runs (real data over
  tens of rounds) run as commands with the XLA flags the suite was started
  with (helpers.with_user_xla_flags). These settings can round float32
  arithmetic differently, so tests compare formulations with each other
  (loop = vmap, resumed = uninterrupted...) and with references at
  tolerances, all under these flags; tests/test_bit_identity.py, which holds
  the bytes of the defaults, computes them in commands run with the user's
  flags, and a test that compares two different programs bit for bit
  compiles them at XLA's defaults (helpers.call_at_xla_default) or at least
  with its fusion emitters (helpers.call_with_fusion_emitters). A level the
  user sets in XLA_FLAGS keeps all of the user's flags.
- The persistent cache turns repeated compilations (in-process and through
  main.py) into loads; a cache hit runs the same executable.

Set before JAX is imported; pytest-xdist's workers and every subprocess
inherit them (the user's own XLA flags are kept in FEDJAX_SEQ_TESTS_XLA_FLAGS);
the cache is removed when the session ends.
"""

import os
import shutil
import tempfile

import pytest

_OWN = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedjax_seq_tests_jax_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

os.environ.setdefault("FEDJAX_SEQ_TESTS_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                      "--xla_backend_optimization_level=0",
                                      "--xla_llvm_disable_expensive_passes=true",
                                      "--xla_cpu_use_fusion_emitters=false"]).strip()

import helpers  # noqa: E402  (after the cache settings: it imports JAX)


@pytest.fixture(autouse=True)
def _no_command_outlives_its_test():
  """A command a test started through tests/helpers.py and left running (the test failed
  or timed out midway) is killed with its process group when the test ends."""
  yield
  helpers.kill_leftovers()


def pytest_configure(config):
  """Tests marked xdist_group must share one worker (a fixture computed once, one command's
  results); pytest-xdist 3.8 marks them by a suffix of their id, which pytest 9 drops."""
  pytest_9 = int(pytest.__version__.split(".")[0]) >= 9
  if pytest_9 and getattr(config.option, "dist", "") == "loadgroup":
    raise pytest.UsageError("pytest-xdist 3.8 does not group tests under pytest 9: install the "
                            "versions in constraints.txt (pytest<9)")


def pytest_sessionfinish(session):
  """The process that made the cache (not an xdist worker) removes it."""
  if _OWN and not hasattr(session.config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
