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
6. Compare (``config.methods``, docs/protocol.md): every method is evaluated with the same
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

   The baseline sets are built by :mod:`infer_jax.baselines`. Every set is saved under
   ``DIR/synthetic`` and reused by a rerun.
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

from infer_jax import baselines, evaluate, recover, relabel, squeeze, student, synthetic
from infer_jax.core import subsets
from infer_jax.data import sources, types
from infer_jax.runtime import atomic, checkpoint, config_lib, distributed, provenance
from infer_jax.runtime.errors import InputError

FORMAT_NAME = "infer.npz"


def build_infer_set(
  config: ml_collections.ConfigDict,
  dataset: types.Dataset,
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
  metadata = synthetic.set_metadata(config, info, teachers, "infer", k, m)
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
  # Instances are materialised and labelled one batch at a time (never the whole set).
  soft = relabel.set_labels(teachers, unlabelled, batch_size=config.synthetic.relabel_batch_size)
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
  return synthetic.save_on_primary(path, labelled)


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


def _comparable_fingerprint(fingerprint: Any) -> Any:
  """A stored row fingerprint with its set's execution settings dropped (rows written while
  they were part of the fingerprint still match)."""
  if isinstance(fingerprint, dict) and isinstance(fingerprint.get("set"), dict):
    return {**fingerprint, "set": synthetic.comparable_metadata(fingerprint["set"])}
  return fingerprint


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
  identities = squeeze.teacher_identities(config, info)
  subsets.num_subsets(config.ipc, info.num_classes, len(identities))

  t = time.perf_counter()
  teachers = squeeze.load_teachers(config, dataset, identities)
  timings["squeeze"] = timings.get("squeeze", 0.0) + time.perf_counter() - t
  m = len(teachers)

  infer_set = build_infer_set(config, dataset, teachers, timings)
  cache: dict[str, synthetic.SyntheticSet] = {"infer": infer_set}

  def get_set(name: str) -> synthetic.SyntheticSet:
    if name not in cache:
      if name == "random":
        cache[name] = baselines.build_random_set(config, dataset, teachers)
      elif name == "random_hard":
        cache[name] = baselines.without_soft_labels(get_set("random"))
      elif name == "infer_wo_ufc":
        cache[name] = baselines.infer_without_compensators(infer_set)
      elif name == "sre2l":
        cache[name] = baselines.build_sre2l_set(config, dataset, teachers, timings)
    return cache[name]

  scfg = evaluate.student_config(config, info)
  # Every static/hard row trains for the steps of the INFER set at the configured epochs
  # (docs/protocol.md: same number of optimisation steps); +Dyn for 1/(M+1) of them.
  steps = scfg.epochs * student.steps_per_epoch(infer_set.num_instances, scfg.batch_size)
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
    "hardware": provenance.hardware(),
    "config": config.to_dict(),
    "command": provenance.command_line("infer_jax.distill"),
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
    # The set's execution settings (how recover was split over devices, ...) are left out:
    # a rerun on another split keeps the rows, and rows written before they existed match.
    fingerprint = _json(
      {
        "set": synthetic.comparable_metadata(s.metadata),
        "labels": labels,
        "student": dataclasses.asdict(row_cfg),
        "seeds": eval_seeds,
      }
    )
    old = old_rows.get(key)
    if old is not None and _comparable_fingerprint(old.get("fingerprint")) == fingerprint:
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
      "command": provenance.command_line("infer_jax.distill", methods=key),
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
  distributed.on_primary("summary.json", lambda: atomic.write_json(path, summary))


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

  cli.run(main, lock_workdir=True)
