"""Teacher throughput on the local JAX backend: the squeeze training step and the recover core.

Command (from the repository root; the figures in benchmarks/README.md come from exactly this)::

    python benchmarks/teachers.py                # full width, all four families, ~15 min on 2 CPUs
    python benchmarks/teachers.py --quick        # width 0.25, 2 repeats x 3 iterations: a smoke run
    python benchmarks/teachers.py --archs resnet18,mobilenetv2 --width 0.5 --repeats 5 --iters 20

Every teacher family is built at CIFAR shape (32x32x3 inputs, 10 classes, ``stem='cifar'``,
channel multiplier ``--width``) with ``infer_jax.models.create_model`` and initialised with
``jax.random.key(0, impl='rbg')`` (threefry initialisers compile very slowly on XLA:CPU).
Two jitted functions are timed per family:

* ``train``: the real squeeze training step, ``infer_jax.runtime.train.make_train_step`` with
  ``sgd_optimizer`` (lr 0.1, momentum 0.9, weight decay 5e-4, cosine) on a state from
  ``create_train_state``: uint8 -> float normalisation on device, forward in training mode,
  cross-entropy, backward, SGD update, BatchNorm running-statistics update. The batch
  ``{'image': uint8 [B,32,32,3], 'label': int32 [B]}`` (``--batch``, default 128) is staged on
  device once, sharded with ``train.batch_sharding(data_mesh())``: no input pipeline is timed.
* ``recover``: the core of a recover iteration, the gradient w.r.t. the input images of
  ``infer_jax.core.bn_stats.teacher_loss`` (mean CE + r_bn * BN-matching loss, r_bn = 1 as for
  CIFAR, first-layer multiplier 10 on ``bn_layer_order(...)[0]``), teacher in inference mode,
  on C images (``--recover-batch``, default 100). To serialise the iterations the jitted
  function also applies a plain gradient step to the images (``x - 0.01 * grad``; negligible
  work) and returns them, so iteration i+1 depends on iteration i. Not included: the
  augmentation, Adam and clipping of a full recover iteration.

Figures (per family and function):

* ``compile_s``: wall time of ``jit(f).lower(...).compile()`` (tracing + XLA compilation),
  measured before anything runs; ``first_call_s``: the first execution after that (warm-up,
  not counted in the throughput).
* ``img_per_s_min`` / ``img_per_s_median`` (and ``_max``): images per second over
  ``--repeats`` repeats, each repeat being ``--iters`` back-to-back calls timed from the first
  dispatch to ``block_until_ready`` of the last result. For ``recover`` this is
  image-iterations per second, the unit of the PyTorch reference in docs/PERFORMANCE.md.
* ``flops_per_call``: XLA's own estimate, ``compiled.cost_analysis()['flops']`` (``null`` where
  the backend gives none); ``gflop_per_s_min`` / ``_median``: that estimate times the call rate.
  Caveat: XLA counts the weight gradient of a depthwise / grouped convolution as if it were
  dense over the groups (about C times too many flops), so ``train`` GFLOP/s of MobileNetV2,
  EfficientNet-B0 and ShuffleNet are inflated; ``recover`` (no weight gradient) is not.
* ``params``: the number of trainable parameters.

The header (also in the JSON) names the machine -- platform, device kind and count, CPU count
and model, ``os.getloadavg()`` before and after the run (and before each family) -- plus the
jax / jaxlib / flax versions, the git commit and the exact command line. Shared machines are
noisy: compare figures measured in one run, repeat, and read min together with median.

The JSON goes to ``--out`` (default ``benchmarks/results/teachers_<hostname>.json``, with a
``_quick`` suffix under ``--quick``); it is rewritten atomically (tmp file + ``os.replace``)
after every family, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from infer_jax.core import bn_stats
from infer_jax.models import create_model
from infer_jax.runtime import train

DEFAULT_ARCHS = ("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenet_g2")
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
R_BN = 1.0  # docs/algorithm.md: r_bn 1 for CIFAR.
FIRST_MULTIPLIER = 10.0
RECOVER_STEP = 0.01
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--archs", default=",".join(DEFAULT_ARCHS), help="comma-separated registry names"
  )
  parser.add_argument("--width", type=float, default=None, help="channel multiplier (1.0)")
  parser.add_argument("--repeats", type=int, default=None, help="timed repeats (3)")
  parser.add_argument("--iters", type=int, default=None, help="calls per repeat (10)")
  parser.add_argument("--batch", type=int, default=128, help="training batch size")
  parser.add_argument("--recover-batch", type=int, default=100, help="C, images per recover call")
  parser.add_argument(
    "--stages", default="train,recover", help="comma-separated subset of train,recover"
  )
  parser.add_argument(
    "--quick", action="store_true", help="width 0.25, 2 repeats x 3 iters (explicit flags win)"
  )
  parser.add_argument("--out", default=None, help="JSON output path")
  args = parser.parse_args(argv)
  defaults = (0.25, 2, 3) if args.quick else (1.0, 3, 10)
  for name, value in zip(("width", "repeats", "iters"), defaults, strict=True):
    if getattr(args, name) is None:
      setattr(args, name, value)
  args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
  args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
  if unknown := set(args.stages) - {"train", "recover"}:
    parser.error(f"unknown stages {sorted(unknown)}")
  if args.repeats < 1 or args.iters < 1:
    parser.error("--repeats and --iters must be positive")
  if args.out is None:
    suffix = "_quick" if args.quick else ""
    args.out = str(RESULTS_DIR / f"teachers_{socket.gethostname()}{suffix}.json")
  return args


# ---------------------------------------------------------------------------------------------
# Machine description.


def _cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def _git_commit() -> str | None:
  try:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
      ["git", "-C", str(root), "describe", "--always", "--dirty"],
      capture_output=True,
      text=True,
      timeout=10,
    )
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def _loadavg() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
  devices = jax.devices()
  try:
    affinity = len(os.sched_getaffinity(0))
  except AttributeError:
    affinity = None
  return {
    "hostname": socket.gethostname(),
    "platform": jax.default_backend(),
    "device_kind": devices[0].device_kind,
    "device_count": len(devices),
    "cpu_count": os.cpu_count(),
    "cpu_affinity": affinity,
    "cpu_model": _cpu_model(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": _jaxlib_version(),
    "flax": flax.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS"),
    "git": _git_commit(),
  }


def _jaxlib_version() -> str | None:
  try:
    import jaxlib

    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None


# ---------------------------------------------------------------------------------------------
# Timing.


def _flops(compiled) -> float | None:
  """XLA's flop estimate of a compiled executable, or None."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Some backends raise instead of returning nothing.
    return None
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  flops = float(cost["flops"])
  return flops if flops > 0 else None


