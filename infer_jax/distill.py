"""The main job: squeeze -> recover -> relabel -> save -> evaluate, in one command.

    python -m infer_jax.distill --config=configs/tiny.py --config.workdir=DIR

1. Teachers: trained if their checkpoints are missing (``config.teachers_dir``, default
   ``DIR/teachers``), reused otherwise.
2. Subsets: K = ipc*C // (C+M) subsets of one real training image per class, drawn from
   the seed.
3. Recover: one compensator per subset and teacher (all subsets of a teacher optimised
   together), checkpointed in ``DIR/recover`` so a killed run resumes.
4. Relabel: static soft labels (the teachers' mean logits) of all K*(M+1)*C instances.
5. Save the synthetic set to ``DIR/synthetic/infer.npz`` (docs/synthetic_format.md).
6. Compare (``config.methods``, docs/PROTOCOL.md): every method is evaluated with the same
   teachers, student, augmentation, MixUp, temperature, optimiser and number of
   optimisation steps, one student per evaluation seed (``config.evaluate.seeds``):

   =====================  ==========================================================
   Random (hard labels)   ipc random real images per class, one-hot labels
   Random                 the same images, static soft labels
   INFER w/o UFC          INFER's K*C real images alone, their static labels
   SRe2L-style            ipc class-specific images per class synthesised from noise
                          (recover's 'class_specific' parameterisation), static labels
   INFER                  the INFER set, static labels
   INFER+Dyn              the INFER set, labels from the teacher ensemble on every
                          augmented, mixed batch; epochs / (M + 1)
   =====================  ==========================================================

   Every set is saved under ``DIR/synthetic`` and reused by a rerun.
7. Print a table (final-epoch top-1 mean ± std, stored bytes, compression ratio, wall time
   of each stage) and write it as ``DIR/summary.json``, rewritten after every row; a rerun
   keeps the rows already there (same set, student and seeds) and computes the rest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from infer_jax import evaluate, recover, relabel, squeeze, synthetic
from infer_jax.core import subsets
from infer_jax.data import sources
from infer_jax.runtime import checkpoint, config_lib, distributed
from infer_jax.runtime.errors import InputError

FORMAT_NAME = "infer.npz"


def load_teachers(
  config: ml_collections.ConfigDict, dataset: sources.Dataset
) -> list[checkpoint.Teacher]:
  """Squeezes (or reuses) and loads every teacher of ``config``, checking their identity."""
  squeeze.squeeze(config, dataset)
  return [
    checkpoint.load_teacher(
      config_lib.teacher_dir(config, name),
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
  return _save(path, labelled)


def _save(path: str, s: synthetic.SyntheticSet) -> synthetic.SyntheticSet:
  """Saves ``s`` (every process holds the same set; the primary one writes it)."""

  def write() -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    synthetic.save(path, s)

  distributed.on_primary(f"save {os.path.basename(path)}", write)
  return s


def build_random_set(
  config: ml_collections.ConfigDict, dataset: sources.Dataset, teachers: list[checkpoint.Teacher]
) -> synthetic.SyntheticSet:
  """The same-budget baseline: ipc random real images per class, static soft labels."""
  info = dataset.info
  metadata = _set_metadata(config, info, teachers, "random", config.ipc, 0)
  path = os.path.join(config_lib.workdir(config), "synthetic", "random.npz")
  if os.path.exists(path):
    return synthetic.load(path, expected=metadata)
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
    metadata=metadata,
  )
  return _save(path, synthetic.cast(s, label_dtype=config.synthetic.label_dtype))


def without_soft_labels(s: synthetic.SyntheticSet) -> synthetic.SyntheticSet:
  """The same images with hard (class-index) labels only: no label bytes."""
  return dataclasses.replace(s, labels=None, metadata={**s.metadata, "labels": "hard"})


def infer_without_compensators(s: synthetic.SyntheticSet) -> synthetic.SyntheticSet:
  """INFER w/o UFC: the K*C real images of the subsets alone, with their static labels."""
  return synthetic.SyntheticSet(
    images=s.images,
    source_indices=s.source_indices,
    compensators=None,
    labels=None if s.labels is None else s.labels[:, :1],
    metadata={**s.metadata, "method": "infer_wo_ufc", "M": 0},
  )


def build_sre2l_set(
  config: ml_collections.ConfigDict,
  dataset: sources.Dataset,
  teachers: list[checkpoint.Teacher],
  timings: dict[str, float],
) -> synthetic.SyntheticSet:
  """SRe2L-style baseline: ipc class-specific images per class, synthesised from noise.

  The recover machinery with the 'class_specific' parameterisation (one free image per
  subset and class) against one teacher (``config.baselines.sre2l_teacher``, default the
  first), with ``r_bn = config.baselines.sre2l_r_bn``; the images are stored as uint8 (as
  image files would be) and labelled by all M teachers like every other set.
  """
  info = dataset.info
  name = config.baselines.sre2l_teacher or teachers[0].metadata["architecture"]
  by_name = {t.metadata["architecture"]: t for t in teachers}
  if name not in by_name:
    raise InputError(
      f"config.baselines.sre2l_teacher={name!r} is not one of the teachers {list(by_name)}."
    )
  rcfg = recover.RecoverConfig.from_config(
    config.recover,
    seed=config.seed,
    parameterisation="class_specific",
    r_bn=float(config.baselines.sre2l_r_bn),
  )
  metadata = {
    **_set_metadata(config, info, teachers, "sre2l", config.ipc, 0),
    "recover": dataclasses.asdict(rcfg),
    "synthesis_teacher": name,
  }
  workdir = config_lib.workdir(config)
  path = os.path.join(workdir, "synthetic", "sre2l.npz")
  if os.path.exists(path):
    return synthetic.load(path, expected=metadata)
  k, c = int(config.ipc), info.num_classes
  print(f"[distill] SRe2L-style synthesis: {k} x {c} images against {name}", flush=True)
  t = time.perf_counter()
  params = recover.recover_teacher(
    by_name[name],
    np.zeros((k, c, *info.image_shape), np.float32),
    np.tile(np.arange(c), (k, 1)),
    rcfg,
    teacher_index=0,
    directory=os.path.join(workdir, "recover", "sre2l"),
  )
  lo, hi = synthetic.clip_bounds(metadata)
  images = synthetic.denormalize_uint8(np.clip(params, lo, hi), metadata)
  soft = relabel.static_labels(
    teachers,
    synthetic.normalize_uint8(images.reshape(-1, *info.image_shape), info.mean, info.std),
    batch_size=config.synthetic.relabel_batch_size,
  )
  timings["recover (SRe2L-style)"] = time.perf_counter() - t
  s = synthetic.SyntheticSet(
    images=images,
    source_indices=np.full((k, c), -1, np.int64),
    compensators=None,
    labels=soft.reshape(k, 1, c, c),
    metadata=metadata,
  )
  return _save(path, synthetic.cast(s, label_dtype=config.synthetic.label_dtype))


# key: (name in tables, set, label protocol). Table order: weakest protocol first.
METHODS: dict[str, tuple[str, str, str]] = {
  "random_hard": ("Random (hard labels)", "random_hard", "hard"),
  "random": ("Random", "random", "static"),
  "infer_wo_ufc": ("INFER w/o UFC", "infer_wo_ufc", "static"),
  "sre2l": ("SRe2L-style", "sre2l", "static"),
  "infer": ("INFER", "infer", "static"),
  "infer_dyn": ("INFER+Dyn", "infer", "dynamic"),
}


# The order rows are computed in: the INFER rows and the cheap baselines first, the
# SRe2L-style synthesis (a whole extra recover) last, so an interrupted comparison has the
# most informative rows already.
COMPUTE_ORDER = ("infer", "random", "random_hard", "infer_wo_ufc", "infer_dyn", "sre2l")


def method_keys(config: ml_collections.ConfigDict) -> list[str]:
  """The comparison's methods (``config.methods``, comma-separated), in table order."""
  keys = [k.strip() for k in config.methods.split(",") if k.strip()]
  unknown = [k for k in keys if k not in METHODS]
  if unknown or not keys:
    raise InputError(
      f"config.methods must name some of {', '.join(METHODS)}; got {config.methods!r}."
    )
  return [k for k in METHODS if k in keys]


