"""Recover throughput: the full all-subsets step of infer_jax.recover, and vmap against a loop.

Command (from the repository root)::

    python benchmarks/recover.py                       # 4 families, C=10 and C=100, K=4, width 1
    python benchmarks/recover.py --quick               # width 0.25, fewer repeats
    python benchmarks/recover.py --archs resnet18 --classes 100 --subsets 48 \\
        --peak-tflops 989                              # the CIFAR-100 ipc 50 shape on a GPU

For each teacher family (CIFAR stem, 32x32, ``--width``) and class count C, the timed
function is one real recover iteration of all K subsets, ``infer_jax.recover.make_step``:
augmentation (roll, jitter 4), teacher forward in inference mode with BN-input statistics,
CE + BN-matching loss, input-gradient backward through ``vmap`` over subsets, Adam
(b1 0.5, b2 0.9, cosine) -- everything but the host loop. The subset axis is sharded over
all local devices (K padded to a multiple of the device count).

Figures (min / median over ``--repeats`` repeats of ``--iters`` iterations):

* ``img_it_per_s``: image-iterations per second, K*C images per iteration -- the unit of the
  PyTorch reference in the project's performance notes (which runs one subset at a time);
* ``loop_over_subsets``: the same K subsets done as K calls of the same step on one subset
  each (what a per-subset implementation does); ``vmap_speedup`` = loop time / vmapped time,
  measured in the same run;
* ``gflop_per_s`` from XLA's cost analysis, and with ``--peak-tflops`` the fraction of that
  peak reached.

Results are printed and written as JSON (``--out``, default
``benchmarks/results/recover_<hostname>.json``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from teachers import _flops, _loadavg, machine_info, write_json  # noqa: E402

from infer_jax import models, recover  # noqa: E402
from infer_jax.core import bn_stats

FAMILIES = ("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenet_g2")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--archs", default=",".join(FAMILIES))
  p.add_argument("--classes", default="10,100", help="comma-separated C values")
  p.add_argument("--subsets", type=int, default=4, help="K")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument(
    "--peak-tflops",
    type=float,
    default=0.0,
    help="the device's peak dense fp32/tf32 TFLOP/s, to report the fraction reached",
  )
  p.add_argument("--quick", action="store_true", help="width 0.25, 2 repeats x 2 iterations")
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  if a.quick:
    a.width, a.repeats, a.iters = 0.25, 2, 2
  if not a.out:
    suffix = "_quick" if a.quick else ""
    a.out = f"benchmarks/results/recover_{socket.gethostname()}{suffix}.json"
  return a


def _time(run, repeats: int, iters: int) -> list[float]:
  """Seconds per repeat of ``iters`` back-to-back ``run()`` calls (first call excluded)."""
  jax.block_until_ready(run())
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(iters):
      result = run()
    jax.block_until_ready(result)
    out.append(time.perf_counter() - t0)
  return out


def bench(arch: str, c: int, args, mesh: Mesh) -> dict[str, Any]:
  """One (family, C) row."""
  model = models.create_model(arch, c, stem="cifar", width=args.width)
  shape = (32, 32, 3)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *shape)), train=False))(
    jax.random.key(0, impl="rbg")
  )
  cfg = recover.RecoverConfig(iterations=1000, jitter=4, checkpoint_every=0, log_every=0)
  tx = recover.optimizer(cfg)
  first = bn_stats.bn_layer_order(model, variables, (c, *shape))[0]
  step = recover.make_step(model, cfg, first, tx)
  shard, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  k = args.subsets
  padded = k + (-k % mesh.size)
  rng = np.random.default_rng(0)
  base = jax.device_put(rng.normal(size=(padded, c, *shape)).astype(np.float32), shard)
  labels = jax.device_put(np.tile(np.arange(c, dtype=np.int32), (padded, 1)), shard)
  variables = jax.device_put(variables, repl)
  it = jax.device_put(np.int32(0), repl)

  state = {"p": jax.device_put(np.zeros((padded, 1, *shape), np.float32), shard)}
  state["o"] = jax.tree.map(
    lambda a: jax.device_put(a, shard if np.ndim(a) else repl), tx.init(state["p"])
  )

  t0 = time.perf_counter()
  compiled = step.lower(variables, state["p"], state["o"], base, labels, it).compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled)

  def run_vmapped():
    state["p"], state["o"], m = step(variables, state["p"], state["o"], base, labels, it)
    return state["p"]

  vm = _time(run_vmapped, args.repeats, args.iters)

  # The loop: one subset per call, K calls per iteration, on one device (a per-subset
  # implementation has nothing to shard).
  dev = jax.devices()[0]
  one = {"p": jax.device_put(np.zeros((1, 1, *shape), np.float32), dev)}
  one["o"] = jax.device_put(tx.init(one["p"]), dev)
  base1 = [jax.device_put(np.asarray(base[i : i + 1]), dev) for i in range(k)]
  labels1 = jax.device_put(np.asarray(labels[:1]), dev)
  vars1 = jax.device_put(variables, dev)
  it1 = jax.device_put(np.int32(0), dev)

  def run_loop():
    for i in range(k):
      one["p"], one["o"], _ = step(vars1, one["p"], one["o"], base1[i], labels1, it1)
    return one["p"]

  lp = _time(run_loop, args.repeats, args.iters)
  images = k * c * args.iters
  rates = [images / s for s in vm]
  loop_rates = [images / s for s in lp]
  row = {
    "arch": arch,
    "classes": c,
    "subsets": k,
    "width": args.width,
    "devices": mesh.size,
    "compile_s": round(compile_s, 2),
    "img_it_per_s_min": round(min(rates), 2),
    "img_it_per_s_median": round(statistics.median(rates), 2),
    "loop_img_it_per_s_median": round(statistics.median(loop_rates), 2),
    "vmap_speedup": round(statistics.median(lp) / statistics.median(vm), 3),
    "flops_per_iteration": flops,
  }
  if flops:
    per_s = flops * args.iters / statistics.median(vm)
    row["gflop_per_s_median"] = round(per_s / 1e9, 2)
    if args.peak_tflops:
      row["fraction_of_peak"] = round(per_s / (args.peak_tflops * 1e12), 4)
  return row


def main(argv=None) -> None:
  args = parse_args(argv)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  payload = {
    "command": " ".join([sys.executable, *sys.argv]),
    "machine": machine_info(),
    "load_before": _loadavg(),
    "rows": [],
  }
  print(f"# {payload['machine']['device_kind']} x {mesh.size}, load {payload['load_before']}")
  print(
    f"{'arch':<16} {'C':>4} {'K':>3} {'img-it/s min':>13} {'median':>9} "
    f"{'loop median':>12} {'vmap x':>7} {'GFLOP/s':>8} {'compile s':>9}"
  )
  for arch in args.archs.split(","):
    for c in (int(x) for x in args.classes.split(",")):
      row = bench(arch, c, args, mesh)
      payload["rows"].append(row)
      print(
        f"{arch:<16} {c:>4} {row['subsets']:>3} {row['img_it_per_s_min']:>13.1f} "
        f"{row['img_it_per_s_median']:>9.1f} {row['loop_img_it_per_s_median']:>12.1f} "
        f"{row['vmap_speedup']:>7.2f} {row.get('gflop_per_s_median') or 0:>8.1f} "
        f"{row['compile_s']:>9.1f}",
        flush=True,
      )
      payload["load_after"] = _loadavg()
      write_json(args.out, payload)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