def time_calls(call, carry, *, repeats: int, iters: int, images_per_call: int, flops):
  """Times ``carry = call(carry)``; returns the figures of one (family, function) pair."""
  t0 = time.perf_counter()
  carry = jax.block_until_ready(call(carry))
  first_call = time.perf_counter() - t0
  seconds = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(iters):
      carry = call(carry)
    jax.block_until_ready(carry)
    seconds.append(time.perf_counter() - t0)
  rates = [iters * images_per_call / s for s in seconds]
  out = {
    "first_call_s": round(first_call, 3),
    "repeat_s": [round(s, 4) for s in seconds],
    "img_per_s_min": round(min(rates), 2),
    "img_per_s_median": round(statistics.median(rates), 2),
    "img_per_s_max": round(max(rates), 2),
    "flops_per_call": flops,
    "gflop_per_s_min": None,
    "gflop_per_s_median": None,
  }
  if flops:
    calls_per_s = [r / images_per_call for r in rates]
    out["gflop_per_s_min"] = round(flops * min(calls_per_s) / 1e9, 2)
    out["gflop_per_s_median"] = round(flops * statistics.median(calls_per_s) / 1e9, 2)
  return out, carry


def bench_train(model, args, mesh) -> dict[str, Any]:
  """The squeeze training step on a pre-staged uint8 batch."""
  tx = train.sgd_optimizer(
    lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4, total_steps=100_000
  )
  state = train.create_train_state(model, tx, jax.random.key(0, impl="rbg"), IMAGE_SHAPE, mesh)
  rng = np.random.default_rng(0)
  host_batch = {
    "image": rng.integers(0, 256, (args.batch, *IMAGE_SHAPE), dtype=np.uint8),
    "label": rng.integers(0, NUM_CLASSES, (args.batch,), dtype=np.int32),
  }
  batch = jax.device_put(host_batch, train.batch_sharding(mesh))
  step = train.make_train_step(model, tx, mean=CIFAR10_MEAN, std=CIFAR10_STD)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0

  def call(state):
    state, _ = compiled(state, batch)
    return state

  figures, state = time_calls(
    call,
    state,
    repeats=args.repeats,
    iters=args.iters,
    images_per_call=args.batch,
    flops=_flops(compiled),
  )
  return {"batch": args.batch, "compile_s": round(compile_s, 3), **figures}


