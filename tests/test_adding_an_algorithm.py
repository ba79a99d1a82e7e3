"""The docs' "Adding an algorithm" example (tests/fednova_example.py), run as written.

docs/algorithms.md includes this file's example verbatim; registered from it,
FedNova runs through main.py end to end, matches a NumPy reference, reduces
to FedAvg with equal local steps, and runs in FedSeq's chains.
"""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

import reference as ref
from helpers import assert_trees_close, main_py
from fedjax_seq.algorithms import registry
from fedjax_seq.algorithms.fedavg import fedavg
from fedjax_seq.algorithms.fedseq import make_superclients
from fedjax_seq.core.rounds import make_round, round_keys, sample_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "tests", "fednova_example.py")
LR, EPOCHS, BATCH = 0.4, 2, 3


@pytest.fixture
def fednova():
  """The example module, freshly loaded (it registers); the registry restored afterwards."""
  before = dict(registry.ALGORITHMS)
  spec = importlib.util.spec_from_file_location("fednova_example", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  yield module
  registry.ALGORITHMS.clear()
  registry.ALGORITHMS.update(before)


def build(name, sizes, groups=None):
  """A registered algorithm built as experiment.py builds it, over tiny clients."""
  setup = registry.Setup(ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH), len(sizes), 0.5,
                         3, None, groups and make_superclients(groups, np.array(sizes)),
                         dict(shuffle=False))
  return registry.ALGORITHMS[name].build(setup)


def run(alg, data, keys):
  state, round_fn = alg.init(ref.init_params()), make_round(alg, "vmap")  # compiled once
  for key in keys:
    state, _ = round_fn(state, data, key)
  return state


KEYS = [jax.random.key(5 + r) for r in range(2)]


def test_docs_show_the_example_verbatim():
  """docs/algorithms.md's "Adding an algorithm" includes the whole example file (MyST)."""
  with open(os.path.join(ROOT, "docs", "algorithms.md")) as f:
    section = f.read().split("\n## Adding an algorithm\n", 1)[1].split("\n## ", 1)[0]
  target, *options = section.split("```{literalinclude} ", 1)[1].split("```", 1)[0].splitlines()
  assert options == [":language: python"], options  # no :lines: or :start-after:: the whole file
  assert os.path.normpath(os.path.join(ROOT, "docs", target)) == EXAMPLE


def test_fednova_matches_numpy(fednova):
  sizes = [5, 3, 8, 2]  # 2, 1, 3 and 1 local steps per epoch
  images, labels, data = ref.tiny_data(sizes)
  state = run(build("fednova", sizes), data, KEYS)
  x, unequal = ref.to_np(ref.init_params()), False
  for key in KEYS:
    k_sample, k_train = round_keys(key)
    ids = np.asarray(sample_ids(k_sample, len(sizes), 2))
    p = np.array([sizes[c] for c in ids], float) / sum(sizes[c] for c in ids)
    updates, taus = [], []
    for c in ids:
      batch_list = ref.batches(data, c, jax.random.fold_in(k_train, c), EPOCHS, BATCH)
      y = ref.local_sgd(*x, images, labels, batch_list, LR)
      updates.append([a - b for a, b in zip(x, y, strict=True)])
      taus.append(len(batch_list))
    unequal |= len(set(taus)) > 1
    tau_eff = float(np.dot(p, taus))
    x = tuple(x[j] - tau_eff * sum(pi * u[j] / t for pi, u, t in zip(p, updates, taus, strict=True))
              for j in range(2))
  for got, want in zip(ref.to_np(state.params), x, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert unequal  # a round whose clients took different numbers of steps


def test_fednova_with_equal_steps_is_fedavg(fednova):
  sizes = [6, 6, 6, 6]
  _, _, data = ref.tiny_data(sizes)
  a = run(build("fednova", sizes), data, KEYS)
  b = run(fedavg(ref.trainer(lr=LR, epochs=EPOCHS, batch_size=BATCH), 4, 0.5), data, KEYS)
  assert_trees_close(a.params, b.params, rtol=1e-5, atol=1e-6)


def test_fedseq_nova_with_one_member_superclients_is_fednova(fednova):
  sizes = [5, 3, 8, 2]
  _, _, data = ref.tiny_data(sizes)
  a = run(build("fedseq_nova", sizes, [np.array([k]) for k in range(4)]), data, KEYS)
  b = run(build("fednova", sizes), data, KEYS)
  assert_trees_close(a.params, b.params, rtol=1e-6, atol=1e-7)


def test_registered_from_a_file_it_runs_through_main(tmp_path):
  workdir = tmp_path / "run"
  proc = main_py(
      "--config=tests/fednova_example.py", f"--workdir={workdir}",
      "--config.data.name=synthetic", "--config.model.name=mlp",
      "--config.data.synthetic.train_size=2000", "--config.data.num_clients=50",
      "--config.data.iid=True", "--config.client.lr=0.1", "--config.client.batch_size=10",
      "--config.rounds=4", "--config.eval_every=2")
  assert proc.returncode == 0, proc.stderr
  assert "fedjax_seq: fednova on synthetic" in proc.stderr
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["test_accuracy"] >= 0.3 and records[-1]["test_loss"] < records[0]["test_loss"]
  assert json.loads((workdir / "config.json").read_text())["algorithm"]["name"] == "fednova"


def test_built_in_names_cannot_be_replaced():
  with pytest.raises(ValueError, match="'fedavg' is built in"):
    registry.register("fedavg", registry.averaging("plain"))


def test_docs_list_every_registered_algorithm():
  """The generated field reference's `algorithm.name` row lists the registry, in its order."""
  with open(os.path.join(ROOT, "docs", "config_fields.md")) as f:
    assert "\n```{config-fields}\n```\n" in f.read()
  modules = {}
  for name, path in (("config_fields", "_ext/config_fields.py"), ("conf", "conf.py")):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "docs", path))
    modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(modules[name])  # the generator, and conf.py's supplement
  generated = modules["config_fields"].fields(modules["conf"].config_fields_supplement)
  row = next(field for field in generated if field.path == "algorithm.name")
  assert list(row.registered) == list(registry.ALGORITHMS)
  assert set(registry.BUILTIN) <= set(row.registered)


def test_a_rule_named_by_module_path_is_imported_when_built():
  entry = registry.averaging("fedjax_seq.algorithms.rules:prox", mu=0.5)
  assert entry.check(mu=0.5).name == "prox(mu=0.5)"
  with pytest.raises(ValueError, match="mu must be >= 0"):
    entry.check(mu=-1.0)
