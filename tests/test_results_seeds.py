"""Seed groups with 95% confidence intervals, formation time, metrics CSV, refused
metrics files and heatmap sizes, on fake workdirs with known numbers."""

import csv
import io
import math

import pytest
from scipy import stats

from fedjax_seq import plot, results
from fedjax_seq.errors import InputError
from helpers import fake_config, record, write_run

T2 = stats.t.ppf(0.975, 2)  # 4.3027: two-sided 95%, 3 seeds
T1 = stats.t.ppf(0.975, 1)  # 12.706: 2 seeds


def with_lr(config: dict, lr: float) -> dict:
  return {**config, "client": {"lr": lr}}


def superclients(formation_s=None) -> dict:
  info = {"superclients": [{"id": 0, "clients": [0], "class_counts": [1, 1]}]}
  return info if formation_s is None else {**info, "formation_s": formation_s}


@pytest.fixture
def seed_runs(tmp_path):
  """Three seeds of FedSeq at lr 0.05 under unrelated names (final 0.74, 0.70, 0.72;
  formation 30, 10, 20 s) and one at lr 0.1 whose superclients.json predates formation_s."""
  mk = lambda name, seed, lr, accuracies, formation: results.load_run(str(write_run(
      tmp_path / name, with_lr(fake_config("fedseq", 0.0, seed, rounds=200), lr),
      [record(100, accuracies[0], 10.0), record(200, accuracies[1], 20.0)],
      superclients(formation))))
  return [mk("zz", 2, 0.05, (0.65, 0.74), 30.0), mk("a", 0, 0.1, (0.5, 0.6), None),
          mk("b", 0, 0.05, (0.76, 0.70), 10.0), mk("m", 1, 0.05, (0.71, 0.72), 20.0)]


def test_seeds_are_one_group_with_mean_and_student_t_interval(seed_runs):
  assert [[r["name"] for r in g] for g in results.group_runs(seed_runs)] == [
      ["zz", "b", "m"], ["a"]]
  rows = results.summarize_groups(seed_runs, [0.71, 0.75, 0.8])
  half = T2 * 0.02 / math.sqrt(3)  # sample std of (0.70, 0.72, 0.74) is 0.02
  assert half == pytest.approx(0.04969, abs=1e-5)
  assert rows[0] == {
      "algorithm": "fedseq", "dataset": "cifar10", "alpha": 0.0, "setting": "client.lr=0.05",
      "rounds": 200, "rounds_done": 200, "n_seeds": 3, "seeds": "2,0,1",
      "final_accuracy": pytest.approx(0.72), "final_accuracy_ci95": pytest.approx(half),
      "best_accuracy": pytest.approx(0.74),  # best of each seed: 0.74, 0.76, 0.72
      "best_accuracy_ci95": pytest.approx(half),
      # rounds to 0.71: 200, 100, 100 (std 100/sqrt(3)); 0.75: seed 0 only; 0.8: none
      "rounds_to_0.71": pytest.approx(400 / 3), "rounds_to_0.71_ci95": pytest.approx(T2 * 100 / 3),
      "reached_0.71": "3/3", "rounds_to_0.75": 100, "rounds_to_0.75_ci95": None,
      "reached_0.75": "1/3", "rounds_to_0.8": None, "rounds_to_0.8_ci95": None,
      "reached_0.8": "0/3",
      "formation_s": pytest.approx(20.0), "wall_time_incl_formation_s": pytest.approx(40.0)}
  assert rows[1] == {  # another learning rate: its own group, one seed, no interval
      "algorithm": "fedseq", "dataset": "cifar10", "alpha": 0.0, "setting": "client.lr=0.1",
      "rounds": 200, "rounds_done": 200, "n_seeds": 1, "seeds": "0",
      "final_accuracy": 0.6, "final_accuracy_ci95": None, "best_accuracy": 0.6,
      "best_accuracy_ci95": None, "rounds_to_0.71": None, "rounds_to_0.71_ci95": None,
      "reached_0.71": "0/1", "rounds_to_0.75": None, "rounds_to_0.75_ci95": None,
      "reached_0.75": "0/1", "rounds_to_0.8": None, "rounds_to_0.8_ci95": None,
      "reached_0.8": "0/1", "formation_s": None, "wall_time_incl_formation_s": 20.0}
  md = results.to_markdown(rows).splitlines()
  assert md[2] == ("| fedseq | cifar10 | 0 | client.lr=0.05 | 200 | 200 | 3 | 2,0,1 | "
                   "0.7200 ± 0.0497 | 0.7400 ± 0.0497 | 133.3 ± 143.4 | 3/3 | 100 | 1/3 | - | "
                   "0/3 | 20.0 | 40.0 |")
  assert md[3] == ("| fedseq | cifar10 | 0 | client.lr=0.1 | 200 | 200 | 1 | 0 | 0.6000 | "
                   "0.6000 | - | 0/1 | - | 0/1 | - | 0/1 | - | 20.0 |")
  row = next(csv.DictReader(io.StringIO(results.to_csv(rows))))
  assert float(row["final_accuracy_ci95"]) == pytest.approx(half, rel=1e-12)


