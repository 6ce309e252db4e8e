"""Image-classification data sources: random access to uint8 images and int64 labels.

Every loader returns a :class:`Dataset` of two :class:`ImageSource` objects (train, test)
and a :class:`DatasetInfo`. Images are always uint8 ``[H, W, 3]`` (grayscale is
replicated to three channels); labels are int64 in ``[0, num_classes)``. Sources follow
grain's ``RandomAccessDataSource`` protocol (``__len__`` and ``__getitem__``), so they can
be handed to ``grain.MapDataset.source`` directly, and they expose ``labels`` without
decoding any image so that class-balanced samplers can index them cheaply.

Sources (``load_dataset(source=...)``):

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (no download); a fixed,
  stratified 80/20 split: 1438 train / 359 test images.
* ``npz``: a ``.npz`` file with uint8 NHWC ``x_train``/``x_test``, integer ``y_train``/
  ``y_test`` and (optionally) a str array ``label_names`` (the layout written by
  ``../shared/data/prepare.py``).
* ``imagefolder``: ``<path>/{train,test}/<class>/<image files>`` (``val`` is accepted
  when ``test`` is missing), decoded lazily with Pillow.
* ``cifar10`` / ``cifar100``: the official "python version" archives
  (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), given as the archive, the
  unpacked directory or its parent. Their pickles are read with a restricted unpickler
  that only resolves numpy's array-reconstruction globals.
* ``tinyimagenet``: the official ``tiny-imagenet-200`` directory; the labelled ``val``
  split is used as the test split.
* ``tfds``: a TensorFlow Datasets dataset already prepared in the ``array_record``
  file format, read through ``tfds.data_source`` (random access, no TensorFlow needed).

Preparing a TFDS dataset as array_record: TFDS can *read* array_record datasets
without TensorFlow, but its builders for CIFAR/ImageNet need TensorFlow to *prepare*
them (they encode images with ``tf.image``). On a machine with TensorFlow installed run
``pip install tensorflow tensorflow-datasets`` and then, e.g.,
``tfds build cifar10 --file_format=array_record --data_dir=/data/tfds`` (ImageNet-1k
needs the manual-download tarballs in ``/data/tfds/downloads/manual`` first:
``tfds build imagenet2012 --file_format=array_record --data_dir=/data/tfds``). Copy the
resulting ``/data/tfds/<name>/<version>/`` tree to the training machine and load it with
``load_dataset('tfds', tfds_name='cifar10', data_dir='/data/tfds')``. A dataset prepared
in the default tfrecord format cannot be used: it has no random access. (A custom
``GeneratorBasedBuilder`` whose generator yields already-encoded PNG/JPEG bytes prepares
without TensorFlow; the tests build their TFDS fixture that way.) Labels are read
once per split (images left undecoded) and cached as ``infer_jax_labels-<split>.npy`` in the
dataset's version directory when it is writable, because array_record keeps whole examples
together and reading every label means reading the whole split.

Normalisation statistics (``DatasetInfo.mean``/``std``, for images scaled to [0, 1]) are
the standard constants for known names (cifar10, cifar100, tinyimagenet, imagenet1k),
otherwise computed from the training images (all of them for in-memory sources, a fixed
seeded sample of up to 1000 images for lazily decoded ones); explicit ``mean``/``std``
arguments override both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import os
import pickle
import posixpath
import tarfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from infer_jax.runtime.errors import InputError

SOURCES = ("digits", "npz", "imagefolder", "cifar10", "cifar100", "tinyimagenet", "tfds")

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

# Lower-case file extensions that Pillow decodes and that image folders commonly hold.
IMAGE_EXTENSIONS = frozenset(
  {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_STATS_SAMPLE = 1000  # Images sampled to estimate mean/std of lazily decoded sources.
_STATS_SEED = 0
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SEED = 0


# --------------------------------------------------------------------------- metadata


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


# --------------------------------------------------------------------------- sources


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


def _resize_center_crop(img, size: int):
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


class FileImageSource(ImageSource):
  """Lazy source over image files decoded with Pillow on access.

  Args:
    files: N image paths.
    labels: int ``[N]`` labels.
    image_shape: ``(H, W, 3)`` every decoded image must have.
    image_size: if set, images are resized (shorter side to ``image_size``, bilinear)
      and center-cropped to ``image_size x image_size``; ``image_shape`` must then be
      ``(image_size, image_size, 3)``.
  """

  def __init__(
    self,
    files: Sequence[str],
    labels: np.ndarray,
    image_shape: tuple[int, int, int],
    image_size: int | None = None,
  ):
    self.files = list(files)
    self.labels = np.asarray(labels, np.int64)
    if len(self.files) != len(self.labels):
      raise ValueError("one label per file is required")
    self.image_shape = tuple(image_shape)
    self.image_size = image_size

  def _load(self, index: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    path = self.files[index]
    try:
      with Image.open(path) as img:
        img = img.convert("RGB")
        if self.image_size is not None:
          img = _resize_center_crop(img, self.image_size)
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
      raise InputError(
        f"Cannot decode image file {path!r} ({e}). Remove or replace the file."
      ) from e
    if arr.shape != self.image_shape:
      raise InputError(
        f"Image file {path!r} has shape {arr.shape}, expected {self.image_shape}. Pass "
        "image_size to resize all images to one size, or remove the file."
      )
    return arr


class TfdsSource(ImageSource):
  """Lazy source over one split of a TFDS dataset prepared as array_record.

  Args:
    source: the object ``tfds.data_source`` returned for the split (random access to
      dicts of numpy values).
    image_key / label_key: feature names of the image and the class label.
    image_shape: ``(H, W, 3)`` of the returned images.
    image_size: resize + center-crop target, as in :class:`FileImageSource`.
    label_reader: optional callable returning a data source for the same split whose
      images are NOT decoded (``decoders={image_key: tfds.decode.SkipDecoding()}``);
      used once to read all labels cheaply. Without it labels are read through
      ``source`` (decoding every image once).
    label_cache: optional ``.npy`` path for the labels. array_record stores whole
      examples, so reading the labels means reading the whole split once (all of
      ImageNet's ~150 GB); the cache makes that a one-off. It is used when it holds
      exactly N valid labels, and written (atomically) after a read when the directory is
      writable; a read-only data directory just means no cache.
  """

  _LABEL_CHUNK = 4096

  def __init__(
    self,
    source: Sequence[Mapping[str, Any]],
    image_key: str,
    label_key: str,
    image_shape: tuple[int, int, int],
    image_size: int | None = None,
    label_reader: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
    label_cache: str | None = None,
    num_classes: int | None = None,
  ):
    self.source = source
    self.image_key = image_key
    self.label_key = label_key
    self.image_shape = tuple(image_shape)
    self.image_size = image_size
    self.label_cache = label_cache
    self.num_classes = num_classes
    self._label_reader = label_reader
    self._labels: np.ndarray | None = None

  def __len__(self) -> int:
    # len() must not force the (whole-split) label read.
    return len(self.source)

  def _valid_labels(self, labels: Any) -> bool:
    n = len(self.source)
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (n,):
      return False
    top = self.num_classes if self.num_classes is not None else np.iinfo(np.int64).max
    return not labels.size or (labels.min() >= 0 and labels.max() < top)

  def _read_cache(self) -> np.ndarray | None:
    if self.label_cache is None or not os.path.isfile(self.label_cache):
      return None
    try:
      labels = np.load(self.label_cache, allow_pickle=False)
    except (OSError, ValueError):
      return None  # A damaged cache is ignored and rewritten.
    return labels if self._valid_labels(labels) else None

  def _write_cache(self, labels: np.ndarray) -> None:
    if self.label_cache is None:
      return
    tmp = f"{self.label_cache}.{os.getpid()}.tmp"
    try:
      with open(tmp, "wb") as f:
        np.save(f, labels, allow_pickle=False)
      os.replace(tmp, self.label_cache)  # Readers never see a half-written file.
    except OSError:
      with contextlib.suppress(OSError):
        os.remove(tmp)

  @property
  def labels(self) -> np.ndarray:
    """int64 ``[N]`` labels: from the cache file, else read once (images skipped)."""
    if self._labels is None:
      labels = self._read_cache()
      if labels is None:
        reader = self._label_reader() if self._label_reader is not None else self.source
        n = len(self.source)
        labels = np.empty(n, np.int64)
        for start in range(0, n, self._LABEL_CHUNK):
          keys = list(range(start, min(n, start + self._LABEL_CHUNK)))
          records = _get_many(reader, keys)
          labels[start : start + len(keys)] = [int(r[self.label_key]) for r in records]
        self._write_cache(labels)
      self._labels = labels
    return self._labels

  def __getstate__(self):
    # The label reader is a closure (not picklable); the cached labels travel instead,
    # so grain worker processes never need to re-read them.
    state = self.__dict__.copy()
    state["_labels"] = self.labels
    state["_label_reader"] = None
    return state

  def _convert(self, image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
      arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] not in (1, 3):
      raise InputError(
        f"TFDS image feature gives {arr.dtype} {arr.shape}; only uint8 images with 1 or 3 "
        "channels are supported. Use an RGB or grayscale uint8 image dataset."
      )
    if arr.shape[-1] == 1:
      arr = np.repeat(arr, 3, axis=-1)
    if self.image_size is not None and arr.shape != self.image_shape:
      from PIL import Image

      arr = np.asarray(_resize_center_crop(Image.fromarray(arr), self.image_size))
    if arr.shape != self.image_shape:
      raise InputError(
        f"TFDS image has shape {arr.shape}, expected {self.image_shape}. Pass image_size "
        "to resize all images to one size."
      )
    return arr

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Returns ``{'image': uint8 [H, W, 3], 'label': np.int64 scalar}``."""
    record = self.source[self._index(index)]
    return {
      "image": self._convert(record[self.image_key]),
      "label": np.int64(record[self.label_key]),
    }

  def _load(self, index: int) -> np.ndarray:
    return self._convert(self.source[index][self.image_key])

  def images(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
    """Returns uint8 ``[K, H, W, 3]``, fetched with one batched read."""
    keys = [self._index(i) for i in indices]
    out = np.empty((len(keys), *self.image_shape), np.uint8)
    for k, r in enumerate(_get_many(self.source, keys)):
      out[k] = self._convert(r[self.image_key])
    return out


def _get_many(source: Any, keys: list[int]) -> Sequence[Any]:
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


# --------------------------------------------------------------------------- helpers


def _check_path(path: str | os.PathLike | None, source: str, kind: str) -> str:
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


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
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


def _check_image_size(image_size: Any) -> int | None:
  if image_size is None:
    return None
  if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
    raise InputError(
      f"image_size must be a positive integer or None, got {image_size!r}; set e.g. image_size=32."
    )
  if image_size <= 0:
    raise InputError(f"image_size must be positive, got {image_size}; set e.g. 32 or None.")
  return int(image_size)


def _upsample(images: np.ndarray, image_size: int | None, what: str) -> np.ndarray:
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


def _make_dataset(
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


# --------------------------------------------------------------------------- digits


def _load_digits(image_size: int | None) -> tuple[ArraySource, ArraySource, list[str]]:
  from sklearn.datasets import load_digits

  d = load_digits()
  # 0..16 intensities -> 0..255; rounding keeps the mapping exact at both ends.
  x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
  x = np.repeat(x[..., None], 3, axis=-1)
  y = d.target.astype(np.int64)
  # Own stratified split with a fixed numpy Generator, so it does not depend on
  # scikit-learn's splitter implementation.
  rng = np.random.default_rng(_DIGITS_SEED)
  test_idx = []
  for c in range(10):
    idx = np.flatnonzero(y == c)
    test_idx.append(rng.permutation(idx)[: round(len(idx) * _DIGITS_TEST_FRACTION)])
  is_test = np.zeros(len(y), bool)
  is_test[np.concatenate(test_idx)] = True
  x = _upsample(x, image_size, "digits")
  return (
    ArraySource(x[~is_test], y[~is_test]),
    ArraySource(x[is_test], y[is_test]),
    [str(c) for c in range(10)],
  )


# --------------------------------------------------------------------------- npz


def _load_npz(path: str, image_size: int | None):
  path = _check_path(path, "npz", "file")
  try:
    z = np.load(path, allow_pickle=False)
  except Exception as e:  # noqa: BLE001 - np.load raises many types for bad files.
    raise InputError(
      f"Cannot read {path!r} as a .npz archive ({e}). Write it with np.savez(path, "
      "x_train=..., y_train=..., x_test=..., y_test=..., label_names=...)."
    ) from e
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise InputError(
      f"{path!r} holds a single array, not a .npz archive with x_train, y_train, x_test, "
      "y_test; write it with np.savez."
    )
  with z:
    required = ("x_train", "y_train", "x_test", "y_test")
    missing = [k for k in required if k not in z.files]
    if missing:
      raise InputError(
        f"{path!r} lacks the arrays {missing} (it has {sorted(z.files)}). The npz layout "
        "needs uint8 NHWC x_train/x_test, integer y_train/y_test and optionally "
        "label_names."
      )
    try:
      arrays = {k: z[k] for k in (*required, "label_names") if k in z.files}
    except ValueError as e:
      # Object arrays (e.g. a list of Python strings) need pickle, which we refuse.
      raise InputError(
        f"Cannot load {path!r} without pickle ({e}). Store label_names as a str array "
        "(np.array(names, dtype=str)) and images/labels as numeric arrays."
      ) from e
  for split in ("train", "test"):
    x, y = arrays["x_" + split], arrays["y_" + split]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
      raise InputError(
        f"{path!r}: x_{split} is {x.dtype} {x.shape}; it must be uint8 [N, H, W, 3] "
        "(channels last). Convert with x.astype(np.uint8), transpose NCHW to NHWC, and "
        "replicate grayscale with np.repeat(x[..., None], 3, -1)."
      )
    if y.ndim != 1 or len(y) != len(x):
      raise InputError(
        f"{path!r}: y_{split} has shape {y.shape} but x_{split} holds {len(x)} images; "
        f"y_{split} must be 1-D with one label per image."
      )
  if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
    raise InputError(
      f"{path!r}: x_train images are {arrays['x_train'].shape[1:]} but x_test images are "
      f"{arrays['x_test'].shape[1:]}; both splits must share one image shape."
    )
  if "label_names" in arrays:
    names = arrays["label_names"]
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
      raise InputError(
        f"{path!r}: label_names is {names.dtype} {names.shape}; it must be a non-empty "
        "1-D str array with one name per class (np.array(names, dtype=str))."
      )
    label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
  else:
    # Without names the class count is inferred from the largest label.
    top = -1
    for split in ("train", "test"):
      y = arrays["y_" + split]
      if y.size and y.dtype.kind in "iu":
        top = max(top, int(y.max()))
    label_names = [str(c) for c in range(top + 1)]
  num_classes = len(label_names)
  splits = []
  for split in ("train", "test"):
    y = _check_labels(arrays["y_" + split], max(num_classes, 1), f"{path!r}: y_{split}")
    x = _upsample(arrays["x_" + split], image_size, path)
    splits.append(ArraySource(x, y))
  return splits[0], splits[1], label_names


# --------------------------------------------------------------------------- image folders


def _is_image_file(name: str) -> bool:
  return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_images(directory: str) -> list[str]:
  """Sorted image files under ``directory`` (recursive; hidden files/dirs skipped)."""
  out = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    out.extend(os.path.join(root, f) for f in sorted(files) if _is_image_file(f))
  return out


def _class_dirs(split_dir: str) -> list[str]:
  return sorted(
    d
    for d in os.listdir(split_dir)
    if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d))
  )


def _common_shape(files: Sequence[str], what: str) -> tuple[int, int, int]:
  """Reads image headers (no decoding) and returns the shared ``(H, W, 3)`` shape."""
  from PIL import Image, UnidentifiedImageError

  shape = None
  first = None
  for f in files:
    try:
      with Image.open(f) as img:
        w, h = img.size
    except (OSError, UnidentifiedImageError) as e:
      raise InputError(f"Cannot read image file {f!r} ({e}); remove or replace it.") from e
    if shape is None:
      shape, first = (h, w, 3), f
    elif (h, w, 3) != shape:
      raise InputError(
        f"{what}: image {f!r} is {w}x{h} but {first!r} is {shape[1]}x{shape[0]}; all "
        "images must share one size. Pass image_size (e.g. image_size=64) to resize "
        "(shorter side) and center-crop every image."
      )
  assert shape is not None
  return shape


def _load_imagefolder(path: str, image_size: int | None):
  path = _check_path(path, "imagefolder", "dir")
  train_dir = os.path.join(path, "train")
  test_dir = next(
    (os.path.join(path, s) for s in ("test", "val") if os.path.isdir(os.path.join(path, s))),
    None,
  )
  if not os.path.isdir(train_dir) or test_dir is None:
    raise InputError(
      f"{path!r} must contain a 'train' and a 'test' (or 'val') directory, each with one "
      f"sub-directory of images per class (found {sorted(os.listdir(path))[:10]}). Arrange the "
      "images as <path>/train/<class>/<file> and <path>/test/<class>/<file>."
    )
  classes = _class_dirs(train_dir)
  if not classes:
    raise InputError(
      f"{train_dir!r} has no class sub-directories; put each class's images in "
      f"{train_dir}/<class>/."
    )
  test_classes = _class_dirs(test_dir)
  if test_classes != classes:
    only_train = sorted(set(classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(classes))
    raise InputError(
      f"The class folders of {train_dir!r} and {test_dir!r} differ (only in train: "
      f"{only_train[:10]}, only in test: {only_test[:10]}); both splits need the same "
      "class folders (an empty folder is not enough: each needs images)."
    )
  splits = []
  all_files = []
  for split_dir in (train_dir, test_dir):
    files, labels = [], []
    for c, name in enumerate(classes):
      found = _list_images(os.path.join(split_dir, name))
      if not found:
        raise InputError(
          f"Class folder {os.path.join(split_dir, name)!r} holds no image files (looked "
          f"for {sorted(IMAGE_EXTENSIONS)}); add images or remove the folder from both "
          "splits."
        )
      files += found
      labels += [c] * len(found)
    splits.append((files, np.asarray(labels, np.int64)))
    all_files += files
  shape = _common_shape(all_files, path) if image_size is None else (image_size, image_size, 3)
  train, test = (FileImageSource(f, y, shape, image_size) for f, y in splits)
  return train, test, classes


# --------------------------------------------------------------------------- CIFAR


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the globals the official CIFAR pickles need.

  Those files hold dicts of bytes/str/int/lists (plain pickle opcodes, no globals) and
  numpy arrays, which pickle as calls to numpy's array reconstructor. Anything else, e.g.
  ``os.system``, is refused, so a tampered file cannot run code.
  """

  ALLOWED = frozenset(
    {
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      # Python 3 writes bytes as _codecs.encode(str, 'latin1') at protocol <= 2; it only
      # converts a str to bytes.
      ("_codecs", "encode"),
    }
  )

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
    return super().find_class(module, name)


def _unpickle(f, what: str) -> Any:
  try:
    # The official files were pickled by Python 2; 'bytes' keeps their str keys as bytes.
    return _RestrictedUnpickler(f, encoding="bytes").load()
  except Exception as e:  # noqa: BLE001 - corrupt pickles raise many types.
    raise InputError(
      f"Refusing or failing to unpickle {what} ({e}). It is not an official CIFAR python "
      "batch file; re-download cifar-10-python.tar.gz / cifar-100-python.tar.gz from "
      "https://www.cs.toronto.edu/~kriz/cifar.html."
    ) from e


_CIFAR = {
  # source: (directory in the archive, archive name, train files, test file, meta file,
  #          label key, label-names key)
  "cifar10": (
    "cifar-10-batches-py",
    "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
    b"labels",
    b"label_names",
  ),
  "cifar100": (
    "cifar-100-python",
    "cifar-100-python.tar.gz",
    ("train",),
    "test",
    "meta",
    b"fine_labels",
    b"fine_label_names",
  ),
}


def _read_cifar_files(path: str, source: str) -> dict[str, Any]:
  """Returns {file name: unpickled object} for the CIFAR files, from a dir or archive."""
  dirname, archive, train_files, test_file, meta_file, _, _ = _CIFAR[source]
  wanted = (*train_files, test_file, meta_file)
  layouts = f"the {dirname!r} directory, its parent directory, or the {archive!r} archive"
  path = _check_path(path, source, "any")
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, meta_file)):
      root = path
    elif os.path.isdir(os.path.join(path, dirname)):
      root = os.path.join(path, dirname)
    elif os.path.isfile(os.path.join(path, archive)):
      return _read_cifar_files(os.path.join(path, archive), source)
    else:
      raise InputError(
        f"{path!r} does not hold the official {source} python-version files; pass {layouts}."
      )
    out = {}
    for name in wanted:
      f = os.path.join(root, name)
      if not os.path.isfile(f):
        raise InputError(
          f"{source} file {f!r} is missing; the directory must hold {list(wanted)} "
          f"(unpack the full {archive})."
        )
      with open(f, "rb") as fh:
        out[name] = _unpickle(fh, repr(f))
    return out
  if not tarfile.is_tarfile(path):
    raise InputError(f"{path!r} is neither a directory nor a tar archive; pass {layouts}.")
  out = {}
  # One sequential pass reads members straight from the stream; nothing is extracted to
  # disk, so hostile member paths cannot write anywhere.
  with tarfile.open(path, "r:*") as tar:
    for member in tar:
      name = posixpath.normpath(member.name)
      base, parent = posixpath.basename(name), posixpath.basename(posixpath.dirname(name))
      if member.isfile() and base in wanted and parent in (dirname, ""):
        out[base] = _unpickle(tar.extractfile(member), f"{path}:{member.name}")
  missing = [n for n in wanted if n not in out]
  if missing:
    raise InputError(
      f"Archive {path!r} lacks {[f'{dirname}/{m}' for m in missing]}; pass the official "
      f"{archive} (or its unpacked {dirname!r} directory)."
    )
  return out


def _cifar_batch(obj: Any, label_key: bytes, what: str, num_classes: int):
  """Converts one CIFAR batch dict to (uint8 [N, 32, 32, 3], int64 [N])."""
  if not isinstance(obj, dict) or b"data" not in obj or label_key not in obj:
    raise InputError(
      f"{what} is not a CIFAR batch (a dict with b'data' and {label_key!r}); use the "
      "official python-version files."
    )
  data = obj[b"data"]
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
    raise InputError(f"{what}: b'data' must be a uint8 [N, 3072] array; use the official files.")
  if data.shape[1] != 3072:
    raise InputError(f"{what}: rows hold {data.shape[1]} bytes, not 3072 (3x32x32).")
  labels = np.asarray(obj[label_key])
  if len(labels) != len(data):
    raise InputError(
      f"{what}: {len(data)} images but {len(labels)} labels; use the official files."
    )
  labels = _check_labels(labels, num_classes, f"{what} {label_key.decode()}")
  # Rows are channel-major (1024 R, 1024 G, 1024 B bytes); models here are NHWC.
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _load_cifar(path: str, source: str, image_size: int | None):
  dirname, _, train_files, test_file, meta_file, label_key, names_key = _CIFAR[source]
  files = _read_cifar_files(path, source)
  meta = files[meta_file]
  if not isinstance(meta, dict) or names_key not in meta:
    raise InputError(
      f"{source} {meta_file!r} lacks {names_key!r}; use the official python-version files."
    )
  label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
  num_classes = len(label_names)
  parts = [_cifar_batch(files[f], label_key, f"{source} {f!r}", num_classes) for f in train_files]
  x_train = np.concatenate([p[0] for p in parts])
  y_train = np.concatenate([p[1] for p in parts])
  x_test, y_test = _cifar_batch(files[test_file], label_key, f"{source} {test_file!r}", num_classes)
  train = ArraySource(_upsample(x_train, image_size, source), y_train)
  test = ArraySource(_upsample(x_test, image_size, source), y_test)
  return train, test, label_names


# --------------------------------------------------------------------------- Tiny-ImageNet


def _load_tinyimagenet(path: str, image_size: int | None):
  path = _check_path(path, "tinyimagenet", "dir")
  if not os.path.isfile(os.path.join(path, "wnids.txt")):
    nested = os.path.join(path, "tiny-imagenet-200")
    if os.path.isfile(os.path.join(nested, "wnids.txt")):
      path = nested
    else:
      raise InputError(
        f"{path!r} has no wnids.txt; pass the official 'tiny-imagenet-200' directory "
        "(with wnids.txt, words.txt, train/ and val/)."
      )
  with open(os.path.join(path, "wnids.txt")) as f:
    wnids = [line.strip() for line in f if line.strip()]
  if not wnids:
    raise InputError(f"{path}/wnids.txt is empty; use the official Tiny-ImageNet files.")
  index = {w: i for i, w in enumerate(wnids)}
  words: dict[str, str] = {}
  words_file = os.path.join(path, "words.txt")
  if os.path.isfile(words_file):
    with open(words_file) as f:
      for line in f:
        wnid, _, text = line.rstrip("\n").partition("\t")
        if wnid in index:
          words[wnid] = text.split(",")[0].strip() or wnid
  label_names = [words.get(w, w) for w in wnids]

  train_files, train_labels = [], []
  for i, wnid in enumerate(wnids):
    d = os.path.join(path, "train", wnid, "images")
    found = _list_images(d) if os.path.isdir(d) else []
    if not found:
      raise InputError(
        f"Tiny-ImageNet class folder {d!r} is missing or holds no images; use the full "
        "official tiny-imagenet-200 directory."
      )
    train_files += found
    train_labels += [i] * len(found)

  val_dir = os.path.join(path, "val", "images")
  ann = os.path.join(path, "val", "val_annotations.txt")
  if not os.path.isfile(ann) or not os.path.isdir(val_dir):
    raise InputError(
      f"{path!r} lacks val/val_annotations.txt or val/images/; the labelled val split is "
      "the test split, so use the official directory layout."
    )
  present = set(os.listdir(val_dir))
  test_files, test_labels = [], []
  with open(ann) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.rstrip("\n").split("\t")
      if len(parts) < 2 or parts[1] not in index or parts[0] not in present:
        raise InputError(
          f"{ann}:{lineno}: {line.strip()!r} does not name an image in val/images and a "
          "wnid from wnids.txt; use the official val_annotations.txt."
        )
      test_files.append(os.path.join(val_dir, parts[0]))
      test_labels.append(index[parts[1]])
  # The official images are all 64x64; FileImageSource checks each one as it decodes it
  # rather than opening 110k files up front.
  shape = (64, 64, 3) if image_size is None else (image_size, image_size, 3)
  train = FileImageSource(train_files, np.asarray(train_labels), shape, image_size)
  test = FileImageSource(test_files, np.asarray(test_labels), shape, image_size)
  return train, test, label_names


# --------------------------------------------------------------------------- TFDS


def _load_tfds(tfds_name: str | None, data_dir: str | None, image_size: int | None):
  if not tfds_name:
    raise InputError(
      "Data source 'tfds' needs tfds_name (config key data.tfds_name), e.g. "
      "tfds_name='cifar10' or 'imagenet2012'."
    )
  if data_dir is not None:
    data_dir = _check_path(data_dir, "tfds", "dir")
  import tensorflow_datasets as tfds

  prepare_hint = (
    f"Prepare it as array_record on a machine with TensorFlow (tfds build {tfds_name} "
    "--file_format=array_record --data_dir=DIR) and pass data_dir=DIR (data.data_dir)."
  )
  try:
    # download=False: without TensorFlow tfds cannot prepare cifar/imagenet, and a silent
    # multi-GB download is never wanted here.
    sources = tfds.data_source(tfds_name, split=None, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - tfds raises many types for missing/odd data.
    msg = str(e).strip().splitlines()[0][:300].rstrip(".:") if str(e).strip() else repr(e)
    raise InputError(
      f"Cannot open TFDS dataset {tfds_name!r} from data_dir={data_dir!r} ({msg}). It must "
      f"already be prepared there in the array_record format. {prepare_hint}"
    ) from e
  test_split = next((s for s in ("test", "validation") if s in sources), None)
  if "train" not in sources or test_split is None:
    raise InputError(
      f"TFDS dataset {tfds_name!r} has splits {sorted(sources)}; a 'train' and a 'test' "
      "(or 'validation') split are needed. Use a dataset with both."
    )
  info = sources["train"].dataset_info
  image_key, label_key = "image", "label"
  sk = info.supervised_keys
  if isinstance(sk, tuple | list) and len(sk) == 2 and all(isinstance(k, str) for k in sk):
    image_key, label_key = sk
  features = info.features
  if image_key not in features or label_key not in features:
    raise InputError(
      f"TFDS dataset {tfds_name!r} has features {sorted(features.keys())}, not an image "
      f"{image_key!r} and a label {label_key!r}; use an image-classification dataset."
    )
  label_feature = features[label_key]
  if not isinstance(label_feature, tfds.features.ClassLabel):
    raise InputError(
      f"TFDS feature {label_key!r} of {tfds_name!r} is not a ClassLabel; use an "
      "image-classification dataset."
    )
  shape = tuple(features[image_key].shape)
  if image_size is not None:
    image_shape = (image_size, image_size, 3)
  elif len(shape) == 3 and None not in shape[:2] and shape[2] in (1, 3):
    image_shape = (int(shape[0]), int(shape[1]), 3)
  else:
    raise InputError(
      f"TFDS dataset {tfds_name!r} has images of shape {shape} (variable size); pass "
      "image_size (e.g. image_size=224) to resize and center-crop them."
    )

  def source(split: str) -> TfdsSource:
    def label_reader():
      # SkipDecoding leaves the image bytes encoded, so reading labels costs no JPEG/PNG
      # decoding.
      return tfds.data_source(
        tfds_name,
        split=split,
        data_dir=data_dir,
        download=False,
        decoders={image_key: tfds.decode.SkipDecoding()},
      )

    cache = None
    if info.data_dir:
      # Beside the split's files: tied to that exact prepared copy of the dataset.
      cache = os.path.join(os.fspath(info.data_dir), f"infer_jax_labels-{split}.npy")
    return TfdsSource(
      sources[split],
      image_key,
      label_key,
      image_shape,
      image_size,
      label_reader=label_reader,
      label_cache=cache,
      num_classes=label_feature.num_classes,
    )

  names = label_feature.names
  return source("train"), source(test_split), list(names), info.name


# --------------------------------------------------------------------------- entry points


def load_dataset(
  source: str,
  path: str | os.PathLike | None = None,
  *,
  name: str | None = None,
  image_size: int | None = None,
  mean: Sequence[float] | None = None,
  std: Sequence[float] | None = None,
  tfds_name: str | None = None,
  data_dir: str | os.PathLike | None = None,
) -> Dataset:
  """Loads a dataset as a :class:`Dataset` of uint8 ``[H, W, 3]`` images and int64 labels.

  Args:
    source: one of ``SOURCES`` (see the module docstring).
    path: file or directory of the data (npz, imagefolder, cifar10/100, tinyimagenet).
    name: ``DatasetInfo.name``; defaults to the source name (digits, cifar10, cifar100,
      tinyimagenet), the file stem (npz), the folder name (imagefolder) or the TFDS name.
      Names in ``KNOWN_STATS`` get the standard mean/std.
    image_size: output side S, giving ``(S, S, 3)`` images. In-memory sources (digits,
      npz, cifar) upsample square images by an integer factor (nearest neighbour); lazy
      sources (imagefolder, tinyimagenet, tfds) resize the shorter side to S (bilinear)
      and center-crop. Required for image folders/TFDS sets of mixed image sizes.
    mean, std: three per-channel values overriding the automatic statistics.
    tfds_name: TFDS dataset name (``source='tfds'``), e.g. ``'cifar10'``.
    data_dir: TFDS data directory (``source='tfds'``); TFDS's default when None.

  Returns:
    ``Dataset(train, test, info)``.

  Raises:
    InputError: for any unusable argument or data, with a message saying how to fix it.
  """
  if source not in SOURCES:
    raise InputError(
      f"Unknown data source {source!r}; choose one of {', '.join(SOURCES)} "
      "(config key data.source)."
    )
  image_size = _check_image_size(image_size)
  if path is not None:
    path = os.fspath(path)
  if source == "digits":
    train, test, names = _load_digits(image_size)
    default_name = "digits"
  elif source == "npz":
    train, test, names = _load_npz(path, image_size)
    default_name = os.path.splitext(os.path.basename(path))[0]
  elif source == "imagefolder":
    train, test, names = _load_imagefolder(path, image_size)
    default_name = os.path.basename(os.path.normpath(path))
  elif source in ("cifar10", "cifar100"):
    train, test, names = _load_cifar(path, source, image_size)
    default_name = source
  elif source == "tinyimagenet":
    train, test, names = _load_tinyimagenet(path, image_size)
    default_name = "tinyimagenet"
  else:
    if data_dir is not None:
      data_dir = os.fspath(data_dir)
    train, test, names, default_name = _load_tfds(tfds_name, data_dir, image_size)
  return _make_dataset(name or default_name, train, test, names, mean, std)


_CONFIG_KEYS = ("source", "path", "name", "image_size", "mean", "std", "tfds_name", "data_dir")


def load_from_config(cfg: Any) -> Dataset:
  """Calls :func:`load_dataset` with the keys of ``cfg`` (a ConfigDict or mapping).

  Recognised keys: ``source`` (default ``'digits'``), ``path``, ``name``, ``image_size``,
  ``mean``, ``std``, ``tfds_name``, ``data_dir``; missing keys and empty strings mean
  "not set". Other keys (e.g. batch sizes kept in the same config block) are ignored.
  """
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise InputError(
      f"The data config must be a mapping or ConfigDict, got {type(cfg).__name__}; pass "
      "e.g. {'source': 'digits'}."
    )
  kw = {k: cfg.get(k) for k in _CONFIG_KEYS}
  # ConfigDicts cannot hold None for a typed field: '' and an image_size of 0 mean "unset".
  kw = {
    k: (None if (isinstance(v, str) and v == "") or (k == "image_size" and v == 0) else v)
    for k, v in kw.items()
  }
  source = kw.pop("source") or "digits"
  path = kw.pop("path")
  return load_dataset(source, path, **kw)