def bench_recover(model, variables, args) -> dict[str, Any]:
  """Input gradient of the teacher loss (CE + BN matching), teacher in inference mode."""
  n = args.recover_batch
  first_layer = bn_stats.bn_layer_order(model, variables, (n, *IMAGE_SHAPE))[0]
  labels = jnp.arange(n, dtype=jnp.int32) % NUM_CLASSES

  def loss(x, variables):
    value, _ = bn_stats.teacher_loss(
      model,
      variables,
      x,
      labels,
      r_bn=R_BN,
      first_layer=first_layer,
      first_multiplier=FIRST_MULTIPLIER,
    )
    return value

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(x, variables):
    grad = jax.grad(loss)(x, variables)
    return x - RECOVER_STEP * grad

  x = jax.random.normal(jax.random.key(1, impl="rbg"), (n, *IMAGE_SHAPE), jnp.float32)
  t0 = time.perf_counter()
  compiled = step.lower(x, variables).compile()
  compile_s = time.perf_counter() - t0

  figures, _ = time_calls(
    lambda x: compiled(x, variables),
    x,
    repeats=args.repeats,
    iters=args.iters,
    images_per_call=n,
    flops=_flops(compiled),
  )
  return {
    "batch": n,
    "r_bn": R_BN,
    "first_layer": "/".join(first_layer),
    "compile_s": round(compile_s, 3),
    **figures,
  }


def bench_family(name: str, args, mesh) -> dict[str, Any]:
  model = create_model(name, NUM_CLASSES, stem="cifar", width=args.width)
  init = jax.jit(
    lambda key: model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), train=False)
  )
  variables = dict(init(jax.random.key(0, impl="rbg")))
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  result: dict[str, Any] = {"arch": name, "params": params, "loadavg_before": _loadavg()}
  if "recover" in args.stages:
    result["recover"] = bench_recover(model, variables, args)
  if "train" in args.stages:
    result["train"] = bench_train(model, args, mesh)
  result["loadavg_after"] = _loadavg()
  return result


# ---------------------------------------------------------------------------------------------
# Output.


def write_json(path: str, payload: dict[str, Any]) -> None:
  """Writes ``payload`` to ``path`` atomically (tmp file in the same folder + os.replace)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def print_row(arch: str, kind: str, r: dict[str, Any]) -> None:
  print(
    f"{arch:<16} {kind:<8} {r['batch']:>5} {r['compile_s']:>9.1f} {r['first_call_s']:>8.2f} "
    f"{r['img_per_s_min']:>9.1f} {r['img_per_s_median']:>9.1f} "
    f"{_fmt(r['gflop_per_s_median'], '>8.1f')}",
    flush=True,
  )


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", *argv])
  info = machine_info()
  payload: dict[str, Any] = {
    "benchmark": "teachers",
    "command": command,
    "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "machine": info,
    "loadavg_before": _loadavg(),
    "settings": {
      "archs": args.archs,
      "stages": args.stages,
      "width": args.width,
      "repeats": args.repeats,
      "iters": args.iters,
      "train_batch": args.batch,
      "recover_batch": args.recover_batch,
      "image_shape": list(IMAGE_SHAPE),
      "num_classes": NUM_CLASSES,
      "stem": "cifar",
      "init_key": "rbg",
    },
    "results": [],
  }
  print(f"# {command}")
  print(
    f"# {info['hostname']}: {info['platform']} / {info['device_kind']} x{info['device_count']}, "
    f"{info['cpu_count']} CPUs ({info['cpu_model']}); load {payload['loadavg_before']}"
  )
  print(
    f"# jax {info['jax']}, jaxlib {info['jaxlib']}, flax {info['flax']}, git {info['git']}; "
    f"width {args.width}, {args.repeats} repeats x {args.iters} iters"
  )
  print(
    f"{'arch':<16} {'function':<8} {'batch':>5} {'compile_s':>9} {'first_s':>8} "
    f"{'img/s min':>9} {'img/s med':>9} {'GFLOP/s':>8}",
    flush=True,
  )
  mesh = train.data_mesh()
  for name in args.archs:
    result = bench_family(name, args, mesh)
    payload["results"].append(result)
    for kind in ("recover", "train"):
      if kind in result:
        print_row(name, kind, result[kind])
    print(f"#   {name}: {result['params']:,} params, load {result['loadavg_after']}", flush=True)
    payload["loadavg_after"] = _loadavg()
    write_json(args.out, payload)
  payload["loadavg_after"] = _loadavg()
  write_json(args.out, payload)
  print(f"# load after {payload['loadavg_after']}; wrote {args.out}", flush=True)


if __name__ == "__main__":
  main()
