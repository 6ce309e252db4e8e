"""A ``.npz`` file of uint8 NHWC ``x_train``/``x_test`` and integer ``y_train``/``y_test``.

Images are ``[N, H, W, 3]`` (RGB), or greyscale as ``[N, H, W, 1]`` or ``[N, H, W]``; a
greyscale set stays one channel through the whole pipeline.
"""

from __future__ import annotations

import zipfile
import zlib

import numpy as np

from infer_jax.data.types import ArraySource, check_labels, check_path, upsample
from infer_jax.runtime.errors import InputError


def load(path: str, image_size: int | None):
  path = check_path(path, "npz", "file")
  try:
    z = np.load(path, allow_pickle=False)
  except Exception as e:  # np.load raises many types for bad files.
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
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
      # np.load reads lazily: a truncated or corrupted member fails here (e.g. Bad CRC-32).
      raise InputError(
        f"{path!r} is damaged ({type(e).__name__}: {e}): an array in it cannot be read. "
        "Copy or download the file again, or rewrite it with np.savez."
      ) from e
    except ValueError as e:
      # Object arrays (e.g. a list of Python strings) need pickle, which we refuse.
      raise InputError(
        f"Cannot load {path!r} without pickle ({e}). Store label_names as a str array "
        "(np.array(names, dtype=str)) and images/labels as numeric arrays."
      ) from e
  for split in ("train", "test"):
    x, y = arrays["x_" + split], arrays["y_" + split]
    if x.dtype == np.uint8 and x.ndim == 3:
      # Greyscale without a channel axis: [N, H, W] -> [N, H, W, 1] (a view, no copy).
      x = arrays["x_" + split] = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise InputError(f"{path!r}: x_{split} is {x.dtype} {x.shape}; {_image_hint(x)}")
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
    y = check_labels(arrays["y_" + split], max(num_classes, 1), f"{path!r}: y_{split}")
    x = upsample(arrays["x_" + split], image_size, path)
    splits.append(ArraySource(x, y))
  return splits[0], splits[1], label_names


def _image_hint(x: np.ndarray) -> str:
  """What the images must be, and the conversion that fits what they are."""
  need = (
    "it must be uint8 [N, H, W, 3] (RGB, channels last), [N, H, W, 1] or [N, H, W] (greyscale). "
  )
  fixes = []
  if x.dtype.kind == "f":
    top = float(np.nanmax(x)) if x.size else 0.0
    if top <= 1.0:
      # x.astype(np.uint8) would truncate every value in [0, 1) to 0.
      fixes.append("scale floats in [0, 1] with x = (x * 255).round().astype(np.uint8)")
    else:
      fixes.append("round floats in [0, 255] with x = x.round().astype(np.uint8)")
  elif x.dtype != np.uint8:
    fixes.append("convert with x = x.astype(np.uint8) (values must lie in 0..255)")
  if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
    fixes.append("transpose NCHW to NHWC with x = x.transpose(0, 2, 3, 1)")
  if not fixes:
    return need.strip()
  text = "; then ".join(fixes)
  return need + text[0].upper() + text[1:] + "."
