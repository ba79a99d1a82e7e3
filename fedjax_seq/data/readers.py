"""Readers for datasets a user brings: NumPy `.npz` archives, prepared TFDS data, LEAF JSON.

Each reader is a pure function of files on disk that returns a `FederatedArrays` of host
NumPy arrays. Nothing is downloaded and nothing is unpickled. A problem with the input
raises `ValueError` with one line naming the file (or the dataset and its directory).
"""

from __future__ import annotations

import glob
import json
import math
import os
import zipfile
from typing import Any

import numpy as np

from fedjax_seq.data import sources  # sources imports this module: use its names at call time
from fedjax_seq.data.arrays import FederatedArrays

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_ONLY_IMAGES = "only LEAF image datasets (such as FEMNIST) are supported"


def read_npz(path: str) -> FederatedArrays:
  """Reads arrays `x_train, y_train, x_test, y_test` and optional `client_train`.

  Images are (N, H, W) grey (a channel axis is added) or (N, H, W, C), either uint8 or
  floats in [0, 1], which are converted to uint8 as `np.round(x * 255)`. Labels are (N,)
  integers; (N, 1), as Keras stores them, is flattened. `client_train`, when present,
  holds the natural client id (integer or string) of each training example.
  """
  if not os.path.isfile(path):
    raise ValueError(f"npz file {path} does not exist")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not an .npz archive (not a zip file)")
  try:
    with np.load(path, allow_pickle=False) as archive:
      names = archive.files
      data = {k: np.asarray(archive[k]) for k in (*_NPZ_KEYS, "client_train") if k in names}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"cannot read npz file {path}: {sources._first_line(e)}") from e
  missing = [k for k in _NPZ_KEYS if k not in data]
  if missing:
    raise ValueError(f"npz file {path} lacks {', '.join(missing)} (it holds "
                     f"{', '.join(names) or 'no arrays'})")
  images = {}
  for key in ("x_train", "x_test"):
    x = data[key][..., None] if data[key].ndim == 3 else data[key]
    if x.ndim != 4:
      raise ValueError(f"{path}: {key} must have shape (N, H, W) or (N, H, W, C), "
                       f"got {data[key].shape}")
    images[key] = _pixels(x, f"{path}: {key}")
  labels = {k: data[k][:, 0] if data[k].ndim == 2 and data[k].shape[1] == 1 else data[k]
            for k in ("y_train", "y_test")}
  return _build(path, train_images=images["x_train"], train_labels=labels["y_train"],
                test_images=images["x_test"], test_labels=labels["y_test"],
                client_ids=data.get("client_train"), name=f"npz:{path}")


def read_tfds(name: str, data_dir: str) -> FederatedArrays:
  """Reads the `train` and `test` splits of a prepared TFDS image-classification dataset.

  The dataset must have been prepared in a random-access format (array_record or parquet)
  under `data_dir`, with an `image` and a `label` feature; TensorFlow is not needed. The
  number of classes comes from the label feature when it declares one (a `ClassLabel`),
  else from the largest label.
  """
  # Imported here: it is slow to import and only this reader needs it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  where = f"TFDS dataset {name!r} in {data_dir}"
  splits, num_classes = {}, None
  for split in ("train", "test"):
    try:
      source = tfds.data_source(name, split=split, data_dir=os.path.expanduser(data_dir),
                                download=False)
      features = source.dataset_info.features
      keys = list(features.keys()) if hasattr(features, "keys") else []
    except Exception as e:  # pylint: disable=broad-except
      # TFDS signals a missing dataset, split or format with assorted exception types.
      raise ValueError(f"cannot read {where} ({split}): {sources._first_line(e)}") from e
    if "image" not in keys or "label" not in keys:
      raise ValueError(f"{where} needs 'image' and 'label' features, it has "
                       f"{', '.join(map(repr, sorted(keys))) or 'none'}")
    num_classes = getattr(features["label"], "num_classes", None)
    try:
      images, labels = sources._materialise(source)
    except Exception as e:  # pylint: disable=broad-except
      # A missing image codec, an empty split or images of different sizes.
      raise ValueError(f"cannot read {where} ({split}): {sources._first_line(e)}") from e
    splits[split] = (images[..., None] if images.ndim == 3 else images, labels)
  return _build(where, train_images=splits["train"][0], train_labels=splits["train"][1],
                test_images=splits["test"][0], test_labels=splits["test"][1],
                num_classes=num_classes, name=f"tfds:{name}")


