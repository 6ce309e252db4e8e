"""The config schema every configs/*.py file starts from, and its validation.

Configs are ml_collections ConfigDicts; unset string settings are '' and unset sizes 0,
because a locked ConfigDict cannot change a field's type from the command line.
"""

from __future__ import annotations

import ml_collections

from infer_jax.errors import InputError


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every config (the teacher recipe of ALGORITHM.md)."""
  c = ml_collections.ConfigDict()
  c.name = "run"
  # Where checkpoints and results go; '' means ./workdir/<name>.
  c.workdir = ""
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.source = "digits"  # digits | npz | imagefolder | cifar10 | cifar100 | tinyimagenet | tfds
  c.data.path = ""  # file or directory for npz / imagefolder / cifar* / tinyimagenet
  c.data.name = ""  # dataset name recorded in metadata; '' = the source's own name
  c.data.image_size = 0  # resize/upsample to this size; 0 = native size
  c.data.tfds_name = ""  # for source=tfds, e.g. 'cifar10'
  c.data.data_dir = ""  # for source=tfds: the TFDS data_dir holding the array_record files

  # Teachers: comma-separated registry names (see infer_jax.models.list_models()).
  c.teachers = "resnet18,mobilenetv2,efficientnet_b0,shufflenet_g2"
  c.teacher_width = 1.0  # channel multiplier of every teacher (1.0 = the paper's networks)
  c.stem = "auto"  # cifar | imagenet | auto (cifar for images up to 64x64)

  # Squeeze: the standard teacher recipe (SGD, momentum, weight decay, cosine, crop+flip).
  c.squeeze = ml_collections.ConfigDict()
  c.squeeze.epochs = 200
  c.squeeze.batch_size = 128
  c.squeeze.lr = 0.1
  c.squeeze.momentum = 0.9
  c.squeeze.nesterov = False
  c.squeeze.weight_decay = 5e-4
  c.squeeze.warmup_epochs = 0
  c.squeeze.label_smoothing = 0.0
  c.squeeze.augment = "crop_flip"  # crop_flip | rrc_flip | flip | none
  c.squeeze.crop_padding = 4
  c.squeeze.eval_batch_size = 500
  c.squeeze.checkpoint_every_steps = 500
  c.squeeze.log_every_steps = 50
  c.squeeze.dtype = "float32"  # computation dtype: float32 | bfloat16
  c.squeeze.worker_count = 0  # grain worker processes for augmentation (0 = in-process)
  return c


def teacher_names(config: ml_collections.ConfigDict) -> list[str]:
  """The teacher architectures a config names, validated against the model registry."""
  from infer_jax import models

  names = [n.strip() for n in config.teachers.split(",") if n.strip()]
  if not names:
    raise InputError(
      "config.teachers is empty: name at least one architecture, e.g. --config.teachers=resnet18."
    )
  unknown = [n for n in names if n not in models.list_models()]
  if unknown:
    raise InputError(
      f"Unknown teacher architecture(s) {unknown} in config.teachers. "
      f"Available: {', '.join(models.list_models())}."
    )
  if len(set(names)) != len(names):
    raise InputError(f"config.teachers names an architecture twice: {names}.")
  return names


def resolve_stem(config: ml_collections.ConfigDict, image_shape) -> str:
  """'cifar' for images up to 64x64 (the paper's CIFAR/Tiny-ImageNet variants), else 'imagenet'."""
  if config.stem == "auto":
    return "cifar" if max(image_shape[:2]) <= 64 else "imagenet"
  if config.stem not in ("cifar", "imagenet"):
    raise InputError(f"config.stem must be 'auto', 'cifar' or 'imagenet', got {config.stem!r}.")
  return config.stem


def workdir(config: ml_collections.ConfigDict) -> str:
  """The run's working directory (``config.workdir`` or ``./workdir/<name>``)."""
  return config.workdir or f"workdir/{config.name}"
