"""The official CIFAR-10/100 "python version" archives, read with a restricted unpickler."""

from __future__ import annotations

import os
import pickle
import posixpath
import tarfile
from typing import Any

import numpy as np

from infer_jax.data.types import ArraySource, check_labels, check_path, upsample
from infer_jax.runtime.errors import InputError


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
  except Exception as e:  # corrupt pickles raise many types.
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
  path = check_path(path, source, "any")
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
  labels = check_labels(labels, num_classes, f"{what} {label_key.decode()}")
  # Rows are channel-major (1024 R, 1024 G, 1024 B bytes); models here are NHWC.
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def load(path: str, source: str, image_size: int | None):
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
  train = ArraySource(upsample(x_train, image_size, source), y_train)
  test = ArraySource(upsample(x_test, image_size, source), y_test)
  return train, test, label_names
