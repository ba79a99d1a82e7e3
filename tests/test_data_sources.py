"""Tests for fedjax_seq.data.sources."""

import gzip
import pickle
import struct
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fedjax_seq.data import sources


def _pixel(i, ch, r, c):
  """A value that differs along every axis, so a wrong transpose shows."""
  return (i * 7 + ch * 50 + r * 3 + c) % 256


def _cifar_rows(first: int, n: int) -> np.ndarray:
  """(n, 3072) uint8 rows in CIFAR's channel-major layout."""
  i, ch, r, c = np.meshgrid(np.arange(first, first + n), np.arange(3),
                            np.arange(32), np.arange(32), indexing="ij")
  return _pixel(i, ch, r, c).astype(np.uint8).reshape(n, 3072)


def _dump(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=2)


def _write_cifar10(root):
  """5 train batches of 2 images (ids 0..9), a test batch of 3 (10..12)."""
  d = root / "cifar-10-batches-py"
  d.mkdir(parents=True)
  for b in range(5):
    _dump(d / f"data_batch_{b + 1}", {
        b"batch_label": b"training batch", b"data": _cifar_rows(2 * b, 2),
        b"labels": [(2 * b) % 10, (2 * b + 1) % 10],
        b"filenames": [b"a.png", b"b.png"]})
  _dump(d / "test_batch", {b"batch_label": b"testing batch",
                           b"data": _cifar_rows(10, 3), b"labels": [9, 8, 7],
                           b"filenames": [b"c.png"] * 3})
  return d


def _tar(src_dir, tar_path):
  with tarfile.open(tar_path, "w:gz") as tar:
    tar.add(src_dir, arcname=src_dir.name)


def _check_cifar_pixels(images, first):
  assert images.dtype == np.uint8
  assert images[0, 0, 0].tolist() == [_pixel(first, ch, 0, 0)
                                      for ch in range(3)]
  i, r, c, ch = np.meshgrid(np.arange(first, first + len(images)),
                            np.arange(32), np.arange(32), np.arange(3),
                            indexing="ij")
  np.testing.assert_array_equal(images, _pixel(i, ch, r, c))


def test_cifar10_pickles_and_tarball(tmp_path):
  _write_cifar10(tmp_path / "x")
  ds = sources.load_dataset("cifar10", str(tmp_path / "x"))
  assert ds.train_images.shape == (10, 32, 32, 3)
  assert ds.test_images.shape == (3, 32, 32, 3)
  _check_cifar_pixels(ds.train_images, 0)
  _check_cifar_pixels(ds.test_images, 10)
  # Image 1, row 5, column 17, channel 2: 7 + 2*50 + 5*3 + 17.
  assert ds.train_images[1, 5, 17, 2] == 139
  assert ds.train_labels.dtype == np.int32
  assert ds.train_labels.tolist() == list(range(10))  # Batch order kept.
  assert ds.test_labels.tolist() == [9, 8, 7]
  assert (ds.num_classes, ds.augment) == (10, True)
  assert ds.mean == (0.4914, 0.4822, 0.4465)
  assert ds.std == (0.2023, 0.1994, 0.2010)

  _tar(tmp_path / "x" / "cifar-10-batches-py",
       tmp_path / "cifar-10-python.tar.gz")
  from_tar = sources.load_dataset("cifar10", str(tmp_path))
  for a in ("train_images", "train_labels", "test_images", "test_labels"):
    np.testing.assert_array_equal(getattr(from_tar, a), getattr(ds, a))


def test_cifar100_pickles_and_tarball(tmp_path):
  d = tmp_path / "x" / "cifar-100-python"
  d.mkdir(parents=True)
  _dump(d / "train", {b"data": _cifar_rows(0, 4),
                      b"fine_labels": [99, 0, 42, 7],
                      b"coarse_labels": [1, 2, 3, 4]})
  _dump(d / "test", {b"data": _cifar_rows(4, 2), b"fine_labels": [5, 64],
                     b"coarse_labels": [0, 0]})
  ds = sources.load_dataset("cifar100", str(tmp_path / "x"))
  _check_cifar_pixels(ds.train_images, 0)
  _check_cifar_pixels(ds.test_images, 4)
  assert ds.train_labels.tolist() == [99, 0, 42, 7]
  assert ds.test_labels.tolist() == [5, 64]
  assert ds.num_classes == 100
  assert ds.mean == (0.4914, 0.4822, 0.4465)

  _tar(d, tmp_path / "cifar-100-python.tar.gz")
  from_tar = sources.load_dataset("cifar100", str(tmp_path))
  np.testing.assert_array_equal(from_tar.train_images, ds.train_images)
  np.testing.assert_array_equal(from_tar.test_labels, ds.test_labels)


