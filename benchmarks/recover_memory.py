"""Memory of one recover step per device, from XLA's buffer assignment (nothing is run).

Command (from the repository root)::

    python benchmarks/recover_memory.py                          # the default grid below
    python benchmarks/recover_memory.py --points resnet18:imagenet:224:100:1

Each point ``arch:stem:size:C:K_local`` compiles ``infer_jax.recover.make_step`` (augment
'roll', compensator parameterisation) for ``K_local`` subsets of ``C`` images of
``size x size`` on ONE device -- what each device holds when K subsets are sharded over
D devices, ``K_local = ceil(K / D)`` -- and reads ``compiled.memory_analysis()``:
arguments (teacher variables, compensators, Adam state, real images, labels), outputs,
temporaries (activations kept for the backward pass and the gradients), and the peak
estimate ``arguments + outputs + temporaries - aliased`` (donated parameters and Adam state
are reused for the outputs). The figures are those of the XLA backend it runs on (here
XLA:CPU); a GPU or TPU compiler assigns buffers differently, so treat them as estimates of
the same order, and the scaling (linear in K_local * C, quadratic in size) as the point.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from infer_jax import models, recover
from infer_jax.core import bn_stats
from infer_jax.runtime import checkpoint

DEFAULT_POINTS = (
  "resnet18:cifar:32:10:1",
  "resnet18:cifar:32:10:4",
  "resnet18:cifar:32:100:1",
  "resnet18:cifar:32:100:4",
  "mobilenetv2:cifar:32:100:1",
  "resnet18:imagenet:224:50:1",
  "resnet18:imagenet:224:100:1",
)


def measure(arch: str, stem: str, size: int, c: int, k: int) -> dict:
  """Compiles one recover step and returns its memory analysis (bytes) and compile time."""
  model = models.create_model(arch, c, stem=stem)
  shape = (size, size, 3)
  variables = checkpoint.abstract_variables(model, shape)
  first = bn_stats.bn_layer_order(model, variables, (c, *shape))[0]
  cfg = recover.RecoverConfig(iterations=1000, jitter=4, augment="roll")
  tx = recover.optimizer(cfg)
  params = jax.ShapeDtypeStruct((k, 1, *shape), jnp.float32)
  opt_state = jax.eval_shape(tx.init, params)
  base = jax.ShapeDtypeStruct((k, c, *shape), jnp.float32)
  labels = jax.ShapeDtypeStruct((k, c), jnp.int32)
  iteration = jax.ShapeDtypeStruct((), jnp.int32)
  step = recover.make_step(model, cfg, first, tx)
  t = time.perf_counter()
  compiled = step.lower(variables, params, opt_state, base, labels, iteration).compile()
  seconds = time.perf_counter() - t
  m = compiled.memory_analysis()
  peak = (
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )
  teacher_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(variables))
  return {
    "point": f"{arch}:{stem}:{size}:{c}:{k}",
    "arguments": m.argument_size_in_bytes,
    "outputs": m.output_size_in_bytes,
    "temporaries": m.temp_size_in_bytes,
    "aliased": m.alias_size_in_bytes,
    "peak": peak,
    "teacher_variables": teacher_bytes,
    "real_images": k * c * size * size * 3 * 4,
    "compensators_and_adam": 3 * k * size * size * 3 * 4,
    "compile_s": round(seconds, 1),
    "backend": jax.devices()[0].platform,
  }


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--points", default=",".join(DEFAULT_POINTS), help="arch:stem:size:C:K_local,...")
  p.add_argument("--out", default="", help="also write the results as JSON here")
  args = p.parse_args()
  rows = []
  mib = 2**20
  print(f"{'point':<32} {'peak MiB':>9} {'temp MiB':>9} {'args MiB':>9} {'compile s':>9}")
  for spec in args.points.split(","):
    arch, stem, size, c, k = spec.split(":")
    row = measure(arch, stem, int(size), int(c), int(k))
    rows.append(row)
    print(
      f"{row['point']:<32} {row['peak'] / mib:9.1f} {row['temporaries'] / mib:9.1f} "
      f"{row['arguments'] / mib:9.1f} {row['compile_s']:9.1f}",
      flush=True,
    )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
