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
   teachers, student, augmentation, MixUp, temperature and optimiser, one student per
   evaluation seed (``config.evaluate.seeds``), under the protocol(s) of
   ``config.evaluate.protocol``: ``same_steps`` (every row about the INFER set's steps; the
   default), ``same_epochs`` (the paper's: every row the configured epochs over its own set)
   or ``both`` (each row under each protocol; a row the protocol does not change is trained
   once). The default rows:

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

   Further rows on request: ``infer_hard`` / ``infer_wo_ufc_hard`` / ``sre2l_hard`` (a set
   with hard labels, for DD-Ranking's HLR), ``infer_uint8`` (the INFER set with uint8
   compensators and float16 labels, about Random's bytes; ``infer_uint8_hard`` is its HLR
   row) and ``full_data`` (the whole real training set, hard labels). Every row gets
   DD-Ranking's ``ior``, ``hlr`` and ``lrs`` (:func:`infer_jax.core.metrics.dd_ranking`;
   None where a needed row is absent), and,
   with ``config.evaluate.curve_every > 0``, the rows of ``config.evaluate.curve_methods``
   record their first seed's learning curve.

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
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from infer_jax import baselines, evaluate, recover, relabel, squeeze, synthetic
from infer_jax.core import metrics, subsets
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


# key: (name in tables, set, label protocol). Table order: weakest protocol first. A set
# named '<base>_hard' is the set <base> with its soft labels dropped.
METHODS: dict[str, tuple[str, str, str]] = {
  "full_data": ("Full data (hard labels)", "full_data", "hard"),
  "random_hard": ("Random (hard labels)", "random_hard", "hard"),
  "random": ("Random", "random", "static"),
  "infer_wo_ufc_hard": ("INFER w/o UFC (hard labels)", "infer_wo_ufc_hard", "hard"),
  "infer_wo_ufc": ("INFER w/o UFC", "infer_wo_ufc", "static"),
  "sre2l_hard": ("SRe2L-style (hard labels)", "sre2l_hard", "hard"),
  "sre2l": ("SRe2L-style", "sre2l", "static"),
  "infer_hard": ("INFER (hard labels)", "infer_hard", "hard"),
  "infer": ("INFER", "infer", "static"),
  "infer_uint8": ("INFER (uint8 u, float16 labels)", "infer_uint8", "static"),
  "infer_uint8_hard": ("INFER (uint8 u, hard labels)", "infer_uint8_hard", "hard"),
  "infer_dyn": ("INFER+Dyn", "infer", "dynamic"),
}