def test_cifar_corrupt_batch_names_file(tmp_path):
  d = _write_cifar10(tmp_path)
  (d / "data_batch_3").write_bytes(b"not a pickle")
  with pytest.raises(ValueError, match="data_batch_3"):
    sources.load_dataset("cifar10", str(tmp_path))


class _Hostile:
  """Unpickling this calls os.system: a CIFAR reader must refuse it."""

  def __reduce__(self):
    import os  # pylint: disable=import-outside-toplevel
    return (os.system, ("touch pwned",))


def test_cifar_pickle_naming_code_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  d = _write_cifar10(tmp_path)
  _dump(d / "data_batch_2", {b"data": _Hostile(), b"labels": [0]})
  with pytest.raises(ValueError, match="data_batch_2.*refusing to load posix.system"):
    sources.load_dataset("cifar10", str(tmp_path))
  assert not (tmp_path / "pwned").exists()


def test_cifar_missing(tmp_path):
  with pytest.raises(ValueError) as e:
    sources.load_dataset("cifar10", str(tmp_path))
  msg = str(e.value)
  assert str(tmp_path) in msg and "\n" not in msg
  assert "download cifar-10-python.tar.gz into" in msg
  assert "TFDS download needs internet" in msg


class _Source:
  """Random-access source like tfds's ArrayRecordDataSource."""

  def __init__(self, items):
    self.items, self.batches = items, []

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]

  def __getitems__(self, keys):
    self.batches.append(len(keys))
    return [self.items[i] for i in keys]


def _tfds_items(n, offset):
  return [{"image": np.full((32, 32, 3), (offset + i) % 256, np.uint8),
           "label": np.int64((offset + i) % 10), "id": f"{i}"}
          for i in range(n)]


def test_tfds_fallback(tmp_path):
  # tfds.testing.mock_data's own random source cannot serve __getitems__ in
  # this tfds version, and writing real prepared data needs TensorFlow to
  # encode images. So the builder's `as_data_source` is replaced (through
  # mock_data) with sources of known examples; `tfds.data_source` itself
  # still runs.
  (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
  made = {"train": _Source(_tfds_items(9000, 0)), "test": _tfds_items(3, 100)}

  def as_data_source(self, split, **kwargs):
    del self, kwargs
    return made[split]

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    ds = sources.load_dataset("cifar10", str(tmp_path))
  assert ds.train_images.shape == (9000, 32, 32, 3)
  assert ds.train_images.dtype == np.uint8
  np.testing.assert_array_equal(ds.train_images[:, 0, 0, 0],
                                np.arange(9000) % 256)
  np.testing.assert_array_equal(ds.train_labels, np.arange(9000) % 10)
  assert ds.train_labels.dtype == np.int32
  assert made["train"].batches == [4096, 4096, 808]  # Batched reads.
  # A plain list (no __getitems__) is read item by item.
  assert ds.test_images[:, 5, 5, 1].tolist() == [100, 101, 102]
  assert ds.test_labels.tolist() == [0, 1, 2]


def test_tfds_failure_is_user_error(tmp_path):
  (tmp_path / "cifar100").mkdir()

  def as_data_source(self, split, **kwargs):
    raise ImportError("Decoding images with NumPy requires either OpenCV or "
                      "PIL.\nInstall them")

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    with pytest.raises(ValueError) as e:
      sources.load_dataset("cifar100", str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "OpenCV" in msg and str(tmp_path) in msg


def _write_idx(path, array, gz=True):
  array = np.asarray(array, np.uint8)
  raw = bytes([0, 0, 8, array.ndim]) + struct.pack(
      f">{array.ndim}I", *array.shape) + array.tobytes()
  if gz:
    with gzip.open(str(path) + ".gz", "wb") as f:
      f.write(raw)
  else:
    path.write_bytes(raw)


def _write_mnist(root, gz=True):
  rng = np.random.default_rng(3)
  arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28)),
            "train-labels-idx1-ubyte": [3, 1, 4, 1, 5],
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28)),
            "t10k-labels-idx1-ubyte": [9, 2]}
  for name, a in arrays.items():
    _write_idx(root / name, a, gz)
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader(tmp_path, gz):
  arrays = _write_mnist(tmp_path, gz)
  ds = sources.load_dataset("mnist", str(tmp_path))
  assert ds.train_images.shape == (5, 28, 28, 1)
  assert ds.test_images.shape == (2, 28, 28, 1)
  assert ds.train_images.dtype == np.uint8
  np.testing.assert_array_equal(ds.train_images[..., 0],
                                arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.test_images[..., 0],
                                arrays["t10k-images-idx3-ubyte"])
  assert ds.train_labels.tolist() == [3, 1, 4, 1, 5]
  assert ds.test_labels.tolist() == [9, 2]
  assert ds.train_labels.dtype == np.int32
  assert (ds.mean, ds.std, ds.augment) == ((0.1307,), (0.3081,), False)


