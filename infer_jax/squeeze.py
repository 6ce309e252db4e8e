"""Squeeze: train the teacher networks on the real training set.

    python -m infer_jax.squeeze --config=configs/tiny.py --config.workdir=DIR

For every architecture in ``config.teachers``: train with the config's recipe (SGD,
momentum, weight decay, cosine schedule, crop + flip), report test top-1, and write a
teacher checkpoint (params, batch_stats, metadata) to ``DIR/teachers/<arch>/``.

Killed at any moment and run again, it resumes each teacher from its last training
checkpoint (model, optimiser and data-iterator state), and ends where an uninterrupted
run would; a finished teacher is loaded, not retrained.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import zlib
from typing import Any

import jax
import ml_collections

from infer_jax.data import pipeline, sources, types
from infer_jax.runtime import atomic, checkpoint, config_lib, distributed, train
from infer_jax.runtime import progress as progress_lib
from infer_jax.runtime.errors import InputError


@dataclasses.dataclass(frozen=True)
class SqueezeConfig:
  """The teacher recipe (``config.squeeze``; docs/algorithm.md, "Recipes").

  Attributes:
    epochs: passes over the training set.
    batch_size: global batch size (divisible by the device count).
    lr: peak learning rate of SGD, cosine-decayed to 0 after ``warmup_epochs``.
    momentum: SGD momentum.
    nesterov: Nesterov momentum.
    weight_decay: coupled (PyTorch-style) weight decay.
    warmup_epochs: linear warm-up epochs.
    label_smoothing: label smoothing of the cross-entropy.
    augment: 'crop_flip', 'rrc_flip', 'flip' or 'none' (host-side, in the grain pipeline).
    crop_padding: pixels of padding per side for 'crop_flip'.
    eval_batch_size: test batch size (rounded up to a multiple of the device count).
    checkpoint_every_steps: steps between resumable checkpoints.
    log_every_steps: steps between progress lines.
    dtype: computation dtype, 'float32' or 'bfloat16'.
    worker_count: grain worker processes for augmentation (0 = in-process).
  """

  epochs: int = 200
  batch_size: int = 128
  lr: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4
  warmup_epochs: int = 0
  label_smoothing: float = 0.0
  augment: str = "crop_flip"
  crop_padding: int = 4
  eval_batch_size: int = 500
  checkpoint_every_steps: int = 500
  log_every_steps: int = 50
  dtype: str = "float32"
  worker_count: int = 0

  def __post_init__(self):
    if self.dtype not in train.DTYPES:
      raise InputError(
        f"config.squeeze.dtype must be one of {list(train.DTYPES)}, got {self.dtype!r}."
      )

  @classmethod
  def from_config(cls, cfg: Any) -> SqueezeConfig:
    """Builds the recipe from ``config.squeeze`` (a ConfigDict block or mapping)."""
    return cls(**config_lib.typed_fields(cls, cfg, "squeeze"))


def expected_teacher(
  config: ml_collections.ConfigDict, info: types.DatasetInfo, architecture: str
) -> dict[str, Any]:
  """The identity (IDENTITY_KEYS of checkpoint.py) a teacher of this run must have."""
  return {
    "architecture": architecture,
    "stem": config_lib.resolve_stem(config, info.image_shape),
    "width": float(config.teacher_width),
    "num_classes": info.num_classes,
    "image_shape": list(info.image_shape),
    "dataset": info.name,
  }


def teacher_identities(
  config: ml_collections.ConfigDict, info: types.DatasetInfo
) -> dict[str, dict[str, Any]]:
  """``{architecture: expected_teacher(...)}`` for every teacher of ``config``, in config order.

  Computed once per run and handed to the functions that train, check and load teachers.

  Raises:
    InputError: ``config.teachers`` is empty, names an unknown architecture or one twice.
  """
  return {name: expected_teacher(config, info, name) for name in config_lib.teacher_names(config)}


def accuracy_text(accuracy: float | None) -> str:
  """'93.12%', or 'unknown' for a teacher whose accuracy was not measured (a converted one)."""
  return "unknown" if accuracy is None else f"{100 * accuracy:.2f}%"


def _round_up(n: int, multiple: int) -> int:
  # Evaluation batches are padded and masked, so their size is free: make it shardable.
  return -(-n // multiple) * multiple


def train_teacher(
  config: ml_collections.ConfigDict,
  dataset: types.Dataset,
  identity: dict[str, Any],
  directory: str,
  mesh,
  sq: SqueezeConfig,
) -> dict[str, Any]:
  """Trains one teacher (resuming if possible) and writes its final checkpoint.

  Args:
    config: the run config (``config.squeeze`` is the recipe).
    dataset: the real dataset.
    identity: the teacher's :func:`expected_teacher` (its architecture included).
    directory: the teacher's directory.
    mesh: device mesh; the batch is sharded over its 'data' axis.
    sq: the teacher recipe (``SqueezeConfig.from_config(config.squeeze)``).

  Returns:
    The teacher's metadata (test accuracy included).
  """
  info = dataset.info
  architecture = identity["architecture"]
  model = checkpoint.build_teacher_model(identity, train.DTYPES[sq.dtype])
  # A per-architecture seed that does not depend on the teacher's position in the list.
  seed = (config.seed * 1_000_003 + zlib.crc32(architecture.encode())) % (2**31)

  iterator = pipeline.train_iterator(
    dataset.train,
    batch_size=sq.batch_size,
    seed=seed,
    num_epochs=sq.epochs,
    augment=sq.augment,
    crop_padding=sq.crop_padding,
    sharding=train.batch_sharding(mesh),
    worker_count=sq.worker_count,
  )
  total_steps = sq.epochs * iterator.steps_per_epoch
  tx = train.sgd_optimizer(
    lr=sq.lr,
    momentum=sq.momentum,
    nesterov=sq.nesterov,
    weight_decay=sq.weight_decay,
    total_steps=total_steps,
    warmup_steps=sq.warmup_epochs * iterator.steps_per_epoch,
  )
  # The 'rbg' key implementation: XLA:CPU compiles threefry-based initialisers of a deep
  # network for many seconds (10+ s for MobileNetV2), rbg in a fraction of that.
  init_key = jax.random.key(seed, impl="rbg")
  state = train.create_train_state(model, tx, init_key, info.image_shape, mesh)

  ckpt = checkpoint.TrainCheckpointer(os.path.join(directory, "train"))
  restored = ckpt.restore_latest(state)
  if restored is not None:
    step, state, iter_state, meta = restored
    checkpoint.check_teacher_metadata(meta, identity, directory)
    iterator.set_state(iter_state)
    print(f"[{architecture}] resuming from step {step}/{total_steps}", flush=True)
  train_step = train.make_train_step(
    model, tx, mean=info.mean, std=info.std, label_smoothing=sq.label_smoothing, seed=seed
  )
  step = int(state.step)
  serialize = train.one_step_in_flight(mesh)
  meta = dict(identity)
  progress = progress_lib.Progress(f"[{architecture}]", functools.partial(print, flush=True))
  start = progress.start
  while step < total_steps:
    batch = next(iterator)
    state, metrics = train_step(state, batch)
    if serialize:
      jax.block_until_ready(state)
    step += 1
    progress.count(sq.batch_size)
    if progress.first_step_done(metrics):
      pass
    elif step % sq.log_every_steps == 0 or step == total_steps:
      metrics = jax.device_get(metrics)
      rate = progress.rate()
      epoch = step / iterator.steps_per_epoch
      print(
        f"[{architecture}] epoch {epoch:6.2f}/{sq.epochs} step {step}/{total_steps} "
        f"loss {float(metrics['loss']):.4f} acc {float(metrics['accuracy']):.3f} "
        f"{rate:7.1f} img/s eta {progress.eta((total_steps - step) * sq.batch_size, rate)}",
        flush=True,
      )
      progress.reset_window()
    if step % sq.checkpoint_every_steps == 0 and step < total_steps:
      jax.block_until_ready(state)  # see train.one_step_in_flight
      ckpt.save(step, state, iterator.get_state(), meta)
  # Finish every dispatched step before another program (eval) runs on the devices; see
  # train.one_step_in_flight.
  jax.block_until_ready(state)
  ckpt.close()

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  eval_step = train.make_eval_step(model, mean=info.mean, std=info.std)
  accuracy = train.evaluate(
    eval_step,
    variables,
    pipeline.eval_batches(
      dataset.test,
      batch_size=_round_up(sq.eval_batch_size, mesh.size),
      sharding=train.batch_sharding(mesh),
    ),
  )
  metadata = checkpoint.teacher_metadata(
    **identity,
    mean=info.mean,
    std=info.std,
    test_accuracy=accuracy,
    source="squeeze",
    label_names=list(info.label_names),
    train_steps=total_steps,
    seed=seed,
    recipe=dict(sorted(dataclasses.asdict(sq).items())),  # keys sorted, as ConfigDict.to_dict
    train_seconds=round(time.perf_counter() - start, 2),
  )
  checkpoint.save_teacher(directory, variables, metadata)
  checkpoint.remove_training_checkpoints(directory)
  print(f"[{architecture}] test top-1 {100 * accuracy:.2f}%", flush=True)
  return metadata


def squeeze(
  config: ml_collections.ConfigDict,
  dataset: types.Dataset | None = None,
  identities: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
  """Trains (or reuses) every teacher of ``config``; returns their metadata by name.

  Args:
    config: run config.
    dataset: the loaded dataset (loaded from ``config.data`` when None).
    identities: :func:`teacher_identities` of the run (computed here when None).

  Returns:
    ``{architecture: metadata}`` for every teacher, in config order.
  """
  if identities is None:
    config_lib.teacher_names(config)  # refuse a bad teacher list before loading any data
  dataset = sources.load_from_config(config.data) if dataset is None else dataset
  if identities is None:
    identities = teacher_identities(config, dataset.info)
  sq = SqueezeConfig.from_config(config.squeeze)
  mesh = train.data_mesh()
  results = {}
  for name, identity in identities.items():
    directory = config_lib.teacher_dir(config, name)
    if checkpoint.teacher_exists(directory):
      meta = checkpoint.read_teacher_metadata(directory)
      checkpoint.check_teacher_metadata(meta, identity, directory)
      print(
        f"[{name}] found a finished teacher in {directory} (source {meta.get('source')}, "
        f"test top-1 {accuracy_text(meta.get('test_accuracy'))}): not retraining",
        flush=True,
      )
      results[name] = meta
      continue
    results[name] = train_teacher(config, dataset, identity, directory, mesh, sq)
  return results


def load_teachers(
  config: ml_collections.ConfigDict,
  dataset: types.Dataset,
  identities: dict[str, dict[str, Any]] | None = None,
) -> list[checkpoint.Teacher]:
  """Squeezes (or reuses) and loads every teacher of ``config``, checking their identity.

  Args:
    config: run config.
    dataset: the real dataset.
    identities: :func:`teacher_identities` of the run, when the caller has them already.

  Returns:
    The teachers, in config order.
  """
  identities = teacher_identities(config, dataset.info) if identities is None else identities
  squeeze(config, dataset, identities)
  return [
    checkpoint.load_teacher(config_lib.teacher_dir(config, name), expected=identity)
    for name, identity in identities.items()
  ]


def _print_table(results: dict[str, dict[str, Any]], info: types.DatasetInfo) -> None:
  print(
    f"\nTeachers on {info.name} ({info.num_classes} classes, "
    f"{info.image_shape[0]}x{info.image_shape[1]}):"
  )
  print(f"  {'architecture':<20} {'width':>6} {'test top-1':>11} {'train time':>11}")
  for name, meta in results.items():
    seconds = meta.get("train_seconds")
    print(
      f"  {name:<20} {meta['width']:>6.3g} {accuracy_text(meta.get('test_accuracy')):>11} "
      f"{progress_lib.format_duration(seconds) if seconds is not None else '-':>11}"
    )


def main(config: ml_collections.ConfigDict) -> None:
  """Entry point: squeeze every teacher, print a table, write ``teachers.json``."""
  dataset = sources.load_from_config(config.data)
  print(
    f"devices: {jax.device_count()} x {jax.devices()[0].platform}; dataset {dataset.info.name}"
    f": {dataset.info.num_train} train / {dataset.info.num_test} test images",
    flush=True,
  )
  results = squeeze(config, dataset)
  _print_table(results, dataset.info)
  # The workdir may not exist yet when the teachers live elsewhere (config.teachers_dir).
  os.makedirs(config_lib.workdir(config), exist_ok=True)
  path = os.path.join(config_lib.workdir(config), "teachers.json")
  distributed.on_primary("teachers.json", lambda: atomic.write_json(path, results))


if __name__ == "__main__":
  from infer_jax.runtime import cli

  cli.run(main)
