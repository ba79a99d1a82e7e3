"""Tests for fedjax_seq.data.readers on small files written in each real on-disk format."""

import io
import json
import re

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from fedjax_seq.data import readers
from helpers import python


@pytest.mark.parametrize("first", ["sources", "readers"])
def test_imports_in_either_order(first):
  """sources imports readers and readers uses sources' helpers: neither order may fail."""
  code = (f"import fedjax_seq.data.{first}\n"
          "from fedjax_seq.data import readers, sources\n"
          "assert readers.sources is sources and callable(sources._materialise)")
  proc = python("-c", code, timeout=60)
  assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------ npz


def _npz_arrays():
  rng = np.random.default_rng(0)
  return {"x_train": rng.integers(0, 256, (5, 4, 3, 3), dtype=np.uint8),
          "y_train": np.array([0, 3, 1, 3, 2]),
          "x_test": rng.integers(0, 256, (2, 4, 3, 3), dtype=np.uint8),
          "y_test": np.array([4, 0])}


def test_npz_reads_arrays_and_natural_clients(tmp_path):
  path = str(tmp_path / "data.npz")
  arrays = _npz_arrays()
  np.savez(path, **arrays, client_train=np.array(["b", "a", "b", "c", "a"]))
  data = readers.read_npz(path)
  np.testing.assert_array_equal(data.train_images, arrays["x_train"])
  np.testing.assert_array_equal(data.test_images, arrays["x_test"])
  assert data.train_labels.tolist() == [0, 3, 1, 3, 2]
  assert data.test_labels.tolist() == [4, 0]
  assert data.client_ids.tolist() == ["b", "a", "b", "c", "a"]
  assert [c.tolist() for c in data.natural_clients()] == [[1, 4], [0, 2], [3]]
  assert data.num_classes == 5 and data.image_shape == (4, 3, 3)
  assert data.name == f"npz:{path}" and not data.augment


def test_npz_grey_float_images_and_keras_labels(tmp_path):
  path = str(tmp_path / "grey.npz")
  x_train = np.array([[[0.0, 0.5], [1.0, 0.2]], [[0.1, 0.9], [0.25, 0.75]]], np.float32)
  np.savez(path, x_train=x_train, y_train=np.array([[1], [0]]),
           x_test=np.zeros((1, 2, 2), np.float64), y_test=np.array([1]))
  data = readers.read_npz(path)
  assert data.train_images.shape == (2, 2, 2, 1) and data.train_images.dtype == np.uint8
  # np.round(x * 255): 0.5 -> 127.5 -> 128 (half to even), 0.2 -> 51, 0.1 -> 25.5 -> 26.
  assert data.train_images[..., 0].tolist() == [[[0, 128], [255, 51]], [[26, 230], [64, 191]]]
  assert data.test_images.tolist() == [[[[0], [0]], [[0], [0]]]]
  assert data.train_labels.tolist() == [1, 0] and data.client_ids is None
  assert data.num_classes == 2
  assert data.mean == pytest.approx((data.train_images.mean() / 255,))


def _npy(array):
  """The bytes of a single-array .npy file."""
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def _write_npz(path, **changes):
  arrays = {**_npz_arrays(), **changes}
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize("write, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("x_train,y_train\n"), "is not an .npz archive"),
    (lambda p: p.write_bytes(_npy(np.zeros(3))), "is not an .npz archive"),
    (lambda p: _write_npz(p, y_test=None), "lacks y_test"),
    (lambda p: _write_npz(p, y_train=np.array([0, "a", 1, 2, 3], object)),
     "cannot read npz file .*allow_pickle"),
    (lambda p: _write_npz(p, x_train=np.zeros((5, 4, 3, 3), np.int64)),
     "x_train must be uint8 or floats in \\[0, 1\\], got int64"),
    (lambda p: _write_npz(p, x_test=np.full((2, 4, 3, 3), 1.5)),
     "x_test must be uint8 or floats in \\[0, 1\\], got floats outside"),
    (lambda p: _write_npz(p, x_test=np.zeros((2, 12), np.uint8)),
     "x_test must have shape \\(N, H, W\\) or \\(N, H, W, C\\), got \\(2, 12\\)"),
    (lambda p: _write_npz(p, client_train=np.arange(4)),
     "client_ids must hold one id per training image"),
    (lambda p: _write_npz(p, y_train=np.array([0.0, 1, 2, 3, 4])),
     "train_labels must be a 1-D integer array"),
])
def test_npz_errors_name_the_file(tmp_path, write, message):
  path = tmp_path / "bad.npz"
  write(path)
  with pytest.raises(ValueError, match=message) as e:
    readers.read_npz(str(path))
  assert str(path) in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------- LEAF


def _femnist_rows(seed, n):
  """(n, 784) floats v / 255 for known uint8 pixels v, with a 0.5 -> 128 in each row."""
  pixels = np.random.default_rng(seed).integers(0, 256, (n, 784))
  rows = pixels / 255
  rows[:, 1] = 0.5
  pixels[:, 1] = 128
  return rows, pixels.reshape(n, 28, 28, 1).astype(np.uint8)


