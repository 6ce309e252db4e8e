"""TensorFlow Datasets prepared as ``array_record`` (random access, no TensorFlow needed),
with a per-split label cache."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from infer_jax.data.types import ImageSource, check_path, get_many, resize_center_crop
from infer_jax.runtime import atomic
from infer_jax.runtime.errors import InputError


class TfdsSource(ImageSource):
  """Lazy source over one split of a TFDS dataset prepared as array_record.

  Args:
    source: the object ``tfds.data_source`` returned for the split (random access to
      dicts of numpy values).
    image_key / label_key: feature names of the image and the class label.
    image_shape: ``(H, W, C)`` of the returned images: C = 1 for a greyscale image
      feature (kept one channel), else 3 (a greyscale image of an RGB feature is replicated).
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
    # Readers never see a half-written file; an unwritable directory just means no cache.
    with contextlib.suppress(OSError):
      atomic.write(self.label_cache, lambda f: np.save(f, labels, allow_pickle=False))

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
          records = get_many(reader, keys)
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
        "channels are supported. Use an RGB or greyscale uint8 image dataset."
      )
    if arr.shape[-1] == 1 and self.image_shape[-1] == 3:
      arr = np.repeat(arr, 3, axis=-1)
    if self.image_size is not None and arr.shape != self.image_shape:
      from PIL import Image

      # Pillow takes greyscale as [H, W] ('L' mode); the channel axis comes back after.
      pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
      arr = np.asarray(resize_center_crop(pil, self.image_size))
      arr = arr[..., None] if arr.ndim == 2 else arr
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
    for k, r in enumerate(get_many(self.source, keys)):
      out[k] = self._convert(r[self.image_key])
    return out


def load(tfds_name: str | None, data_dir: str | None, image_size: int | None):
  if not tfds_name:
    raise InputError(
      "Data source 'tfds' needs tfds_name (config key data.tfds_name), e.g. "
      "tfds_name='cifar10' or 'imagenet2012'."
    )
  if data_dir is not None:
    data_dir = check_path(data_dir, "tfds", "dir")
  import tensorflow_datasets as tfds

  prepare_hint = (
    f"Prepare it as array_record on a machine with TensorFlow (tfds build {tfds_name} "
    "--file_format=array_record --data_dir=DIR) and pass data_dir=DIR (data.data_dir)."
  )
  try:
    # download=False: without TensorFlow tfds cannot prepare cifar/imagenet, and a silent
    # multi-GB download is never wanted here.
    sources = tfds.data_source(tfds_name, split=None, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises many types for missing/odd data.
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
  # A greyscale image feature (channels=1, e.g. MNIST) stays one channel.
  channels = 1 if len(shape) == 3 and shape[2] == 1 else 3
  if image_size is not None:
    image_shape = (image_size, image_size, channels)
  elif len(shape) == 3 and None not in shape[:2] and shape[2] in (1, 3):
    image_shape = (int(shape[0]), int(shape[1]), channels)
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
