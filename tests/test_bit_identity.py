"""Every algorithm's numbers at its config's defaults, bit for bit, against values saved earlier.

Each case builds a named config (configs/NAME.py) on tiny synthetic data with
the MLP, runs three rounds vmapped (the defaults' strategy for it on a CPU),
and those in LOOP_CASES with the loop strategy too, and compares, with the
values in tests/bit_identity.json saved from the code before the algorithms
were recomposed (client rules as values, server optimizers, registry):

- the SHA-256 of every server parameter's raw bytes (and, to read a failure,
  each leaf's exact float64 sum);
- the multiset of SHA-256s of every leaf of the whole algorithm state (per-
  client rows, SCAFFOLD's c, FedDyn's h, FedSeqInter's bank...), so the
  state's layout may change but not one of its numbers;
- every round's training loss (float32 bytes).

Bytes are compared only on the setup the file was written on (its "_setup":
jax and jaxlib versions, CPU model, device kind): XLA may reorder float
arithmetic between releases and CPUs. Everywhere, the same numbers are
compared at a stated tolerance (RTOL), from what the file also holds as
numbers: per parameter leaf its float64 sum, sum of squares and a few
sampled values, and every round's loss as a float. So a new jax release
says "numbers moved by 3e-07" (a warning) where the bytes differ, and fails
only beyond RTOL, naming the largest relative difference found.

The cases run in two commands, one per strategy (`--fingerprints`), with the
XLA flags the suite was started with: tests/conftest.py lowers XLA's
optimisation level for the rest of the suite, which can round differently.

FedSeq-family cases read a fixed grouping (`fedseq.superclients_from`), so
they do not depend on superclient formation. The published code's switches
come from `configs/paper.published_code`. The ":unequal" cases split the
data by Dirichlet(0.5), so clients differ in size and FairAvg's uniform
weighting differs from FedAvg's weighting by size (elsewhere every client
holds 20 examples, and the two would coincide).

Add a new case's values, checking (not rewriting) every existing case's bytes:
  python tests/test_bit_identity.py --add
Regenerate all (only when a change of numbers is intended and explained):
  python tests/test_bit_identity.py --write
"""

import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
import warnings

import jax
import jaxlib
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import helpers  # noqa: E402
from configs import paper  # noqa: E402
from fedjax_seq.training import experiment  # noqa: E402

EXPECTED = os.path.join(HERE, "bit_identity.json")
ROUNDS = 3
GROUPS = [[0, 5, 9], [1, 2], [3, 7, 11, 4], [6, 8, 10]]
# FairAvg appears only with clients of unequal sizes: on equal ones its numbers are FedAvg's.
NAMES = ("fedavg", "fedprox", "scaffold", "feddyn", "fedseq", "fedseq_prox", "fedseq_dyn",
         "fedseq_inter", "fedseq_inter_prox", "fedseq_inter_dyn", "centralized")
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
    "fedavg:unequal": ("fedavg", False, {"data.alpha": 0.5}),
    "fairavg:unequal": ("fairavg", False, {"data.alpha": 0.5}),
}
STRATEGIES = ("loop", "vmap")
# The strategy the defaults choose for these configs on a CPU is vmap (a dense model), so every
# case runs vmapped. The loop strategy (clients one after another, as the defaults run lax.conv
# models on a CPU) runs every case outside the FedSeq family, where its numbers differ from
# vmap's, and three of the family: there a superclient's sequential pass is the same scan under
# both strategies, and every family case's stored parameters and state are identical under the
# two (the family's loop strategy is also checked at a tolerance, against the vmapped round or a
# NumPy reference, by tests/test_fedseq.py and tests/test_published.py).
LOOP_CASES = ("fedavg", "fedprox", "scaffold", "feddyn", "centralized", "feddyn:original",
              "centralized:original", "fedprox:momentum", "fedavg:unequal", "fairavg:unequal",
              "fedseq", "fedseq_dyn", "fedseq_inter:original")


def cases_under(strategy: str) -> list[str]:
  """The cases whose numbers are kept under `strategy`."""
  return list(LOOP_CASES) if strategy == "loop" else list(CASES)


