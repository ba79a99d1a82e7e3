"""Results tables, plots, sweeps and the paper presets, on small fake and real workdirs.

The plot tests need matplotlib (the `plot` extra) and fail without it, so CI
notices a missing extra instead of skipping the figures.
"""

import csv
import io
import json
import os
import re
import shlex
import sys

import pytest

from configs import paper
from fedjax_seq import plot, results
from fedjax_seq.errors import InputError
from helpers import (ROOT, assert_one_error_line, fake_config, main_py, python, record,
                     run_module, tiny_flags, write_run)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = tiny_flags(rounds=2, eval_every=1)  # the tiny run (tests/helpers.py), 2 rounds


SUPERCLIENTS = {
    "superclients": [
        {"id": 0, "clients": [0, 1], "num_examples": 200, "class_counts": [100, 100, 0, 0],
         "kl_from_uniform": 0.69},
        {"id": 1, "clients": [2, 3], "num_examples": 200, "class_counts": [0, 50, 50, 100],
         "kl_from_uniform": 0.35},
        {"id": 2, "clients": [4], "num_examples": 100, "class_counts": [0, 0, 0, 100],
         "kl_from_uniform": 1.39}],
    "statistics": {}, "client_class_counts": [], "representers": [], "formation_s": 4.5}


@pytest.fixture
def two_runs(tmp_path):
  """A finished FedSeq run (with superclients) and an unfinished FedAvg run."""
  a = write_run(tmp_path / "runs" / "fedseq_a0", fake_config("fedseq", 0.0, 0),
                [record(100, 0.40, 10.0), record(200, 0.65, 20.0), record(300, 0.62, 30.5)],
                SUPERCLIENTS)
  b = write_run(tmp_path / "runs" / "fedavg_a02", fake_config("fedavg", 0.2, 1),
                [record(100, 0.30, 12.25), record(200, 0.50, 24.5)])
  return a, b


def test_summarize_reports_final_best_rounds_to_target_and_wall_time(two_runs):
  runs = [results.load_run(str(d)) for d in two_runs]
  assert results.is_finished(runs[0]) and not results.is_finished(runs[1])
  rows = results.summarize(runs, [0.6, 0.4, 0.7])
  assert rows == [  # FedSeq's wall time: 30.5 s of training + 4.5 s of formation
      {"run": "fedseq_a0", "algorithm": "fedseq", "dataset": "cifar10", "alpha": 0.0,
       "seed": 0, "rounds": 300, "rounds_done": 300, "final_accuracy": 0.62,
       "best_accuracy": 0.65, "rounds_to_0.6": 200, "rounds_to_0.4": 100,
       "rounds_to_0.7": None, "formation_s": 4.5, "wall_time_incl_formation_s": 35.0},
      {"run": "fedavg_a02", "algorithm": "fedavg", "dataset": "cifar10", "alpha": 0.2,
       "seed": 1, "rounds": 300, "rounds_done": 200, "final_accuracy": 0.5,
       "best_accuracy": 0.5, "rounds_to_0.6": None, "rounds_to_0.4": 200,
       "rounds_to_0.7": None, "formation_s": None, "wall_time_incl_formation_s": 24.5}]


def test_markdown_and_csv(two_runs):
  rows = results.summarize([results.load_run(str(d)) for d in two_runs], [0.6])
  md = results.to_markdown(rows).splitlines()
  assert md[0] == ("| run | algorithm | dataset | alpha | seed | rounds | rounds_done | "
                   "final_accuracy | best_accuracy | rounds_to_0.6 | formation_s | "
                   "wall_time_incl_formation_s |")
  assert md[2] == ("| fedseq_a0 | fedseq | cifar10 | 0 | 0 | 300 | 300 | 0.6200 | 0.6500 | 200 "
                   "| 4.5 | 35.0 |")
  assert md[3] == ("| fedavg_a02 | fedavg | cifar10 | 0.2 | 1 | 300 | 200 | 0.5000 | 0.5000 | - "
                   "| - | 24.5 |")
  csv_lines = results.to_csv(rows).splitlines()
  assert csv_lines[0].startswith("run,algorithm,dataset,alpha,seed,")
  assert csv_lines[2] == "fedavg_a02,fedavg,cifar10,0.2,1,300,200,0.5,0.5,,,24.5"


