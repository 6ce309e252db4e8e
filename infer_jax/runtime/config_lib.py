"""The config schema every configs/*.py file starts from, and its validation.

Configs are ml_collections ConfigDicts; unset string settings are '' and unset sizes 0,
because a locked ConfigDict cannot change a field's type from the command line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from infer_jax.runtime.errors import InputError


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every config (the teacher recipe of docs/algorithm.md)."""
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
  # Where teacher checkpoints live ('' = <workdir>/teachers). Point several runs (e.g. ipc 10
  # and ipc 50) at one directory to share their teachers.
  c.teachers_dir = ""

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

  # Distill: the INFER budget and its stages (docs/algorithm.md "Recover", "Relabel", recipes).
  c.ipc = 10  # images-per-class budget; K = ipc * C // (C + M) subsets

  c.recover = ml_collections.ConfigDict()
  c.recover.iterations = 1000
  c.recover.lr = 0.25
  c.recover.r_bn = 1.0
  c.recover.first_bn_multiplier = 10.0
  c.recover.jitter = 4
  c.recover.augment = "roll"  # roll | rrc_flip_roll | none
  c.recover.checkpoint_every = 100
  c.recover.log_every = 100
  # Devices per subset (its C images split over them; docs/scaling.md): 0 = automatic.
  c.recover.image_shards = 0
  c.recover.remat = "none"  # none | blocks: recompute the teacher's blocks in the backward pass
  # Subsets per sequential chunk (0: all at once wherever the device memory holds them).
  c.recover.subset_chunk = 0
  c.recover.dtype = "float32"  # float32 | bfloat16: the teacher's computation dtype in recover

  c.synthetic = ml_collections.ConfigDict()
  # float32 | float16 | bfloat16 | uint8 (affine per compensator: scale and offset float32).
  # uint8 compensators and float16 labels store the INFER set in about Random's bytes at the
  # same ipc (the paper's budget counts a compensator as one image); the CIFAR-10 study
  # measured them within noise of float32 (ipc 10, 3 seeds: 34.53 +- 1.34% against
  # 34.75 +- 0.33%; docs/results.md, ipc 10), so they are the default.
  c.synthetic.compensator_dtype = "uint8"
  c.synthetic.label_dtype = "float16"  # float32 | float16 | bfloat16
  c.synthetic.relabel_batch_size = 500

  # Student: trained from scratch on each synthetic set (static soft labels, MixUp, KL).
  c.student = ml_collections.ConfigDict()
  c.student.arch = "resnet18"
  c.student.width = 1.0
  c.student.epochs = 400
  c.student.batch_size = 64
  c.student.optimizer = "adamw"  # adamw | sgd
  c.student.lr = 1e-3
  c.student.weight_decay = 0.01
  c.student.momentum = 0.9
  c.student.temperature = 30.0
  c.student.mixup_alpha = 0.8
  c.student.augment = "crop_flip"  # crop_flip | rrc_flip | none
  c.student.crop_padding = 4
  c.student.eval_every_epochs = 0
  c.student.log_every_epochs = 0
  c.student.dtype = "float32"

  # The comparison the distill job runs (docs/protocol.md), same teachers, student and steps:
  # random_hard | random | infer_wo_ufc | sre2l | infer | infer_dyn (comma-separated).
  c.methods = "random_hard,random,infer_wo_ufc,sre2l,infer,infer_dyn"
  c.baselines = ml_collections.ConfigDict()
  c.baselines.sre2l_r_bn = 0.01  # SRe2L's BN weight; its recipe otherwise follows c.recover
  # SRe2L clamps its images to the valid range after every Adam step; 'never' clamps once at
  # the end (the images are stored as uint8 either way).
  c.baselines.sre2l_clamp = "every_step"  # every_step | never
  c.baselines.sre2l_teacher = ""  # the synthesis teacher; '' = the first of c.teachers

  # Evaluation: one student per seed; the final epoch is reported as mean ± std.
  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.seeds = 3
  c.evaluate.first_seed = 0
  c.evaluate.set = ""  # python -m infer_jax.evaluate: the synthetic set (.npz) to evaluate
  c.evaluate.labels = "static"  # static | dynamic | hard
  c.evaluate.out = ""  # result JSON; '' = <workdir>/evaluate/<set>-<labels>.json
  # distill: how rows get their optimisation steps (docs/protocol.md): same_steps (every row
  # about the INFER set's steps) | same_epochs (the paper's: the student epochs over each
  # row's own set) | both (every row under each; a row neither changes is trained once).
  c.evaluate.protocol = "same_steps"
  # distill: > 0 records a learning curve (test top-1 every this many steps, first seed) for
  # the rows of curve_methods (comma-separated method keys).
  c.evaluate.curve_every = 0
  c.evaluate.curve_methods = "infer,random"
  # distill: is the budget converged? Multiples of the same_steps rows' steps ('0.5,2') at
  # which the rows of curve_methods train one more student each (first seed), recorded as the
  # summary's budget_sweep; '' = off.
  c.evaluate.budget_sweep = ""
  # distill: epochs of the full_data row (the whole training set, hard labels) under both
  # protocols; 0 = the protocol's rule (same_epochs: student.epochs; same_steps: the INFER
  # set's steps).
  c.evaluate.full_data_epochs = 0
  # distill: teacher feature duplication (within-class cosine similarity) of real, INFER and
  # SRe2L-style instances, stored in the summary (docs/protocol.md).
  c.evaluate.feature_similarity = False

  # Multi-process runs (infer_jax.runtime.distributed, docs/scaling.md). On SLURM (srun), Open MPI
  # and Cloud TPU pods everything is auto-detected; elsewhere give the coordinator address,
  # process count and, per process, its id. Only these settings may differ between processes.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.mode = "auto"  # auto | on | off: when to call jax.distributed.initialize()
  c.distributed.coordinator_address = ""  # host:port of process 0; '' = auto-detect
  c.distributed.num_processes = 0  # 0 = auto-detect
  c.distributed.process_id = -1  # -1 = auto-detect
  c.distributed.initialization_timeout = 300  # seconds to wait for the coordinator and peers
  c.distributed.cpu_devices = 0  # CPU devices per process (local runs); 0 = JAX's default
  return c


