"""Per-client state kept in host memory equals device-resident state."""

import jax
import numpy as np
import pytest

import reference as ref
from helpers import assert_trees_close
from fedjax_seq.algorithms import rules
from fedjax_seq.algorithms.fedavg import feddyn, scaffold
from fedjax_seq.algorithms.fedseq import fedseq, make_superclients
from fedjax_seq.algorithms.fedseq_inter import fedseq_inter
from fedjax_seq.core.rounds import make_round, with_host_client_state
from fedjax_seq.core.state import client_rows

SIZES = [5, 3, 8, 2, 4, 6]
GROUPS = [np.array([2, 0, 5]), np.array([1, 4]), np.array([3])]


def algorithms():
  tr = ref.trainer(lr=0.4, epochs=2, batch_size=3)
  sc = make_superclients(GROUPS, np.array(SIZES))
  dyn = rules.dyn(alpha=0.2)
  return {"scaffold": scaffold(tr, 6, 0.5), "feddyn": feddyn(tr, 6, 0.5, alpha=0.2),
          "fedseq_dyn": fedseq(tr, sc, 6, 0.67, rule=dyn),
          "fedseq_inter_dyn": fedseq_inter(tr, sc, 6, 0.67, rule=dyn, period=2)}


# Each family with state under one strategy at least; SCAFFOLD (the plain round) and
# FedSeqInter (a chain and a bank) under both: the host wrapper is the same for every family.
@pytest.mark.parametrize("name,strategy", [
    ("scaffold", "vmap"), ("scaffold", "loop"), ("feddyn", "vmap"), ("fedseq_dyn", "loop"),
    ("fedseq_inter_dyn", "vmap"), ("fedseq_inter_dyn", "loop")])
def test_host_resident_client_state_equals_device_resident(name, strategy):
  _, _, data = ref.tiny_data(SIZES)
  alg = algorithms()[name]
  on_device = make_round(alg, strategy)
  on_host = with_host_client_state(alg, make_round(alg, strategy))
  a, b = alg.init(ref.init_params()), alg.init(ref.init_params())
  for r in range(3):
    a, _ = on_device(a, data, jax.random.key(r))
    b, _ = on_host(b, data, jax.random.key(r))
  (table,) = client_rows(b)  # the declared per-client state
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(table))
  assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(table))
  assert_trees_close(a, b, rtol=1e-6, atol=1e-7)
