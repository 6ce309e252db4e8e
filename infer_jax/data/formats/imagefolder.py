"""Image folders ``<path>/{train,test}/<class>/<image files>``, decoded lazily with Pillow.

A folder whose images are all greyscale (Pillow modes 'L', '1', 'LA', 'I', 'I;16', 'F') is
read as one channel; any colour image makes the whole dataset RGB (greyscale files are then
replicated to three channels). With ``image_size`` set, the decision reads the headers of a
fixed seeded sample of up to 1000 files instead of every file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from infer_jax.data.types import ImageSource, check_path, resize_center_crop
from infer_jax.runtime.errors import InputError

# Pillow modes that hold one intensity per pixel (an 'LA' alpha channel is dropped).
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

_MODE_SAMPLE = 1000  # headers read to choose the channel count when image_size is set

# Lower-case file extensions that Pillow decodes and that image folders commonly hold.
IMAGE_EXTENSIONS = frozenset(
  {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


class FileImageSource(ImageSource):
  """Lazy source over image files decoded with Pillow on access.

  Args:
    files: N image paths.
    labels: int ``[N]`` labels.
    image_shape: ``(H, W, C)`` every decoded image must have; C = 1 decodes to Pillow's
      'L' (greyscale), C = 3 to 'RGB'.
    image_size: if set, images are resized (shorter side to ``image_size``, bilinear)
      and center-cropped to ``image_size x image_size``; ``image_shape`` must then be
      ``(image_size, image_size, C)``.
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
        img = img.convert("L" if self.image_shape[-1] == 1 else "RGB")
        if self.image_size is not None:
          img = resize_center_crop(img, self.image_size)
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
          arr = arr[..., None]  # 'L' decodes to [H, W]; sources return [H, W, 1]
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


def _is_image_file(name: str) -> bool:
  return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(directory: str) -> list[str]:
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


def _header(f: str) -> tuple[int, int, str]:
  """``(width, height, Pillow mode)`` of image file ``f`` from its header (no decoding)."""
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(f) as img:
      return img.size[0], img.size[1], img.mode
  except (OSError, UnidentifiedImageError) as e:
    raise InputError(f"Cannot read image file {f!r} ({e}); remove or replace it.") from e


def _channels(files: Sequence[str]) -> int:
  """1 when every sampled file is greyscale, else 3 (see the module docstring)."""
  idx = np.arange(len(files))
  if len(files) > _MODE_SAMPLE:
    idx = np.sort(np.random.default_rng(0).choice(len(files), _MODE_SAMPLE, replace=False))
  return 1 if all(_header(files[i])[2] in GREY_MODES for i in idx) else 3


def _common_shape(files: Sequence[str], what: str) -> tuple[int, int, int]:
  """Reads image headers (no decoding) and returns the shared ``(H, W, C)`` shape."""
  shape = None
  first = None
  grey = True
  for f in files:
    w, h, mode = _header(f)
    grey = grey and mode in GREY_MODES
    if shape is None:
      shape, first = (h, w), f
    elif (h, w) != shape:
      raise InputError(
        f"{what}: image {f!r} is {w}x{h} but {first!r} is {shape[1]}x{shape[0]}; all "
        "images must share one size. Pass image_size (e.g. image_size=64) to resize "
        "(shorter side) and center-crop every image."
      )
  assert shape is not None
  return (*shape, 1 if grey else 3)


def load(path: str, image_size: int | None):
  path = check_path(path, "imagefolder", "dir")
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
      found = list_images(os.path.join(split_dir, name))
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
  if image_size is None:
    shape = _common_shape(all_files, path)
  else:
    shape = (image_size, image_size, _channels(all_files))
  train, test = (FileImageSource(f, y, shape, image_size) for f, y in splits)
  return train, test, classes
