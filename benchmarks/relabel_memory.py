"""Peak host memory (RSS) of relabelling an ImageNet-shaped synthetic set.

Command (from the repository root)::

    python benchmarks/relabel_memory.py                       # K=5, M=3, C=100: 2,000 instances
    python benchmarks/relabel_memory.py --k 10 --batch 250

Builds a random set of ``K * (M + 1) * C`` instances at 224x224 (uint8 images, float32
compensators) and labels it with M test-sized teachers (``resnet_tiny``, ImageNet stem, random
weights) two ways, each in a fresh process: ``streamed`` (``relabel.set_labels``: instances
materialised one batch at a time, what distill does) and ``whole`` (``synthetic.materialize``
then ``relabel.static_labels``: the whole float32 set in memory). Reports each process's peak
RSS (``resource.getrusage``), the RSS before relabelling (interpreter, JAX, the stored set,
the teachers) and the growth, as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run(mode: str, k: int, m: int, c: int, size: int, batch: int) -> dict:
  """Labels one set in this process; returns the RSS figures (MiB)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from infer_jax import models, relabel, synthetic
  from infer_jax.runtime import checkpoint

  shape = (size, size, 3)
  rng = np.random.default_rng(0)
  s = synthetic.SyntheticSet(
    images=rng.integers(0, 256, (k, c, *shape), dtype=np.uint8),
    source_indices=np.zeros((k, c), np.int64),
    compensators=rng.normal(0, 0.3, (k, m, *shape)).astype(np.float32),
    labels=None,
    metadata={
      "num_classes": c,
      "image_shape": list(shape),
      "mean": [0.485, 0.456, 0.406],
      "std": [0.229, 0.224, 0.225],
      "K": k,
      "M": m,
    },
  )
  model = models.create_model("resnet_tiny", c, stem="imagenet")
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, *shape)), train=False))
  teachers = [checkpoint.Teacher(model, init(jax.random.key(i)), {}) for i in range(m)]
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  t = time.perf_counter()
  if mode == "streamed":
    labels = relabel.set_labels(teachers, s, batch_size=batch)
  else:
    labels = relabel.static_labels(teachers, synthetic.materialize(s)[0], batch_size=batch)
  seconds = time.perf_counter() - t
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {
    "mode": mode,
    "instances": s.num_instances,
    "image_size": size,
    "batch": batch,
    "materialised_set_mib": round(s.num_instances * size * size * 3 * 4 / 2**20, 1),
    "batch_mib": round(batch * size * size * 3 * 4 / 2**20, 1),
    "rss_before_mib": round(before, 1),
    "rss_peak_mib": round(peak, 1),
    "rss_growth_mib": round(peak - before, 1),
    "labels_shape": list(labels.shape),
    "seconds": round(seconds, 1),
    "devices": jax.device_count(),
  }


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--k", type=int, default=5)
  p.add_argument("--m", type=int, default=3)
  p.add_argument("--c", type=int, default=100)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=200)
  p.add_argument("--mode", default="", help="internal: run one mode in this process")
  args = p.parse_args()
  if args.mode:
    print(json.dumps(run(args.mode, args.k, args.m, args.c, args.size, args.batch)))
    return
  for mode in ("streamed", "whole"):
    cmd = [sys.executable, __file__, "--mode", mode]
    for key in ("k", "m", "c", "size", "batch"):
      cmd += [f"--{key}", str(getattr(args, key))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
  main()
