"""Dataset readers that return whole splits as host numpy arrays.

Real data is read from the standard on-disk formats (CIFAR python pickles,
MNIST-style IDX files) first, because they need neither TensorFlow nor an
image codec; prepared TFDS data is the fallback. Nothing is downloaded.
"""

import gzip
import os
import pickle
import struct
import tarfile
from typing import Any

import numpy as np

from fedjax_seq import registry
from fedjax_seq.data import readers
from fedjax_seq.data.arrays import FederatedArrays
from fedjax_seq.errors import InputError


FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
_TFDS_DEFAULT_DIR = "~/tensorflow_datasets"
# The reference implementation normalises CIFAR-100 with CIFAR-10's constants.
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)
_IDX_STATS = {"fashion_mnist": ((0.2860,), (0.3530,)),
              "mnist": ((0.1307,), (0.3081,))}
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def load_dataset(name: str, data_dir: str = "", *, seed: int = 0,
                 **hyperparameters) -> FederatedArrays:
  """Loads a registered dataset by name (`NAME` or `NAME:ARGUMENT`) from `data_dir`.

  `hyperparameters` are the dataset's own settings (its config section,
  e.g. the synthetic dataset's sizes); unset ones take the entry's defaults.
  The arrays are checked against what the entry declares.
  """
  base, sep, argument = name.partition(":")
  entry = registry.DATASETS.get(base)
  if entry.argument and not argument:
    raise ValueError(f"dataset {base} is named as {base}:{entry.argument}, got {name!r}")
  if sep and not entry.argument:
    raise ValueError(f"dataset {base} takes no argument, got {name!r}")
  unknown = sorted(set(hyperparameters) - set(entry.hyperparameters))
  if unknown:
    raise ValueError(f"dataset {base} has no setting {', '.join(unknown)}; its settings: "
                     f"{', '.join(entry.hyperparameters) or 'none'}")
  kwargs = {**entry.hyperparameters, **hyperparameters, "data_dir": data_dir, "seed": seed}
  if entry.argument:
    kwargs["argument"] = argument
  ds = entry.load(**kwargs)
  if not isinstance(ds, FederatedArrays):
    raise ValueError(f"dataset {base}'s loader returned {type(ds).__name__}, not "
                     "FederatedArrays")
  if entry.num_classes is not None and ds.num_classes != entry.num_classes:
    raise ValueError(f"dataset {base} declares {entry.num_classes} classes, its arrays have "
                     f"{ds.num_classes}")
  if entry.image_shape is not None and ds.image_shape != entry.image_shape:
    raise ValueError(f"dataset {base} declares images of shape {entry.image_shape}, its "
                     f"arrays hold {ds.image_shape}")
  if entry.natural_clients is not None and (ds.client_ids is not None) != entry.natural_clients:
    raise ValueError(f"dataset {base} declares natural_clients={entry.natural_clients}, its "
                     f"arrays {'have' if ds.client_ids is not None else 'have no'} client ids")
  return ds


# -------------------------------------------------------- the built-in loaders


def load_cifar10(*, data_dir: str, seed: int) -> FederatedArrays:
  """CIFAR-10 from the python-pickle archive (or prepared TFDS data) in `data_dir`."""
  del seed
  arrays = _read_cifar("cifar10", os.path.expanduser(data_dir or _TFDS_DEFAULT_DIR))
  return FederatedArrays(*arrays, num_classes=10, mean=_CIFAR_MEAN, std=_CIFAR_STD,
                         augment=True, name="cifar10")


def load_cifar100(*, data_dir: str, seed: int) -> FederatedArrays:
  """CIFAR-100 (fine labels), normalised with CIFAR-10's constants as the original."""
  del seed
  arrays = _read_cifar("cifar100", os.path.expanduser(data_dir or _TFDS_DEFAULT_DIR))
  return FederatedArrays(*arrays, num_classes=100, mean=_CIFAR_MEAN, std=_CIFAR_STD,
                         augment=True, name="cifar100")


def _load_idx(name: str, default_dir: str, data_dir: str) -> FederatedArrays:
  arrays = _read_idx_dataset(name, os.path.expanduser(data_dir or default_dir))
  mean, std = _IDX_STATS[name]
  return FederatedArrays(*arrays, num_classes=10, mean=mean, std=std, name=name)


