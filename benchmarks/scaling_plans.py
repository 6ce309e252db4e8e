"""ImageNet-1k recover plans per slice, from the measured memory rows (nothing is run).

Command (from the repository root)::

    python benchmarks/scaling_plans.py                       # markdown tables for docs/scaling.md
    python benchmarks/scaling_plans.py --memory              # the measured rows, one table
    python benchmarks/scaling_plans.py --rows benchmarks/results/recover_memory_vm.json

Reads the rows of ``benchmarks/recover_memory.py`` (peak bytes and FLOPs of ONE subset's
recover step per device, at 224x224 with C = 1000, for each teacher, image split, remat and
dtype) and lays out ImageNet-1k's K subsets (ipc 10: K = 9; ipc 50: K = 49; M = 3) on each
slice with the rule of ``infer_jax.recover.plan_split``, the measured per-subset peak in
place of its estimate: the fewest image shards I (a measured split dividing the device
count) that hold all K subsets in one pass within 80% of a device's memory, else the fewest
that hold one subset per device, in sequential chunks of as many subsets as fit. Per device
a pass holds ceil(chunk / (D / I)) subsets.

Wall time per teacher = iterations x chunks x subsets per device x FLOPs per device and
subset step / (30% of the device's dense bfloat16 peak). 30% is an assumption for
convolution nets at these per-device batches, not a measurement; float32 runs at TF32 rates
or below on GPUs, and at the bfloat16 rate with bfloat16 passes on TPUs (XLA's default
matmul precision), so its times are optimistic.
"""

from __future__ import annotations

import argparse
import json
import math

# (name, devices as JAX counts them, GiB per device, dense bf16 TFLOP/s per device)
SLICES = (
  ("TPU v4-32", 16, 32, 275),
  ("TPU v5e-64", 64, 16, 197),
  ("8 x H100 80 GB", 8, 80, 989),
)
SETTINGS = {10: 9, 50: 49}  # ipc -> K at ImageNet-1k with M = 3 teachers
ITERATIONS = 2000
FRACTION_OF_PEAK = 0.3
MEMORY_FRACTION = 0.8  # as infer_jax.recover._MEMORY_FRACTION


