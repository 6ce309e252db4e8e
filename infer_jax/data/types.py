"""Dataset types and the checks every format reader shares.

A dataset is a :class:`Dataset`: two :class:`ImageSource` objects (train, test) of uint8
``[H, W, C]`` images (C = 3 for colour, 1 for greyscale) with int64 labels, and a
:class:`DatasetInfo` (name, classes, image shape, normalisation statistics, one value per
channel). The readers of :mod:`infer_jax.data.formats` build their
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


# Channel counts the pipeline carries: greyscale and RGB.
CHANNELS = (1, 3)


# The smallest image side: the student's random-resized crop, the recover crop and the
# teachers' stride-2 stages are exercised down to 8x8 (the digits); smaller images are
# refused at load rather than failing inside a model.
MIN_IMAGE_SIDE = 8


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset, stored with checkpoints.

  Attributes:
    name: short name, e.g. ``'digits'`` or ``'cifar10'``; selects known mean/std.
    num_classes: number of classes C; labels lie in ``[0, C)``.
    image_shape: ``(H, W, C)`` of every image the sources return; C is 3 (RGB) or 1
      (greyscale).
    label_names: human-readable class names, one per class, in label order.
    mean: per-channel mean of the training images scaled to [0, 1], shape (C,).
    std: per-channel standard deviation of the same, shape (C,).
    num_train: number of training images.
    num_test: number of test images.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  label_names: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
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
      or info.image_shape[2] not in CHANNELS
      or len(info.mean) != info.image_shape[2]
      or len(info.std) != info.image_shape[2]
      or len(info.label_names) != info.num_classes
    ):
      raise InputError(
        f"Dataset metadata is inconsistent ({info}): image_shape needs 3 values [H, W, C] "
        "with C 1 or 3, mean and std one value per channel and label_names one name per "
        "class. Use metadata written by DatasetInfo.to_dict."
      )
    return info


class ImageSource:
  """Random-access image-classification source (grain ``RandomAccessDataSource``).

  Attributes:
    labels: int64 ``[N]`` class of every record, available without decoding images.
    image_shape: ``(H, W, C)`` of every image returned (C = 3 or 1).

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
    """Returns image ``index`` (already range-checked) as uint8 ``[H, W, C]``."""
    raise NotImplementedError

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Returns ``{'image': uint8 [H, W, C], 'label': np.int64 scalar}``."""
    i = self._index(index)
    return {"image": self._load(i), "label": np.int64(self.labels[i])}

  def images(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
    """Returns the images at ``indices`` (int ``[K]``) as uint8 ``[K, H, W, C]``."""
    out = np.empty((len(indices), *self.image_shape), np.uint8)
    for k, index in enumerate(indices):
      out[k] = self._load(self._index(index))
    return out

  def __repr__(self) -> str:
    return f"{type(self).__name__}(n={len(self)}, image_shape={self.image_shape})"


class ArraySource(ImageSource):
  """In-memory source over uint8 ``images [N, H, W, C]`` (C = 3 or 1) and integer ``labels [N]``.

  ``array`` is the whole uint8 ``[N, H, W, C]`` array (e.g. to put on device at once).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in CHANNELS:
      raise InputError(
        f"Images must be uint8 [N, H, W, C] with C = 3 (RGB) or 1 (greyscale); got "
        f"{images.dtype} {images.shape}. Convert them (np.asarray(x, np.uint8); give "
        "greyscale (N, H, W) images a channel axis with x[..., None])."
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
    """Returns ``array[indices]``: uint8 ``[K, H, W, C]`` (a copy)."""
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
  """Nearest-neighbour upsampling of uint8 ``[N, H, W, C]`` by an integer factor so that
  the result is ``[N, image_size, image_size, C]`` (in-memory sources only)."""
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
  """Per-channel mean/std (population), each ``[C]``, of uint8 ``[N, H, W, C]`` scaled to [0, 1]."""
  # Chunked float64 sums keep memory bounded for large arrays and avoid float32 drift.
  c = images.shape[-1]
  s = np.zeros(c, np.float64)
  s2 = np.zeros(c, np.float64)
  count = 0
  for start in range(0, len(images), 2048):
    chunk = images[start : start + 2048].reshape(-1, c).astype(np.float64) / 255.0
    s += chunk.sum(0)
    s2 += np.square(chunk).sum(0)
    count += len(chunk)
  if count == 0:
    raise InputError("Cannot compute mean/std of an empty training set; add images.")
  mean = s / count
  std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
  return mean, std


def compute_stats(source: ImageSource) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel (mean, std), each shape (C,), of ``source``'s images scaled to [0, 1].

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


def _per_channel(value: Any, what: str, channels: int) -> tuple[float, ...]:
  try:
    t = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    t = ()
  if len(t) != channels or not all(np.isfinite(t)):
    if channels == 3:
      need, example = "three finite numbers (one per RGB channel)", "(0.5, 0.5, 0.5)"
    else:
      need, example = "one finite number (the images are greyscale: one channel)", "(0.5,)"
    raise InputError(f"{what} must be {need}, got {value!r}; e.g. {what}={example}.")
  return t


def check_channels(name: str, shape: Sequence[int]) -> None:
  """InputError unless ``shape`` is ``(H, W, C)`` with C 1 or 3."""
  c = int(shape[-1])
  if len(shape) != 3 or c not in CHANNELS:
    raise InputError(
      f"Dataset {name!r} has images of shape {tuple(shape)}; infer-jax reads RGB (3-channel) "
      "or greyscale (1-channel) images. Convert the images to one of those."
    )


def check_min_size(name: str, shape: Sequence[int]) -> None:
  """InputError naming the minimum unless ``shape`` ``(H, W, C)`` has H, W >= 8.

  Checked when a run loads its dataset (the loaders themselves accept any size): smaller
  images fail inside the models and crops of every stage instead.
  """
  h, w = (int(s) for s in shape[:2])
  if min(h, w) < MIN_IMAGE_SIDE:
    if h == w:
      # In-memory sources upsample by an integer factor; lazy ones resize to any size.
      size = max(h, 1) * -(-MIN_IMAGE_SIDE // max(h, 1))
      fix = f"Upsample them with --config.data.image_size={size} (image_size={size})"
    else:
      fix = f"Resize them to at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} when preparing the data"
    raise InputError(
      f"Dataset {name!r} has {h}x{w} images; the smallest size infer-jax trains on is "
      f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}. {fix}."
    )


def check_class_coverage(name: str, train: ImageSource, label_names: Sequence[str]) -> None:
  """InputError if a class has no training image: caught at load, before any training.

  Args:
    name: the dataset's name (for the message).
    train: the training split (its ``labels``).
    label_names: the C class names.

  Every stage needs every class in the training set (teachers learn it, each INFER subset
  takes one real image of it), and no budget setting can make up for a missing class.
  """
  labels = getattr(train, "labels", None)
  if labels is None:
    return
  counts = np.bincount(np.asarray(labels, np.int64), minlength=len(label_names))
  empty = [c for c in range(len(label_names)) if counts[c] == 0]
  if empty:
    shown = ", ".join(f"{c} ({label_names[c]!r})" for c in empty[:10])
    more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
    raise InputError(
      f"Dataset {name!r}: {len(empty)} of {len(label_names)} classes have no training image: "
      f"{shown}{more}. Add training images of those classes, or drop the classes (remove "
      "their names and renumber the labels 0..C-1) before distilling."
    )


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
  check_channels(name, train.image_shape)
  channels = int(train.image_shape[2])
  known = KNOWN_STATS.get(name)
  if known is not None and channels != 3:
    # The standard constants are RGB: a greyscale copy of e.g. CIFAR-10 gets its own.
    known = None
  if mean is None or std is None:
    if known is not None:
      auto_mean, auto_std = known
    else:
      auto_mean, auto_std = compute_stats(train)
    mean = auto_mean if mean is None else mean
    std = auto_std if std is None else std
  mean = _per_channel(mean, "mean", channels)
  std = _per_channel(std, "std", channels)
  if min(std) <= 0:
    raise InputError(
      f"std must be positive per channel, got {std}; pass e.g. std=(0.25,)*{channels}."
    )
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