# Numbers may move by this much, relatively (largest_relative_difference), where the bytes are
# not compared (another jax, jaxlib or CPU). Measured on this file's values: the loop and vmap
# programs of one case, which XLA compiles and orders differently, differ by at most 1.2e-7
# (an ulp of float32); FairAvg and FedAvg on unequal clients by 0.086.
RTOL = 1e-4


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


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), or what platform knows of it."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def current_setup() -> dict:
  """What decides the bytes besides the code: jax, jaxlib, the CPU and the device."""
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu": cpu_model(),
          "device_kind": jax.devices()[0].device_kind}


def sample_positions(size: int) -> list[int]:
  """The flat indices of a leaf whose values are kept: first, a third, two thirds, last."""
  return sorted({0, size // 3, 2 * size // 3, size - 1})


def fingerprint(case: str, strategy: str, groups_file: str, exp=None) -> dict:
  """Three rounds of a case: hashes of its parameters, its whole state and its losses, and
  the same as numbers (per parameter leaf: float64 sum, sum of squares, sampled values)."""
  name, published, overrides = CASES[case]
  if exp is None:
    exp = experiment.build(small_config(name, published, overrides, strategy, groups_file))
  state = exp.algorithm.init(exp.init_params)
  losses = []
  for r in range(1, ROUNDS + 1):
    state, metrics = exp.round_fn(state, exp.data, experiment.round_key(0, r))
    losses.append(np.asarray(metrics["train_loss"], np.float32))
  params = [np.asarray(p, np.float64) for p in jax.tree.leaves(state.params)]
  return {"params": [digest(p) for p in jax.tree.leaves(state.params)],
          "param_sums": [float(p.sum()) for p in params],
          "param_sizes": [p.size for p in params],
          "param_sumsqs": [float((p * p).sum()) for p in params],
          "param_samples": [[float(p.flat[i]) for i in sample_positions(p.size)] for p in params],
          "state": sorted(digest(x) for x in jax.tree.leaves(state)),
          "losses": [l.tobytes().hex() for l in losses],
          "loss_values": [float(l) for l in losses],
          "client_sizes": np.asarray(exp.data.client_sizes).tolist()}


NUMBERS = ("param_sums", "param_sizes", "param_sumsqs", "param_samples", "loss_values")


def largest_relative_difference(got: dict, want: dict) -> tuple[float, str]:
  """(difference, where) of the stored numbers. Each is relative to its own scale: a sampled
  value to max(|value|, the leaf's RMS), a sum of squares and a loss to themselves, a sum to
  the largest sum the leaf's norm allows (sqrt(size * sum of squares): sums near 0 are not
  ill-conditioned). Leaf counts and sizes must agree (else inf)."""
  if got["param_sizes"] != want["param_sizes"]:
    return float("inf"), f"parameter leaf sizes {got['param_sizes']} != {want['param_sizes']}"
  rel = lambda a, b, scale: abs(a - b) / scale if scale > 0 else float(a != b)
  found = [(0.0, "nothing")]
  for i, (size, sq, samples) in enumerate(zip(want["param_sizes"], want["param_sumsqs"],
                                              want["param_samples"], strict=True)):
    found.append((rel(got["param_sums"][i], want["param_sums"][i], (size * sq) ** 0.5),
                  f"parameter leaf {i}'s sum"))
    found.append((rel(got["param_sumsqs"][i], sq, sq), f"parameter leaf {i}'s sum of squares"))
    rms = (sq / size) ** 0.5
    for j, (a, b) in enumerate(zip(got["param_samples"][i], samples, strict=True)):
      found.append((rel(a, b, max(abs(b), rms)), f"parameter leaf {i}'s sampled value {j}"))
  for r, (a, b) in enumerate(zip(got["loss_values"], want["loss_values"], strict=True)):
    found.append((rel(a, b, abs(b)), f"round {r + 1}'s loss"))
  return max(found, key=lambda f: f[0])


def check(case: str, strategy: str, got: dict, expected: dict) -> None:
  """The stored numbers at RTOL everywhere; the bytes too where the setup is the stored one."""
  want = expected[f"{case}/{strategy}"]
  assert all(k in want for k in NUMBERS), f"{case}/{strategy} holds no numbers: run --add"
  difference, where = largest_relative_difference(got, want)
  moved = f"numbers moved by {difference:.2g} (largest relative difference: {where})"
  assert difference <= RTOL, f"{case}/{strategy}: {moved}, beyond RTOL {RTOL}"
  setup = current_setup()
  if setup != expected["_setup"]:
    if difference:
      warnings.warn(f"{case}/{strategy} on {setup}, not the stored setup: {moved}")
    return
  assert got["losses"] == want["losses"], (moved, got["loss_values"], want["loss_values"])
  assert got["params"] == want["params"], (moved, got["param_sums"], want["param_sums"])
  assert got["state"] == want["state"], moved


@pytest.fixture(scope="module")
def expected():
  with open(EXPECTED) as f:
    return json.load(f)


@functools.cache
def computed(strategy: str) -> dict:
  """Every case's fingerprint under `strategy`, from one command run with the XLA flags the
  suite was started with: the suite's own flags (tests/conftest.py) compile faster but may
  round differently, and these bytes are the defaults'."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "fingerprints.json")
    # Killed at 500 s, before the test's own limit (setup.cfg), so a hang names this command.
    proc = helpers.python(__file__, "--fingerprints", strategy, out,
                          env=helpers.with_user_xla_flags(), timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
      return json.load(f)


# One worker computes each strategy's cases (one command each, in parallel with the other).
@pytest.mark.parametrize("case,strategy", [
    pytest.param(c, s, marks=pytest.mark.xdist_group(f"golden_{s}"))
    for s in STRATEGIES for c in cases_under(s)])
def test_numbers_are_unchanged(case, strategy, expected):
  got = computed(strategy)[f"{case}/{strategy}"]
  check(case, strategy, got, expected)
  if case.endswith(":unequal"):
    # The clients really differ in size, so FairAvg's weighting is not FedAvg's: the two
    # cases' numbers differ (by far more than RTOL).
    assert len(set(got["client_sizes"])) > 1, got["client_sizes"]
    name = CASES[case][0]
    other = expected[f"{'fedavg' if name == 'fairavg' else 'fairavg'}:unequal/{strategy}"]
    assert largest_relative_difference(got, other)[0] > 100 * RTOL


def _fingerprints(strategies=STRATEGIES) -> dict:
  """Every kept case's fingerprint under each of `strategies`."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "groups.json")
    with open(path, "w") as f:
      json.dump({"superclients": [{"clients": g} for g in GROUPS]}, f)
    return {f"{c}/{s}": fingerprint(c, s, path) for s in strategies for c in cases_under(s)}


if __name__ == "__main__" and sys.argv[1:2] == ["--fingerprints"]:
  # What the test compares (tests/test_bit_identity.py --fingerprints STRATEGY OUT.json).
  strategy, out_path = sys.argv[2:]
  with open(out_path, "w") as f:
    json.dump(_fingerprints([strategy]), f)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
  out = {"_setup": current_setup(), **_fingerprints()}
  with open(EXPECTED, "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
  print(f"wrote {len(out) - 1} cases to {EXPECTED}")

if __name__ == "__main__" and sys.argv[1:] == ["--add"]:
  # Cases missing from the file are added; every stored case is recomputed and must match
  # its stored bytes (so the file's setup is this one), and gets its numbers if it has none.
  with open(EXPECTED) as f:
    out = json.load(f)
  if out.setdefault("_setup", current_setup()) != current_setup():
    sys.exit(f"the file was written on {out['_setup']}, this is {current_setup()}: its bytes "
             "cannot be checked here; --add there, or --write")
  got = _fingerprints()
  for key in set(out) - set(got) - {"_setup"}:
    del out[key]
    print(f"dropped {key} (no longer a case)")
  for key, new in got.items():
    if key in out:
      old = out[key]
      changed = [k for k in ("params", "param_sums", "state", "losses") if old[k] != new[k]]
      if changed:
        sys.exit(f"{key}: {', '.join(changed)} differ from the stored bytes; nothing written")
      for k in NUMBERS:
        old.setdefault(k, new[k])
    else:
      out[key] = new
      print(f"added {key}")
  with open(EXPECTED, "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
  print(f"{len(out) - 1} cases in {EXPECTED}")