def test_idx_truncated_and_bad_magic(tmp_path):
  _write_mnist(tmp_path)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  raw = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(raw[:-10]))
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*truncated"):
    sources.load_dataset("fashion_mnist", str(tmp_path))
  path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*magic"):
    sources.load_dataset("fashion_mnist", str(tmp_path))
  path.write_bytes(raw[:100])  # Not gzip at all.
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
    sources.load_dataset("fashion_mnist", str(tmp_path))


def test_real_fashion_mnist():
  ds = sources.load_dataset("fashion_mnist", "")
  assert ds.train_images.shape == (60000, 28, 28, 1)
  assert ds.test_images.shape == (10000, 28, 28, 1)
  assert ds.train_images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
  assert abs(ds.train_images.mean() / 255 - 0.2860) < 0.001
  assert (ds.mean, ds.std, ds.num_classes) == ((0.2860,), (0.3530,), 10)


def test_idx_missing(tmp_path):
  with pytest.raises(ValueError) as e:
    sources.load_dataset("fashion_mnist", str(tmp_path))
  msg = str(e.value)
  assert str(tmp_path) in msg and "\n" not in msg
  assert "apt-get install -y dataset-fashion-mnist" in msg
  with pytest.raises(ValueError, match=str(tmp_path)):
    sources.load_dataset("mnist", str(tmp_path))


def test_unknown_name():
  with pytest.raises(ValueError, match="cifar10, cifar100, fashion_mnist"):
    sources.load_dataset("imagenet", "")


def test_synthetic_deterministic_and_balanced():
  kw = dict(train_size=2000, test_size=500)
  a = sources.load_dataset("synthetic", "", seed=1, **kw)
  b = sources.load_dataset("synthetic", "", seed=1, **kw)
  c = sources.load_dataset("synthetic", "", seed=2, **kw)
  assert a.train_images.shape == (2000, 32, 32, 3)
  assert a.test_images.shape == (500, 32, 32, 3)
  assert a.train_images.dtype == np.uint8
  assert a.train_labels.dtype == np.int32
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert (a.train_images != c.train_images).mean() > 0.5
  np.testing.assert_array_equal(np.bincount(a.train_labels), [200] * 10)
  np.testing.assert_array_equal(np.bincount(a.test_labels), [50] * 10)
  assert a.augment and a.num_classes == 10
  # Normalisation statistics: per channel over the training images, by hand in
  # float64 from sums (the library samples the first 2000, here all of them;
  # it reduces 2M pixels per channel in float32, measured 1.1e-3 relative
  # error on the std, hence the tolerance).
  x = a.train_images.reshape(-1, 3).astype(np.float64) / 255
  mean = x.sum(0) / len(x)
  std = np.sqrt((x ** 2).sum(0) / len(x) - mean ** 2)
  np.testing.assert_allclose(a.mean, mean, rtol=2e-3)
  np.testing.assert_allclose(a.std, std, rtol=2e-3)
  # So normalised training pixels have mean 0 and std 1 in every channel.
  z = (x - np.asarray(a.mean)) / np.asarray(a.std)
  np.testing.assert_allclose(z.mean(0), 0, atol=2e-3)
  np.testing.assert_allclose(z.std(0), 1, rtol=2e-3)
  # Not sorted by class.
  assert (np.diff(a.train_labels) != 0).mean() > 0.5


def test_synthetic_learnable_but_not_trivial():
  ds = sources.load_dataset("synthetic", "", train_size=5000,
                            test_size=1000)
  x = ds.train_images.reshape(5000, -1).astype(np.float32)
  t = ds.test_images.reshape(1000, -1).astype(np.float32)
  centroids = np.stack([x[ds.train_labels == k].mean(0) for k in range(10)])
  dist = ((t ** 2).sum(1)[:, None] - 2 * t @ centroids.T
          + (centroids ** 2).sum(1)[None])
  acc = (dist.argmin(1) == ds.test_labels).mean()
  assert 0.6 < acc < 0.95, acc


def test_synthetic_other_shape():
  ds = sources.load_dataset("synthetic", "", train_size=30,
                            test_size=9,
                            height=28, width=28, channels=1, num_classes=3)
  assert ds.train_images.shape == (30, 28, 28, 1)
  assert ds.test_images.shape == (9, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [10] * 3)
  assert not ds.augment and len(ds.mean) == 1
