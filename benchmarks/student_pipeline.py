"""Student training throughput: the real grain input pipeline against pre-staged device batches.

Command (from the repository root; the figures in benchmarks/README.md come from exactly this)::

    python benchmarks/student_pipeline.py                       # ResNet-18 w0.25, CIFAR shape
    python benchmarks/student_pipeline.py --arch resnet_tiny --size 8 --batch 32   # tiny config

A synthetic INFER set of the CIFAR-10 ipc-50 shape (K=35 subsets, M=4 compensators, C=10
classes: 1,750 instances, random pixels and labels; only shapes matter here) is trained with
``student.make_student_step`` (on-device augmentation, MixUp, KL with temperature, AdamW) in two
ways, alternating within one run:

* ``pipeline``: batches from ``pipeline.train_iterator`` over
  ``set_source.SetSource.from_synthetic`` exactly as ``student.train_student`` reads them
  (instances ``clip(x + u)`` materialised on the host as they are read, seeded shuffle,
  background-thread prefetch, placement on the mesh);
* ``staged``: the same batches, collected beforehand and already on the device(s).

Each repeat times ``--steps`` steps after a warm-up; the figure is images per second, min and
median over ``--repeats``, and the ratio pipeline / staged (1.0 = the pipeline costs nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import jax
import numpy as np

from infer_jax import models, student, synthetic
from infer_jax.data import pipeline, set_source
from infer_jax.runtime import train


def make_set(k: int, m: int, c: int, size: int, seed: int = 0) -> synthetic.SyntheticSet:
  """A random INFER-shaped set: uint8 images, float32 compensators and labels."""
  rng = np.random.default_rng(seed)
  return synthetic.SyntheticSet(
    images=rng.integers(0, 256, (k, c, size, size, 3), dtype=np.uint8),
    source_indices=np.arange(k * c, dtype=np.int64).reshape(k, c),
    compensators=rng.normal(0, 0.1, (k, m, size, size, 3)).astype(np.float32),
    labels=rng.normal(0, 1, (k, m + 1, c, c)).astype(np.float32),
    metadata={
      "num_classes": c,
      "image_shape": [size, size, 3],
      "mean": [0.4914, 0.4822, 0.4465],
      "std": [0.247, 0.243, 0.261],
      "K": k,
      "M": m,
    },
  )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--arch", default="resnet18")
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="benchmarks/results/student_pipeline.json")
  args = p.parse_args()

  s = make_set(k=35, m=4, c=10, size=args.size)
  cfg = student.StudentConfig(arch=args.arch, width=args.width, batch_size=args.batch)
  mesh = train.data_mesh()
  model = models.create_model(cfg.arch, 10, stem="cifar", width=cfg.width)
  tx = student.make_optimizer(cfg, total_steps=10_000)
  step = student.make_student_step(
    model,
    tx,
    cfg,
    mean=s.metadata["mean"],
    std=s.metadata["std"],
    num_classes=10,
    label_mode="static",
  )
  state = train.create_train_state(
    model, tx, jax.random.key(0, impl="rbg"), (args.size, args.size, 3), mesh
  )
  iterator = pipeline.train_iterator(
    set_source.SetSource.from_synthetic(s),
    batch_size=args.batch,
    seed=0,
    num_epochs=None,
    augment="none",
    sharding=train.batch_sharding(mesh),
    extra_keys=("soft_label",),
  )
  key = student.data_key(0)
  staged = [next(iterator) for _ in range(args.steps)]
  jax.block_until_ready(staged)
  serialize = train.one_step_in_flight(mesh)

  def run(batches) -> float:
    nonlocal state
    start = time.perf_counter()
    for batch in batches:
      state, _ = step(state, batch, key)
      if serialize:
        jax.block_until_ready(state)
    jax.block_until_ready(state)
    return args.steps * args.batch / (time.perf_counter() - start)

  run(staged)  # compile + warm-up
  run(iterator.__next__() for _ in range(args.steps))
  rates = {"pipeline": [], "staged": []}
  for _ in range(args.repeats):
    rates["staged"].append(run(staged))
    rates["pipeline"].append(run(iterator.__next__() for _ in range(args.steps)))
  iterator.close()
  ratios = [a / b for a, b in zip(rates["pipeline"], rates["staged"], strict=True)]
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
  except OSError:
    commit = "?"
  device = jax.devices()[0]
  print(
    f"# jax {jax.__version__}; {jax.device_count()} x {device.device_kind} ({device.platform}); "
    f"{os.cpu_count()} CPUs; git {commit}"
  )
  print(
    f"# student {args.arch} width {args.width}, {args.size}x{args.size}, batch {args.batch}, "
    f"{args.steps} steps x {args.repeats} repeats"
  )
  print(f"{'mode':<10} {'img/s min':>10} {'img/s med':>10}")
  for mode, r in rates.items():
    print(f"{mode:<10} {min(r):>10.1f} {statistics.median(r):>10.1f}")
  print(f"pipeline / staged: min {min(ratios):.3f}, median {statistics.median(ratios):.3f}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(
      {
        "args": vars(args),
        "img_per_s": rates,
        "ratio_pipeline_over_staged": ratios,
        "device": f"{jax.device_count()} x {device.device_kind}",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "commit": commit,
      },
      f,
      indent=2,
    )


if __name__ == "__main__":
  main()
