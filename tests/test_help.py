"""The command lines explain themselves: --help, --show_config, near-miss names, benchmark scripts."""

import glob
import json
import os

import pytest

from configs import paper
from fedjax_seq.training.experiment import ALGORITHMS
from helpers import MLP_MACS, ROOT, python, train_flops


def run(*args, timeout=300):
  return python(*args, timeout=timeout)


def one_error_line(proc) -> str:
  assert proc.returncode != 0, proc.stdout
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  return lines[0]


def test_help_lists_configs_algorithms_and_where_the_fields_are():
  proc = run("main.py", "--help")
  assert proc.returncode == 0, proc.stderr
  text = proc.stdout
  files = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs/*.py"))
                 if not p.endswith("__init__.py"))
  assert len(files) >= 14 and all(f in text for f in files)
  assert all(f"configs/{a}.py" in text for a in paper.algorithms())
  listed = next(l for l in text.splitlines() if l.startswith("algorithms"))
  assert listed.split(": ", 1)[1].split() == list(ALGORITHMS)
  assert "fedjax_seq/api.py" in text and "--show_config" in text and "--config.FIELD=VALUE" in text
  for flag in ("--workdir", "--config", "--show_config", "--num_processes"):
    assert flag in text


def test_show_config_prints_the_resolved_config_and_runs_nothing(tmp_path):
  proc = run("main.py", "--config=configs/fedseq.py", "--show_config", "--config.client.lr=0.05",
             f"--workdir={tmp_path / 'run'}")
  assert proc.returncode == 0, proc.stderr
  config = json.loads(proc.stdout)
  assert config["algorithm"]["name"] == "fedseq" and config["client"]["lr"] == 0.05
  assert config["rounds"] == 10000 and config["data"]["name"] == "cifar10"
  assert not (tmp_path / "run").exists()
  bad = run("main.py", "--config=configs/fedseq.py", "--show_config", "--config.client.lr=-1")
  assert one_error_line(bad) == "error: config.client.lr must be > 0, got -1.0"


@pytest.mark.parametrize("config,guess", [
    ("configs/fedseq", "configs/fedseq.py"),        # the .py left out
    ("configs/fedsq.py", "configs/fedseq.py"),      # a typo
    ("configs/quickstart", "configs/quickstart.py"),
])
def test_config_path_that_does_not_exist_suggests_the_file(tmp_path, config, guess):
  for extra in ([], ["--config.client.lr=0.1"]):  # with an override, absl fails differently
    proc = run("main.py", f"--config={config}", f"--workdir={tmp_path / 'run'}", *extra)
    assert one_error_line(proc) == (f"error: cannot load --config: {config} does not exist; "
                                    f"did you mean {guess}?")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,message", [
    ("--config.client.lrr=0.1", "unknown config field config.client.lrr; did you mean "
                                "config.client.lr?"),
    ("--config.clent.lr=0.1", "unknown config field config.clent; did you mean config.client?"),
    ("--config.fedseq.max_client=3", "unknown config field config.fedseq.max_client; did you "
                                     "mean config.fedseq.max_clients?"),
    ("--config.client.lr.x=1", "config.client.lr is a value, not a group of fields"),
])
def test_misspelt_override_names_the_full_path(tmp_path, override, message):
  proc = run("main.py", "--config=configs/fedavg.py", f"--workdir={tmp_path / 'run'}", override)
  assert one_error_line(proc).startswith(f"error: {message}")
  assert proc.returncode == 2 and not (tmp_path / "run").exists()


def test_missing_flags_are_one_line():
  assert "--workdir is required" in one_error_line(run("main.py", "--config=configs/fedavg.py"))
  assert "--config is required" in one_error_line(run("main.py", "--workdir=/tmp/x"))


@pytest.mark.parametrize("script,flag", [("throughput", "--config"), ("scaling", "--config"),
                                         ("formation", "--config"), ("accelerator", "--tiny"),
                                         ("torch_loop", "--ours")])
def test_benchmark_scripts_run_by_path(script, flag):
  proc = run(f"benchmarks/{script}.py", "--help")
  assert "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
  assert flag in proc.stdout  # absl's flag listing (absl exits 1 after --help)


def test_throughput_by_path_is_quiet_and_names_what_it_compares():
  small = ["--config=configs/fedavg.py", "--config.data.name=synthetic", "--config.model.name=mlp",
           "--config.data.synthetic.train_size=400", "--config.data.synthetic.test_size=200",
           "--config.data.num_clients=10", "--rounds=1"]
  outs = {}
  for strategy in ("loop", "vmap"):
    proc = run("benchmarks/throughput.py", *small, f"--config.engine.strategy={strategy}")
    assert proc.returncode == 0, proc.stderr
    assert "tpu" not in proc.stderr.lower(), proc.stderr  # the backend probe's INFO line
    outs[strategy] = json.loads(proc.stdout)
  assert outs["loop"]["strategy"] == "loop" and "speedup_over_loop_strategy" not in outs["loop"]
  vmap = outs["vmap"]
  assert vmap["speedup_over_loop_strategy"] == pytest.approx(
      vmap["loop_seconds_per_round"] / vmap["seconds_per_round"], rel=0.02)
  assert vmap["participants_per_round"] == 2 and vmap["participants"] == "clients"
  # 2 clients x 40 images of the MLP's FLOPs counted by hand (tests/test_efficiency.py)
  for out in outs.values():
    assert out["flops_per_round"] == 80 * train_flops(MLP_MACS)
    # seconds_per_round is rounded to 0.1 ms in the JSON: 0.5% of a 10 ms round
    assert out["flops_per_s"] == pytest.approx(out["flops_per_round"] / out["seconds_per_round"],
                                               rel=0.01)
    # fraction_of_peak is rounded to 4 decimals in the JSON (benchmarks/flops.py)
    assert out["fraction_of_peak"] == pytest.approx(out["flops_per_s"] / out["peak_flops_per_s"],
                                                    rel=1e-3, abs=5e-5)
    assert 1.0 <= out["xla_over_analytic"] < 1.03
