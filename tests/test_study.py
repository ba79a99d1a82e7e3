"""The superclient formation study (fedjax_seq.study), end to end on a tiny synthetic split."""

import io
import json
import math
import os
import sys

import numpy as np

import helpers
import pytest

from configs import fedseq as fedseq_config
from helpers import ROOT, run
from fedjax_seq import study

# A small grid: 13 combinations + 2 oracles, 4 incompatible ones skipped.
GRID = dict(groupings="random,greedy,kmeans,greedy_mixture", measures="kullback,cosine",
            representations="confidence,classifier_last", pretrain_epochs="1,2")
OVERRIDES = ["--config.data.name=synthetic", "--config.data.synthetic.train_size=600",
             "--config.data.synthetic.test_size=200", "--config.data.synthetic.height=8",
             "--config.data.synthetic.width=8", "--config.data.synthetic.channels=1",
             "--config.data.num_clients=20", "--config.model.name=mlp",
             "--config.fedseq.evaluator_model=mlp", "--config.fedseq.min_examples=100",
             "--config.fedseq.max_clients=5", "--config.fedseq.pretrain_epochs=2",
             "--config.client.lr=0.1"]


def tiny_config(**changes):
  """20 one-class clients of 30 synthetic 8x8 images; superclients of 4 (120 examples)."""
  c = fedseq_config.get_config()
  c.data.name = "synthetic"
  c.data.synthetic.update(train_size=600, test_size=200, height=8, width=8, channels=1)
  c.data.num_clients = 20
  c.model.name = "mlp"
  c.fedseq.update(evaluator_model="mlp", min_examples=100, max_clients=5, pretrain_epochs=2)
  c.client.lr = 0.1
  return helpers.override(c, changes)


def _run(config, workdir, **flags):
  out = io.StringIO()
  report = study.run_study(config, str(workdir), study.parse_options(**{**GRID, **flags}), out)
  return report, out.getvalue()


@pytest.fixture(scope="module")
def first(tmp_path_factory):
  """One study with saved models: (workdir, report, printed text, study.json)."""
  workdir = tmp_path_factory.mktemp("study") / "a"
  report, text = _run(tiny_config(), workdir, save_models=True)
  return workdir, report, text, json.loads((workdir / "study.json").read_text())


def test_writes_tables_pictures_and_groupings(first):
  workdir, report, text, info = first
  names = [r["name"] for r in info["combinations"]]
  expected = {"random", "oracle", "oracle-greedy-kullback"}
  for e in (1, 2):
    expected |= {f"greedy-kullback-confidence-e{e}", f"greedy-cosine-confidence-e{e}",
                 f"greedy-cosine-classifier_last-e{e}", f"kmeans-confidence-e{e}",
                 f"kmeans-classifier_last-e{e}", f"greedy_mixture-confidence-e{e}"}
  assert sorted(names) == sorted(expected)
  assert report["pretrained"] == [1, 2]
  assert "pre-training 20 clients for 2 epochs" in text
  for name in ("study.json", "study.md", "study.csv", "comparison.png", "estimate_error.png",
               "models/e1.npz", "models/e2.npz", "representers/e2.npz"):
    assert (workdir / name).is_file(), name
  for name in names:
    assert (workdir / "heatmaps" / f"{name}.png").is_file()
    grouping_file = json.loads((workdir / "groupings" / f"{name}.json").read_text())
    assert grouping_file["study_combination"] == name
    assert {"clients", "class_counts", "num_examples"} <= set(grouping_file["superclients"][0])
  # Tables sorted by mean KL, the oracle marked, one row per combination.
  kls = [r["kl_mean"] for r in info["combinations"]]
  assert kls == sorted(kls)
  csv_lines = (workdir / "study.csv").read_text().splitlines()
  assert len(csv_lines) == 1 + len(names) and csv_lines[0].startswith("rank,name,")
  md = (workdir / "study.md").read_text()
  assert "oracle **(oracle)**" in md and "greedy-kullback-confidence-e2 (config)" in md
  assert f"--config.fedseq.superclients_from={workdir}/groupings/{info['best']}.json" in text
  assert not info["combinations"][[r["name"] for r in info["combinations"]].index(
      info["best"])]["oracle"]


def test_every_membership_covers_every_client_once(first):
  workdir, _, _, info = first
  counts = np.array(info["client_class_counts"])
  assert counts.shape == (20, 10) and (counts.sum(1) == 30).all()
  for row in info["combinations"]:
    members = sorted(c for s in row["superclients"] for c in s["clients"])
    assert members == list(range(20)), row["name"]
    assert all(len(s["clients"]) <= 5 for s in row["superclients"])
    on_disk = json.loads((workdir / row["grouping_file"]).read_text())["superclients"]
    assert [s["clients"] for s in on_disk] == [s["clients"] for s in row["superclients"]]
    for s in row["superclients"]:
      np.testing.assert_array_equal(s["class_counts"], counts[s["clients"]].sum(0))


def test_config_setting_equals_what_a_training_run_forms(first):
  """The training run's own build (experiment.build) forms the study's row of its setting."""
  from fedjax_seq.training import experiment
  workdir, _, _, info = first
  config = tiny_config()
  assert info["settings"]["config_combination"] == "greedy-kullback-confidence-e2"
  exp = experiment.build(config)
  ours = json.loads((workdir / "groupings" / "greedy-kullback-confidence-e2.json").read_text())
  assert ([s["clients"] for s in ours["superclients"]] ==
          [s["clients"] for s in exp.superclients["superclients"]])
  np.testing.assert_array_equal(ours["representers"], exp.superclients["representers"])
  row = next(r for r in info["combinations"] if r["name"] == "greedy-kullback-confidence-e2")
  assert row["config_setting"]


def test_oracle_is_lowest_and_incompatible_combinations_are_listed(first):
  _, _, text, info = first
  oracle = next(r for r in info["combinations"] if r["name"] == "oracle")
  assert all(oracle["kl_mean"] <= r["kl_mean"] + 1e-12 for r in info["combinations"])
  assert info["combinations"][0]["name"] == "oracle"  # first even on a tie
  skipped = {s["name"]: s["reason"] for s in info["skipped"]}
  assert set(skipped) == {"greedy-kullback-classifier_last-e1", "greedy-kullback-classifier_last-e2",
                          "greedy_mixture-classifier_last-e1", "greedy_mixture-classifier_last-e2"}
  assert "probability vectors" in skipped["greedy-kullback-classifier_last-e1"]
  assert "skipped 4 incompatible combinations" in text
  rand = next(r for r in info["combinations"] if r["name"] == "random")
  assert rand["random_kl_std"] > 0 and rand["gap_closed"] is not None
  assert set(info["estimates"]) == {"1", "2"}
  for v in info["estimates"].values():
    assert v["kl_mean"] > 0 and 0 < v["tv_mean"] <= 1 and 0 <= v["top_class_agreement"] <= 1


def test_second_study_reuses_models_and_rerun_resumes(first, tmp_path):
  workdir, _, _, info = first
  before = (workdir / "study.json").read_bytes()
  # Another workdir on the same clients: the saved models, no pre-training.
  report, text = _run(tiny_config(), tmp_path / "b", models_from=str(workdir), heatmaps=False)
  assert report["pretrained"] == [] and report["models_loaded"] == [1, 2]
  assert "pre-training 20 clients" not in text and "loaded the pre-trained client models" in text
  assert (tmp_path / "b" / "study.json").read_bytes() == before
  # The same command again in the first workdir: nothing redone, same study.json.
  (workdir / "groupings" / "kmeans-confidence-e1.json").unlink()
  (workdir / "study.json").unlink()
  report, text = _run(tiny_config(), workdir, save_models=True)
  assert report["pretrained"] == [] and report["models_loaded"] == []
  assert report["representers_cached"] == [1, 2]
  assert report["formed"] == ["kmeans-confidence-e1"]
  assert (workdir / "study.json").read_bytes() == before


def test_models_of_other_clients_are_refused(first, tmp_path, capsys):
  workdir, _, _, _ = first
  target = tmp_path / "c"
  code = study.cli(tiny_config(**{"client.lr": 0.2}), str(target), stream=None,
                   models_from=str(workdir), **GRID)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1 and err[0].startswith("error: ")
  assert "client.lr: 0.1 there, 0.2 here" in err[0]
  assert not target.exists()
  # A workdir holding a study of other settings is refused too, and left as it was.
  before = sorted(os.listdir(workdir))
  code = study.cli(tiny_config(**{"fedseq.min_examples": 90}), str(workdir), stream=None, **GRID)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1 and "fedseq.min_examples: 100 there, 90 here" in err[0]
  assert sorted(os.listdir(workdir)) == before


@pytest.mark.parametrize("changes, flags, message", [
    ({}, {"groupings": "greedy,spectral"}, "unknown grouping 'spectral'"),
    ({}, {"measures": ""}, "--measures needs a non-empty"),
    ({}, {"representations": "confidence,,classifier_last"}, "--representations needs a non-empty"),
    ({}, {"pretrain_epochs": "5,0"}, "--pretrain_epochs must all be >= 1"),
    ({}, {"pretrain_epochs": ""}, "--pretrain_epochs needs a non-empty"),
    ({"data.name": "fashion_mnist", "data.dir": "/nonexistent/fashion"}, {}, "fashion"),
    ({"fedseq.max_clients": 2, "fedseq.min_examples": 100}, {},
     "cannot form superclients: the 2 largest clients hold 60 < min_examples=100"),
    ({"fedseq.grouping": "clustering"}, {}, "unknown config.fedseq.grouping"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, changes, flags, message):
  target = tmp_path / "bad"
  code = study.cli(tiny_config(**changes), str(target), stream=None,
                   **{**GRID, "groupings": "random", **flags})
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not target.exists()


def test_command_line(tmp_path):
  """The absl entry point: a run (random only: no pre-training) and a bad flag."""
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  base = [sys.executable, "-m", "fedjax_seq.study", "--config=configs/fedseq.py", *OVERRIDES]
  ok = run(base + [f"--workdir={tmp_path / 'cli'}", "--groupings=random", "--random_repeats=3",
                   "--noheatmaps"], env=env, timeout=120)
  assert ok.returncode == 0, ok.stderr
  info = json.loads((tmp_path / "cli" / "study.json").read_text())
  assert sorted(r["name"] for r in info["combinations"]) == [
      "oracle", "oracle-greedy-kullback", "random"]
  assert info["settings"]["pretrain_epochs"] == [] and "superclients_from=" in ok.stdout
  bad = run(base + [f"--workdir={tmp_path / 'bad'}", "--measures=kullback,entropy"], env=env,
            timeout=120)
  lines = bad.stderr.strip().splitlines()
  assert bad.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), bad.stderr
  assert "entropy" in lines[0] and not (tmp_path / "bad").exists()


def test_scores_by_hand():
  # Two superclients over 3 classes: (10, 10, 10) and (20, 0, 0) + (0, 0, 0).
  counts = np.array([[10, 0, 0], [0, 10, 0], [0, 0, 10], [20, 0, 0], [0, 0, 0]])
  s = study.score_groups([[0, 1, 2], [3, 4]], counts)
  assert s["num_superclients"] == 2
  assert s["kl_mean"] == pytest.approx(math.log(3) / 2) and s["kl_max"] == pytest.approx(math.log(3))
  assert s["classes_mean"] == 2.0  # 3 and 1 distinct classes
  assert (s["examples_min"], s["examples_mean"], s["examples_max"]) == (20, 25.0, 30)
  assert (s["clients_mean"], s["clients_max"]) == (2.5, 3)
  # Random groups of sizes (1, 1): every client alone, whatever the draw.
  mean, std = study.random_baseline([1, 1], np.array([[5, 5], [4, 0]]), 4,
                                    np.random.default_rng(0))
  assert mean == pytest.approx(math.log(2) / 2) and std == 0.0
  # Estimates: true (1, 0) vs (.4, .6): KL ln 2.5, TV .6, top class wrong; true (0, 1)
  # vs (0, 1): KL 0 (smoothing aside), TV 0, right.
  e = study.estimate_error(np.array([[10, 0], [0, 10]]), np.array([[.4, .6], [0., 1.]]))
  assert e["kl_mean"] == pytest.approx(math.log(2.5) / 2, abs=1e-5)
  assert e["tv_mean"] == pytest.approx(0.3, abs=1e-5)
  assert e["top_class_agreement"] == 0.5
