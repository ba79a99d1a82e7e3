"""Every algorithm's numbers at its config's defaults, bit for bit, against values saved earlier.

Each case builds a named config (configs/NAME.py) on tiny synthetic data with
the MLP, runs three rounds with each strategy and compares, with the values
in tests/bit_identity.json saved from the code before the algorithms were
recomposed (client rules as values, server optimizers, registry):

- the SHA-256 of every server parameter's raw bytes (and, to read a failure,
  each leaf's exact float64 sum);
- the multiset of SHA-256s of every leaf of the whole algorithm state (per-
  client rows, SCAFFOLD's c, FedDyn's h, FedSeqInter's bank...), so the
  state's layout may change but not one of its numbers;
- every round's training loss (float32 bytes).

FedSeq-family cases read a fixed grouping (`fedseq.superclients_from`), so
they do not depend on superclient formation. The published code's switches
come from `configs/paper.published_code`.

Regenerate (only when a change of numbers is intended and explained):
  python tests/test_bit_identity.py --write
"""

import hashlib
import json
import os
import sys

import jax
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from configs import paper  # noqa: E402
from fedjax_seq.training import experiment  # noqa: E402

EXPECTED = os.path.join(HERE, "bit_identity.json")
ROUNDS = 3
GROUPS = [[0, 5, 9], [1, 2], [3, 7, 11, 4], [6, 8, 10]]
NAMES = ("fedavg", "fairavg", "fedprox", "scaffold", "feddyn", "fedseq", "fedseq_prox",
         "fedseq_dyn", "fedseq_inter", "fedseq_inter_prox", "fedseq_inter_dyn", "centralized")
# name -> (config file, published-code switches on, extra overrides)
CASES = {
    **{n: (n, False, {}) for n in NAMES},
    **{f"{n}:original": (n, True, {}) for n in ("feddyn", "fedseq_dyn", "fedseq_inter",
                                                 "fedseq_inter_prox", "fedseq_inter_dyn",
                                                 "centralized")},
    "fedseq:dropout,es2": ("fedseq", False, {"fedseq.dropout": 0.4,
                                              "fedseq.sequential_rounds": 2}),
    "fedseq:dropout,original": ("fedseq", True, {"fedseq.dropout": 0.4}),
    "fedprox:momentum": ("fedprox", False, {"client.momentum": 0.5}),
    "fedseq_prox:momentum": ("fedseq_prox", False, {"client.momentum": 0.5}),
}
STRATEGIES = ("loop", "vmap")


def small_config(name: str, published: bool, overrides: dict, strategy: str, groups_file: str):
  import importlib
  c = importlib.import_module(f"configs.{name}").get_config()
  if published:
    paper.published_code(c)
  c.data.name, c.data.num_clients, c.model.name = "synthetic", 12, "mlp"
  c.data.synthetic.update(train_size=240, test_size=40, height=8, width=8, channels=1,
                          num_classes=4)
  c.data.exemplars_per_class = 2
  c.client.update(fraction=0.5, batch_size=8, lr=0.05)
  c.rounds = ROUNDS
  c.engine.strategy = strategy
  c.fedseq.superclients_from = groups_file
  for path, value in overrides.items():
    section, field = path.split(".")
    c[section][field] = value
  return c


def digest(x) -> str:
  x = np.asarray(x)
  return hashlib.sha256(f"{x.dtype}{x.shape}".encode() + x.tobytes()).hexdigest()


def fingerprint(case: str, strategy: str, groups_file: str) -> dict:
  """Three rounds of a case: hashes of its parameters, its whole state and its losses."""
  name, published, overrides = CASES[case]
  exp = experiment.build(small_config(name, published, overrides, strategy, groups_file))
  state = exp.algorithm.init(exp.init_params)
  losses = []
  for r in range(1, ROUNDS + 1):
    state, metrics = exp.round_fn(state, exp.data, experiment.round_key(0, r))
    losses.append(np.asarray(metrics["train_loss"], np.float32).tobytes().hex())
  params = jax.tree.leaves(state.params)
  return {"params": [digest(p) for p in params],
          "param_sums": [float(np.asarray(p, np.float64).sum()) for p in params],
          "state": sorted(digest(x) for x in jax.tree.leaves(state)),
          "losses": losses}


@pytest.fixture(scope="module")
def groups_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("groups") / "groups.json"
  path.write_text(json.dumps({"superclients": [{"clients": g} for g in GROUPS]}))
  return str(path)


@pytest.fixture(scope="module")
def expected():
  with open(EXPECTED) as f:
    return json.load(f)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", list(CASES))
def test_numbers_are_unchanged(case, strategy, groups_file, expected):
  got = fingerprint(case, strategy, groups_file)
  want = expected[f"{case}/{strategy}"]
  assert got["losses"] == want["losses"], (got["losses"], want["losses"])
  assert got["params"] == want["params"], (got["param_sums"], want["param_sums"])
  assert got["state"] == want["state"]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
  import tempfile
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "groups.json")
    with open(path, "w") as f:
      json.dump({"superclients": [{"clients": g} for g in GROUPS]}, f)
    out = {f"{c}/{s}": fingerprint(c, s, path) for c in CASES for s in STRATEGIES}
  with open(EXPECTED, "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
  print(f"wrote {len(out)} cases to {EXPECTED}")