def load_fashion_mnist(*, data_dir: str, seed: int) -> FederatedArrays:
  """Fashion-MNIST from IDX files (default: where Debian's dataset-fashion-mnist puts them)."""
  del seed
  return _load_idx("fashion_mnist", FASHION_MNIST_DEBIAN_DIR, data_dir)


def load_mnist(*, data_dir: str, seed: int) -> FederatedArrays:
  """MNIST from IDX files (or prepared TFDS data) in `data_dir`."""
  del seed
  return _load_idx("mnist", _TFDS_DEFAULT_DIR, data_dir)


def load_synthetic(*, data_dir: str, seed: int, train_size: int, test_size: int, height: int,
                   width: int, channels: int, num_classes: int,
                   noise: float = 2.5) -> FederatedArrays:
  """The deterministic synthetic dataset (see `_synthetic`); `data_dir` is unused."""
  del data_dir
  return _synthetic(train_size, test_size, (height, width, channels), num_classes, noise, seed)


def load_npz(*, argument: str, data_dir: str, seed: int) -> FederatedArrays:
  """`npz:PATH`: arrays x_train, y_train, x_test, y_test[, client_train] (data.readers)."""
  del data_dir, seed
  return readers.read_npz(os.path.expanduser(argument))


def load_tfds(*, argument: str, data_dir: str, seed: int) -> FederatedArrays:
  """`tfds:NAME`: a prepared TFDS image-classification dataset in `data_dir`."""
  del seed
  return readers.read_tfds(argument, os.path.expanduser(data_dir or _TFDS_DEFAULT_DIR))


def load_leaf(*, argument: str, data_dir: str, seed: int) -> FederatedArrays:
  """`leaf:DIR`: LEAF JSON files in DIR/train and DIR/test; the users are the clients."""
  del data_dir, seed
  return readers.read_leaf(os.path.expanduser(argument))


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


# ----------------------------------------------------------------- CIFAR


def _read_cifar(name: str, root: str):
  """Reads extracted pickles, then the tarball, then prepared TFDS data."""
  if name == "cifar10":
    folder, tarball = "cifar-10-batches-py", "cifar-10-python.tar.gz"
    label_key, test = b"labels", ["test_batch"]
    train = [f"data_batch_{i}" for i in range(1, 6)]
  else:
    folder, tarball = "cifar-100-python", "cifar-100-python.tar.gz"
    label_key, train, test = b"fine_labels", ["train"], ["test"]

  def convert(batches, where):
    try:
      data = np.concatenate(
          [np.asarray(_get(b, b"data"), np.uint8) for b in batches])
      labels = np.concatenate(
          [np.asarray(_get(b, label_key), np.int32) for b in batches])
      if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"data shape {data.shape}, {len(labels)} labels")
    except (KeyError, ValueError, TypeError) as e:
      raise ValueError(
          f"malformed CIFAR batch in {where}: {_first_line(e)}") from e
    # Rows are channel-major (3 x 32 x 32); models want NHWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels

  if os.path.isdir(os.path.join(root, folder)):
    def load(f):
      path = os.path.join(root, folder, f)
      try:
        with open(path, "rb") as fh:
          return _unpickle(fh)
      except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(
            f"cannot read CIFAR file {path}: {_first_line(e)}") from e
    where = os.path.join(root, folder)
    return (*convert([load(f) for f in train], where),
            *convert([load(f) for f in test], where))
  tar_path = os.path.join(root, tarball)
  if os.path.isfile(tar_path):
    try:
      with tarfile.open(tar_path, "r:gz") as tar:
        def load(f):
          member = tar.extractfile(f"{folder}/{f}")
          return _unpickle(member)
        tr, te = [load(f) for f in train], [load(f) for f in test]
    except (OSError, KeyError, TypeError, tarfile.TarError,
            pickle.UnpicklingError, EOFError, ValueError) as e:
      raise ValueError(
          f"cannot read CIFAR archive {tar_path}: {_first_line(e)}") from e
    return (*convert(tr, tar_path), *convert(te, tar_path))
  if os.path.isdir(os.path.join(root, name)):
    return _read_tfds(name, root)
  raise InputError(
      f"{name} not found: looked for {folder}/, {tarball} and prepared TFDS "
      f"{name}/ in {root}; download {tarball} into {root} or set data_dir to "
      "where it is; TFDS download needs internet", argument="data_dir")


