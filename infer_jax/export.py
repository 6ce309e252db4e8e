"""Export a saved synthetic set for other tools.

    python -m infer_jax.export SET.npz OUT_DIR

writes OUT_DIR as a lossless PNG image folder (``<class>/<k>_<m>.png``) with the static
soft labels (``labels.npy``), hard labels and metadata beside it; see
:func:`infer_jax.synthetic.export_png`. The set is checked (shapes, checksums) on load;
an existing non-empty OUT_DIR is never overwritten.
"""

from __future__ import annotations

import argparse
import sys

from infer_jax import synthetic
from infer_jax.errors import InputError


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point; returns the exit status."""
  parser = argparse.ArgumentParser(
    prog="python -m infer_jax.export",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("synthetic_set", help="a synthetic set written by infer_jax.distill")
  parser.add_argument("out_dir", help="the PNG folder to create")
  args = parser.parse_args(argv)
  try:
    s = synthetic.load(args.synthetic_set)
    info = synthetic.export_png(s, args.out_dir)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {info.get('num_instances', s.num_instances)} PNG instances to {args.out_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
