"""Run in a subprocess with 4 host devices: sharded rounds equal single-device rounds.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharded_rounds.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import reference as ref  # noqa: E402
from helpers import assert_trees_close  # noqa: E402
from fedjax_seq.algorithms import rules  # noqa: E402
from fedjax_seq.algorithms.fedavg import fedavg, scaffold  # noqa: E402
from fedjax_seq.algorithms.fedseq import fedseq, make_superclients  # noqa: E402
from fedjax_seq.core.rounds import make_round  # noqa: E402
from fedjax_seq.core.sharding import make_mesh  # noqa: E402
from fedjax_seq.core.state import client_rows  # noqa: E402

SIZES = [5, 3, 8, 2, 4, 6, 7, 1]  # K = 8 (divisible by 4)
GROUPS = [np.array([2, 0, 5]), np.array([1, 4]), np.array([3, 6]), np.array([7])]


def main():
  assert len(jax.devices()) == 4, jax.devices()
  mesh = make_mesh(0)
  _, _, data = ref.tiny_data(SIZES)
  tr = ref.trainer(lr=0.4, epochs=2, batch_size=3)
  sc = make_superclients(GROUPS, np.array(SIZES))
  algorithms = {
      "fedavg, 6 of 8 clients (6 % 4 != 0)": fedavg(tr, 8, 0.75),
      "scaffold, 4 of 8 clients": scaffold(tr, 8, 0.5),
      "fedseq+dyn, 3 of 4 superclients": fedseq(tr, sc, 8, 0.75, rule=rules.dyn(alpha=0.2)),
  }
  for name, alg in algorithms.items():
    single, sharded = make_round(alg, "vmap"), make_round(alg, "vmap", mesh)
    a, b = alg.init(ref.init_params()), alg.init(ref.init_params())
    for r in range(2):
      a, _ = single(a, data, jax.random.key(r))
      b, _ = sharded(b, data, jax.random.key(r))
    assert_trees_close(a, b, rtol=1e-5, atol=1e-6)
    rows = client_rows(b)  # the declared per-client state
    assert len(rows) == (0 if name.startswith("fedavg") else 1), name
    for leaf in jax.tree.leaves(rows):
      assert len(leaf.sharding.device_set) == 4, (name, leaf.sharding)
    print("equal:", name)
  print("OK")


if __name__ == "__main__":
  main()