class _BatchUnpickler(pickle.Unpickler):
  """Loads a CIFAR batch: dicts, lists, bytes and NumPy arrays, and nothing else.

  A pickle may name any callable; a downloaded archive is data, so every
  global but NumPy's array reconstruction is refused.
  """
  _ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
              for name in ("_reconstruct", "scalar")} | {
                  ("numpy", "ndarray"), ("numpy", "dtype"),
                  ("_codecs", "encode")}  # how protocol-2 pickles from Python 3 store bytes

  def find_class(self, module: str, name: str):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not CIFAR data)")
    return super().find_class(module, name)


def _unpickle(fh) -> Any:
  return _BatchUnpickler(fh, encoding="bytes").load()


def _get(batch: dict, key: bytes) -> Any:
  """Pickles written by Python 2 have bytes keys, Python 3 ones may have str."""
  return batch[key] if key in batch else batch[key.decode()]


# ------------------------------------------------------------------- IDX


def _read_idx_dataset(name: str, root: str):
  """Reads the four IDX files (gzipped or not), else prepared TFDS data."""
  found = {}
  for files in _IDX_FILES.values():
    for f in files:
      for candidate in (f + ".gz", f):
        if os.path.isfile(os.path.join(root, candidate)):
          found[f] = os.path.join(root, candidate)
          break
  if len(found) == 4:
    out = []
    for img_file, lbl_file in _IDX_FILES.values():
      images = _read_idx(found[img_file], 3)
      labels = _read_idx(found[lbl_file], 1)
      if len(images) != len(labels):
        raise ValueError(f"{found[img_file]} has {len(images)} images but "
                        f"{found[lbl_file]} has {len(labels)} labels")
      out += [images[..., None], labels.astype(np.int32)]
    return tuple(out)
  if os.path.isdir(os.path.join(root, name)):
    return _read_tfds(name, root)
  names = ", ".join(f + "[.gz]" for files in _IDX_FILES.values() for f in files)
  if name == "fashion_mnist":
    how = "apt-get install -y dataset-fashion-mnist or set data_dir to the IDX files' directory"
  else:
    how = (f"download the four MNIST IDX files into {root} or set data_dir to their "
           "directory; TFDS download needs internet")
  raise InputError(f"{name} not found: looked for {names} and prepared TFDS "
                   f"{name}/ in {root}; {how}", argument="data_dir")


def _read_idx(path: str, ndim: int) -> np.ndarray:
  """Parses an unsigned-byte IDX file, checking magic number and length."""
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f"cannot read IDX file {path}: {_first_line(e)}") from e
  header = 4 + 4 * ndim
  if len(raw) < header or raw[:4] != bytes([0, 0, 0x08, ndim]):
    raise ValueError(f"{path} is not a {ndim}-d unsigned-byte IDX file "
                    "(bad magic number)")
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  if len(raw) - header != int(np.prod(dims)):
    raise ValueError(f"{path} is truncated or corrupt: header says {dims} "
                    f"but it holds {len(raw) - header} bytes of data")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


# ------------------------------------------------------------------- TFDS


def _read_tfds(name: str, root: str):
  """Reads prepared (array_record) TFDS splits without TensorFlow."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  out = []
  for split in ("train", "test"):
    try:
      source = tfds.data_source(name, split=split, data_dir=root,
                                download=False)
      images, labels = _materialise(source)
    except Exception as e:  # pylint: disable=broad-except
      # TFDS signals missing files, TFRecord-only data and a missing image
      # codec (pillow/opencv) with assorted exception types.
      raise ValueError(f"cannot read TFDS {name} ({split}) from {root}: "
                      f"{_first_line(e)}") from e
    out += [images, labels]
  return tuple(out)


def _materialise(source, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Copies a random-access source of {'image', 'label'} dicts into arrays."""
  n = len(source)
  if n == 0:
    raise ValueError("the split is empty")
  # Batched reads let array_record fetch records in parallel.
  getitems = getattr(source, "__getitems__", None)
  images = labels = None
  for start in range(0, n, chunk):
    keys = list(range(start, min(n, start + chunk)))
    items = getitems(keys) if getitems else [source[i] for i in keys]
    for i, item in zip(keys, items):
      image = np.asarray(item["image"], np.uint8)
      if images is None:
        images = np.empty((n, *image.shape), np.uint8)
        labels = np.empty((n,), np.int32)
      images[i] = image
      labels[i] = int(item["label"])
  return images, labels


