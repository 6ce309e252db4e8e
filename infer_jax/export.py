"""Export a saved synthetic set for other tools.

    python -m infer_jax.export SET.npz OUT_DIR [--torch]

writes OUT_DIR as a lossless PNG image folder (``<class>/<k>_<m>.png``) with the static
soft labels (``labels.npy``), hard labels and metadata beside it; see
:func:`infer_jax.synthetic.export_png`. With ``--torch`` the same folder also gets the
set as PyTorch tensors, in the form dataset-distillation evaluators such as DD-Ranking
load with ``torch.load``:

    images.pt        float32 [N, C, H, W]   the materialised instances, normalised as the
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
import os
import sys
from typing import Any

import numpy as np

from infer_jax import synthetic
from infer_jax.runtime.errors import InputError

TORCH_FILES = {"images": "images.pt", "soft_labels": "labels.pt", "hard_labels": "hard_labels.pt"}


def _torch_save(torch, obj, path: str) -> None:
  with open(path, "wb") as f:
    torch.save(obj, f)
    f.flush()
    os.fsync(f.fileno())


def torch_writer(s: synthetic.SyntheticSet):
  """A :func:`synthetic.export_png` ``extra`` writer of ``images.pt``/``labels.pt``/
  ``hard_labels.pt`` (see the module docstring for their form).

  torch is imported here, before anything is written, so a missing torch fails first.
  """
  from infer_jax import convert  # noqa: PLC0415  (imports JAX: only for --torch)

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
  try:
    extra = torch_writer if args.torch else None
    s = synthetic.load(args.synthetic_set)
    info = synthetic.export_png(s, args.out_dir, extra=None if extra is None else extra(s))
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  what = " and PyTorch tensors" if args.torch else ""
  print(f"wrote {info.get('num_files', s.num_instances)} PNG instances{what} to {args.out_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