def test_the_same_seed_twice_is_two_groups_and_the_workdir_name_is_irrelevant(tmp_path):
  mk = lambda name, seed: results.load_run(str(write_run(
      tmp_path / name, fake_config("fedavg", 0.2, seed), [record(1, 0.5, 1.0)])))
  runs = [mk("run1", 0), mk("other", 1), mk("copy_of_run1", 0)]
  assert [[r["name"] for r in g] for g in results.group_runs(runs)] == [
      ["run1", "other"], ["copy_of_run1"]]


def test_mean_ci95():
  assert results.mean_ci95([]) == (None, None)
  assert results.mean_ci95([7]) == (7, None)
  mean, half = results.mean_ci95([0.5, 0.7])
  assert mean == pytest.approx(0.6) and half == pytest.approx(T1 * 0.1)  # std 0.1*sqrt(2)


def test_curve_band_uses_the_seeds_that_have_each_round(tmp_path, monkeypatch):
  """Seed 0 evaluated rounds 1 and 2, seed 1 only round 1: round 2 has no band."""
  import matplotlib.axes
  mk = lambda name, config, accuracies: results.load_run(str(write_run(
      tmp_path / name, config, [record(r, a, 1.0) for r, a in enumerate(accuracies, 1)])))
  runs = [mk("s0", fake_config("fedseq", 0.0, 0), [0.5, 0.6]),
          mk("s1", fake_config("fedseq", 0.0, 1), [0.7]),
          mk("avg", fake_config("fedavg", 0.2, 0), [0.4, 0.45])]
  curve = results.accuracy_curve(runs[:2])
  assert [(r, n) for r, n, _, _ in curve] == [(1, 2), (2, 1)]
  assert curve[0][2:] == (pytest.approx(0.6), pytest.approx(T1 * 0.1))
  assert curve[1][2:] == (0.6, None)

  drawn = {"plot": [], "fill": []}
  real_plot, real_fill = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.fill_between

  def spy_plot(self, x, y, *args, **kwargs):
    drawn["plot"].append((kwargs["label"], list(x), list(y)))
    return real_plot(self, x, y, *args, **kwargs)

  def spy_fill(self, x, low, high, **kwargs):
    drawn["fill"].append((list(x), list(low), list(high)))
    return real_fill(self, x, low, high, **kwargs)

  monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy_plot)
  monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", spy_fill)
  plot.plot_accuracy(runs, str(tmp_path / "c.png"))
  assert drawn["plot"] == [("fedseq (alpha=0, 2 seeds)", [1, 2], [pytest.approx(60), 60.0]),
                           ("fedavg (alpha=0.2)", [1, 2], [40.0, 45.0])]
  band = 100 * T1 * 0.1
  assert drawn["fill"] == [([1, 2], [pytest.approx(60 - band), 60.0],
                            [pytest.approx(60 + band), 60.0])]  # one band: the single run has none


