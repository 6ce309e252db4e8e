"""Memory of one recover step per device, from XLA's buffer assignment (nothing is run).

Command (from the repository root)::

    python benchmarks/recover_memory.py                 # the ImageNet grid below
    python benchmarks/recover_memory.py --archs resnet18 --shards 8 --remat none --dtypes float32

Each row compiles ``infer_jax.recover.make_step`` (augment 'roll', compensator
parameterisation) for ONE subset of ``C`` images at ``size x size`` whose images are split
over ``image_shards`` devices (a 1 x image_shards subsets x images mesh; C padded to a
multiple of it), with the teacher's blocks rematerialised or not (``recover.remat``), in
float32 or bfloat16 compute (``recover.dtype``), and records:

* ``peak_mib``, from ``compiled.memory_analysis()`` of the per-device program: arguments +
  outputs + temporaries - aliased (donated parameters and Adam state are reused for the
  outputs);
* ``flops_per_device_step``, from ``compiled.cost_analysis()['flops']``;
* ``residual_mib``: the residuals the differentiated loss keeps for its backward pass
  (``infer_jax.recover.residual_bytes``; traced, compiler-independent: what remat and
  bfloat16 save before a backend schedules the program).

Inputs are abstract (``jax.ShapeDtypeStruct``): nothing is allocated or run. The lowering
needs ``image_shards`` devices: the script asks XLA:CPU for 16 host devices before JAX
starts.

The figures are those of the XLA backend it runs on (XLA:CPU here); a GPU or TPU compiler
assigns buffers differently, so treat them as estimates of the same order. XLA:CPU also
removes the optimisation barriers of ``jax.checkpoint`` and common-subexpression-eliminates
the recomputation, so on this backend the remat rows' ``peak_mib`` comes out as the rows'
without remat; their ``residual_mib`` shows what the program asks to keep.
Rows are written to ``benchmarks/results/recover_memory_<host>.json`` as they come.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=16"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from infer_jax import models, recover  # noqa: E402
from infer_jax.core import bn_stats  # noqa: E402
from infer_jax.runtime import atomic, checkpoint, train  # noqa: E402

ARCHS = ("resnet18", "mobilenetv2", "efficientnet_b0")
SHARDS = (1, 2, 4, 8, 16)


def _teacher(arch: str, c: int, shape, cfg: recover.RecoverConfig):
  """``(module, abstract variables)`` of an ImageNet-stem ``arch`` teacher for C classes, the
  module as recover runs it for ``cfg.dtype`` (float32 parameters, dtype compute)."""
  stored = models.create_model(arch, c, stem="imagenet")
  variables = checkpoint.abstract_variables(stored, shape)
  return recover.compute_model(checkpoint.Teacher(stored, variables, {}), cfg), variables


def measure(arch: str, size: int, c: int, shards: int, remat: str, dtype: str) -> dict:
  """Compiles one recover step (one subset, its images over ``shards`` devices) and returns
  its per-device memory (MiB), FLOPs and compile time."""
  shape = (size, size, 3)
  cfg = recover.RecoverConfig(iterations=1000, jitter=4, augment="roll", remat=remat, dtype=dtype)
  model, variables = _teacher(arch, c, shape, cfg)
  c_pad = c + (-c % shards)
  first = bn_stats.bn_layer_order(model, variables, (c_pad // shards, *shape))[0]
  tx = recover.optimizer(cfg)
  mesh = train.subset_image_mesh(jax.devices()[:shards], shards) if shards > 1 else None

  def spec(shape_, dtype_, pspec):
    sharding = None if mesh is None else NamedSharding(mesh, pspec)
    return jax.ShapeDtypeStruct(shape_, dtype_, sharding=sharding)

  params = spec((1, 1, *shape), jnp.float32, P("data"))
  opt_state = jax.tree.map(
    lambda a: spec(a.shape, a.dtype, P("data") if a.ndim else P()), jax.eval_shape(tx.init, params)
  )
  variables = jax.tree.map(lambda a: spec(a.shape, a.dtype, P()), variables)
  base = spec((1, c_pad, *shape), jnp.float32, P("data", "images"))
  labels = spec((1, c_pad), jnp.int32, P("data", "images"))
  iteration = spec((), jnp.int32, P())
  step = recover.make_step(model, cfg, first, tx, mesh=mesh)
  t = time.perf_counter()
  compiled = step.lower(variables, params, opt_state, base, labels, iteration).compile()
  seconds = time.perf_counter() - t
  m = compiled.memory_analysis()
  peak = (
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )
  cost = compiled.cost_analysis() or {}
  mib = 2**20
  return {
    "arch": arch,
    "image_size": size,
    "classes": c,
    "image_shards": shards,
    "images_per_device": c_pad // shards,
    "remat": remat,
    "dtype": dtype,
    "peak_mib": round(peak / mib, 1),
    "temp_mib": round(m.temp_size_in_bytes / mib, 1),
    "arguments_mib": round(m.argument_size_in_bytes / mib, 1),
    "flops_per_device_step": float(cost.get("flops", float("nan"))),
    "compile_s": round(seconds, 1),
    "backend": jax.devices()[0].platform,
  }


def residual_mib(arch: str, size: int, c: int, images: int, remat: str, dtype: str) -> float:
  """MiB of :func:`infer_jax.recover.residual_bytes` for ``images`` images of one subset (C
  classes) on one device (traced abstractly, nothing compiled)."""
  shape = (size, size, 3)
  cfg = recover.RecoverConfig(augment="roll", remat=remat, dtype=dtype)
  model, variables = _teacher(arch, c, shape, cfg)
  return round(recover.residual_bytes(model, variables, cfg, images, shape) / 2**20, 1)


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--archs", default=",".join(ARCHS))
  p.add_argument("--shards", default=",".join(map(str, SHARDS)))
  p.add_argument("--remat", default="none,blocks")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument(
    "--out",
    default=f"benchmarks/results/recover_memory_{socket.gethostname().split('.')[0]}.json",
  )
  args = p.parse_args()
  rows = []
  if os.path.exists(args.out):  # resume a partial grid: rows already measured are kept
    with open(args.out) as f:
      rows = json.load(f)
  for r in rows:  # rows measured before the residuals were recorded
    if "residual_mib" not in r:
      r["residual_mib"] = residual_mib(
        r["arch"], r["image_size"], r["classes"], r["images_per_device"], r["remat"], r["dtype"]
      )
      atomic.write_text(args.out, json.dumps(rows, indent=2) + "\n")
  done = {(r["arch"], r["image_shards"], r["remat"], r["dtype"]) for r in rows}
  print(f"{'arch':<16} {'shards':>6} {'remat':>6} {'dtype':>8} {'peak MiB':>9} {'compile s':>9}")
  for remat in args.remat.split(","):
    for dtype in args.dtypes.split(","):
      for arch in args.archs.split(","):
        for shards in map(int, args.shards.split(",")):
          if (arch, shards, remat, dtype) in done:
            continue
          row = measure(arch, args.size, args.classes, shards, remat, dtype)
          row["residual_mib"] = residual_mib(
            arch, args.size, args.classes, row["images_per_device"], remat, dtype
          )
          rows.append(row)
          print(
            f"{arch:<16} {shards:>6} {remat:>6} {dtype:>8} {row['peak_mib']:9.1f} "
            f"{row['compile_s']:9.1f}",
            flush=True,
          )
          atomic.write_text(args.out, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
  main()