def test_iid_runs_are_labelled_iid(tmp_path):
  config = fake_config("fedavg", 0.0, 0)
  config["data"]["iid"] = True
  run = results.load_run(str(write_run(tmp_path / "iid", config, [record(1, 0.5, 1.0)])))
  assert results.summarize([run])[0]["alpha"] == "iid"
  assert plot.group_labels([[run]]) == ["fedavg (iid)"]


@pytest.mark.parametrize("damage,message", [
    (lambda d: None, "does not exist"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")), "config.json does not exist"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{")), "config.json is not valid JSON"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}")), "metrics.jsonl does not exist"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}"),
                (d / "metrics.jsonl").write_text('{"round": 1, "test_accuracy": 0.1}\n{"rou')),
     "metrics.jsonl line 2 is not valid JSON"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}"),
                (d / "metrics.jsonl").write_text('{"round": 1}\n')), "lacks an integer 'round'"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}"), (d / "metrics.jsonl").write_text(
        '{"round": 1, "test_accuracy": 0.1}\n{"round": 2, "test_accuracy": 0.2}\n\n'
        '{"round": 2, "test_accuracy": 0.3}\n')),
     re.escape("metrics.jsonl line 4: round 2 does not come after round 2 (line 2); rounds must "
               "strictly increase, so two runs probably wrote to this workdir")),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}"), (d / "metrics.jsonl").write_text(
        '{"round": 5, "test_accuracy": 0.1}\n{"round": 1, "test_accuracy": 0.2}\n')),
     re.escape("metrics.jsonl line 2: round 1 does not come after round 5 (line 1)")),
])
def test_load_run_names_the_missing_or_corrupt_path(tmp_path, damage, message):
  run_dir = tmp_path / "broken"
  damage(run_dir)
  with pytest.raises(InputError, match=message) as e:
    results.load_run(str(run_dir))
  assert str(run_dir) in str(e.value) and "\n" not in str(e.value)


def test_labels_add_what_tells_colliding_groups_apart(tmp_path):
  mk = lambda name, config: results.load_run(str(write_run(tmp_path / name, config,
                                                           [record(1, 0.1, 1.0)])))
  lr = lambda config, value: {**config, "client": {"lr": value}}
  runs = [mk("s0", fake_config("fedseq", 0.0, 0)), mk("s1", fake_config("fedseq", 0.0, 1)),
          mk("avg", fake_config("fedavg", 0.5, 0)),
          mk("c100", fake_config("fedavg", 0.2, 0, dataset="cifar100")),
          mk("c10", fake_config("fedavg", 0.2, 0)),
          mk("x", fake_config("fairavg", 0.0, 0)), mk("y", fake_config("fairavg", 0.0, 0)),
          mk("lr1", lr(fake_config("fedprox", 0.0, 0), 0.1)),
          mk("lr2", lr(fake_config("fedprox", 0.0, 0), 0.05)),
          mk("lr2s1", lr(fake_config("fedprox", 0.0, 1), 0.05))]
  groups = results.group_runs(runs)
  assert [[r["name"] for r in g] for g in groups] == [
      ["s0", "s1"], ["avg"], ["c100"], ["c10"], ["x"], ["y"], ["lr1"], ["lr2", "lr2s1"]]
  assert plot.group_labels(groups) == [
      "fedseq (alpha=0, 2 seeds)", "fedavg (alpha=0.5)",
      "fedavg (alpha=0.2, cifar100)", "fedavg (alpha=0.2, cifar10)",
      "fairavg (alpha=0, x)", "fairavg (alpha=0, y)",
      "fedprox (alpha=0, client.lr=0.1)", "fedprox (alpha=0, client.lr=0.05, 2 seeds)"]


