"""The main job: squeeze -> recover -> relabel -> save -> evaluate, in one command.

    python -m infer_jax.distill --config=configs/tiny.py --config.workdir=DIR

1. Teachers: trained if their checkpoints are missing in ``DIR/teachers``, reused otherwise.
2. Subsets: K = ipc*C // (C+M) subsets of one real training image per class, drawn from
   the seed.
3. Recover: one compensator per subset and teacher (all subsets of a teacher optimised
   together), checkpointed in ``DIR/recover`` so a killed run resumes.
4. Relabel: static soft labels (the teachers' mean logits) of all K*(M+1)*C instances.
5. Save the synthetic set to ``DIR/synthetic/infer.npz`` (docs/synthetic_format.md).
6. Evaluate: a student trained from scratch on the INFER set, and one on a random real
   subset of the same image budget (ipc real images per class) with the same static-label
   protocol and the same number of optimisation steps.
7. Print a table (top-1, stored bytes, compression ratio, wall time of each stage) and
   write it as ``DIR/summary.json``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from infer_jax import (
  checkpoint,
  config_lib,
  recover,
  relabel,
  squeeze,
  student,
  subsets,
  synthetic,
)
from infer_jax.data import sources

FORMAT_NAME = "infer.npz"


def load_teachers(
  config: ml_collections.ConfigDict, dataset: sources.Dataset
) -> list[checkpoint.Teacher]:
  """Squeezes (or reuses) and loads every teacher of ``config``, checking their identity."""
  workdir = config_lib.workdir(config)
  squeeze.squeeze(config, dataset)
  return [
    checkpoint.load_teacher(
      squeeze.teacher_dir(workdir, name),
      expected=squeeze.expected_teacher(config, dataset.info, name),
    )
    for name in config_lib.teacher_names(config)
  ]


def _set_metadata(config, info, teachers, method: str, k: int, m: int) -> dict[str, Any]:
  return {
    "method": method,
    "dataset": info.name,
    "num_classes": info.num_classes,
    "image_shape": list(info.image_shape),
    "mean": list(info.mean),
    "std": list(info.std),
    "ipc": int(config.ipc),
    "K": int(k),
    "M": int(m),
    "teachers": [t.metadata["architecture"] for t in teachers],
    "teacher_accuracies": [t.metadata["test_accuracy"] for t in teachers],
    "recover": config.recover.to_dict(),
    "seed": int(config.seed),
  }


def build_infer_set(
  config: ml_collections.ConfigDict,
  dataset: sources.Dataset,
  teachers: list[checkpoint.Teacher],
  timings: dict[str, float],
) -> synthetic.SyntheticSet:
  """Recovers and relabels the INFER synthetic set, or reuses the saved one.

  Args:
    config: run config.
    dataset: real dataset.
    teachers: the M teachers.
    timings: stage wall times are added here (seconds).

  Returns:
    The synthetic set (also saved under ``<workdir>/synthetic``).
  """
  info = dataset.info
  workdir = config_lib.workdir(config)
  m = len(teachers)
  k = subsets.num_subsets(config.ipc, info.num_classes, m)
  metadata = _set_metadata(config, info, teachers, "infer", k, m)
  path = os.path.join(workdir, "synthetic", FORMAT_NAME)
  if os.path.exists(path):
    # load() refuses a set of another setting (naming the mismatch) or a damaged file.
    existing = synthetic.load(path, expected=metadata)
    print(f"[distill] reusing the synthetic set {path}", flush=True)
    return existing

  indices = subsets.sample_subsets(dataset.train.labels, info.num_classes, k, config.seed)
  images = dataset.train.images(indices.reshape(-1)).reshape(k, info.num_classes, *info.image_shape)
  base = synthetic.normalize_uint8(images, info.mean, info.std)
  labels = np.tile(np.arange(info.num_classes), (k, 1))
  rcfg = recover.RecoverConfig.from_config(config.recover, seed=config.seed)
  print(
    f"[distill] recover: K={k} subsets x M={m} teachers x {rcfg.iterations} iterations, "
    f"C={info.num_classes} images per subset",
    flush=True,
  )
  t = time.perf_counter()
  compensators = recover.recover_all(
    teachers, base, labels, rcfg, directory=os.path.join(workdir, "recover", "infer")
  )
  timings["recover"] = time.perf_counter() - t

  t = time.perf_counter()
  unlabelled = synthetic.SyntheticSet(
    images=images, source_indices=indices, compensators=compensators, labels=None, metadata=metadata
  )
  instances, _, _ = synthetic.materialize(unlabelled)
  soft = relabel.static_labels(teachers, instances, batch_size=config.synthetic.relabel_batch_size)
  labelled = synthetic.SyntheticSet(
    images=images,
    source_indices=indices,
    compensators=compensators,
    labels=soft.reshape(k, m + 1, info.num_classes, info.num_classes),
    metadata=metadata,
  )
  labelled = synthetic.cast(
    labelled,
    compensator_dtype=config.synthetic.compensator_dtype,
    label_dtype=config.synthetic.label_dtype,
  )
  timings["relabel"] = time.perf_counter() - t
  os.makedirs(os.path.dirname(path), exist_ok=True)
  synthetic.save(path, labelled)
  return labelled


def build_random_set(
  config: ml_collections.ConfigDict, dataset: sources.Dataset, teachers: list[checkpoint.Teacher]
) -> synthetic.SyntheticSet:
  """The same-budget baseline: ipc random real images per class, static soft labels."""
  info = dataset.info
  # A different stream from the subsets' draw, so the baseline is not INFER's own images.
  indices = subsets.sample_subsets(
    dataset.train.labels, info.num_classes, config.ipc, config.seed + 1
  )
  images = dataset.train.images(indices.reshape(-1)).reshape(
    config.ipc, info.num_classes, *info.image_shape
  )
  soft = relabel.static_labels(
    teachers,
    synthetic.normalize_uint8(images.reshape(-1, *info.image_shape), info.mean, info.std),
    batch_size=config.synthetic.relabel_batch_size,
  )
  s = synthetic.SyntheticSet(
    images=images,
    source_indices=indices,
    compensators=None,
    labels=soft.reshape(config.ipc, 1, info.num_classes, info.num_classes),
    metadata=_set_metadata(config, info, teachers, "random", config.ipc, 0),
  )
  return synthetic.cast(s, label_dtype=config.synthetic.label_dtype)


def _steps_per_epoch(num_instances: int, batch_size: int) -> int:
  return max(1, num_instances // batch_size)


def evaluate_set(
  config: ml_collections.ConfigDict, dataset: sources.Dataset, s: synthetic.SyntheticSet, steps: int
) -> dict[str, Any]:
  """Trains the config's student on ``s`` for ``steps`` optimisation steps; returns its result."""
  instances, soft, hard = synthetic.materialize(s)
  scfg = student.StudentConfig.from_config(config.student)
  # Same number of optimisation steps for every set, whatever its size (PROTOCOL.md).
  epochs = max(1, round(steps / _steps_per_epoch(len(instances), scfg.batch_size)))
  # The student gets the stem that fits the images, like the teachers.
  scfg = dataclasses.replace(
    scfg,
    epochs=epochs,
    seed=int(config.seed),
    stem=config_lib.resolve_stem(config, dataset.info.image_shape),
  )
  return student.train_student(scfg, instances, soft, hard, dataset.test, dataset.info)


