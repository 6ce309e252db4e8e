"""Export a saved synthetic set for other tools.

    python -m infer_jax.export SET.npz OUT_DIR [--torch]

writes OUT_DIR as a lossless PNG image folder (``<class>/<k>_<m>.png``) with the static
soft labels (``labels.npy``), hard labels and metadata beside it; see
:func:`export_png`. With ``--torch`` the same folder also gets the
set as PyTorch tensors, in the form dataset-distillation evaluators such as DD-Ranking
load with ``torch.load``:

    images.pt        float32 [N, C, H, W]   the materialised instances (C = 1 for a
                                            greyscale set), normalised as the
                                            student sees them: (pixel/255 - mean) / std
                                            with the set's mean/std (metadata.json), after
                                            clipping x + u to the image range
    labels.pt        float32 [N, classes]   static soft labels (the teachers' mean
                                            logits; absent for a hard-label set)
    hard_labels.pt   int64 [N]              class indices

Row i of every tensor is the i-th PNG of the sorted file list (class, then subset k, then
m), so instances are grouped by class, as evaluators that derive hard labels from class
order expect. ``images.pt`` holds N * C * H * W * 4 bytes (ImageNet-1k at ipc 10: 36,000
instances of 224x224, 22 GB); for large sets point the evaluator at the PNG folder
instead. torch is an optional dependency: ``pip install 'infer-jax[torch]'``.

The set is checked (shapes, checksums) on load; an existing non-empty OUT_DIR is never
overwritten, and the folder appears only once complete.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from infer_jax import synthetic
from infer_jax.runtime import atomic
from infer_jax.runtime.errors import InputError, guarded

TORCH_FILES = {"images": "images.pt", "soft_labels": "labels.pt", "hard_labels": "hard_labels.pt"}


def _torch_save(torch, obj, path: str) -> None:
  with open(path, "wb") as f:
    torch.save(obj, f)
    f.flush()
    os.fsync(f.fileno())


def torch_writer(s: synthetic.SyntheticSet):
  """A :func:`export_png` ``extra`` writer of ``images.pt``/``labels.pt``/
  ``hard_labels.pt`` (see the module docstring for their form).

  torch is imported here, before anything is written, so a missing torch fails first.
  """
  from infer_jax import convert  # imports JAX: only for --torch

  torch = convert.import_torch(
    "The PyTorch export (--torch)", ". The PNG folder alone needs no torch."
  )

  def write(directory: str, order: np.ndarray) -> dict[str, Any]:
    instances, soft, hard = synthetic.materialize_rows(s, order)
    images = np.ascontiguousarray(instances.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    _torch_save(torch, torch.from_numpy(images), os.path.join(directory, TORCH_FILES["images"]))
    _torch_save(
      torch,
      torch.from_numpy(hard.astype(np.int64)),
      os.path.join(directory, TORCH_FILES["hard_labels"]),
    )
    if soft is not None:
      path = os.path.join(directory, TORCH_FILES["soft_labels"])
      _torch_save(torch, torch.from_numpy(soft), path)
    return {
      "torch": {
        "images": f"{TORCH_FILES['images']}: float32 {list(images.shape)} (N, C, H, W), "
        "normalised with the set's mean/std as the student sees them",
        "soft_labels": None
        if soft is None
        else f"{TORCH_FILES['soft_labels']}: float32 {list(soft.shape)} (static logits)",
        "hard_labels": f"{TORCH_FILES['hard_labels']}: int64 [{len(hard)}]",
        "row_order": "that of the PNG rows (class, then k, then m)",
      }
    }

  return write


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point; returns the exit status."""
  parser = argparse.ArgumentParser(
    prog="python -m infer_jax.export",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("synthetic_set", help="a synthetic set written by infer_jax.distill")
  parser.add_argument("out_dir", help="the PNG folder to create")
  parser.add_argument(
    "--torch",
    action="store_true",
    help="also write images.pt, labels.pt and hard_labels.pt (needs the [torch] extra)",
  )
  args = parser.parse_args(argv)
  done = {}

  def job() -> None:
    extra = torch_writer if args.torch else None
    done["s"] = s = synthetic.load(args.synthetic_set)
    done["info"] = export_png(s, args.out_dir, extra=None if extra is None else extra(s))

  status = guarded(job)  # one line, not a traceback, for bad input or a refused write
  if status:
    return status
  s, info = done["s"], done["info"]
  what = " and PyTorch tensors" if args.torch else ""
  print(f"wrote {info.get('num_files', s.num_instances)} PNG instances{what} to {args.out_dir}")
  return 0


def _write_bytes(path: str, data: bytes) -> None:
  with open(path, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _npy_bytes(a: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, a, allow_pickle=False)
  return buf.getvalue()


def export_png(
  s: synthetic.SyntheticSet,
  directory: str,
  extra: Callable[[str, np.ndarray], dict[str, Any]] | None = None,
) -> dict[str, Any]:
  """Writes the materialised instances as a lossless PNG image folder.

  Layout (an ImageFolder: class folders, then images)::

    directory/<class:04d>/<k:04d>_<m:02d>.png   instance (k, m, c), de-normalised to uint8
                                                ('RGB' PNG; 'L' for a greyscale set)
    directory/labels.npy        float32 [N, num_classes] soft labels (absent for hard labels)
    directory/hard_labels.npy   int32 [N] class indices
    directory/files.csv         file,row,instance,k,m,class
    directory/metadata.json     {'synthetic_set': s.metadata, 'export': {...}}

  Row i of ``labels.npy``/``hard_labels.npy`` belongs to the i-th file of the sorted file
  list (zero padding makes lexicographic order (class, k, m)), which is also the sample
  order of torchvision's ``ImageFolder``. ``files.csv`` lists every file with that row and
  its instance index in :func:`infer_jax.synthetic.materialize` order. Pixels are
  ``clip(rint((x * std + mean) * 255), 0, 255)``; m = 0 gives the stored image back exactly.

  The folder is written beside ``directory`` as ``directory.tmp-XXXX`` and renamed into
  place, so ``directory`` is either absent/empty or complete.

  Args:
    s: the set.
    directory: the folder to create.
    extra: optional writer of more files into the same folder (e.g. PyTorch tensors),
      called as ``extra(folder, order)`` with the temporary folder and ``order [N]``, the
      instance index (:func:`infer_jax.synthetic.materialize` order) of each row; it returns
      entries added to the ``export`` record. Its files are committed together with the PNGs.

  Returns:
    The ``export`` record written to metadata.json.

  Raises:
    InputError: ``directory`` exists and is not an empty directory, or ``s`` is invalid.
  """
  from PIL import Image  # Only this export needs Pillow.

  s.validate()
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
    raise InputError(
      f"{directory} already exists and is not an empty directory; refusing to overwrite it. "
      "Choose a new directory or delete that one first."
    )
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  k_all, m_all, c_all = synthetic.instance_coordinates(s)
  kw, mw, cw = max(4, len(str(s.K - 1))), max(2, len(str(s.M))), max(4, len(str(s.C - 1)))
  files = [
    f"{c:0{cw}d}/{k:0{kw}d}_{m:0{mw}d}.png" for k, m, c in zip(k_all, m_all, c_all, strict=True)
  ]
  order = np.argsort(np.array(files), kind="stable")  # row -> instance index
  rows = np.empty_like(order)
  rows[order] = np.arange(order.size)  # instance index -> row

  tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
  try:
    for c in range(s.C):
      os.mkdir(os.path.join(tmp, f"{c:0{cw}d}"))
    for start in range(0, s.num_instances, synthetic.CHUNK_ROWS):
      chunk = np.arange(start, min(s.num_instances, start + synthetic.CHUNK_ROWS))
      instances, _, _ = synthetic.materialize_rows(s, chunk)
      pixels = synthetic.denormalize_uint8(instances, s.metadata)
      for n, image in zip(chunk, pixels, strict=True):
        buf = io.BytesIO()
        # A greyscale set ([H, W, 1]) is written as an 8-bit 'L' PNG, colour as 'RGB'.
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
        _write_bytes(os.path.join(tmp, files[n]), buf.getvalue())
    hard = c_all[order].astype(np.int32)
    _write_bytes(os.path.join(tmp, "hard_labels.npy"), _npy_bytes(hard))
    if s.labels is not None:
      soft = s.labels.reshape(s.num_instances, -1)[order].astype(np.float32)
      _write_bytes(os.path.join(tmp, "labels.npy"), _npy_bytes(soft))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["file", "row", "instance", "k", "m", "class"])
    for n in order:
      writer.writerow([files[n], rows[n], n, k_all[n], m_all[n], c_all[n]])
    _write_bytes(os.path.join(tmp, "files.csv"), table.getvalue().encode("utf-8"))
    export = {
      "format_version": synthetic.FORMAT_VERSION,
      "num_files": int(s.num_instances),
      "layout": f"<class:0{cw}d>/<k:0{kw}d>_<m:0{mw}d>.png",
      "row_order": "sorted file list: class, then k, then m (torchvision ImageFolder order)",
      "pixels": "clip(rint((x * std + mean) * 255), 0, 255) of the materialised instance",
      "soft_labels": "labels.npy" if s.labels is not None else None,
      "hard_labels": "hard_labels.npy",
      "files": "files.csv",
      "synthetic.storage_bytes": synthetic.storage_bytes(s),
    }
    if extra is not None:
      export.update(extra(tmp, order))
    record = {"synthetic_set": synthetic.normalize_metadata(s.metadata), "export": export}
    _write_bytes(os.path.join(tmp, "metadata.json"), json.dumps(record, indent=2).encode("utf-8"))
    atomic.fsync_dir(tmp)
    try:
      # POSIX rename replaces an empty directory atomically and fails on a non-empty one,
      # so a directory filled concurrently is never clobbered.
      os.rename(tmp, directory)
    except OSError as e:
      raise InputError(
        f"Cannot move the export into {directory} ({e}); it was created or filled "
        "meanwhile. Choose a new directory or delete that one first."
      ) from e
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  atomic.fsync_dir(parent)
  return export


if __name__ == "__main__":
  sys.exit(main())
