"""Recover step time with one subset's images split over devices, against the unsplit step.

Command (from the repository root)::

    python benchmarks/recover_split_speed.py                  # resnet18 (width 0.25), C = 64
    python benchmarks/recover_split_speed.py --arch mobilenetv2 --classes 32 --shards 4

Creates ``--devices`` fake XLA:CPU devices (on an accelerator: the real ones) and times
``infer_jax.recover.make_step`` for K = 1 subset of C images (CIFAR stem, 32x32, roll
augmentation): once on one device, once with the C images split over ``--shards`` devices
(``shard_map`` with the BatchNorm moments and the CE sum reduced by ``psum``). Both programs
are compiled first; then ``--repeats`` alternating repeats of ``--iters`` iterations each,
so both see the same machine load. Reports the min and median seconds per iteration and
the ratio split / unsplit of the medians (and of the mins), printed and added as a row to
``--out`` (default ``benchmarks/results/recover_split_speed_<hostname>.json``; a row of the
same arch, width, C and shards is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

_DEVICES = 8  # --devices, read before argparse runs
for _i, _a in enumerate(sys.argv):
  if _a.startswith("--devices="):
    _DEVICES = int(_a.split("=", 1)[1])
  elif _a == "--devices" and _i + 1 < len(sys.argv):
    _DEVICES = int(sys.argv[_i + 1])
# Fake CPU devices must be requested before JAX initialises.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}"
).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from teachers import _loadavg, machine_info, write_json  # noqa: E402

from infer_jax import models, recover  # noqa: E402
from infer_jax.core import bn_stats  # noqa: E402
from infer_jax.runtime import train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--arch", default="resnet18")
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--classes", type=int, default=64, help="C: images of the one subset")
  p.add_argument("--devices", type=int, default=8, help="fake CPU devices to create")
  p.add_argument("--shards", type=int, default=8, help="devices the subset is split over")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  if a.classes % a.shards:
    p.error(f"--classes={a.classes} must be a multiple of --shards={a.shards}")
  if not a.out:
    a.out = f"benchmarks/results/recover_split_speed_{socket.gethostname()}.json"
  return a


def main(argv=None) -> None:
  args = parse_args(argv)
  shape, c = (32, 32, 3), args.classes
  model = models.create_model(args.arch, c, stem="cifar", width=args.width)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *shape)), train=False))(
    jax.random.key(0, impl="rbg")
  )
  cfg = recover.RecoverConfig(iterations=1000, jitter=4, checkpoint_every=0, log_every=0)
  tx = recover.optimizer(cfg)
  first = bn_stats.bn_layer_order(model, variables, (c, *shape))[0]
  rng = np.random.default_rng(0)
  base_np = rng.normal(size=(1, c, *shape)).astype(np.float32)
  labels_np = np.arange(c, dtype=np.int32)[None]

  def setup(shards: int):
    """(compiled step, state, fixed inputs) on 1 device or a 1 x ``shards`` mesh."""
    mesh = train.subset_image_mesh(jax.devices()[:shards], shards)
    images = NamedSharding(mesh, P(train.SUBSET_AXIS, train.IMAGE_AXIS))
    subsets, repl = NamedSharding(mesh, P(train.SUBSET_AXIS)), NamedSharding(mesh, P())
    step = recover.make_step(model, cfg, first, tx, mesh=mesh if shards > 1 else None)
    params = jax.device_put(np.zeros((1, 1, *shape), np.float32), subsets)
    opt = jax.tree.map(
      lambda a: jax.device_put(a, subsets if np.ndim(a) else repl), tx.init(params)
    )
    fixed = (
      jax.device_put(variables, repl),
      jax.device_put(base_np, images),
      jax.device_put(labels_np, images),
    )
    it = jax.device_put(np.int32(0), repl)
    t0 = time.perf_counter()
    v, b, y = fixed
    compiled = step.lower(v, params, opt, b, y, it).compile()
    compile_s = time.perf_counter() - t0
    state = {"p": params, "o": opt}

    def run_iters(n: int) -> float:
      t = time.perf_counter()
      for i in range(n):
        state["p"], state["o"], _ = compiled(v, state["p"], state["o"], b, y, jnp.int32(i))
      jax.block_until_ready(state["p"])
      return (time.perf_counter() - t) / n

    run_iters(1)  # first run: buffers allocated, not timed
    return run_iters, compile_s

  load_before = _loadavg()
  one, compile_one = setup(1)
  split, compile_split = setup(args.shards)
  times = {"unsplit": [], "split": []}
  for _ in range(args.repeats):  # alternating: both see the same load
    times["unsplit"].append(one(args.iters))
    times["split"].append(split(args.iters))
  med = {k: statistics.median(v) for k, v in times.items()}
  mins = {k: min(v) for k, v in times.items()}
  row = {
    "arch": args.arch,
    "width": args.width,
    "image_size": shape[0],
    "classes": c,
    "subsets": 1,
    "image_shards": args.shards,
    "compile_s": {"unsplit": round(compile_one, 2), "split": round(compile_split, 2)},
    "s_per_iteration_min": {k: round(v, 4) for k, v in mins.items()},
    "s_per_iteration_median": {k: round(v, 4) for k, v in med.items()},
    "ratio_median": round(med["split"] / med["unsplit"], 3),
    "ratio_min": round(mins["split"] / mins["unsplit"], 3),
  }
  row |= {
    "command": " ".join([sys.executable, *sys.argv]),
    "load_before": load_before,
    "load_after": _loadavg(),
  }
  # One file per host; a row replaces an earlier one of the same setting, others are kept.
  rows = []
  if os.path.exists(args.out):
    with open(args.out) as f:
      rows = json.load(f).get("rows", [])
  key = ("arch", "width", "classes", "image_shards")
  rows = [r for r in rows if any(r.get(k) != row[k] for k in key)] + [row]
  payload = {"machine": machine_info(), "devices": jax.device_count(), "rows": rows}
  print(
    f"{args.arch} width {args.width}, C = {c}, 1 subset: unsplit {med['unsplit']:.4f} s/it "
    f"(min {mins['unsplit']:.4f}), split {args.shards} ways {med['split']:.4f} s/it "
    f"(min {mins['split']:.4f}); split / unsplit = {row['ratio_median']} (median), "
    f"{row['ratio_min']} (min); load {load_before} -> {row['load_after']}"
  )
  write_json(args.out, payload)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
