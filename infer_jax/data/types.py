"""Dataset types and the checks every format reader shares.

A dataset is a :class:`Dataset`: two :class:`ImageSource` objects (train, test) of uint8
``[H, W, 3]`` images with int64 labels, and a :class:`DatasetInfo` (name, classes, image
shape, normalisation statistics). The readers of :mod:`infer_jax.data.formats` build their
sources from these types and checks; :mod:`infer_jax.data.sources` picks the reader.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infer_jax.runtime.errors import InputError

_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# Standard per-channel statistics, keyed by DatasetInfo.name. Names that are not listed
# get statistics computed from their training images.
KNOWN_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
  "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
  "tinyimagenet": _IMAGENET_STATS,
  "imagenet1k": _IMAGENET_STATS,
  "imagenet2012": _IMAGENET_STATS,  # The TFDS name of ImageNet-1k.
}


_STATS_SAMPLE = 1000  # Images sampled to estimate mean/std of lazily decoded sources.


_STATS_SEED = 0


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset, stored with checkpoints.

  Attributes:
    name: short name, e.g. ``'digits'`` or ``'cifar10'``; selects known mean/std.
    num_classes: number of classes C; labels lie in ``[0, C)``.
    image_shape: ``(H, W, 3)`` of every image the sources return.
    label_names: C human-readable class names, in label order.
    mean: per-channel mean of the training images scaled to [0, 1], shape (3,).
    std: per-channel standard deviation of the same, shape (3,).
    num_train: number of training images.
    num_test: number of test images.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  label_names: tuple[str, ...]
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  num_train: int
  num_test: int

  def to_dict(self) -> dict[str, Any]:
    """Returns a JSON-serialisable dict (tuples become lists) for checkpoint metadata."""
    d = dataclasses.asdict(self)
    for k in ("image_shape", "label_names", "mean", "std"):
      d[k] = list(d[k])
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> DatasetInfo:
    """Rebuilds a DatasetInfo from :meth:`to_dict` output (e.g. read back from JSON)."""
    fields = [f.name for f in dataclasses.fields(cls)]
    missing = [k for k in fields if k not in d]
    if missing:
      raise InputError(
        f"Dataset metadata lacks the keys {missing}; it must hold {fields}. Use metadata "
        "written by DatasetInfo.to_dict (re-save the checkpoint if it predates it)."
      )
    try:
      info = cls(
        name=str(d["name"]),
        num_classes=int(d["num_classes"]),
        image_shape=tuple(int(v) for v in d["image_shape"]),
        label_names=tuple(str(v) for v in d["label_names"]),
        mean=tuple(float(v) for v in d["mean"]),
        std=tuple(float(v) for v in d["std"]),
        num_train=int(d["num_train"]),
        num_test=int(d["num_test"]),
      )
    except (TypeError, ValueError) as e:
      raise InputError(
        f"Dataset metadata has a malformed value ({e}). Use metadata written by "
        "DatasetInfo.to_dict."
      ) from e
    if (
      len(info.image_shape) != 3
      or len(info.mean) != 3
      or len(info.std) != 3
      or len(info.label_names) != info.num_classes
    ):
      raise InputError(
        f"Dataset metadata is inconsistent ({info}): image_shape, mean and std need 3 "
        "values and label_names one name per class. Use metadata written by "
        "DatasetInfo.to_dict."
      )
    return info


class ImageSource:
  """Random-access image-classification source (grain ``RandomAccessDataSource``).

  Attributes:
    labels: int64 ``[N]`` class of every record, available without decoding images.
    image_shape: ``(H, W, 3)`` of every image returned.

  Subclasses implement :meth:`_load` (one image) and may override :meth:`images` with a
  faster batched path.
  """

  labels: np.ndarray
  image_shape: tuple[int, int, int]

  def __len__(self) -> int:
    return len(self.labels)

  def _index(self, index: Any) -> int:
    # grain hands out numpy integers; negative indices follow Python semantics.
    i = operator.index(index)
    n = len(self)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"index {index} out of range for a source of {n} records")
    return i

  def _load(self, index: int) -> np.ndarray:
    """Returns image ``index`` (already range-checked) as uint8 ``[H, W, 3]``."""
    raise NotImplementedError

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Returns ``{'image': uint8 [H, W, 3], 'label': np.int64 scalar}``."""
    i = self._index(index)
    return {"image": self._load(i), "label": np.int64(self.labels[i])}

  def images(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
    """Returns the images at ``indices`` (int ``[K]``) as uint8 ``[K, H, W, 3]``."""
    out = np.empty((len(indices), *self.image_shape), np.uint8)
    for k, index in enumerate(indices):
      out[k] = self._load(self._index(index))
    return out

  def __repr__(self) -> str:
    return f"{type(self).__name__}(n={len(self)}, image_shape={self.image_shape})"


class ArraySource(ImageSource):
  """In-memory source over uint8 ``images [N, H, W, 3]`` and integer ``labels [N]``.

  ``array`` is the whole uint8 ``[N, H, W, 3]`` array (e.g. to put on device at once).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise InputError(
        f"Images must be uint8 [N, H, W, 3]; got {images.dtype} {images.shape}. Convert "
        "them (np.asarray(x, np.uint8); replicate grayscale with np.repeat(x, 3, -1))."
      )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
      raise InputError(
        f"Labels must be a 1-D integer array; got {labels.dtype} {labels.shape}. "
        "Store class indices as integers."
      )
    if len(images) != len(labels):
      raise InputError(
        f"{len(images)} images but {len(labels)} labels; give exactly one label per image."
      )
    self.array = images
    self.labels = labels.astype(np.int64)
    self.image_shape = tuple(int(s) for s in images.shape[1:])

  def _load(self, index: int) -> np.ndarray:
    return self.array[index]

  def images(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
    """Returns ``array[indices]``: uint8 ``[K, H, W, 3]`` (a copy)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(self)
    if idx.size and (idx.min() < -n or idx.max() >= n):
      raise IndexError(f"indices out of range for a source of {n} records")
    return self.array[idx]


def resize_center_crop(img, size: int):
  """Resizes a PIL image so its shorter side is ``size`` (bilinear), then center-crops
  it to ``size x size``; returns the new PIL image."""
  from PIL import Image

  w, h = img.size
  if (w, h) != (size, size):
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
      img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
  return img


def get_many(source: Any, keys: list[int]) -> Sequence[Any]:
  """Batched read when the source supports ``__getitems__`` (tfds does), else one by one."""
  if not keys:
    return []
  if hasattr(source, "__getitems__"):
    return source.__getitems__(keys)
  return [source[k] for k in keys]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train and a test :class:`ImageSource` sharing one :class:`DatasetInfo`."""

  train: ImageSource
  test: ImageSource
  info: DatasetInfo


def check_path(path: str | os.PathLike | None, source: str, kind: str) -> str:
  """Returns ``path`` as str after checking it exists and is a ``kind`` ('file'/'dir')."""
  if path is None or str(path) == "":
    raise InputError(f"Data source {source!r} needs a path; pass path=... (config key data.path).")
  path = os.fspath(path)
  if not os.path.exists(path):
    raise InputError(f"Data path {path!r} does not exist; check the path (data.path).")
  if kind == "file" and not os.path.isfile(path):
    raise InputError(
      f"Data source {source!r} expects a file but {path!r} is not one (a directory?); "
      "pass the path of the file itself."
    )
  if kind == "dir" and not os.path.isdir(path):
    raise InputError(
      f"Data source {source!r} expects a directory but {path!r} is a file; pass the "
      "dataset's root directory."
    )
  return path


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
  """Checks integer labels ``[N]`` lie in ``[0, num_classes)``; returns them as int64."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    raise InputError(
      f"{what} must be a 1-D integer array of class indices; got {labels.dtype} "
      f"{labels.shape}. Store labels as integers (e.g. y.astype(np.int64))."
    )
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise InputError(
      f"{what} has values in [{labels.min()}, {labels.max()}] but must lie in "
      f"[0, {num_classes}) for {num_classes} classes. Fix the labels, or give one "
      "label name per class."
    )
  return labels.astype(np.int64)


