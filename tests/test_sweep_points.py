"""The sweep validates every point before it starts one, and summarizes seeds as groups."""

import csv
import io
import json
import math

import pytest
from scipy import stats

from helpers import assert_one_error_line, fake_config, record, run_module, tiny_flags

T2 = stats.t.ppf(0.975, 2)  # two-sided 95%, 3 seeds
TINY = tiny_flags(rounds=2, eval_every=1)  # the tiny run (tests/helpers.py), 2 rounds


@pytest.mark.parametrize("mode", [[], ["--dry_run"], ["--emit=slurm"]])
def test_sweep_refuses_an_invalid_point_before_starting_any(tmp_path, mode):
  workdir = tmp_path / "sweep"
  workdir.mkdir()  # an existing sweep directory: no point directory may appear in it
  proc = run_module("fedjax_seq.sweep", "--config=configs/fedavg.py",
                    "--sweep=config.data.alpha=0,-1", f"--workdir={workdir}", *TINY, *mode)
  assert_one_error_line(proc, "error: point alpha=-1 is invalid: config.data.alpha must be >= 0, "
                              "got -1.0; nothing was run")
  assert proc.stdout == ""  # no command printed, no point started
  assert list(workdir.iterdir()) == []


def test_sweep_summary_reports_each_setting_over_its_seeds(tmp_path):
  """Six finished points (2 learning rates x 3 seeds): nothing runs, the summary has one
  row per learning rate; lr 0.1 points are FedSeq-like, with 1 s of formation."""
  workdir = tmp_path / "sweep"
  finals = {0.05: (0.70, 0.72, 0.74), 0.1: (0.60, 0.60, 0.66)}
  for lr, accuracies in finals.items():
    for seed, final in enumerate(accuracies):
      point = workdir / f"lr={lr},seed={seed}"
      point.mkdir(parents=True)
      config = {**fake_config("fedavg", 0.0, seed, rounds=2, dataset="synthetic"),
                "client": {"lr": lr}}
      (point / "config.json").write_text(json.dumps(config))
      first = 0.70 if seed == 0 else 0.5  # seed 0 reaches 0.7 at round 1, the others at 2
      (point / "metrics.jsonl").write_text("".join(
          json.dumps(r) + "\n" for r in [record(1, min(first, final), 1.0),
                                         record(2, final, 2.0)]))
      if lr == 0.1:
        (point / "superclients.json").write_text(json.dumps({"formation_s": 1.0}))
  proc = run_module("fedjax_seq.sweep", "--config=configs/fedavg.py",
                    "--sweep=config.client.lr=0.05,0.1", "--sweep=config.seed=0,1,2",
                    f"--workdir={workdir}", "--config.rounds=2", "--targets=0.7")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.count("finished (2 rounds)") == 6
  half_05 = T2 * 0.02 / math.sqrt(3)  # std of (0.70, 0.72, 0.74): 0.02
  half_1 = T2 * 0.02  # std of (0.60, 0.60, 0.66): 0.02 * sqrt(3)
  half_rounds = T2 / 3  # rounds to 0.7 of lr 0.05: 1, 2, 2 (std 1/sqrt(3))
  expected = [
      f"| fedavg | synthetic | 0 | client.lr=0.05 | 2 | 2 | 3 | 0,1,2 | 0.7200 ± {half_05:.4f} | "
      f"0.7200 ± {half_05:.4f} | 1.7 ± {half_rounds:.1f} | 3/3 | - | 2.0 |",
      f"| fedavg | synthetic | 0 | client.lr=0.1 | 2 | 2 | 3 | 0,1,2 | 0.6200 ± {half_1:.4f} | "
      f"0.6200 ± {half_1:.4f} | - | 0/3 | 1.0 | 3.0 |"]
  assert expected == ["| fedavg | synthetic | 0 | client.lr=0.05 | 2 | 2 | 3 | 0,1,2 | "
                      "0.7200 ± 0.0497 | 0.7200 ± 0.0497 | 1.7 ± 1.4 | 3/3 | - | 2.0 |",
                      "| fedavg | synthetic | 0 | client.lr=0.1 | 2 | 2 | 3 | 0,1,2 | "
                      "0.6200 ± 0.0861 | 0.6200 ± 0.0861 | - | 0/3 | 1.0 | 3.0 |"]
  md = (workdir / "summary.md").read_text().splitlines()
  assert md[2:] == expected
  assert "\n".join(expected) in proc.stdout
  rows = list(csv.DictReader(io.StringIO((workdir / "summary.csv").read_text())))
  assert [float(r["final_accuracy_ci95"]) for r in rows] == [
      pytest.approx(half_05, rel=1e-9), pytest.approx(half_1, rel=1e-9)]
  per_point = list(csv.DictReader(io.StringIO((workdir / "summary_runs.csv").read_text())))
  assert [(r["run"], r["final_accuracy"], r["formation_s"]) for r in per_point] == [
      ("lr=0.05,seed=0", "0.7", ""), ("lr=0.05,seed=1", "0.72", ""),
      ("lr=0.05,seed=2", "0.74", ""), ("lr=0.1,seed=0", "0.6", "1.0"),
      ("lr=0.1,seed=1", "0.6", "1.0"), ("lr=0.1,seed=2", "0.66", "1.0")]


def test_sweep_runs_the_study_module_and_skips_finished_studies(tmp_path):
  """--program=study: each point is `python -m fedjax_seq.study` with the study flags; a
  point whose study.json exists is finished."""
  workdir = tmp_path / "sweep"
  (workdir / "alpha=0").mkdir(parents=True)
  (workdir / "alpha=0" / "study.json").write_text("{}")
  proc = run_module("fedjax_seq.sweep", "--config=configs/study.py:fashion_mnist,800,11",
                    "--program=study", "--study_flags=--pretrain_epochs=10,20 --noheatmaps",
                    "--sweep=config.data.alpha=0,0.5", f"--workdir={workdir}", "--dry_run")
  assert proc.returncode == 0, proc.stderr
  assert "skip alpha=0: finished (study.json written)" in proc.stderr
  (line,) = proc.stdout.splitlines()
  assert line.split()[1:] == [
      "-m", "fedjax_seq.study", "--config=configs/study.py:fashion_mnist,800,11",
      f"--workdir={workdir / 'alpha=0.5'}", "--config.data.alpha=0.5",
      "--pretrain_epochs=10,20", "--noheatmaps"]
  proc = run_module("fedjax_seq.sweep", "--config=configs/fedseq.py", "--study_flags=--x",
                    "--sweep=config.data.alpha=0,0.5", f"--workdir={workdir}", "--dry_run")
  assert_one_error_line(proc, "error: --study_flags needs --program=study")