def assert_png_with_content(path):
  import matplotlib.image  # the plot extra; a missing one fails here, it is not skipped
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE
  pixels = matplotlib.image.imread(str(path))
  assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
  assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_plot_cli_draws_curves_heatmap_and_tables(tmp_path, two_runs):
  out, heat, table = tmp_path / "fig" / "curves.png", tmp_path / "heat.png", tmp_path / "t.md"
  proc = run_module("fedjax_seq.plot", *map(str, two_runs), "--out", str(out),
                    "--superclients", str(two_runs[0]), "--heatmap_out", str(heat),
                    "--table", str(table), "--targets", "0.6,0.7")
  assert proc.returncode == 0, proc.stderr
  assert_png_with_content(out)
  assert_png_with_content(heat)
  md = table.read_text().splitlines()  # one group per run: no intervals
  assert md[0] == ("| algorithm | dataset | alpha | setting | rounds | rounds_done | n_seeds | "
                   "seeds | final_accuracy ± 95% CI | best_accuracy ± 95% CI | "
                   "rounds_to_0.6 ± 95% CI | reached_0.6 | rounds_to_0.7 ± 95% CI | "
                   "reached_0.7 | formation_s | wall_time_incl_formation_s |")
  assert md[2] == ("| fedseq | cifar10 | 0 | - | 300 | 300 | 1 | 0 | 0.6200 | 0.6500 | 200 | "
                   "1/1 | - | 0/1 | 4.5 | 35.0 |")
  csv_lines = (tmp_path / "t.csv").read_text().splitlines()
  assert csv_lines[2] == "fedavg,cifar10,0.2,,300,200,1,1,0.5,,0.5,,,,0/1,,,0/1,,24.5"
  runs_md = (tmp_path / "t_runs.md").read_text()
  assert ("| fedseq_a0 | fedseq | cifar10 | 0 | 0 | 300 | 300 | 0.6200 | 0.6500 | 200 | - | 4.5 "
          "| 35.0 |") in runs_md
  assert (tmp_path / "t_runs.csv").read_text().splitlines()[1] == (
      "fedseq_a0,fedseq,cifar10,0.0,0,300,300,0.62,0.65,200,,4.5,35.0")
  assert f"wrote {table}, {tmp_path / 't.csv'}, {tmp_path / 't_runs.md'}, " in proc.stdout