def _row(
  name: str, s: synthetic.SyntheticSet, result: dict[str, Any], seconds: float, num_train: int
) -> dict[str, Any]:
  return {
    "method": name,
    "top1": result["final_top1"],
    "instances": int(
      s.images.shape[0]
      * (1 + (0 if s.compensators is None else s.compensators.shape[1]))
      * s.images.shape[1]
    ),
    "bytes": synthetic.storage_bytes(s),
    "compression_ratio": synthetic.compression_ratio(s, num_train),
    "student_epochs": result["epochs"],
    "student_steps": result["steps"],
    "student_seconds": round(seconds, 2),
  }


def distill(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the whole pipeline; returns (and writes) the summary."""
  t_start = time.perf_counter()
  timings: dict[str, float] = {}
  workdir = config_lib.workdir(config)
  os.makedirs(workdir, exist_ok=True)
  dataset = sources.load_from_config(config.data)
  info = dataset.info
  print(
    f"devices: {jax.device_count()} x {jax.devices()[0].platform}; dataset {info.name}: "
    f"{info.num_train} train / {info.num_test} test images, {info.num_classes} classes",
    flush=True,
  )
  # Refuse an impossible budget before any training.
  subsets.num_subsets(config.ipc, info.num_classes, len(config_lib.teacher_names(config)))

  t = time.perf_counter()
  teachers = load_teachers(config, dataset)
  timings["squeeze"] = time.perf_counter() - t

  infer_set = build_infer_set(config, dataset, teachers, timings)
  random_set = build_random_set(config, dataset, teachers)

  num_instances = len(synthetic.materialize(infer_set)[2])
  scfg = student.StudentConfig.from_config(config.student)
  steps = scfg.epochs * _steps_per_epoch(num_instances, scfg.batch_size)
  rows = []
  for name, s in (("INFER", infer_set), ("Random real (static labels)", random_set)):
    print(f"[distill] student {scfg.arch} on {name}", flush=True)
    t = time.perf_counter()
    result = evaluate_set(config, dataset, s, steps)
    seconds = time.perf_counter() - t
    timings[f"student: {name}"] = seconds
    rows.append(_row(name, s, result, seconds, info.num_train))

  timings["total"] = time.perf_counter() - t_start
  summary = {
    "dataset": info.to_dict(),
    "ipc": int(config.ipc),
    "K": int(infer_set.metadata["K"]),
    "M": len(teachers),
    "teachers": {t.metadata["architecture"]: t.metadata["test_accuracy"] for t in teachers},
    "student": config.student.arch,
    "rows": rows,
    "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
    "hardware": {
      "platform": jax.devices()[0].platform,
      "device_kind": jax.devices()[0].device_kind,
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
    },
    "config": config.to_dict(),
  }
  _print_summary(summary)
  checkpoint.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  return summary


def _print_summary(summary: dict[str, Any]) -> None:
  print(
    f"\n{summary['dataset']['name']}, ipc {summary['ipc']} (K={summary['K']}, "
    f"M={summary['M']}), student {summary['student']}; teachers: "
    + ", ".join(f"{n} {squeeze.accuracy_text(a)}" for n, a in summary["teachers"].items())
  )
  print(
    f"  {'method':<30} {'top-1':>7} {'stored bytes':>13} {'(img/comp/labels)':>26} {'ratio':>8}"
  )
  for r in summary["rows"]:
    b = r["bytes"]
    split = f"{b['images']}/{b['compensators']}/{b['labels']}"
    print(
      f"  {r['method']:<30} {100 * r['top1']:>6.2f}% {b['total']:>13,} {split:>26} "
      f"{r['compression_ratio']:>8.4f}"
    )
  print(
    "  stage wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["stage_seconds"].items())
  )


def main(config: ml_collections.ConfigDict) -> None:
  """Entry point."""
  distill(config)


if __name__ == "__main__":
  from infer_jax import cli

  cli.run(main)