def plan(rows: dict, arch: str, remat: str, dtype: str, k: int, devices: int, gib: float):
  """The layout of K subsets on ``devices`` of ``gib``, or None without measured rows.

  Returns:
    ``{'shards', 'groups', 'chunk', 'chunks', 'per_device', 'gib', 'fits', 'row'}``.
  """
  measured = sorted(
    i for (a, i, r, d) in rows if (a, r, d) == (arch, remat, dtype) and devices % i == 0
  )
  if not measured:
    return None
  budget = MEMORY_FRACTION * gib * 2**30

  def need(i, chunk):
    return math.ceil(chunk / (devices // i)) * rows[arch, i, remat, dtype]["peak_mib"] * 2**20

  whole = [i for i in measured if need(i, k) <= budget]
  one = [i for i in measured if need(i, devices // i) <= budget]
  shards = (whole or one or measured[-1:])[0]
  groups = devices // shards
  if whole:
    chunk = k
  else:
    per_subset = rows[arch, shards, remat, dtype]["peak_mib"] * 2**20
    chunk = min(k, max(1, int(budget // per_subset)) * groups)
  chunks = math.ceil(k / chunk)
  size = math.ceil(k / chunks)
  per_device = math.ceil(size / groups)
  row = rows[arch, shards, remat, dtype]
  return {
    "shards": shards,
    "groups": groups,
    "chunk": size,
    "chunks": chunks,
    "per_device": per_device,
    "gib": per_device * row["peak_mib"] / 1024,
    "fits": per_device * row["peak_mib"] * 2**20 <= gib * 2**30,
    "row": row,
  }


def _cell(rows: dict, key: tuple, field: str) -> str:
  r = rows.get(key)
  return "-" if r is None or field not in r else f"{r[field]:.0f}"


def memory_table(rows: dict) -> None:
  """Prints the measured rows as one markdown table: per teacher and split, XLA:CPU's peak
  (float32, bfloat16; remat rows equal these on XLA:CPU), the residuals for each remat and
  dtype, and GFLOPs per device and step."""
  print(
    "| teacher | image shards | images per device | peak MiB float32 | peak MiB bfloat16 "
    "| residuals MiB float32 (remat none / blocks) | residuals MiB bfloat16 (none / blocks) "
    "| GFLOPs per device and step |"
  )
  print("|---|---|---|---|---|---|---|---|")
  archs = list(dict.fromkeys(a for a, *_ in rows))
  for arch, shards in sorted(
    {(a, i) for a, i, _, _ in rows}, key=lambda t: (archs.index(t[0]), t[1])
  ):
    cells = {
      (remat, dtype, field): _cell(rows, (arch, shards, remat, dtype), field)
      for remat in ("none", "blocks")
      for dtype in ("float32", "bfloat16")
      for field in ("peak_mib", "residual_mib")
    }
    first = next(r for (a, i, _, _), r in rows.items() if (a, i) == (arch, shards))
    print(
      f"| {arch} | {shards} | {first['images_per_device']} "
      f"| {cells['none', 'float32', 'peak_mib']} | {cells['none', 'bfloat16', 'peak_mib']} "
      f"| {cells['none', 'float32', 'residual_mib']} / "
      f"{cells['blocks', 'float32', 'residual_mib']} "
      f"| {cells['none', 'bfloat16', 'residual_mib']} / "
      f"{cells['blocks', 'bfloat16', 'residual_mib']} "
      f"| {first['flops_per_device_step'] / 1e9:.0f} |"
    )


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--rows", default="benchmarks/results/recover_memory_vm.json")
  p.add_argument(
    "--remat",
    default="none",
    help="none,blocks: XLA:CPU's peak of a remat row equals the row without (it removes the "
    "recomputation), so the plans use 'none' unless asked",
  )
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--memory", action="store_true", help="print the measured rows as one table")
  args = p.parse_args()
  remats, dtypes = args.remat.split(","), args.dtypes.split(",")
  if args.memory:
    with open(args.rows) as f:
      rows = {(r["arch"], r["image_shards"], r["remat"], r["dtype"]): r for r in json.load(f)}
    memory_table(rows)
    return
  with open(args.rows) as f:
    rows = {(r["arch"], r["image_shards"], r["remat"], r["dtype"]): r for r in json.load(f)}
  archs = list(dict.fromkeys(a for a, *_ in rows))
  print(f"From {args.rows} ({len(rows)} rows); {ITERATIONS} iterations per teacher.\n")
  print(
    "| slice | ipc | teacher | dtype | remat | mesh (data x images) | chunks x subsets "
    "| subsets per device | GiB per device | minutes per teacher |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name, devices, gib, tflops in SLICES:
    for ipc, k in SETTINGS.items():
      for arch in archs:
        for dtype in dtypes:
          for remat in remats:
            got = plan(rows, arch, remat, dtype, k, devices, gib)
            if got is None:
              print(f"| {name} | {ipc} | {arch} | {dtype} | {remat} | not measured |||||")
              continue
            flops = got["row"]["flops_per_device_step"]
            steps = ITERATIONS * got["chunks"] * got["per_device"]
            minutes = steps * flops / (FRACTION_OF_PEAK * tflops * 1e12) / 60
            gib_text = f"{got['gib']:.1f} (of {gib})" + ("" if got["fits"] else ", does not fit")
            print(
              f"| {name} | {ipc} | {arch} | {dtype} | {remat} | {got['groups']} x "
              f"{got['shards']} | {got['chunks']} x {got['chunk']} | {got['per_device']} "
              f"| {gib_text} | {minutes:.1f} |"
            )
  print("\nOne subset per device (C = 1000 at 224x224), the fewest image shards that fit:\n")
  print("| teacher | dtype | remat | 16 GiB | 32 GiB |")
  print("|---|---|---|---|---|")
  for arch in archs:
    for dtype in dtypes:
      for remat in remats:
        measured = [key for key in sorted(rows) if key[0] == arch and key[2:] == (remat, dtype)]
        cells = []
        for gib in (16, 32):
          fit = [
            key
            for key in measured
            if rows[key]["peak_mib"] * 2**20 <= MEMORY_FRACTION * gib * 2**30
          ]
          if not measured:
            cells.append("not measured")
          elif not fit:
            cells.append(f"none of {[key[1] for key in measured]}")
          else:
            cells.append(f"image_shards >= {fit[0][1]} ({rows[fit[0]]['peak_mib'] / 1024:.1f} GiB)")
        print(f"| {arch} | {dtype} | {remat} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
  main()