def _write_leaf(path, examples, **changes):
  """One LEAF JSON file of `examples`, {user: (x rows, y labels)}, with `changes` to its keys."""
  path.parent.mkdir(parents=True, exist_ok=True)
  data = {"users": list(examples), "num_samples": [len(y) for _, y in examples.values()],
          "user_data": {u: {"x": np.asarray(x).tolist(), "y": list(y)}
                        for u, (x, y) in examples.items()}}
  path.write_text(json.dumps({**data, **changes}))


def test_leaf_femnist_natural_clients(tmp_path):
  x, pixels = _femnist_rows(1, 9)
  # Written out of order: the reader goes by sorted file name.
  _write_leaf(tmp_path / "train" / "all_data_1_niid_0_keep_0_train_9.json",
              {"f0003_05": (x[5:6], [61])})
  _write_leaf(tmp_path / "train" / "all_data_0_niid_0_keep_0_train_9.json",
              {"f0002_11": (x[0:3], [3, 0, 3]), "f0001_00": (x[3:5], [7, 1]),
               "f0009_01": ([], [])})
  _write_leaf(tmp_path / "test" / "all_data_0_niid_0_keep_0_test_9.json",
              {"f0002_11": (x[6:7], [5]), "f0001_00": (x[7:9], [2, 60])})
  data = readers.read_leaf(str(tmp_path))
  assert data.train_images.shape == (6, 28, 28, 1) and data.train_images.dtype == np.uint8
  np.testing.assert_array_equal(data.train_images, pixels[:6])
  np.testing.assert_array_equal(data.test_images, pixels[6:])
  assert data.train_images[0, 0, 1, 0] == 128
  assert data.train_labels.tolist() == [3, 0, 3, 7, 1, 61]
  assert data.test_labels.tolist() == [5, 2, 60]
  assert data.client_ids.tolist() == ["f0002_11"] * 3 + ["f0001_00"] * 2 + ["f0003_05"]
  assert [c.tolist() for c in data.natural_clients()] == [[3, 4], [0, 1, 2], [5]]
  assert data.num_classes == 62 and data.name == f"leaf:{tmp_path}"


def test_leaf_colour_and_nested_rows(tmp_path):
  # A flat row of 12 values is a 2x2 RGB image in HWC order.
  rgb = np.arange(12) / 255
  _write_leaf(tmp_path / "rgb" / "train" / "a.json", {"u": ([rgb, rgb[::-1]], [0, 1])})
  _write_leaf(tmp_path / "rgb" / "test" / "a.json", {"v": ([rgb], [1])})
  data = readers.read_leaf(str(tmp_path / "rgb"))
  assert data.train_images.shape == (2, 2, 2, 3)
  assert data.train_images[0].tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
  assert data.train_images[1, 0, 0].tolist() == [11, 10, 9]
  # Nested (H, W) rows are taken as they are, with a channel axis added.
  grey = [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
  _write_leaf(tmp_path / "grey" / "train" / "a.json", {"u": ([grey, grey], [0, 1])})
  _write_leaf(tmp_path / "grey" / "test" / "a.json", {"v": ([grey], [1])})
  data = readers.read_leaf(str(tmp_path / "grey"))
  assert data.train_images.shape == (2, 2, 3, 1)
  assert data.test_images[0, ..., 0].tolist() == [[0, 255, 0], [255, 0, 255]]


def _leaf_user(changes=None):
  x, _ = _femnist_rows(2, 2)
  return {"u1": (x, [0, 1]), **(changes or {})}


@pytest.mark.parametrize("write, message", [
    (lambda p: _write_leaf(p, _leaf_user(), num_samples=[3]), "num_samples says 3 but x has 2"),
    (lambda p: _write_leaf(p, _leaf_user(), users=["u1", "u2"], num_samples=[2, 1]),
     "user 'u2' is missing from user_data"),
    (lambda p: _write_leaf(p, _leaf_user(), num_samples=[2, 2]), "2 num_samples"),
    (lambda p: p.write_text('{"users": ["u1"], "num_samples": [2'), "cannot read LEAF file"),
    (lambda p: _write_leaf(p, _leaf_user(), user_data=None), "user_data an object"),
    (lambda p: p.write_text(json.dumps({"users": [], "user_data": {}})),
     "cannot read LEAF file .*KeyError: 'num_samples'"),
    (lambda p: _write_leaf(p, {"u1": (["to be or not to be", "that is the"], ["q", "u"])}),
     "only LEAF image datasets"),
    (lambda p: _write_leaf(p, {"u1": (np.zeros((2, 60)), [0, 1])}),
     "a row of 60 values is neither .*only LEAF image datasets"),
    (lambda p: _write_leaf(p, {"u1": (np.full((2, 784), 2.0), [0, 1])}), "floats outside"),
    (lambda p: _write_leaf(p, {**_leaf_user(), "u2": (np.zeros((1, 3, 3)), [1])}),
     "images of shape \\(3, 3, 1\\), earlier ones \\(28, 28, 1\\)"),
])
def test_leaf_errors_name_the_file(tmp_path, write, message):
  path = tmp_path / "train" / "all_data_0_niid_0_keep_0_train_9.json"
  path.parent.mkdir()
  write(path)
  _write_leaf(tmp_path / "test" / "t.json", _leaf_user())
  with pytest.raises(ValueError, match=message) as e:
    readers.read_leaf(str(tmp_path))
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_leaf_without_json_files(tmp_path):
  _write_leaf(tmp_path / "train" / "a.json", _leaf_user())
  (tmp_path / "test").mkdir()
  (tmp_path / "test" / "a.txt").write_text("{}")
  with pytest.raises(ValueError, match="no LEAF .json files in " + re.escape(str(tmp_path))):
    readers.read_leaf(str(tmp_path))


# ----------------------------------------------------------------------------------- TFDS


def _png(image):
  buffer = io.BytesIO()
  PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "png")
  return buffer.getvalue()


