"""A federated dataset as plain NumPy arrays: what every dataset loader returns.

Built-in datasets, the `npz:` / `tfds:` / `leaf:` readers and a user's own
arrays all arrive as one `FederatedArrays`, so everything downstream
(partition, device-resident clients, formation) sees one type. Its
constructor checks the arrays and fills in what was not given (number of
classes, normalisation), raising `ValueError` naming the argument.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FederatedArrays:
  """Training and test splits, with optional natural client ids.

  Attributes:
    train_images: (N, H, W, C) uint8 (C = 1 for grey images).
    train_labels: (N,) integer class of each training image.
    test_images: (M, H, W, C) uint8, the same H, W, C.
    test_labels: (M,) integer class of each test image.
    client_ids: None, or one id (integer or string) per training image: a
      natural partition whose clients are the distinct ids, in sorted order.
      Without ids the config's partition (`data.num_clients`, `alpha`,
      `iid`) splits the training set.
    num_classes: None: 1 + the largest label of either split.
    mean, std: per-channel normalisation in [0, 1] pixel units; None: computed
      from the training images.
    augment: whether the dataset's standard augmentation (random crop with
      4-pixel padding, horizontal flip) applies to it.
    name: how the start-up line and records name the data.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  client_ids: np.ndarray | None = None
  num_classes: int | None = None
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  augment: bool = False
  name: str = "arrays"

  def __post_init__(self):
    set_ = lambda field, value: object.__setattr__(self, field, value)
    for split in ("train", "test"):
      images = np.asarray(getattr(self, f"{split}_images"))
      labels = np.asarray(getattr(self, f"{split}_labels"))
      if images.dtype != np.uint8:
        raise ValueError(f"{split}_images must be uint8 (pixels 0-255), got {images.dtype}")
      if images.ndim != 4 or min(images.shape) < 1:
        raise ValueError(f"{split}_images must have shape (N, H, W, C) with every size >= 1, "
                         f"got {images.shape}")
      if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{split}_labels must be a 1-D integer array, got {labels.dtype} "
                         f"with shape {labels.shape}")
      if len(labels) != len(images):
        raise ValueError(f"{split}_labels has {len(labels)} labels for {len(images)} "
                         f"{split}_images")
      if labels.min() < 0:
        raise ValueError(f"{split}_labels must be >= 0, got {labels.min()}")
      set_(f"{split}_images", images)
      set_(f"{split}_labels", labels.astype(np.int32))
    if self.test_images.shape[1:] != self.train_images.shape[1:]:
      raise ValueError(f"test_images have shape {self.test_images.shape[1:]} per image, "
                       f"train_images {self.train_images.shape[1:]}")
    largest = int(max(self.train_labels.max(), self.test_labels.max()))
    if self.num_classes is None:
      set_("num_classes", largest + 1)
    if int(self.num_classes) < 2:
      raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
    if largest >= self.num_classes:
      raise ValueError(f"labels must lie in [0, num_classes={self.num_classes}), "
                       f"got a label {largest}")
    set_("num_classes", int(self.num_classes))
    if self.client_ids is not None:
      ids = np.asarray(self.client_ids)
      if ids.shape != self.train_labels.shape:
        raise ValueError(f"client_ids must hold one id per training image "
                         f"({len(self.train_labels)}), got shape {ids.shape}")
      if not (np.issubdtype(ids.dtype, np.integer) or ids.dtype.kind in "UO"):
        raise ValueError(f"client_ids must be integers or strings, got {ids.dtype}")
      set_("client_ids", ids)
    channels = self.train_images.shape[-1]
    if self.mean is None or self.std is None:
      mean, std = _channel_stats(self.train_images)
      set_("mean", self.mean if self.mean is not None else mean)
      set_("std", self.std if self.std is not None else std)
    for field in ("mean", "std"):
      value = tuple(float(v) for v in np.atleast_1d(getattr(self, field)))
      if len(value) != channels:
        raise ValueError(f"{field} must have one value per channel ({channels}), got {value}")
      set_(field, value)
    if min(self.std) <= 0:
      raise ValueError(f"std must be > 0 in every channel, got {self.std}")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  def natural_clients(self) -> list[np.ndarray]:
    """The training-image indices of each natural client (distinct ids, sorted)."""
    if self.client_ids is None:
      raise ValueError("these arrays have no client_ids")
    _, inverse = np.unique(self.client_ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    return [c.astype(np.int64) for c in np.split(order, bounds)]


def _channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[tuple[float, ...], ...]:
  """Per-channel mean and std of images in [0, 1] units, in float64, chunk by chunk."""
  total = np.zeros(images.shape[-1])
  squares = np.zeros(images.shape[-1])
  for s in range(0, len(images), chunk):
    x = images[s:s + chunk].astype(np.float64) / 255
    total += x.sum((0, 1, 2))
    squares += (x * x).sum((0, 1, 2))
  count = images.shape[0] * images.shape[1] * images.shape[2]
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
  std = np.where(std > 0, std, 1.0)  # a constant channel: leave it unscaled
  return tuple(mean.tolist()), tuple(std.tolist())