def test_plot_heatmap_rows_are_class_fractions(tmp_path, two_runs, monkeypatch):
  drawn = {}
  import matplotlib.axes
  real_imshow = matplotlib.axes.Axes.imshow

  def spy(self, data, *args, **kwargs):
    drawn["data"] = data
    return real_imshow(self, data, *args, **kwargs)

  monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
  plot.plot_superclients(results.load_superclients(str(two_runs[0])), str(tmp_path / "h.png"))
  assert drawn["data"] == [[0.5, 0.5, 0.0, 0.0], [0.0, 0.25, 0.25, 0.5], [0.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize("args,fragment", [
    (["{missing}", "--out", "{out}"], "does not exist"),
    (["{a}", "--out", "{out}", "--superclients", "{a}"], "--superclients and --heatmap_out"),
    (["{a}", "{b}", "--out", "{out}", "--superclients", "{b}", "--heatmap_out", "{heat}"],
     "superclients.json does not exist (only FedSeq-family runs write it)"),
    (["{a}", "--out", "{out}", "--targets", "60"], "not an accuracy in (0, 1]"),
    (["{a}", "--out", "{out}", "--table", "{tmp}/t.csv"], "ends in .csv"),
    (["{a}", "--out", "{tmp}/curves.xyz"], "unknown image format 'xyz'"),
    (["{a}", "--out", "{out}", "--heatmap_out", "{out}", "--superclients", "{a}"],
     "must name different files"),
    (["{a}", "--out", "{tmp}/t_runs.md", "--table", "{tmp}/t.md"], "must name different files"),
    (["{a}", "--metrics_csv", "{tmp}/t.csv", "--table", "{tmp}/t.md"],
     "must name different files"),
    (["{a}", "--metrics_csv", "{tmp}"], "--metrics_csv"),
    (["{a}"], "nothing to write: give --out, --heatmap_out, --table or --metrics_csv"),
])
def test_plot_bad_input_is_one_line_and_writes_nothing(tmp_path, two_runs, capsys, args,
                                                       fragment):
  names = {"a": two_runs[0], "b": two_runs[1], "missing": tmp_path / "nope",
           "out": tmp_path / "out" / "c.png", "heat": tmp_path / "h.png", "tmp": tmp_path}
  before = sorted(p for p in tmp_path.rglob("*"))
  status = plot.main([a.format(**names) for a in args])
  err = capsys.readouterr().err
  assert status != 0
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
  assert sorted(p for p in tmp_path.rglob("*")) == before


def test_plot_without_matplotlib_says_how_to_install(tmp_path, two_runs):
  code = ("import sys; sys.modules['matplotlib'] = None; from fedjax_seq import plot; "
          f"sys.exit(plot.main([{str(two_runs[0])!r}, '--out', {str(tmp_path / 'c.png')!r}]))")
  proc = python("-c", code, timeout=120)
  assert_one_error_line(proc, 'pip install -e ".[plot]"')
  assert not (tmp_path / "c.png").exists()


def expected_command(point_dir, *point_args, config="configs/fedavg.py", extra=()):
  return shlex.join([sys.executable, "main.py", f"--config={config}", f"--workdir={point_dir}",
                     *extra, *point_args])


def test_sweep_dry_run_prints_the_product_and_writes_nothing(tmp_path):
  workdir = tmp_path / "sweep"
  proc = run_module("fedjax_seq.sweep", "--config=configs/fedavg.py",
                    "--sweep=config.data.alpha=0,0.5", "--sweep=config.seed=0,1",
                    f"--workdir={workdir}", "--config.rounds=3", "--config.client.lr", "0.05",
                    "--dry_run")
  assert proc.returncode == 0, proc.stderr
  extra = ("--config.rounds=3", "--config.client.lr", "0.05")
  assert proc.stdout.splitlines() == [
      expected_command(workdir / n, f"--config.data.alpha={a}", f"--config.seed={s}",
                       extra=extra)
      for n, a, s in [("alpha=0,seed=0", 0, 0), ("alpha=0,seed=1", 0, 1),
                      ("alpha=0.5,seed=0", 0.5, 0), ("alpha=0.5,seed=1", 0.5, 1)]]
  assert not workdir.exists()


def finished_point(workdir, name, seed, rounds=2, done=2):
  config = fake_config("fedavg", 0.0, seed, rounds=rounds, dataset="synthetic")
  return write_run(workdir / name, config,
                   [record(r, {1: 0.6, 2: 0.7}[r], float(r)) for r in range(1, done + 1)])


def test_sweep_dry_run_lists_only_unfinished_points(tmp_path):
  workdir = tmp_path / "sweep"
  finished_point(workdir, "seed=0", 0)
  finished_point(workdir, "seed=1", 1, done=1)  # stopped after round 1 of 2
  proc = run_module("fedjax_seq.sweep", "--config=configs/fedavg.py", "--sweep=config.seed=0,1,2",
                    f"--workdir={workdir}", "--config.rounds=2", "--dry_run")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
      expected_command(workdir / f"seed={s}", f"--config.seed={s}", extra=("--config.rounds=2",))
      for s in (1, 2)]
  assert "skip seed=0: finished (2 rounds)" in proc.stderr
  assert sorted(os.listdir(workdir)) == ["seed=0", "seed=1"]


def test_sweep_skips_finished_runs_unfinished_and_writes_summary(tmp_path):
  workdir = tmp_path / "sweep"
  done = finished_point(workdir, "seed=0", 0)
  before = (done / "metrics.jsonl").read_text()
  proc = run_module("fedjax_seq.sweep", "--config=configs/fedavg.py", "--sweep=config.seed=0,1",
                    f"--workdir={workdir}", *TINY, "--targets=0.55,0.99")
  assert proc.returncode == 0, proc.stderr
  assert "[1/2] seed=0: finished (2 rounds); skipped" in proc.stdout
  assert "[2/2] seed=1: not started; running" in proc.stdout
  assert (done / "metrics.jsonl").read_text() == before
  ran = results.load_run(str(workdir / "seed=1"))
  assert [r["round"] for r in ran["records"]] == [1, 2] and ran["config"]["seed"] == 1
  assert ran["config"]["data"]["synthetic"]["train_size"] == 800  # from the sweep's flags
  csv_lines = (workdir / "summary_runs.csv").read_text().splitlines()
  assert csv_lines[0] == ("run,algorithm,dataset,alpha,seed,rounds,rounds_done,final_accuracy,"
                          "best_accuracy,rounds_to_0.55,rounds_to_0.99,formation_s,"
                          "wall_time_incl_formation_s")
  assert csv_lines[1] == "seed=0,fedavg,synthetic,0.0,0,2,2,0.7,0.7,1,,,2.0"
  assert csv_lines[2].startswith("seed=1,fedavg,synthetic,0.0,1,2,2,")
  assert "| seed=0 | fedavg | synthetic | 0 | 0 | 2 | 2 | 0.7000 | 0.7000 | 1 | - | - | 2.0 |" in (
      workdir / "summary_runs.md").read_text()
  # The fake seed=0 has another config than the real seed=1: two groups of one seed.
  groups = list(csv.DictReader(io.StringIO((workdir / "summary.csv").read_text())))
  assert [(g["algorithm"], g["n_seeds"], g["seeds"]) for g in groups] == [
      ("fedavg", "1", "0"), ("fedavg", "1", "1")]
  assert groups[0]["setting"].endswith(" more")  # fields the fake config lacks


def test_sweep_reports_a_failing_point_and_goes_on(tmp_path):
  workdir = tmp_path / "sweep"
  (workdir / "lr=0.1").mkdir(parents=True)  # holds another run's config: main.py refuses it
  (workdir / "lr=0.1" / "config.json").write_text(json.dumps({"seed": 7}))
  finished_point(workdir, "lr=0.05", 0)
  proc = run_module("fedjax_seq.sweep", "--config=configs/fedavg.py",
                    "--sweep=config.client.lr=0.1,0.05", f"--workdir={workdir}",
                    *tiny_flags(rounds=2, eval_every=1, omit=("client.lr",)))
  assert proc.returncode != 0
  assert "[1/2] lr=0.1: FAILED with exit status 1; going on" in proc.stdout
  assert "[2/2] lr=0.05: finished (2 rounds); skipped" in proc.stdout
  assert "holds a run with another config" in proc.stderr
  assert proc.stderr.splitlines()[-1] == "error: 1 of 2 points failed: lr=0.1 (exit 1)"
  assert "| lr=0.05 | fedavg |" in (workdir / "summary_runs.md").read_text()


def test_sweep_emits_slurm_scripts_without_running(tmp_path):
  workdir = tmp_path / "ablation"
  proc = run_module("fedjax_seq.sweep", "--config=configs/paper.py:fedseq,cifar10",
                    "--sweep=config.data.alpha=0,0.2", f"--workdir={workdir}", "--emit=slurm",
                    "--slurm_time=2:00:00")
  assert proc.returncode == 0, proc.stderr
  slurm = workdir / "slurm"
  assert sorted(os.listdir(workdir)) == ["slurm"]
  assert sorted(os.listdir(slurm)) == ["alpha=0.2.sbatch", "alpha=0.sbatch"]
  script = (slurm / "alpha=0.2.sbatch").read_text().splitlines()
  assert script[0] == "#!/bin/bash"
  assert "#SBATCH --job-name=ablation-alpha=0.2" in script
  assert f"#SBATCH --output={slurm}/alpha=0.2-%j.out" in script
  assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --time=2:00:00" in script
  assert f"cd {shlex.quote(ROOT)}" in script
  assert script[-1] == "exec " + expected_command(
      workdir / "alpha=0.2", "--config.data.alpha=0.2", config="configs/paper.py:fedseq,cifar10")
  assert f"sbatch {slurm}/alpha=0.sbatch" in proc.stdout
  assert f"sbatch {slurm}/alpha=0.2.sbatch" in proc.stdout


@pytest.mark.parametrize("args,fragment", [
    (["--sweep=data.alpha=0,0.2"], "expected config.PATH=V1,V2"),
    (["--sweep=config.data.alpha"], "expected config.PATH=V1,V2"),
    (["--sweep=config.data.alpah=0,0.2"], "no field config.data.alpah"),
    (["--sweep=config.data=0"], "config.data is a group of fields"),
    (["--sweep=config.seed="], "no values"),
    (["--sweep=config.seed=0,,1"], "empty value"),
    (["--sweep=config.seed=0,1.5"], "'1.5' of config.seed is not an integer"),
    (["--sweep=config.data.alpha=0,x"], "'x' of config.data.alpha is not a number"),
    (["--sweep=config.data.iid=maybe"], "is not a boolean"),
    (["--sweep=config.seed=0,0"], "given twice"),
    (["--sweep=config.seed=0,1", "--sweep=config.seed=2"], "swept twice"),
    (["--sweep=config.seed=0,1", "--config.seed=3"], "both swept and overridden"),
    (["--sweep=config.seed=0", "--config.client.lrr=1"], "lrr"),
    ([], "at least one --sweep"),
    (["--sweep=config.seed=0", "--slurm_time=tomorrow"], "--slurm_time"),
    (["--sweep=config.seed=0", "--targets=70"], "not an accuracy"),
])
def test_sweep_bad_input_is_one_line_before_anything_runs(tmp_path, args, fragment):
  workdir = tmp_path / "sweep"
  proc = run_module("fedjax_seq.sweep", "--config=configs/fedavg.py", f"--workdir={workdir}",
                    *args)
  assert_one_error_line(proc, fragment)
  assert not workdir.exists()


def test_sweep_refuses_a_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("keep me")
  proc = run_module("fedjax_seq.sweep", "--config=configs/fedavg.py", f"--workdir={path}",
                    "--sweep=config.seed=0,1")
  assert_one_error_line(proc, "is not a directory")
  assert path.read_text() == "keep me"


@pytest.mark.parametrize("preset,rounds", [("fedseq,cifar10", 10000),
                                           ("fedseq_inter_prox,cifar100", 20000)])
def test_paper_presets(preset, rounds):
  c = paper.get_config(preset)
  algorithm = preset.split(",")[0]
  assert c.algorithm.name == algorithm and c.data.name == preset.split(",")[1]
  assert c.rounds == rounds and c.eval_every == 100
  if algorithm == "fedseq_inter_prox":
    assert c.algorithm.fedseq_inter_prox.mu == 1.0  # its own section's paper value


def test_paper_lists_every_experiment_file():
  assert paper.algorithms() == sorted(
      ["fedavg", "fairavg", "fedprox", "scaffold", "feddyn", "fedseq", "fedseq_prox",
       "fedseq_dyn", "fedseq_scaffold", "fedseq_inter", "fedseq_inter_prox", "fedseq_inter_dyn",
       "fedseq_inter_scaffold", "centralized"])


@pytest.mark.parametrize("preset,message", [
    ("fedsgd,cifar10", "unknown algorithm 'fedsgd'"), ("fedseq,imagenet", "unknown dataset"),
    ("fedseq", "needs a preset"), ("", "needs a preset")])
def test_paper_rejects_unknown_presets(preset, message):
  with pytest.raises(InputError, match=message):
    paper.get_config(preset)


def test_main_reports_an_unknown_preset_in_one_line(tmp_path):
  proc = main_py("--config=configs/paper.py:fedsgd,cifar10", f"--workdir={tmp_path / 'run'}",
                 timeout=60)
  assert_one_error_line(proc, "unknown algorithm 'fedsgd'")
  assert not (tmp_path / "run").exists()
