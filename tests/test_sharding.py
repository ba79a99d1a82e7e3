"""Sharded rounds (4 forced host devices, in a subprocess) equal single-device rounds."""

import os

from helpers import python

HERE = os.path.dirname(os.path.abspath(__file__))


def test_sharded_rounds_equal_single_device_rounds():
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
  proc = python(os.path.join(HERE, "sharded_rounds.py"), env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[-1] == "OK" and sum(l.startswith("equal:") for l in lines) == 3, proc.stdout