def typed_fields(cls: Any, cfg: Mapping[str, Any], what: str) -> dict[str, Any]:
  """Keyword arguments for the dataclass ``cls`` from a ConfigDict block (or mapping).

  Fields missing from ``cfg`` are left out (they take the dataclass defaults); other keys of
  the block are ignored. Values are converted to the type of the field's default, so
  ``epochs=400.0`` or ``lr=1`` from a command line are accepted.

  Raises:
    InputError: a value cannot be converted (``what`` names the block in the message).
  """
  kwargs = {}
  for field in dataclasses.fields(cls):
    if field.name not in cfg:
      continue
    value = cfg[field.name]
    kind = type(field.default)
    try:
      if kind is int and float(value) != int(value):
        raise ValueError("not an integer")
      kwargs[field.name] = kind(value)
    except (TypeError, ValueError) as e:
      raise InputError(
        f"{what} config field {field.name!r} must be a {kind.__name__}, got {value!r}."
      ) from e
  return kwargs


def parse_arg(arg: str | None, **defaults):
  """Parses a config argument ``'ipc=50,width=0.25'`` (``--config=file.py:ARG``).

  Values are converted to the type of the default of the same key.

  Raises:
    InputError: an unknown key or a value of the wrong type.
  """
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise InputError(
        f"Bad config argument {item!r}: use key=value with keys "
        f"{sorted(defaults)}, e.g. --config=configs/cifar10.py:ipc=50."
      )
    try:
      values[key] = type(defaults[key])(value)
    except ValueError as e:
      raise InputError(
        f"Config argument {key}={value!r} is not a {type(defaults[key]).__name__}."
      ) from e
  return values


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


def teacher_dir(config: ml_collections.ConfigDict, architecture: str) -> str:
  """One teacher's checkpoint directory: ``<teachers_dir or workdir/teachers>/<architecture>``."""
  root = config.teachers_dir or os.path.join(workdir(config), "teachers")
  return os.path.join(root, architecture)


def workdir(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
  """The run's working directory (``config.workdir`` or ``./workdir/<name>``).

  ``config`` is the run's ConfigDict or its dict form (as recorded in ``summary.json``).
  """
  return config.get("workdir") or f"workdir/{config['name']}"
