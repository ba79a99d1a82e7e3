"""Bad input: one-line `error:` on stderr, non-zero exit, nothing written."""

import json
import os

import numpy as np
import pytest

from helpers import main_py, tiny_config, tiny_flags
from fedjax_seq.errors import InputError
from fedjax_seq.training.train import train_and_evaluate


def small_config(**overrides):
  """The tiny run (tests/helpers.py: 800 examples, 20 clients), 2 rounds."""
  return tiny_config(**{"rounds": 2, "eval_every": 1, **overrides})


@pytest.mark.parametrize("overrides,message", [
    ({"data.name": "imagenet"}, "unknown config.data.name 'imagenet'; valid: cifar10"),
    ({"model.name": "vgg"}, "unknown config.model.name 'vgg'; valid: lenet, mlp"),
    ({"algorithm.name": "fedsgd"}, "unknown algorithm 'fedsgd'"),
    ({"client.fraction": 0.0}, r"fraction must be in \(0, 1\]"),
    ({"client.fraction": 1.5}, r"fraction must be in \(0, 1\]"),
    ({"client.lr": -0.1}, "lr must be > 0"),
    ({"eval_every": 0}, "eval_every must be >= 1"),
    ({"data.num_clients": 801}, "more clients than examples"),
    ({"data.name": "cifar10", "data.dir": "/nonexistent/cifar"}, "/nonexistent/cifar"),
    ({"data.name": "fashion_mnist", "data.dir": "/nonexistent/fm"}, "dataset-fashion-mnist"),
    ({"algorithm.name": "fedseq", "fedseq.representation": "classifier_all"},
     "measure kullback needs probability vectors"),
    ({"algorithm.name": "fedseq", "fedseq.grouping": "spectral"}, "unknown config.fedseq.grouping"),
    ({"algorithm.name": "fedseq", "fedseq.grouping": "random", "fedseq.max_clients": 2,
      "fedseq.min_examples": 10000}, "config.fedseq: cannot form superclients.*raise max_clients"),
    ({"fedseq.dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"compare_with": "fedavg,fedsgd"}, "unknown algorithm 'fedsgd' in config.compare_with"),
])
def test_bad_input_raises_before_anything_is_written(tmp_path, overrides, message):
  workdir = tmp_path / "run"
  with pytest.raises(InputError, match=message) as e:
    train_and_evaluate(small_config(**overrides), str(workdir))
  assert "\n" not in str(e.value)
  assert not workdir.exists()


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("keep me")
  with pytest.raises(InputError, match="not a directory"):
    train_and_evaluate(small_config(), str(path))
  assert path.read_text() == "keep me"


def run_main(*args):
  return main_py(*args)


# Each building block through main.py once: a weighting, each client rule (prox, dyn, scaffold),
# a chain with a stateful rule, the bank with a rule, the pooled baseline, and each server
# optimizer (FedAvgM, FedAdam, FedYogi, FedAdagrad) on a family. main.py's path is the same for
# every algorithm; SCAFFOLD and FedDyn run through it on real data in tests/test_end_to_end.py;
# every config file's numbers are pinned in-process by tests/test_bit_identity.py, and the server
# optimizers against NumPy by tests/test_algebra.py.
THROUGH_MAIN = {  # config: (server optimizer, server lr)
    "fairavg": ("momentum", 1.0), "fedprox": ("adam", 0.03), "fedseq_dyn": ("yogi", 0.03),
    "fedseq_inter_prox": ("sgd", 1.0), "fedseq_inter_scaffold": ("adagrad", 0.03),
    "centralized": ("sgd", 1.0)}


@pytest.mark.parametrize("config", THROUGH_MAIN)
def test_main_runs_learns_and_writes_metrics(tmp_path, config):
  workdir = tmp_path / "run"
  optimizer, server_lr = THROUGH_MAIN[config]
  # The tiny run (its programs are compiled once for the suite) with IID clients and lr 0.1:
  # every one reaches 0.44-0.63 test accuracy by round 4 (RESULTS.md, section 10), chance 0.1.
  proc = run_main(f"--config=configs/{config}.py", f"--workdir={workdir}",
                  *tiny_flags(**{"data.iid": True, "client.lr": 0.1, "rounds": 4,
                                 "eval_every": 2, "server.optimizer": optimizer,
                                 "server.lr": server_lr}))
  assert proc.returncode == 0, proc.stderr
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in records] == [2, 4]
  assert records[-1]["test_accuracy"] >= 0.3, records  # three times chance
  assert records[-1]["test_loss"] < records[0]["test_loss"], records
  assert all(r["elapsed_s"] > 0 and r["s_per_round"] > 0 for r in records)
  written = json.loads((workdir / "config.json").read_text())
  assert written["rounds"] == 4 and written["data"]["name"] == "synthetic"
  assert written["algorithm"]["name"] == config and written["server"]["optimizer"] == optimizer
  assert (workdir / "superclients.json").exists() == config.startswith("fedseq")
  assert "final test accuracy" in proc.stderr
  assert_server_optimizer_state(workdir, optimizer, written["server"]["eps"])


# The optimizer state each server optimizer keeps (core/server.py): FedAvgM optax's momentum
# trace, the adaptive ones Algorithm 2's moments m and v; SGD with lr 1 none at all.
OPTIMIZER_STATE = {"sgd": None, "momentum": {"trace"}, "adam": {"m", "v"}, "yogi": {"m", "v"},
                   "adagrad": {"m", "v"}}


def assert_server_optimizer_state(workdir, optimizer, eps):
  """The final checkpoint holds the named optimizer's state, and the run moved it.

  Read from disk as training/checkpoint.py writes it (orbax, the state under
  checkpoints/ROUND/state), without a target, so nothing of this process's
  own config decides what is found: an ignored config.server.optimizer fails.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  rounds = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert rounds and rounds[-1] == 4, rounds
  with ocp.StandardCheckpointer() as reader:
    state = reader.restore(str(workdir / "checkpoints" / "4" / "state"))
  want = OPTIMIZER_STATE[optimizer]
  if want is None:
    assert state["opt"] is None, jax.tree.map(np.shape, state["opt"])
    return
  params = jax.tree.leaves(state["params"])
  opt = state["opt"][0]  # the optax chain's first transform; the second (a scale) is stateless
  assert set(opt) == want, (optimizer, sorted(opt))
  for name in want:
    leaves = jax.tree.leaves(opt[name])
    assert [np.shape(x) for x in leaves] == [np.shape(p) for p in params], name
    for x in map(np.asarray, leaves):
      assert np.isfinite(x).all(), name
      if name == "v":  # starts at eps^2 (Algorithm 2's v_-1); 4 rounds of updates moved it
        assert np.abs(x - eps * eps).max() > 0, name
      else:  # the trace and m start at 0
        assert np.abs(x).max() > 0, name


@pytest.mark.parametrize("args,message", [
    (["--config.client.lr=-1"], "error: config.client.lr must be > 0, got -1"),
    (["--config.data.name=cifar10", "--config.data.dir=/nonexistent"], "error: "),
])
def test_main_bad_input_is_one_line_without_traceback(tmp_path, args, message):
  workdir = tmp_path / "run"
  proc = run_main("--config=configs/fedavg.py", f"--workdir={workdir}", *args)
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
  assert not workdir.exists()


def test_misspelt_override_is_refused(tmp_path):
  proc = run_main("--config=configs/fedavg.py", f"--workdir={tmp_path / 'run'}",
                  "--config.client.lrr=0.1")
  assert proc.returncode != 0
  assert proc.stderr.strip() == ("error: unknown config field config.client.lrr; did you mean "
                                 "config.client.lr?")
  assert not (tmp_path / "run").exists()


def test_divergence_stops_with_the_round_and_no_nan_metrics(tmp_path):
  workdir = tmp_path / "run"
  c = small_config(**{"client.lr": 1e20, "rounds": 6, "eval_every": 1})
  with pytest.raises(InputError, match=r"training diverged at round \d+ .*lower config.client.lr") as e:
    train_and_evaluate(c, str(workdir))
  bad_round = int(str(e.value).split("round ")[1].split()[0])
  # metrics.jsonl is written at the start: it must exist, with only good rounds in it.
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in records] == list(range(1, bad_round))
  for record in records:
    assert all(v == v for v in record.values())  # no NaN


def test_main_reports_divergence_in_one_line(tmp_path):
  proc = run_main("--config=configs/feddyn.py", f"--workdir={tmp_path / 'run'}",
                  *tiny_flags(**{"client.lr": 1e20, "rounds": 5, "eval_every": 1}))
  assert proc.returncode == 1
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "diverged at round" in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr
