"""Bring your own model, data and grouping: the registries, the readers end to end, the rules.

The docs' "Bring your own model and data" and "Adding a grouping" examples
are configs/examples/own_model_and_data.py and configs/examples/top_class_grouping.py,
verbatim; here they run through Python, main.py and the study. Every
incompatible combination is refused by the config's validation, before any
data is read (shown by pointing the data at a directory that does not exist:
the refusal is the combination's, not the missing data's).
"""

import gzip
import json
import os
import runpy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_seq
import helpers
from fedjax_seq import registry
from fedjax_seq.errors import InputError
from fedjax_seq.models import uses_lax_conv
from fedjax_seq.training import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN = os.path.join(ROOT, "configs", "examples", "own_model_and_data.py")
TOP_CLASS = os.path.join(ROOT, "configs", "examples", "top_class_grouping.py")
FASHION = "/usr/share/datasets/fashion-mnist"
SEAMS = (registry.MODELS, registry.DATASETS, registry.GROUPINGS, registry.MEASURES,
         registry.REPRESENTATIONS)


@pytest.fixture
def restore_registries():
  """Registrations made by a test are undone afterwards."""
  before = [dict(r._entries) for r in SEAMS]  # pylint: disable=protected-access
  yield
  for r, entries in zip(SEAMS, before, strict=True):
    r._entries.clear()  # pylint: disable=protected-access
    r._entries.update(entries)  # pylint: disable=protected-access


def run(args, timeout=300):
  """A Python command from the repository root; (returncode, stdout, stderr)."""
  proc = helpers.python(*args, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def docs_included_file(section: str) -> str:
  """The file a section of docs/bring_your_own.md includes whole (a MyST literalinclude)."""
  with open(os.path.join(ROOT, "docs", "bring_your_own.md")) as f:
    text = f.read().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
  target, *options = text.split("```{literalinclude} ", 1)[1].split("```", 1)[0].splitlines()
  assert options == [":language: python"], options  # no :lines: or :start-after:: the whole file
  return os.path.normpath(os.path.join(ROOT, "docs", target))


@pytest.mark.parametrize("section,path", [("Bring your own model and data", OWN),
                                          ("Adding a grouping", TOP_CLASS)])
def test_docs_show_the_examples_verbatim(section, path):
  assert docs_included_file(section) == path


# ------------------------------------------------------------------------ the examples


def test_own_model_and_data_from_python(restore_registries, capsys):
  """The example's __main__: FedSeq, formation on the user's module, 100 writers, 10 rounds."""
  runpy.run_path(OWN, run_name="__main__")
  out = capsys.readouterr().out
  assert "FedSeq on 100 natural clients: test accuracy" in out
  accuracy = float(out.rsplit(" ", 1)[1])
  assert accuracy > 0.35, out  # chance is 0.1; measured 0.512


def test_registered_model_dataset_and_grouping_through_main_and_study(tmp_path):
  """Registered from outside the package: main.py forms superclients with the user's grouping
  and the user's model as evaluator; the study forms the same groups from the same config."""
  config = tmp_path / "config.py"
  config.write_text(
      "import runpy\n"
      f"own = runpy.run_path({OWN!r})  # registers small_cnn and writers\n"
      f"runpy.run_path({TOP_CLASS!r})  # registers top_class\n"
      "def get_config():\n"
      "  c = own['get_config']()\n"
      "  c.model.name, c.fedseq.evaluator_model = 'mlp', 'small_cnn'\n"
      "  c.fedseq.grouping = 'top_class'\n"
      "  c.rounds, c.eval_every = 3, 3\n"
      "  return c\n")
  workdir = tmp_path / "run"
  code, _, err = run(["main.py", f"--config={config}", f"--workdir={workdir}"])
  assert code == 0, err
  assert "fedseq on writers (natural partition: 100 clients), model mlp" in err
  formed = json.loads((workdir / "superclients.json").read_text())
  assert formed["grouping"] == "top_class"
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["round"] == 3 and records[-1]["test_accuracy"] > 0.2
  code, out, err = run(["-m", "fedjax_seq.study", f"--config={config}",
                        f"--workdir={tmp_path / 'study'}", "--groupings=top_class,greedy",
                        "--measures=kullback", "--representations=confidence,classifier_last",
                        "--noheatmaps", "--random_repeats=2"])
  assert code == 0, err
  study = json.loads((tmp_path / "study" / "study.json").read_text())
  rows = {r["name"]: r for r in study["combinations"]}
  assert rows["top_class-confidence-e1"]["config_setting"]
  # Same config, same shared formation path: the same superclients, by construction.
  assert ([s["clients"] for s in rows["top_class-confidence-e1"]["superclients"]] ==
          [s["clients"] for s in formed["superclients"]])
  assert "greedy-kullback-classifier_last-e1" in [s["name"] for s in study["skipped"]]
  assert "top_class-classifier_last-e1" in [s["name"] for s in study["skipped"]]


def _fashion(n_train, n_test):
  def read(name):
    with gzip.open(os.path.join(FASHION, name + ".gz")) as f:
      raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=16 if "images" in name else 8)

  x = read("train-images-idx3-ubyte").reshape(-1, 28, 28)[:n_train]
  y = read("train-labels-idx1-ubyte")[:n_train]
  xt = read("t10k-images-idx3-ubyte").reshape(-1, 28, 28)[:n_test]
  yt = read("t10k-labels-idx1-ubyte")[:n_test]
  return x, y, xt, yt


def test_fedseq_and_fedavg_on_a_natural_partition_from_npz(tmp_path):
  """npz:PATH with client_train: 40 writers of one class each; FedSeq, then FedAvg on them."""
  x, y, xt, yt = _fashion(4000, 1000)
  writer = 4 * y + np.random.default_rng(0).integers(0, 4, len(y))
  path = tmp_path / "writers.npz"
  np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt, client_train=writer)
  workdir = tmp_path / "run"
  code, out, err = run(["main.py", "--config=configs/fedseq.py", f"--workdir={workdir}",
                        f"--config.data.name=npz:{path}", "--config.model.name=mlp",
                        "--config.fedseq.pretrain_epochs=1", "--config.fedseq.min_examples=300",
                        "--config.client.lr=0.05", "--config.rounds=8", "--config.eval_every=8",
                        "--config.compare_with=fedavg"])
  assert code == 0, err
  assert f"fedseq on npz:{path} (natural partition: 40 clients)" in err
  assert f"fedavg on npz:{path} (natural partition: 40 clients)" in err
  for run_dir in (workdir, workdir / "fedavg"):
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["round"] == 8 and records[-1]["test_accuracy"] > 0.3, records[-1]
  sizes = [s["num_examples"] for s in json.loads(
      (workdir / "superclients.json").read_text())["superclients"]]
  assert sum(sizes) == 4000  # the writers' own examples, every one of them


def test_fedavg_on_leaf_users(tmp_path):
  """leaf:DIR in LEAF's FEMNIST layout: 12 users are the clients."""
  x, y, xt, yt = _fashion(1200, 300)
  for split, images, labels, users in (("train", x, y, 12), ("test", xt, yt, 3)):
    (tmp_path / split).mkdir()
    names = [f"f{u:04d}_{u}" for u in range(users)]
    chunks = np.array_split(np.arange(len(labels)), users)
    data = {"users": names, "num_samples": [len(c) for c in chunks],
            "user_data": {n: {"x": (images[c].reshape(len(c), -1) / 255).tolist(),
                              "y": labels[c].tolist()}
                          for n, c in zip(names, chunks, strict=True)}}
    (tmp_path / split / f"all_data_0_niid_0_keep_0_{split}_9.json").write_text(json.dumps(data))
  workdir = tmp_path / "run"
  code, _, err = run(["main.py", "--config=configs/fedavg.py", f"--workdir={workdir}",
                      f"--config.data.name=leaf:{tmp_path}", "--config.model.name=mlp",
                      "--config.data.exemplars_per_class=1", "--config.client.fraction=0.5",
                      "--config.client.lr=0.05", "--config.rounds=4", "--config.eval_every=4"])
  assert code == 0, err
  assert "(natural partition: 12 clients)" in err
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["test_accuracy"] > 0.3, records[-1]


# ------------------------------------------------------------ refused before any data


def _fedseq(**fields):
  c = fedjax_seq.default_config()
  c.algorithm.name = "fedseq"
  c.data.dir = "/nonexistent/data"  # any data access would fail with "not found"
  for path, value in fields.items():
    section, field = path.split("__")
    c[section][field] = value
  return c


@pytest.fixture
def no_classifier_model(restore_registries):
  registry.register_model("plain_cnn", lambda num_classes: PlainCNN(num_classes))
  return "plain_cnn"


class PlainCNN(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


RULES = {
    "grouping needs probabilities": (
        dict(fedseq__grouping="greedy_mixture", fedseq__measure="cosine",
             fedseq__representation="classifier_last"),
        "grouping greedy_mixture needs probability vectors, which representation "
        "classifier_last does not yield"),
    "measure needs probabilities": (
        dict(fedseq__measure="gini", fedseq__representation="classifier_all"),
        "measure gini needs probability vectors, which representation classifier_all"),
    "representation needs exemplars": (
        dict(data__exemplars_per_class=0),
        "representation confidence scores held-out exemplars"),
    "representation needs a classifier": (
        dict(model__name="plain_cnn", fedseq__measure="cosine",
             fedseq__representation="classifier_last2"),
        "representation classifier_last2 reads the evaluator's classifier layers, and model "
        "plain_cnn declares none"),
    "evaluator needs a classifier": (
        dict(model__name="lenet", fedseq__evaluator_model="plain_cnn",
             fedseq__measure="wasserstein", fedseq__representation="classifier_last"),
        "model plain_cnn declares none"),
    "model takes no compute dtype": (
        dict(model__name="plain_cnn", model__compute_dtype="bfloat16"),
        "model plain_cnn takes no compute_dtype"),
    "model takes no conv_impl": (
        dict(model__name="mlp", model__conv_impl="xla"), "model mlp takes no conv_impl"),
    "unknown grouping": (dict(fedseq__grouping="spectral"),
                         "unknown config.fedseq.grouping 'spectral'; valid: greedy, kmeans, "
                         "random, greedy_mixture"),
    "unknown measure": (dict(fedseq__measure="l2"), "unknown config.fedseq.measure 'l2'"),
    "unknown representation": (dict(fedseq__representation="gradients"),
                               "unknown config.fedseq.representation 'gradients'"),
    "unknown model": (dict(model__name="resnet"), "unknown config.model.name 'resnet'; valid: lenet, mlp"),
    "unknown dataset": (dict(data__name="imagenet"), "unknown config.data.name 'imagenet'; valid: cifar10"),
    "source without argument": (dict(data__name="npz"), "dataset npz is named as npz:PATH"),
    "npz file missing": (dict(data__name="npz:/nonexistent/x.npz"), "is not a file"),
    "leaf layout missing": (dict(data__name="leaf:/nonexistent"), "LEAF's layout"),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_incompatible_settings_are_refused_before_loading(rule, no_classifier_model):
  fields, message = RULES[rule]
  with pytest.raises(InputError) as e:
    experiment.build(_fedseq(**fields))
  assert message in str(e.value)


def test_the_compatible_neighbours_pass_validation(no_classifier_model):
  """Each rule refuses only its case: random needs no representers at all, and the
  confidence representation needs no classifier."""
  experiment.validate(_fedseq(fedseq__grouping="random", fedseq__representation="classifier_last"))
  experiment.validate(_fedseq(model__name="plain_cnn"))
  experiment.validate(_fedseq(fedseq__measure="cosine", fedseq__representation="classifier_all"))


def test_main_refuses_the_issue_example_before_reading_data(tmp_path):
  code, _, err = run(["main.py", "--config=configs/fedseq.py", f"--workdir={tmp_path / 'w'}",
                      "--config.data.dir=/nonexistent", "--config.fedseq.grouping=greedy_mixture",
                      "--config.fedseq.measure=cosine",
                      "--config.fedseq.representation=classifier_last"], timeout=60)
  assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
  assert "grouping greedy_mixture needs probability vectors" in err
  assert not (tmp_path / "w").exists()


def test_a_module_passed_to_build_has_no_classifier(tmp_path):
  config = _fedseq(fedseq__measure="cosine", fedseq__representation="classifier_last")
  with pytest.raises(InputError, match="model \\(the model passed to build\\) declares none"):
    fedjax_seq.build(config, model=PlainCNN())


def test_study_skips_and_lists_what_the_evaluator_cannot_give(no_classifier_model):
  from fedjax_seq import study  # pylint: disable=import-outside-toplevel
  options = study.parse_options("greedy,greedy_mixture,random", "kullback,cosine",
                                "confidence,classifier_last")
  combos, skipped = study.plan(options, (2,), evaluator="plain_cnn", has_classifier=False,
                               exemplars=10)
  assert [c.name for c in combos] == ["random", "greedy-kullback-confidence-e2",
                                      "greedy-cosine-confidence-e2", "greedy_mixture-confidence-e2"]
  assert {s["name"] for s in skipped} == {"greedy-kullback-classifier_last-e2",
                                          "greedy-cosine-classifier_last-e2",
                                          "greedy_mixture-classifier_last-e2"}
  assert all("plain_cnn declares none" in s["reason"] or "probability vectors" in s["reason"]
             for s in skipped)


# ------------------------------------------------------------------- the registries


def test_built_ins_cannot_be_replaced_and_users_can_re_register(restore_registries):
  with pytest.raises(ValueError, match="'lenet' is built in"):
    fedjax_seq.register_model("lenet", lambda num_classes: PlainCNN(num_classes))
  with pytest.raises(ValueError, match="'random' is built in"):
    fedjax_seq.register_grouping("random", lambda *a, **k: [])
  with pytest.raises(ValueError, match="must be an identifier"):
    fedjax_seq.register_dataset("my data", lambda **k: None)
  with pytest.raises(ValueError, match="'alpha' is a config field"):
    fedjax_seq.register_dataset("alpha", lambda **k: None)
  fedjax_seq.register_model("mine", lambda num_classes: PlainCNN(num_classes))
  entry = fedjax_seq.register_model("mine", lambda num_classes: PlainCNN(num_classes),
                                    classifier=("Dense_0",))
  assert registry.MODELS.get("mine") is entry


def test_a_model_section_reaches_the_builder(restore_registries):
  """Registered before default_config(): the model's settings are config fields."""
  fedjax_seq.register_model("wide", lambda num_classes, width: PlainCNN(num_classes * width),
                            hyperparameters={"width": 2})
  c = fedjax_seq.default_config()
  assert c.model.wide.width == 2 and tuple(c.model.mlp.hidden) == (200, 200)
  c.data.name, c.model.name = "synthetic", "wide"
  c.data.synthetic.update(train_size=60, test_size=30, height=6, width=6, channels=1)
  c.data.num_clients, c.data.exemplars_per_class = 3, 1
  c.model.wide.width = 3
  exp = fedjax_seq.build(c)
  assert exp.model.num_classes == 30


def test_a_grouping_that_loses_a_client_is_refused(restore_registries):
  from fedjax_seq.superclients import grouping  # pylint: disable=import-outside-toplevel
  fedjax_seq.register_grouping("lossy", lambda reps, sizes, **k: [np.arange(len(sizes) - 1)],
                               needs_representers=False)
  with pytest.raises(ValueError, match="each of the 4 clients in exactly one"):
    grouping.group_clients(np.zeros((4, 0)), np.ones(4), method="lossy", max_clients=4,
                           min_examples=0, num_classes=2, rng=np.random.default_rng(0))


def test_lax_conv_is_read_from_the_program():
  """The engine's unroll decision holds for any flax module, whatever its attributes."""
  assert uses_lax_conv(PlainCNN(), (8, 8, 1))
  assert not uses_lax_conv(fedjax_seq.registry.MODELS.get("mlp").build(
      10, dtype=jnp.float32, hidden=(8,)), (8, 8, 1))


def test_help_lists_every_registry():
  code, out, _ = run(["main.py", "--help"], timeout=60)
  assert code == 0
  for line in ("models (--config.model.name=, --config.fedseq.evaluator_model=): lenet mlp",
               "datasets (--config.data.name=): cifar10 cifar100 fashion_mnist mnist synthetic "
               "npz:PATH tfds:NAME leaf:DIR",
               "groupings (--config.fedseq.grouping=): greedy kmeans random greedy_mixture",
               "measures (--config.fedseq.measure=): kullback gini cosine wasserstein",
               "representations (--config.fedseq.representation=): confidence classifier_last "
               "classifier_last2 classifier_all"):
    assert line in out


# ------------------------------------------------------------------ FederatedArrays


def _arrays(**changes):
  rng = np.random.default_rng(0)
  kw = dict(train_images=rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8),
            train_labels=np.array([0, 1, 2, 0, 1, 2]),
            test_images=rng.integers(0, 256, (3, 4, 4, 1), dtype=np.uint8),
            test_labels=np.array([2, 1, 0]))
  kw.update(changes)
  return fedjax_seq.FederatedArrays(**kw)


def test_federated_arrays_fill_in_classes_and_statistics():
  a = _arrays(client_ids=np.array([7, 3, 7, 3, 9, 7]))
  assert a.num_classes == 3 and a.image_shape == (4, 4, 1)
  x = a.train_images.astype(np.float64) / 255
  np.testing.assert_allclose(a.mean, [x.mean()], rtol=1e-12)
  np.testing.assert_allclose(a.std, [x.std()], rtol=1e-9)
  assert [c.tolist() for c in a.natural_clients()] == [[1, 3], [0, 2, 5], [4]]
  assert _arrays(mean=(0.5,), std=(0.25,)).std == (0.25,)


@pytest.mark.parametrize("changes,message", [
    (dict(train_images=np.zeros((6, 4, 4, 1), np.float32)), "train_images must be uint8"),
    (dict(test_images=np.zeros((3, 4, 4), np.uint8)), "test_images must have shape"),
    (dict(train_labels=np.array([0, 1, 2])), "train_labels has 3 labels for 6 train_images"),
    (dict(test_labels=np.array([0.0, 1.0, 2.0])), "test_labels must be a 1-D integer array"),
    (dict(test_images=np.zeros((3, 5, 4, 1), np.uint8)), "test_images have shape (5, 4, 1)"),
    (dict(num_classes=2), "labels must lie in [0, num_classes=2)"),
    (dict(train_labels=np.array([0, -1, 2, 0, 1, 2])), "train_labels must be >= 0"),
    (dict(client_ids=np.arange(5)), "client_ids must hold one id per training image (6)"),
    (dict(client_ids=np.linspace(0, 1, 6)), "client_ids must be integers or strings"),
    (dict(mean=(0.1, 0.2)), "mean must have one value per channel (1)"),
])
def test_federated_arrays_refuse_bad_arrays(changes, message):
  with pytest.raises(ValueError) as e:
    _arrays(**changes)
  assert message in str(e.value)


def test_user_arrays_need_no_dataset_name():
  """data= replaces config.data.name; without client ids the config's partition applies."""
  c = fedjax_seq.default_config()
  c.data.name = "no such dataset"  # not read: the arrays are given
  c.model.name, c.data.num_clients, c.data.iid = "mlp", 3, True
  c.data.exemplars_per_class = 0  # FedAvg: no exemplars needed
  exp = fedjax_seq.build(c, data=_arrays())
  assert exp.data.num_clients == 3 and np.asarray(exp.data.client_sizes).tolist() == [2, 2, 2]
  state, metrics = exp.round(exp.state, 1)
  assert np.isfinite(float(metrics["train_loss"]))
  del state


def test_flop_counter_sees_flax_layers_of_a_user_model():
  """3x3 SAME conv 1->4 on 8x8 and dense 256->10: counted as XLA counts them (+-2%)."""
  from benchmarks import flops  # pylint: disable=import-outside-toplevel
  model = PlainCNN()
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  assert flops.layer_macs(model, params, (8, 8, 1)) == [("Conv_0", 8 * 8 * 9 * 4),
                                                         ("Dense_0", 256 * 10)]
  counted = flops.train_flops_per_example(model, params, (8, 8, 1))
  assert counted == 2 * (2 * (2304 + 2560) + 2560)  # forward, weight and input gradients
  assert counted == pytest.approx(flops.xla_step_flops(model, params, (64, 8, 8, 1)) / 64,
                                  rel=0.02)
