"""Test-session settings: one JAX compilation cache shared by the workers and the commands they run.

Many tests compile the same small rounds (in-process and through main.py);
the persistent cache turns the repeats into loads, which shortens the suite
(benchmarks/RESULTS.md, "Test-suite and command times"). A cache hit runs the
same executable, so no number changes. Set before JAX is imported; pytest-xdist's
workers and every subprocess inherit it; removed when the session ends.
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

import helpers  # noqa: E402  (after the cache settings: it imports JAX)


@pytest.fixture(autouse=True)
def _no_command_outlives_its_test():
  """A command a test started through tests/helpers.py and left running (the test failed
  or timed out midway) is killed with its process group when the test ends."""
  yield
  helpers.kill_leftovers()


def pytest_sessionfinish(session):
  """The process that made the cache (not an xdist worker) removes it."""
  if _OWN and not hasattr(session.config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