def test_plot_cli_writes_every_evaluation_as_csv(tmp_path):
  a = write_run(tmp_path / "a", fake_config("fedseq", 0.0, 3),
                [record(10, 0.25, 1.5), record(20, 0.5, 3.0)])
  b = write_run(tmp_path / "b", fake_config("fedavg", 0.2, 4),
                [{**record(10, 0.125, 2.0), "extra": 7}])
  out = tmp_path / "out" / "metrics.csv"
  assert plot.main([str(a), str(b), "--metrics_csv", str(out)]) == 0
  assert out.read_text().splitlines() == [
      "run,workdir,algorithm,dataset,alpha,seed,round,test_accuracy,test_loss,train_loss,"
      "elapsed_s,extra",
      f"a,{a},fedseq,cifar10,0.0,3,10,0.25,1.0,1.0,1.5,",
      f"a,{a},fedseq,cifar10,0.0,3,20,0.5,1.0,1.0,3.0,",
      f"b,{b},fedavg,cifar10,0.2,4,10,0.125,1.0,1.0,2.0,7"]


def test_formation_time_is_its_own_column_and_part_of_the_wall_time(tmp_path):
  run = results.load_run(str(write_run(tmp_path / "fedseq", fake_config("fedseq", 0.0, 0),
                                       [record(5, 0.5, 100.25)], superclients(12.5))))
  row = results.summarize([run])[0]
  assert (row["formation_s"], row["wall_time_incl_formation_s"]) == (12.5, 112.75)
  group = results.summarize_groups([run])[0]
  assert (group["formation_s"], group["wall_time_incl_formation_s"]) == (12.5, 112.75)


def test_plot_refuses_metrics_whose_rounds_go_back(tmp_path, capsys):
  run = write_run(tmp_path / "shared", fake_config("fedavg", 0.0, 0),
                  [record(1, 0.1, 1.0), record(2, 0.2, 2.0), record(1, 0.15, 1.0)])
  status = plot.main([str(run), "--out", str(tmp_path / "c.png"), "--table",
                      str(tmp_path / "t.md")])
  lines = capsys.readouterr().err.splitlines()
  assert status != 0 and len(lines) == 1
  assert lines[0].startswith(f"error: {run / 'metrics.jsonl'} line 3: round 1 does not come "
                             "after round 2 (line 2)")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]
  with pytest.raises(InputError, match="two runs probably wrote to this workdir"):
    results.load_run(str(run))


def heatmap(tmp_path, monkeypatch, num_superclients, num_classes):
  """Draws a heatmap; returns (height, width) in pixels and the colour bar's width in inches."""
  import matplotlib.figure
  import matplotlib.image
  figures = []
  real_savefig = matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                      lambda self, *a, **k: (figures.append(self), real_savefig(self, *a, **k)))
  info = {"superclients": [{"id": i, "clients": [i], "class_counts": [
      (i + c) % 3 for c in range(num_classes)]} for i in range(num_superclients)]}
  path = tmp_path / f"h{num_superclients}.png"
  plot.plot_superclients(info, str(path), "run")
  height, width = matplotlib.image.imread(str(path)).shape[:2]
  fig = figures[-1]
  map_width, bar_width = (ax.get_window_extent().width / fig.dpi for ax in fig.axes)
  return height, width, bar_width, map_width


def test_heatmap_is_sized_to_its_content_with_a_narrow_colour_bar(tmp_path, monkeypatch):
  # 5 superclients x 4 classes: a small figure (at most 6 x 4 in at 150 dpi).
  height, width, bar, map_width = heatmap(tmp_path, monkeypatch, 5, 4)
  assert 300 <= height <= 600 and 600 <= width <= 900, (height, width)
  assert bar <= 0.2 and bar <= map_width / 10
  # 71 x 10 (it was 2568 x 1050 px): taller, but at most 9.5 in (1425 px) high, 8 in wide.
  height71, width71, bar, map_width = heatmap(tmp_path, monkeypatch, 71, 10)
  assert 2 * height <= height71 <= 1425 and width71 <= 1200, (height71, width71)
  assert bar <= 0.2 and bar <= map_width / 10