# -------------------------------------------------------------- synthetic


def _upsample_matrix(out: int, grid: int) -> np.ndarray:
  """Linear-interpolation weights from `grid` coarse points to `out` pixels."""
  pos = np.clip((np.arange(out) + 0.5) * grid / out - 0.5, 0, grid - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, grid - 1)
  m = np.zeros((out, grid), np.float32)
  np.add.at(m, (np.arange(out), lo), 1 - pos + lo)
  np.add.at(m, (np.arange(out), hi), pos - lo)
  return m


def _synthetic(train_size: int, test_size: int, shape: tuple[int, ...],
               num_classes: int, noise: float, seed: int,
               pixel_noise: int = 24) -> FederatedArrays:
  """Smooth per-class templates plus low-frequency and pixel noise.

  Each class is a random coarse grid (4x4 for 3 channels, 7x7 for 1, so
  about 48 values; mirror-symmetric so flip augmentation keeps the label)
  upsampled to the image size. An example adds Gaussian noise of scale
  `noise` on the same coarse grid, which is what makes classes overlap (2.5
  gives roughly 80% test accuracy for a small MLP after 300 SGD steps),
  plus uniform pixel noise. The coarse-to-image map is one matrix, so
  generation is mostly one GEMM per chunk.
  """
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(
        f"synthetic image shape must be (H, W, C) > 0, got {shape}")
  if train_size < 1 or test_size < 1 or num_classes < 2 or noise < 0:
    raise ValueError(
        "synthetic data needs train/test size >= 1, num_classes >= 2 and "
        f"noise >= 0 (got {train_size}, {test_size}, {num_classes}, {noise})")
  rng = np.random.default_rng(seed)
  h, w, c = shape
  grid = max(2, round(np.sqrt(48 / c)))
  templates = rng.standard_normal((num_classes, grid, grid, c),
                                  dtype=np.float32)
  templates = (templates + templates[:, :, ::-1]) / np.sqrt(2)
  scale = 45 / np.sqrt(1 + noise ** 2)  # Clips ~0.1% of pixels.
  lift = np.einsum("ia,jb,cd->abcijd", _upsample_matrix(h, grid),
                   _upsample_matrix(w, grid), np.eye(c, dtype=np.float32))
  lift = (lift.reshape(grid * grid * c, h * w * c) * scale).astype(np.float32)
  templates = templates.reshape(num_classes, -1)
  # Fresh pixel noise for every example would cost more than everything
  # else together, so examples draw rows of a bank (noise has no label).
  bank = rng.integers(128 - pixel_noise, 128 + pixel_noise + 1,
                      (min(4096, train_size + test_size), h * w * c),
                      dtype=np.uint8)

  def generate(n: int, chunk: int = 2048):
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    images = np.empty((n, h * w * c), np.uint8)
    for s in range(0, n, chunk):
      y = labels[s:s + chunk]
      coarse = rng.standard_normal((len(y), templates.shape[1]),
                                   dtype=np.float32)
      x = (templates[y] + noise * coarse) @ lift
      x += bank[rng.integers(0, len(bank), len(y))]
      images[s:s + chunk] = np.clip(x, 0, 255, out=x)
    return images.reshape(n, h, w, c), labels

  train_images, train_labels = generate(train_size)
  test_images, test_labels = generate(test_size)
  sample = train_images[:2000].astype(np.float32) / 255
  return FederatedArrays(train_images, train_labels, test_images, test_labels,
                         num_classes=num_classes,
                         mean=tuple(float(v) for v in sample.mean((0, 1, 2))),
                         std=tuple(float(v) for v in sample.std((0, 1, 2))),
                         augment=tuple(shape) == (32, 32, 3), name="synthetic")