def _prepare_tfds(data_dir, dataset_name, features, splits):
  """Writes a real prepared TFDS dataset (array_record files) under `data_dir`.

  Examples give images as PNG bytes: TFDS encodes NumPy images with TensorFlow, which is
  not installed, but stores already-encoded bytes as they are, and writing array_record
  needs no TensorFlow. The builder is not registered, so reading goes by the files alone.
  """

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = dataset_name
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(examples) for split, examples in splits.items()}

    def _generate_examples(self, examples):
      yield from enumerate(examples)

  Builder(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def _tiny_images(first, n, shape):
  """Images whose every pixel differs, the first pixel numbering the example."""
  pixels = np.arange(first, first + n)[:, None] * 10 + np.arange(np.prod(shape))
  return pixels.reshape(n, *shape).astype(np.uint8)


def test_tfds_reads_a_prepared_dataset(tmp_path):
  train, test = _tiny_images(0, 7, (5, 4, 1)), _tiny_images(7, 3, (5, 4, 1))
  _prepare_tfds(tmp_path, "tiny_digits",
                {"image": tfds.features.Image(shape=(5, 4, 1)),
                 "label": tfds.features.ClassLabel(num_classes=6)},
                {"train": [{"image": _png(x), "label": i % 3} for i, x in enumerate(train)],
                 "test": [{"image": _png(x), "label": 5 - i} for i, x in enumerate(test)]})
  data = readers.read_tfds("tiny_digits", str(tmp_path))
  assert data.name == "tfds:tiny_digits" and data.client_ids is None
  assert data.train_images.dtype == np.uint8 and data.train_images.shape == (7, 5, 4, 1)
  # TFDS stores examples in its own shuffled order; the first pixel says which is which.
  order = np.argsort(data.train_images[:, 0, 0, 0])
  np.testing.assert_array_equal(data.train_images[order], train)
  assert data.train_labels[order].tolist() == [0, 1, 2, 0, 1, 2, 0]
  order = np.argsort(data.test_images[:, 0, 0, 0])
  np.testing.assert_array_equal(data.test_images[order], test)
  assert data.test_labels[order].tolist() == [5, 4, 3]
  # From the ClassLabel feature, not the largest label.
  assert data.num_classes == 6


def test_tfds_without_class_count_infers_it(tmp_path):
  train, test = _tiny_images(0, 4, (2, 2, 3)), _tiny_images(4, 2, (2, 2, 3))
  _prepare_tfds(tmp_path, "tiny_colour",
                {"image": tfds.features.Image(shape=(2, 2, 3)),
                 "label": tfds.features.Scalar(np.int64)},
                {"train": [{"image": _png(x), "label": 3} for x in train],
                 "test": [{"image": _png(x), "label": 1} for x in test]})
  data = readers.read_tfds("tiny_colour", str(tmp_path))
  np.testing.assert_array_equal(data.train_images[np.argsort(data.train_images[:, 0, 0, 0])],
                                train)
  assert data.num_classes == 4 and data.test_labels.tolist() == [1, 1]


def test_tfds_errors_name_dataset_and_dir(tmp_path):
  with pytest.raises(ValueError, match="'no_such_set' in " + re.escape(str(tmp_path))) as e:
    readers.read_tfds("no_such_set", str(tmp_path))
  assert "\n" not in str(e.value)
  _prepare_tfds(tmp_path, "tiny_unlabelled",
                {"image": tfds.features.Image(shape=(2, 2, 1)), "digit": np.int64},
                {"train": [{"image": _png(np.zeros((2, 2, 1), np.uint8)), "digit": 1}],
                 "test": [{"image": _png(np.ones((2, 2, 1), np.uint8)), "digit": 0}]})
  with pytest.raises(ValueError, match=("'tiny_unlabelled' in " + re.escape(str(tmp_path))
                                        + " needs 'image' and 'label' features, it has "
                                        "'digit', 'image'")):
    readers.read_tfds("tiny_unlabelled", str(tmp_path))
