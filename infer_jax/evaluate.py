r"""Evaluate a synthetic set under the project's protocol: students from scratch, N seeds.

    python -m infer_jax.evaluate --config=configs/tiny.py \
        --config.evaluate.set=workdir/tiny/synthetic/infer.npz [--config.evaluate.labels=dynamic]

A student (``config.student``: architecture, width, the dataset's recipe) is trained from
scratch on the set once per evaluation seed (``config.evaluate.seeds`` seeds starting at
``config.evaluate.first_seed``) and tested on the real test set. Label protocols
(``config.evaluate.labels``):

* ``static``: the set's stored soft labels (the teachers' mean logits), MixUp, KL with
  temperature (INFER).
* ``dynamic``: the teacher ensemble labels every augmented, mixed batch online (INFER+Dyn);
  the epochs are divided by M + 1 to keep the work comparable (docs/algorithm.md, "Relabel").
  The teachers must be the set's own (architecture, dataset and variables' digest, as the
  set records them); they are loaded, never trained, and named in the result.
* ``hard``: one-hot class labels, MixUp, cross-entropy.

The figure to report (docs/protocol.md) is the final-epoch top-1, mean ± sample standard
deviation over the seeds. A best-epoch figure (``config.student.eval_every_epochs > 0``) is
selected on the test set; it is kept separately and labelled as such. The result is written
as JSON (``config.evaluate.out``, default ``<workdir>/evaluate/<set>-<labels>.json``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from infer_jax import student, synthetic
from infer_jax.core import subsets
from infer_jax.data import sources, types
from infer_jax.runtime import atomic, checkpoint, config_lib, distributed, provenance
from infer_jax.runtime.errors import InputError

LABELS = student.LABEL_MODES
# How a comparison gives its rows their optimisation steps (docs/protocol.md).
PROTOCOLS = ("same_steps", "same_epochs")


@dataclasses.dataclass
class RealSet:
  """A set of real training images with hard labels: the full-data row of a comparison.

  Attributes:
    images: uint8 ``[N, H, W, ch]``.
    labels: int ``[N]`` class indices.
    info: the dataset's ``DatasetInfo`` (normalisation, image shape).
  """

  images: np.ndarray
  labels: np.ndarray
  info: types.DatasetInfo

  @property
  def num_instances(self) -> int:
    """N, the images the student sees."""
    return int(len(self.labels))

  @property
  def metadata(self) -> dict[str, Any]:
    """What identifies the set (for a row's fingerprint)."""
    return {"method": "full_data", "dataset": self.info.name, "num_train": self.num_instances}


def full_training_set(dataset: types.Dataset) -> RealSet:
  """Every training image of ``dataset`` with its class: uint8 ``[N, H, W, ch]``, ``[N]``."""
  n = len(dataset.train.labels)
  return RealSet(dataset.train.images(np.arange(n)), np.asarray(dataset.train.labels), dataset.info)


def protocols(config: ml_collections.ConfigDict) -> list[str]:
  """The protocols of ``config.evaluate.protocol``: 'same_steps', 'same_epochs', 'both' or a
  comma-separated list of the first two, in :data:`PROTOCOLS` order.

  Raises:
    InputError: an unknown name.
  """
  text = str(config.evaluate.get("protocol", "same_steps"))
  names = list(PROTOCOLS) if text == "both" else [p.strip() for p in text.split(",") if p.strip()]
  if not names or any(p not in PROTOCOLS for p in names):
    raise InputError(
      f"config.evaluate.protocol must be same_steps, same_epochs, both, or a comma-separated "
      f"list of {', '.join(PROTOCOLS)}; got {text!r}."
    )
  return [p for p in PROTOCOLS if p in names]


def row_epochs(
  protocol: str,
  labels: str,
  num_instances: int,
  reference_instances: int,
  epochs: int,
  batch_size: int,
  num_teachers: int,
  *,
  fixed_epochs: int = 0,
) -> int:
  """Epochs a row of a comparison trains (docs/protocol.md).

  Args:
    protocol: 'same_steps' (every row about the reference set's steps,
      ``epochs * steps_per_epoch(reference_instances)``) or 'same_epochs' (``epochs`` over the
      row's own set).
    labels: the row's label protocol; 'dynamic' (INFER+Dyn) trains ``ceil(epochs / (M + 1))``
      epochs over the reference (INFER) set under both protocols.
    num_instances: size of the row's set.
    reference_instances: size of the INFER set, ``K * (M + 1) * C``.
    epochs: the configured student epochs.
    batch_size: the student's batch size.
    num_teachers: M.
    fixed_epochs: > 0 overrides the rule (the full-data row's ``evaluate.full_data_epochs``).

  Returns:
    The row's epochs (>= 1); its steps are ``epochs * student.steps_per_epoch(num_instances,
    batch_size)``.
  """
  if protocol not in PROTOCOLS:
    raise InputError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
  if fixed_epochs > 0:
    return int(fixed_epochs)
  if labels == "dynamic":
    return dynamic_epochs(epochs, num_teachers)
  if protocol == "same_epochs":
    return int(epochs)
  steps = epochs * student.steps_per_epoch(reference_instances, batch_size)
  return epochs_for_steps(steps, num_instances, batch_size)


def student_config(config: ml_collections.ConfigDict, info: types.DatasetInfo):
  """The config's student recipe with the stem that fits the dataset's images."""
  scfg = student.StudentConfig.from_config(config.student)
  return dataclasses.replace(scfg, stem=config_lib.resolve_stem(config, info.image_shape))


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  """The evaluation seeds ``first_seed, ..., first_seed + seeds - 1`` of ``config.evaluate``.

  Raises:
    InputError: fewer than one seed or a negative first seed.
  """
  n, first = int(config.evaluate.seeds), int(config.evaluate.first_seed)
  if n < 1 or first < 0:
    raise InputError(
      f"config.evaluate.seeds must be >= 1 and first_seed >= 0, got {n} and {first}."
    )
  return list(range(first, first + n))


def ensemble_label_fn(teachers: Sequence[checkpoint.Teacher]) -> student.Labeller:
  """INFER+Dyn's labeller: ``images [B, H, W, 3] -> mean teacher logits [B, classes]``.

  The teachers run in inference mode; their weights are the labeller's variables (an
  argument of the student's jitted step) and get no gradient.
  """
  models = tuple(t.model for t in teachers)

  def fn(variables, images: jax.Array) -> jax.Array:
    total = sum(
      model.apply(v, images, train=False).astype(jnp.float32)
      for model, v in zip(models, variables, strict=True)
    )
    return total / len(models)

  return student.Labeller(fn, [t.variables for t in teachers])


def teacher_bytes(teachers: Sequence[checkpoint.Teacher]) -> int:
  """Bytes of the teachers' weights (params and BN statistics) as stored, float32.

  Counted in the budget of a dynamic-label evaluation, which needs the teachers online.
  """
  return int(
    sum(np.asarray(leaf).nbytes for t in teachers for leaf in jax.tree.leaves(t.variables))
  )


def budget(
  s: synthetic.SyntheticSet | RealSet,
  info: types.DatasetInfo,
  teachers: Sequence[checkpoint.Teacher] | None = None,
) -> dict[str, Any]:
  """Stored bytes of ``s`` split by kind, plus teachers when labels are dynamic, and the ratio.

  A :class:`RealSet` counts its uint8 images only (hard labels are not stored bytes), so the
  full training set has ratio 1.

  Returns:
    :func:`synthetic.storage_bytes` plus ``'teachers'`` (0 unless ``teachers`` are given,
    included in ``'total'``) and ``'compression_ratio'``: ``total`` over the bytes of the
    original training set as uint8 pixels (``num_train * H * W * C``, C = 3 or 1).
  """
  if isinstance(s, RealSet):
    n = int(s.images.nbytes)
    out = {"images": n, "compensators": 0, "labels": 0, "total": n, "provenance": 0}
  else:
    out = dict(synthetic.storage_bytes(s))
  out["teachers"] = teacher_bytes(teachers) if teachers else 0
  out["total"] += out["teachers"]
  out["compression_ratio"] = subsets.compression_ratio(
    out["total"], info.num_train, info.image_shape
  )
  return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and *sample* standard deviation (ddof=1; 0 for a single value)."""
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def epochs_for_steps(steps: int, num_instances: int, batch_size: int) -> int:
  """Epochs over a set of ``num_instances`` that give (about) ``steps`` optimisation steps.

  Used so that every method of a comparison trains for the same number of steps whatever the
  size of its set (docs/protocol.md).
  """
  return max(1, round(steps / student.steps_per_epoch(num_instances, batch_size)))


def dynamic_epochs(epochs: int, num_teachers: int) -> int:
  """INFER+Dyn's epochs: ``epochs / (M + 1)`` rounded up, at least one (docs/algorithm.md)."""
  return max(1, math.ceil(epochs / (num_teachers + 1)))


def evaluate_set(
  scfg: student.StudentConfig,
  s: synthetic.SyntheticSet,
  dataset: types.Dataset,
  *,
  seeds: Sequence[int],
  labels: str = "static",
  teachers: Sequence[checkpoint.Teacher] | None = None,
  mesh=None,
  curve_every: int = 0,
  log: Callable[[str], Any] = print,
) -> dict[str, Any]:
  """Trains one student per seed on ``s`` and tests it on ``dataset.test``.

  Args:
    scfg: student recipe (its ``seed`` is replaced by each of ``seeds``; its ``epochs`` are
      used as given: divide them by M + 1 for dynamic labels before calling).
    s: the synthetic set (``K * (M + 1) * C`` instances, materialised as they are read), or a
      :class:`RealSet` (hard labels only).
    dataset: the real dataset (test split and info).
    seeds: evaluation seeds, one student each.
    labels: 'static' (stored soft labels), 'dynamic' (``teachers`` label every batch) or 'hard'.
    teachers: the teacher ensemble, needed for 'dynamic'.
    mesh: device mesh (default all devices).
    curve_every: > 0 records the first seed's learning curve, its test top-1 every this many
      steps (``student.train_student``).
    log: progress printer.

  Returns:
    ``{'labels', 'seeds', 'final_top1' [S], 'final_top1_mean', 'final_top1_std',
    'best_top1' [S] or None, 'best_top1_mean' or None, 'epochs', 'steps', 'batch_size',
    'seconds' [S], 'images_per_second' [S], 'curve'}``; top-1 in [0, 1], std is the sample
    std; ``curve`` ``[[step, top1], ...]`` of the first seed, or None.

  Raises:
    InputError: unknown label protocol, dynamic labels without teachers, static labels on a
      set without soft labels.
  """
  if labels not in LABELS:
    raise InputError(f"labels must be one of {LABELS}, got {labels!r}.")
  if labels == "dynamic" and not teachers:
    raise InputError("dynamic labels need the teachers (the ensemble labels every batch).")
  real = isinstance(s, RealSet)
  if real and labels != "hard":
    raise InputError("the full training set is evaluated with hard labels only.")
  if not real and labels == "static" and s.labels is None:
    raise InputError(
      "this set has no soft labels; evaluate it with labels='hard' or 'dynamic', or relabel it."
    )
  label_fn = ensemble_label_fn(teachers) if labels == "dynamic" else None
  if real:  # normalised once for all seeds (float32 [N, H, W, ch])
    data = (synthetic.normalize_uint8(s.images, s.info.mean, s.info.std), None, s.labels)
  else:
    data = (s, None, None)
  results = []
  for i, seed in enumerate(seeds):
    log(f"[evaluate] {labels} labels, seed {seed} ({i + 1}/{len(seeds)})")
    t = time.perf_counter()
    r = student.train_student(
      dataclasses.replace(scfg, seed=int(seed)),
      *data,
      dataset.test,
      dataset.info,
      mesh=mesh,
      label_fn=label_fn,
      label_mode=labels,
      curve_every=curve_every if i == 0 else 0,
      log=log,
    )
    r["seconds"] = time.perf_counter() - t
    results.append(r)
  finals = [r["final_top1"] for r in results]
  mean, std = mean_std(finals)
  bests = [r["best_top1"] for r in results]
  has_best = all(b is not None for b in bests)
  return {
    "labels": labels,
    "seeds": [int(x) for x in seeds],
    "final_top1": finals,
    "final_top1_mean": mean,
    "final_top1_std": std,
    "best_top1": bests if has_best else None,
    "best_top1_mean": mean_std(bests)[0] if has_best else None,
    "epochs": results[0]["epochs"],
    "steps": results[0]["steps"],
    "batch_size": results[0]["batch_size"],
    "seconds": [round(r["seconds"], 2) for r in results],
    "images_per_second": [round(r["images_per_second"], 1) for r in results],
    "curve": results[0]["curve"],
  }


def teacher_features(
  teacher: checkpoint.Teacher, instances: np.ndarray, batch_size: int = 500
) -> np.ndarray:
  """A teacher's penultimate features (the pooled input of its classifier, inference mode).

  Args:
    teacher: the teacher.
    instances: float32 ``[N, H, W, ch]`` in the dataset's normalised space.
    batch_size: images per forward pass.

  Returns:
    float32 ``[N, D]``.
  """

  @jax.jit
  def forward(variables, x):
    _, state = teacher.model.apply(variables, x, train=False, mutable=["intermediates"])
    return state["intermediates"]["pre_logits"][0].astype(jnp.float32)

  out = [
    np.asarray(forward(teacher.variables, jnp.asarray(instances[i : i + batch_size])))
    for i in range(0, len(instances), batch_size)
  ]
  return np.concatenate(out).reshape(len(instances), -1)


def set_teachers(
  config: ml_collections.ConfigDict, s: synthetic.SyntheticSet, path: str, info: types.DatasetInfo
) -> list[checkpoint.Teacher]:
  """Loads the teachers that made ``s`` (for dynamic labels), refusing any other teachers.

  The set records each teacher's architecture, dataset and variables' digest
  (``metadata['teacher_identities']``); the run's teachers (``config.teachers`` in
  ``config.teachers_dir`` or ``<workdir>/teachers``) must be exactly those. Nothing is
  trained here: a missing teacher is an error, not a reason to train a new one.

  Raises:
    InputError: the set predates recorded identities, or the run's teachers differ.
  """
  recorded = s.metadata.get("teacher_identities")
  if not recorded:
    raise InputError(
      f"The synthetic set {path} does not record which teachers made it (it was written by "
      "an older version), so dynamic labels cannot be checked to come from its own "
      "teachers. Delete the set and rerun `python -m infer_jax.distill` with the same "
      "config and workdir (its teachers and recover checkpoints are reused; only the "
      "relabel runs again), or evaluate it with --config.evaluate.labels=static."
    )
  names = config_lib.teacher_names(config)
  wanted = [t["architecture"] for t in recorded]
  fix = (
    f"Run with --config.teachers={','.join(wanted)} and the --config.workdir (or "
    "--config.teachers_dir) of the run that made the set."
  )
  if names != wanted:
    raise InputError(
      f"The synthetic set {path} was made by the teachers {','.join(wanted)}; this run's "
      f"teachers are {','.join(names)}. Dynamic labels must come from the set's own "
      f"teachers. {fix}"
    )
  teachers = []
  for rec in recorded:
    directory = config_lib.teacher_dir(config, rec["architecture"])
    if not checkpoint.teacher_exists(directory):
      raise InputError(
        f"The set's teacher {rec['architecture']} is not in {directory}. Dynamic labels "
        f"must come from the set's own teachers. {fix}"
      )
    t = checkpoint.load_teacher(
      directory,
      expected={
        "num_classes": info.num_classes,
        "image_shape": list(info.image_shape),
        "dataset": info.name,
      },
    )
    have = checkpoint.teacher_identity(t)
    if have != rec:
      raise InputError(
        f"The teacher in {directory} ({have['architecture']} on {have['dataset']}, digest "
        f"{have['digest'][:16]}) is not the one that made the set {path} "
        f"({rec['architecture']} on {rec['dataset']}, digest {rec['digest'][:16]}). "
        f"Dynamic labels must come from the set's own teachers. {fix}"
      )
    teachers.append(t)
  return teachers


def format_top1(result: dict[str, Any]) -> str:
  """``'86.91 ± 0.42'`` (percent, final epoch, mean ± sample std over seeds).

  One seed has no spread: it prints ``'86.91 (n = 1)'``.
  """
  if len(result.get("final_top1") or [None, None]) == 1:
    return f"{100 * result['final_top1_mean']:.2f} (n = 1)"
  return f"{100 * result['final_top1_mean']:.2f} ± {100 * result['final_top1_std']:.2f}"


def main(config: ml_collections.ConfigDict) -> None:
  """Entry point: evaluates ``config.evaluate.set`` and writes the JSON result."""
  path = config.evaluate.set
  if not path:
    raise InputError(
      "Name the synthetic set to evaluate: --config.evaluate.set=PATH (an .npz written by "
      "python -m infer_jax.distill, e.g. <workdir>/synthetic/infer.npz)."
    )
  labels = config.evaluate.labels
  if labels not in LABELS:
    raise InputError(f"config.evaluate.labels must be one of {LABELS}, got {labels!r}.")
  dataset = sources.load_from_config(config.data)
  info = dataset.info
  s = synthetic.load(
    path,
    expected={
      "num_classes": info.num_classes,
      "image_shape": list(info.image_shape),
      "dataset": info.name,
    },
  )
  teachers = None
  scfg = student_config(config, info)
  if labels == "dynamic":
    teachers = set_teachers(config, s, path, info)
    scfg = dataclasses.replace(scfg, epochs=dynamic_epochs(scfg.epochs, len(teachers)))
  result = evaluate_set(scfg, s, dataset, seeds=seeds(config), labels=labels, teachers=teachers)
  out = {
    "set": os.path.abspath(path),
    "method": s.metadata.get("method"),
    "dataset": info.to_dict(),
    "student": dataclasses.asdict(scfg),
    "bytes": budget(s, info, teachers),
    # Which teachers labelled the batches (dynamic labels), as the set records them.
    "labelled_by": [checkpoint.teacher_identity(t) for t in teachers] if teachers else None,
    "result": result,
    "hardware": provenance.hardware(),
    "command": provenance.command_line("infer_jax.evaluate"),
  }
  out_path = config.evaluate.out or os.path.join(
    config_lib.workdir(config),
    "evaluate",
    f"{os.path.splitext(os.path.basename(path))[0]}-{labels}.json",
  )

  def write() -> None:  # every process has the same result; one writes it
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic.write_json(out_path, out)

  distributed.on_primary("evaluate json", write)
  print(
    f"[evaluate] {os.path.basename(path)} ({labels} labels): final-epoch top-1 "
    f"{format_top1(result)}% over seeds {result['seeds']}; wrote {out_path}",
    flush=True,
  )


if __name__ == "__main__":
  from infer_jax.runtime import cli

  cli.run(main)