def _json(obj: Any) -> Any:
  """What ``obj`` looks like after a JSON round trip (tuples -> lists, numpy -> Python)."""
  return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _read_summary(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(
      f"{path} exists but is not a readable summary ({e}); move it away to start afresh."
    ) from e


def distill(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the whole pipeline and the comparison; returns (and writes) the summary.

  Rows already in ``<workdir>/summary.json`` with the same set, student, seeds and label
  protocol are kept, not recomputed, so a killed comparison resumes row by row. The summary
  is rewritten (atomically) after every row.
  """
  t_start = time.perf_counter()
  workdir = config_lib.workdir(config)
  os.makedirs(workdir, exist_ok=True)
  summary_path = os.path.join(workdir, "summary.json")
  previous = _read_summary(summary_path)
  timings: dict[str, float] = dict(previous.get("stage_seconds", {}))
  keys = method_keys(config)
  eval_seeds = evaluate.seeds(config)
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
  timings["squeeze"] = timings.get("squeeze", 0.0) + time.perf_counter() - t
  m = len(teachers)

  infer_set = build_infer_set(config, dataset, teachers, timings)
  cache: dict[str, synthetic.SyntheticSet] = {"infer": infer_set}

  def get_set(name: str) -> synthetic.SyntheticSet:
    if name not in cache:
      if name == "random":
        cache[name] = build_random_set(config, dataset, teachers)
      elif name == "random_hard":
        cache[name] = without_soft_labels(get_set("random"))
      elif name == "infer_wo_ufc":
        cache[name] = infer_without_compensators(infer_set)
      elif name == "sre2l":
        cache[name] = build_sre2l_set(config, dataset, teachers, timings)
    return cache[name]

  scfg = evaluate.student_config(config, info)
  # Every static/hard row trains for the steps of the INFER set at the configured epochs
  # (PROTOCOL.md: same number of optimisation steps); +Dyn for 1/(M+1) of them.
  steps = scfg.epochs * evaluate.steps_per_epoch(infer_set.num_instances, scfg.batch_size)
  old_rows = {r["key"]: r for r in previous.get("rows", []) if "key" in r}
  rows = []
  summary = {
    "dataset": info.to_dict(),
    "ipc": int(config.ipc),
    "K": int(infer_set.metadata["K"]),
    "M": m,
    "teachers": [
      {
        "architecture": t.metadata["architecture"],
        "width": t.metadata.get("width"),
        "test_top1": t.metadata["test_accuracy"],
        # Squeeze records its recipe and wall time; a converted teacher has neither.
        "epochs": t.metadata.get("recipe", {}).get("epochs"),
        "train_seconds": t.metadata.get("train_seconds"),
        "source": t.metadata.get("source"),
      }
      for t in teachers
    ],
    "student": {"arch": scfg.arch, "width": scfg.width, "stem": scfg.stem},
    "seeds": eval_seeds,
    "rows": rows,
    "stage_seconds": timings,
    "hardware": evaluate.hardware(),
    "config": config.to_dict(),
    "command": evaluate.command_line("infer_jax.distill"),
    "complete": False,
  }
  by_key: dict[str, dict[str, Any]] = {}
  for i, key in enumerate(sorted(keys, key=COMPUTE_ORDER.index)):
    name, set_name, labels = METHODS[key]
    s = get_set(set_name)
    if labels == "dynamic":
      epochs = evaluate.dynamic_epochs(scfg.epochs, m)
    else:
      epochs = evaluate.epochs_for_steps(steps, s.num_instances, scfg.batch_size)
    row_cfg = dataclasses.replace(scfg, epochs=epochs)
    fingerprint = _json(
      {
        "set": s.metadata,
        "labels": labels,
        "student": dataclasses.asdict(row_cfg),
        "seeds": eval_seeds,
      }
    )
    old = old_rows.get(key)
    if old is not None and old.get("fingerprint") == fingerprint:
      print(f"[distill] {name}: kept from {summary_path} (same set, student and seeds)")
      by_key[key] = old
      continue
    print(f"[distill] row {i + 1}/{len(keys)}: {name} ({labels} labels, {epochs} epochs)")
    t = time.perf_counter()
    result = evaluate.evaluate_set(
      row_cfg, s, dataset, seeds=eval_seeds, labels=labels, teachers=teachers
    )
    timings[f"student: {name}"] = round(time.perf_counter() - t, 2)
    by_key[key] = {
      "key": key,
      "method": name,
      "set": set_name,
      "labels": labels,
      "instances": s.num_instances,
      "bytes": evaluate.budget(s, info, teachers if labels == "dynamic" else None),
      **result,
      "fingerprint": fingerprint,
      "command": evaluate.command_line("infer_jax.distill", methods=key),
    }
    rows[:] = [by_key[k] for k in keys if k in by_key]  # table order
    summary["stage_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    _write_summary(summary_path, summary)

  rows[:] = [by_key[k] for k in keys]
  timings["total (this run)"] = time.perf_counter() - t_start
  summary["stage_seconds"] = {k: round(v, 2) for k, v in timings.items()}
  summary["complete"] = True
  if distributed.is_primary():
    _print_summary(summary)
  _write_summary(summary_path, summary)
  return summary


def _write_summary(path: str, summary: dict[str, Any]) -> None:
  """Process 0 writes the summary (atomically); the others wait for it."""
  distributed.on_primary("summary.json", lambda: checkpoint.write_json_atomic(path, summary))


def _print_summary(summary: dict[str, Any]) -> None:
  print(
    f"\n{summary['dataset']['name']}, ipc {summary['ipc']} (K={summary['K']}, "
    f"M={summary['M']}), student {summary['student']['arch']}; teachers: "
    + ", ".join(
      f"{t['architecture']} {squeeze.accuracy_text(t['test_top1'])}" for t in summary["teachers"]
    )
  )
  print(
    f"  {'method':<22} {'labels':<8} {'top-1 % (final, mean ± std)':>28} {'stored bytes':>13} "
    f"{'ratio':>8}"
  )
  for r in summary["rows"]:
    print(
      f"  {r['method']:<22} {r['labels']:<8} {evaluate.format_top1(r):>28} "
      f"{r['bytes']['total']:>13,} {r['bytes']['compression_ratio']:>8.4f}"
    )
  print(f"  seeds {summary['seeds']}; final-epoch top-1, sample std over seeds")
  print(
    "  stage wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["stage_seconds"].items())
  )


def main(config: ml_collections.ConfigDict) -> None:
  """Entry point."""
  distill(config)


if __name__ == "__main__":
  from infer_jax.runtime import cli

  cli.run(main)