# The order rows are computed in: the INFER rows and the cheap baselines first, the
# SRe2L-style synthesis (a whole extra recover) and the full-data student last, so an
# interrupted comparison has the most informative rows already.
COMPUTE_ORDER = (
  "infer",
  "random",
  "random_hard",
  "infer_wo_ufc",
  "infer_dyn",
  "infer_uint8",
  "infer_hard",
  "infer_uint8_hard",
  "infer_wo_ufc_hard",
  "sre2l",
  "sre2l_hard",
  "full_data",
)
# What a row copies from a student run it shares with another protocol's row.
_RESULT_KEYS = (
  "seeds",
  "final_top1",
  "final_top1_mean",
  "final_top1_std",
  "best_top1",
  "best_top1_mean",
  "epochs",
  "steps",
  "batch_size",
  "seconds",
  "images_per_second",
  "curve",
)


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
  # The earlier runs' stage times accumulate; their total is of another run, so it is dropped
  # (this run's is added last, at the end).
  timings: dict[str, float] = {
    k: v for k, v in previous.get("stage_seconds", {}).items() if k != "total (this run)"
  }
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
  sweep = sweep_multipliers(config)
  if sweep and "same_steps" not in evaluate.protocols(config):
    raise InputError(
      "config.evaluate.budget_sweep scales the same_steps rows' budget; set "
      "config.evaluate.protocol to same_steps or both, or leave budget_sweep empty."
    )

  t = time.perf_counter()
  teachers = squeeze.load_teachers(config, dataset, identities)
  timings["squeeze"] = timings.get("squeeze", 0.0) + time.perf_counter() - t
  m = len(teachers)

  infer_set = build_infer_set(config, dataset, teachers, timings)
  cache: dict[str, synthetic.SyntheticSet] = {"infer": infer_set}

  def get_set(name: str) -> synthetic.SyntheticSet | evaluate.RealSet:
    if name not in cache:
      if name.endswith("_hard"):
        cache[name] = baselines.without_soft_labels(get_set(name.removesuffix("_hard")))
      elif name == "infer_uint8":
        cache[name] = quantized_infer_set(infer_set)
      elif name == "full_data":
        cache[name] = evaluate.full_training_set(dataset)
      elif name == "random":
        cache[name] = baselines.build_random_set(config, dataset, teachers)
      elif name == "infer_wo_ufc":
        cache[name] = baselines.infer_without_compensators(infer_set)
      elif name == "sre2l":
        cache[name] = baselines.build_sre2l_set(config, dataset, teachers, timings)
    return cache[name]

  scfg = evaluate.student_config(config, info)
  protocols = evaluate.protocols(config)
  curve_every = int(config.evaluate.get("curve_every", 0))
  curve_keys = {k.strip() for k in str(config.evaluate.get("curve_methods", "")).split(",")}
  full_data_epochs = int(config.evaluate.get("full_data_epochs", 0))
  if curve_every < 0 or full_data_epochs < 0:
    raise InputError(
      "config.evaluate.curve_every and full_data_epochs must be >= 0 (0 = off / the "
      f"protocol's rule); got {curve_every} and {full_data_epochs}."
    )
  # Rows written before protocols were recorded are same_steps rows.
  old_rows = {
    (r["key"], metrics.row_protocol(r)): r for r in previous.get("rows", []) if "key" in r
  }
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
  if config.evaluate.get("feature_similarity", False):
    summary["feature_similarity"] = feature_similarity(
      teachers,
      info,
      {
        "real": get_set("random"),
        "infer": infer_set,
        **({"sre2l": get_set("sre2l")} if "sre2l" in keys else {}),
      },
    )
  by_key: dict[tuple[str, str], dict[str, Any]] = {}
  runs: dict[str, dict[str, Any]] = {}  # one student run's result, shared across protocols
  plan = [(key, p) for key in sorted(keys, key=COMPUTE_ORDER.index) for p in protocols]
  for i, (key, protocol) in enumerate(plan):
    name, set_name, labels = METHODS[key]
    s = get_set(set_name)
    epochs = evaluate.row_epochs(
      protocol,
      labels,
      s.num_instances,
      infer_set.num_instances,
      scfg.epochs,
      scfg.batch_size,
      m,
      fixed_epochs=full_data_epochs if key == "full_data" else 0,
    )
    row_cfg = dataclasses.replace(scfg, epochs=epochs)
    row_curve = curve_every if key in curve_keys else 0
    # What the student run depends on; the row's fingerprint adds its protocol. The set's
    # execution settings (how recover was split over devices, ...) are left out: a rerun on
    # another split keeps the rows, and rows written before they existed match.
    run = {
      "set": synthetic.comparable_metadata(s.metadata),
      "labels": labels,
      "student": dataclasses.asdict(row_cfg),
      "seeds": eval_seeds,
      **({"curve_every": row_curve} if row_curve else {}),
    }
    run = _json(run)
    run_id = json.dumps(run, sort_keys=True)
    fingerprint = {**run, "protocol": protocol}
    old = old_rows.get((key, protocol))
    # A row written before protocols were recorded has the run as its fingerprint.
    accepted = [fingerprint] + ([run] if old is not None and "protocol" not in old else [])
    if old is not None and _comparable_fingerprint(old.get("fingerprint")) in accepted:
      print(f"[distill] {name} ({protocol}): kept from {summary_path} (same set, student, seeds)")
      # The fingerprint holds the seeds; rows shared across protocols used to be written
      # without them (the report needs them), so a kept row gets them back.
      by_key[key, protocol] = {
        "seeds": eval_seeds,
        **old,
        "protocol": protocol,
        "fingerprint": fingerprint,
      }
      runs.setdefault(run_id, old)
      continue
    label = name if len(protocols) == 1 else f"{name} ({protocol})"
    if run_id in runs:
      # The protocol does not change this row's training (e.g. INFER, or +Dyn): one run.
      print(f"[distill] {label}: the same student run as under the other protocol")
      result = {k: runs[run_id].get(k) for k in _RESULT_KEYS}
    else:
      print(f"[distill] row {i + 1}/{len(plan)}: {label} ({labels} labels, {epochs} epochs)")
      t = time.perf_counter()
      result = evaluate.evaluate_set(
        row_cfg,
        s,
        dataset,
        seeds=eval_seeds,
        labels=labels,
        teachers=teachers,
        curve_every=row_curve,
      )
      timings[f"student: {label}"] = round(time.perf_counter() - t, 2)
      runs[run_id] = result
    overrides = {"methods": key}
    if len(protocols) > 1:
      overrides["evaluate.protocol"] = protocol
    by_key[key, protocol] = {
      "key": key,
      "method": name,
      "set": set_name,
      "labels": labels,
      "protocol": protocol,
      "instances": s.num_instances,
      "bytes": evaluate.budget(s, info, teachers if labels == "dynamic" else None),
      **result,
      "fingerprint": fingerprint,
      "command": provenance.command_line("infer_jax.distill", **overrides),
    }
    # The earlier summary's rows that the plan has not reached yet stay in the file (each is
    # checked against its fingerprint when reached): a run stopped before them, e.g. a rerun
    # at a new budget stopped before the full-data row it would keep, must not lose them.
    written = {**old_rows, **by_key}
    rows[:] = [written[k, p] for k in keys for p in protocols if (k, p) in written]
    metrics.dd_ranking(rows)
    summary["stage_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    _write_summary(summary_path, summary)

  rows[:] = [by_key[k, p] for k in keys for p in protocols]
  metrics.dd_ranking(rows)
  if sweep:

    def retrain(row: dict[str, Any], cfg: Any) -> dict[str, Any]:
      _, set_name, labels = METHODS[row["key"]]
      s = get_set(set_name)
      seed = [row["seeds"][0]]
      return evaluate.evaluate_set(cfg, s, dataset, seeds=seed, labels=labels, teachers=teachers)

    budget_sweep(
      summary,
      [by_key[k, "same_steps"] for k in keys if k in curve_keys],
      sweep,
      scfg,
      retrain,
      previous.get("budget_sweep", []),
      lambda: _write_summary(summary_path, summary),
      timings,
    )
  timings["total (this run)"] = time.perf_counter() - t_start
  summary["stage_seconds"] = {k: round(v, 2) for k, v in timings.items()}
  summary["complete"] = True
  if distributed.is_primary():
    _print_summary(summary)
  _write_summary(summary_path, summary)
  return summary


def sweep_multipliers(config: ml_collections.ConfigDict) -> list[float]:
  """``config.evaluate.budget_sweep`` ('0.5,2': comma-separated multiples of the row's steps)
  as sorted floats; [] when empty.

  Raises:
    InputError: a multiplier that is not a positive number other than 1.
  """
  text = str(config.evaluate.get("budget_sweep", "") or "")
  out = []
  for item in (t.strip() for t in text.split(",")):
    if not item:
      continue
    try:
      value = float(item)
    except ValueError:
      value = -1.0
    if value <= 0 or value == 1:
      raise InputError(
        "config.evaluate.budget_sweep must list positive multiples of the rows' steps other "
        f"than 1, e.g. '0.5,2'; got {text!r}."
      )
    out.append(value)
  return sorted(set(out))


def budget_sweep(
  summary: dict[str, Any],
  rows: list[dict[str, Any]],
  multipliers: list[float],
  scfg: Any,
  train: Callable[[dict[str, Any], Any], dict[str, Any]],
  previous: list[dict[str, Any]],
  write: Callable[[], None],
  timings: dict[str, float],
) -> list[dict[str, Any]]:
  """Is the budget converged? Each row's student retrained at multiples of its steps.

  A learning curve under a cosine schedule is not the final accuracy of a shorter run (the
  rate has not decayed at the curve's midpoint), so the convergence check trains separate
  students: for every row in ``rows`` (same_steps rows of ``evaluate.curve_methods``) and
  every multiplier, one student (the row's first seed) with ``round(epochs * multiplier)``
  epochs. The row's own first-seed result is the multiplier-1 point. Points already in
  ``previous`` with the same fingerprint are kept; ``summary['budget_sweep']`` is written
  (``write()``) after every new point.

  Args:
    summary: the comparison's summary; gets the ``'budget_sweep'`` list.
    rows: the rows to sweep (with their result and fingerprint).
    multipliers: multiples of each row's epochs (not 1).
    scfg: the student recipe of the rows.
    train: ``train(row, cfg) -> evaluate.evaluate_set`` result of one student (the row's
      first seed) with recipe ``cfg``.
    previous: the points of an earlier run's summary.
    write: rewrites the summary.
    timings: stage wall times, added to.

  Returns:
    ``summary['budget_sweep']``: ``[{'key', 'method', 'multiplier', 'epochs', 'steps',
    'seed', 'final_top1', 'fingerprint'}]`` ordered by row and steps; ``final_top1`` in
    [0, 1].
  """
  kept = {json.dumps(p["fingerprint"], sort_keys=True): p for p in previous if "fingerprint" in p}
  row_order = {r["key"]: i for i, r in enumerate(rows)}
  points: list[dict[str, Any]] = []
  summary["budget_sweep"] = points

  def in_order() -> None:  # by row, then by steps
    points.sort(key=lambda p: (row_order[p["key"]], p["steps"]))

  for row in rows:
    seed = row["seeds"][0]
    base = {"key": row["key"], "method": row["method"], "seed": seed}
    points.append(
      {
        **base,
        "multiplier": 1.0,
        "epochs": row["epochs"],
        "steps": row["steps"],
        "final_top1": row["final_top1"][0],
        "fingerprint": row["fingerprint"],
      }
    )
    for mult in multipliers:
      epochs = max(1, round(row["epochs"] * mult))
      cfg = dataclasses.replace(scfg, epochs=epochs)
      fingerprint = _json(
        {
          **row["fingerprint"],
          "student": dataclasses.asdict(cfg),
          "seeds": [seed],
          "budget_multiplier": mult,
        }
      )
      fingerprint.pop("curve_every", None)
      old = kept.get(json.dumps(fingerprint, sort_keys=True))
      if old is not None:
        print(f"[distill] budget x{mult:g} of {row['method']}: kept (same set, student, seed)")
        points.append(old)
        continue
      print(f"[distill] budget x{mult:g} of {row['method']}: {epochs} epochs, seed {seed}")
      t = time.perf_counter()
      result = train(row, cfg)
      timings[f"budget x{mult:g}: {row['method']}"] = round(time.perf_counter() - t, 2)
      points.append(
        {
          **base,
          "multiplier": mult,
          "epochs": epochs,
          "steps": result["steps"],
          "final_top1": result["final_top1"][0],
          "fingerprint": fingerprint,
        }
      )
      in_order()
      summary["stage_seconds"] = {k: round(v, 2) for k, v in timings.items()}
      write()
  in_order()
  return points


def quantized_infer_set(s: synthetic.SyntheticSet) -> synthetic.SyntheticSet:
  """The INFER set stored small: uint8 compensators (affine per compensator) and float16
  labels, about the bytes of Random at the same ipc (docs/synthetic_format.md)."""
  q = synthetic.cast(s, compensator_dtype="uint8", label_dtype="float16")
  storage = {"compensators": "uint8", "labels": "float16"}
  return dataclasses.replace(
    q, metadata={**s.metadata, "method": "infer_uint8", "storage": storage}
  )


def feature_similarity(
  teachers: list[checkpoint.Teacher],
  info: types.DatasetInfo,
  sets: dict[str, synthetic.SyntheticSet],
  batch_size: int = 500,
) -> dict[str, dict[str, Any]]:
  """Feature duplication (the INFER paper's Figure 4a) of each set under each teacher.

  For every teacher and set: the mean pairwise cosine similarity of the teacher's penultimate
  features within each class (:func:`infer_jax.core.metrics.within_class_cosine`) over the
  set's instances (e.g. 'real': Random's real images, 'infer': every INFER instance,
  'sre2l': the SRe2L-style images).

  Returns:
    ``{teacher architecture: {set name: {'per_class': [C] (None for a class with fewer
    than two instances), 'mean': mean over classes}}}``.
  """
  out: dict[str, dict[str, Any]] = {}
  materialized = {name: synthetic.materialize(s) for name, s in sets.items()}
  for t in teachers:
    entry = {}
    for name, (instances, _, hard) in materialized.items():
      features = evaluate.teacher_features(t, instances, batch_size)
      per_class = metrics.within_class_cosine(features, hard, info.num_classes)
      entry[name] = {
        "per_class": [None if np.isnan(v) else float(v) for v in per_class],
        "mean": float(np.nanmean(per_class)),
        "instances": int(len(instances)),
      }
    out[t.metadata["architecture"]] = entry
  return out


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
  several = len({metrics.row_protocol(r) for r in summary["rows"]}) > 1
  for r in summary["rows"]:
    method = f"{r['method']} ({r['protocol']})" if several else r["method"]
    print(
      f"  {method:<22} {r['labels']:<8} {evaluate.format_top1(r):>28} "
      f"{r['bytes']['total']:>13,} {r['bytes']['compression_ratio']:>8.4f}"
    )
  print(f"  seeds {summary['seeds']}; final-epoch top-1, sample std over seeds")
  for method, points in metrics.sweep_by_method(summary.get("budget_sweep") or []).items():
    print(
      f"  budget sweep, {method} (seed {points[0]['seed']}): "
      + ", ".join(f"{p['steps']} steps {100 * p['final_top1']:.2f}%" for p in points)
    )
  print(
    "  stage wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["stage_seconds"].items())
  )


def main(config: ml_collections.ConfigDict) -> None:
  """Entry point."""
  distill(config)


if __name__ == "__main__":
  from infer_jax.runtime import cli

  cli.run(main, lock_workdir=True)