def check_image_size(image_size: Any) -> int | None:
  if image_size is None:
    return None
  if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
    raise InputError(
      f"image_size must be a positive integer or None, got {image_size!r}; set e.g. image_size=32."
    )
  if image_size <= 0:
    raise InputError(f"image_size must be positive, got {image_size}; set e.g. 32 or None.")
  return int(image_size)


def upsample(images: np.ndarray, image_size: int | None, what: str) -> np.ndarray:
  """Nearest-neighbour upsampling of uint8 ``[N, H, W, 3]`` by an integer factor so that
  the result is ``[N, image_size, image_size, 3]`` (in-memory sources only)."""
  if image_size is None:
    return images
  h, w = images.shape[1:3]
  if h != w or image_size % h:
    raise InputError(
      f"{what} images are {h}x{w}; in-memory sources only upsample square images by an "
      f"integer factor, so image_size={image_size} is not possible. Use a multiple of "
      f"{h} (e.g. {2 * h}) or leave image_size unset."
    )
  f = image_size // h
  if f == 1:
    return images
  return np.repeat(np.repeat(images, f, axis=1), f, axis=2)


def _array_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean/std (population) of uint8 ``[N, H, W, 3]`` scaled to [0, 1]."""
  # Chunked float64 sums keep memory bounded for large arrays and avoid float32 drift.
  s = np.zeros(3, np.float64)
  s2 = np.zeros(3, np.float64)
  count = 0
  for start in range(0, len(images), 2048):
    chunk = images[start : start + 2048].reshape(-1, 3).astype(np.float64) / 255.0
    s += chunk.sum(0)
    s2 += np.square(chunk).sum(0)
    count += len(chunk)
  if count == 0:
    raise InputError("Cannot compute mean/std of an empty training set; add images.")
  mean = s / count
  std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
  return mean, std


def compute_stats(source: ImageSource) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel (mean, std), each shape (3,), of ``source``'s images scaled to [0, 1].

  Uses every image of an :class:`ArraySource`; for lazy sources a fixed seeded sample of
  up to 1000 images (decoding a whole ImageNet-size set would take hours).
  """
  if isinstance(source, ArraySource):
    images = source.array
  else:
    n = len(source)
    idx = np.arange(n)
    if n > _STATS_SAMPLE:
      idx = np.sort(np.random.default_rng(_STATS_SEED).choice(n, _STATS_SAMPLE, replace=False))
    images = source.images(idx)
  mean, std = _array_stats(images)
  return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _triple(value: Any, what: str) -> tuple[float, float, float]:
  try:
    t = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    t = ()
  if len(t) != 3 or not all(np.isfinite(t)):
    raise InputError(
      f"{what} must be three finite numbers (one per RGB channel), got {value!r}; "
      f"e.g. {what}=(0.5, 0.5, 0.5)."
    )
  return t


def make_dataset(
  name: str,
  train: ImageSource,
  test: ImageSource,
  label_names: Sequence[str],
  mean: Any,
  std: Any,
) -> Dataset:
  """Assembles the Dataset, choosing mean/std: explicit > known constants > computed."""
  if len(train) == 0 or len(test) == 0:
    raise InputError(
      f"Dataset {name!r} has {len(train)} train and {len(test)} test images; both splits "
      "need at least one image. Check the data path."
    )
  if train.image_shape != test.image_shape:
    raise InputError(
      f"Train images are {train.image_shape} but test images are {test.image_shape}; "
      "both splits must share one shape. Pass image_size to resize them to one size."
    )
  known = KNOWN_STATS.get(name)
  if mean is None or std is None:
    if known is not None:
      auto_mean, auto_std = known
    else:
      auto_mean, auto_std = compute_stats(train)
    mean = auto_mean if mean is None else mean
    std = auto_std if std is None else std
  mean = _triple(mean, "mean")
  std = _triple(std, "std")
  if min(std) <= 0:
    raise InputError(f"std must be positive per channel, got {std}; pass e.g. std=(0.25,)*3.")
  info = DatasetInfo(
    name=name,
    num_classes=len(label_names),
    image_shape=tuple(int(s) for s in train.image_shape),
    label_names=tuple(str(s) for s in label_names),
    mean=mean,
    std=std,
    num_train=len(train),
    num_test=len(test),
  )
  return Dataset(train=train, test=test, info=info)