def read_leaf(directory: str) -> FederatedArrays:
  """Reads LEAF's JSON files `directory/train/*.json` and `directory/test/*.json`.

  Each file holds `users`, `num_samples` and `user_data` (user -> {"x": rows, "y":
  labels}). Rows are pixels in [0, 1], converted to uint8 as `np.round(x * 255)`: a flat
  row of length s*s is an (s, s, 1) image, of length 3*s*s an (s, s, 3) HWC image, and
  nested (H, W) or (H, W, C) rows are taken as they are. The training users are the
  natural clients (`client_ids` holds each training example's user id); the test set is
  every test user's examples. Files are read in sorted order, users in file order.
  """
  train_images, train_labels, train_users = _leaf_split(os.path.join(directory, "train"))
  test_images, test_labels, _ = _leaf_split(os.path.join(directory, "test"))
  return _build(f"LEAF data in {directory}", train_images=train_images,
                train_labels=train_labels, test_images=test_images, test_labels=test_labels,
                client_ids=train_users, name=f"leaf:{directory}")


def _leaf_split(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Images, labels and per-example user ids of every user in `folder`'s JSON files."""
  files = sorted(glob.glob(os.path.join(folder, "*.json")))
  if not files:
    raise ValueError(f"no LEAF .json files in {folder}")
  images, labels, users_of = [], [], []
  for path in files:
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
      users, counts, user_data = data["users"], data["num_samples"], data["user_data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"cannot read LEAF file {path}: {sources._first_line(e)}") from e
    if not (isinstance(users, list) and isinstance(counts, list)
            and isinstance(user_data, dict)):
      raise ValueError(f"LEAF file {path}: users and num_samples must be lists and "
                       "user_data an object")
    if len(counts) != len(users):
      raise ValueError(f"LEAF file {path} lists {len(users)} users but {len(counts)} "
                       "num_samples")
    for user, count in zip(users, counts):
      if not isinstance(user, str) or user not in user_data:
        raise ValueError(f"LEAF file {path}: user {user!r} is missing from user_data")
      x, y = _leaf_user(user_data[user], count, f"LEAF file {path}, user {user!r}")
      if images and len(y) and x.shape[1:] != images[0].shape[1:]:
        raise ValueError(f"LEAF file {path}, user {user!r}: images of shape {x.shape[1:]}, "
                         f"earlier ones {images[0].shape[1:]}")
      if len(y):
        images.append(x)
        labels.append(y)
        users_of += [user] * len(y)
  if not images:
    raise ValueError(f"the LEAF files in {folder} hold no examples")
  return np.concatenate(images), np.concatenate(labels), np.asarray(users_of)


def _leaf_user(record: Any, count: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
  """One user's uint8 NHWC images and labels, checked against `num_samples`."""
  if not (isinstance(record, dict) and isinstance(record.get("x"), list)
          and isinstance(record.get("y"), list)):
    raise ValueError(f"{where}: user_data entry must hold lists 'x' and 'y'")
  if count != len(record["x"]) or count != len(record["y"]):
    raise ValueError(f"{where}: num_samples says {count} but x has {len(record['x'])} rows "
                     f"and y {len(record['y'])} labels")
  if not count:
    return np.zeros((0,), np.uint8), np.zeros((0,), np.int64)
  try:
    x = np.asarray(record["x"], np.float64)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{where}: x is not numeric image rows; {_ONLY_IMAGES}") from e
  if x.ndim == 2:
    length = x.shape[1]
    side, side3 = math.isqrt(length), math.isqrt(length // 3)
    if side and side * side == length:
      x = x.reshape(count, side, side, 1)
    elif side3 and length == 3 * side3 * side3:
      x = x.reshape(count, side3, side3, 3)
    else:
      raise ValueError(f"{where}: a row of {length} values is neither s*s nor 3*s*s "
                       f"pixels; {_ONLY_IMAGES}")
  elif x.ndim == 3:
    x = x[..., None]
  elif x.ndim != 4:
    raise ValueError(f"{where}: x has shape {x.shape}; {_ONLY_IMAGES}")
  y = np.asarray(record["y"])
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{where}: y must be a list of integer labels, got {y.dtype}")
  return _pixels(x, f"{where}: x"), y


def _pixels(x: np.ndarray, where: str) -> np.ndarray:
  """uint8 images as they are; floats in [0, 1] scaled by 255 and rounded to uint8."""
  if x.dtype == np.uint8:
    return x
  if np.issubdtype(x.dtype, np.floating) and np.all((x >= 0) & (x <= 1)):
    return np.round(x * 255).astype(np.uint8)
  kind = "floats outside [0, 1]" if np.issubdtype(x.dtype, np.floating) else str(x.dtype)
  raise ValueError(f"{where} must be uint8 or floats in [0, 1], got {kind}")


def _build(where: str, **arrays: Any) -> FederatedArrays:
  """`FederatedArrays(**arrays)`, its ValueError prefixed with where the arrays came from."""
  try:
    return FederatedArrays(**arrays)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e
