"""The comparison's baseline sets, built with the same teachers and budget as INFER.

* Random: ``ipc`` random real images per class with static soft labels (and the same images
  with hard labels only).
* INFER w/o UFC: INFER's ``K * C`` real images alone, with their static labels.
* SRe2L-style: ``ipc`` class-specific images per class synthesised from noise by the recover
  machinery against one teacher, labelled by all M teachers.

Every built set is saved under ``<workdir>/synthetic`` and reused by a rerun.
"""

from __future__ import annotations

import dataclasses
import os
import time

import ml_collections
import numpy as np

from infer_jax import recover, relabel, synthetic
from infer_jax.core import subsets
from infer_jax.data import types
from infer_jax.runtime import checkpoint, config_lib
from infer_jax.runtime.errors import InputError


def build_random_set(
  config: ml_collections.ConfigDict, dataset: types.Dataset, teachers: list[checkpoint.Teacher]
) -> synthetic.SyntheticSet:
  """The same-budget baseline: ipc random real images per class, static soft labels."""
  info = dataset.info
  metadata = synthetic.set_metadata(config, info, teachers, "random", config.ipc, 0)
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
  soft = _labels_of_images(teachers, images, info, config.synthetic.relabel_batch_size)
  s = synthetic.SyntheticSet(
    images=images,
    source_indices=indices,
    compensators=None,
    labels=soft.reshape(config.ipc, 1, info.num_classes, info.num_classes),
    metadata=metadata,
  )
  return synthetic.save_on_primary(
    path, synthetic.cast(s, label_dtype=config.synthetic.label_dtype)
  )


def _labels_of_images(teachers, images: np.ndarray, info, batch_size: int) -> np.ndarray:
  """Static soft labels of uint8 ``images [..., H, W, 3]``, normalised one batch at a time.

  Returns:
    float32 ``[N, num_classes]``, N the images in row-major order.
  """
  flat = images.reshape(-1, *info.image_shape)
  return relabel.streamed_labels(
    teachers,
    len(flat),
    lambda rows: synthetic.normalize_uint8(flat[rows], info.mean, info.std),
    batch_size=batch_size,
  )


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
  dataset: types.Dataset,
  teachers: list[checkpoint.Teacher],
  timings: dict[str, float],
) -> synthetic.SyntheticSet:
  """SRe2L-style baseline: ipc class-specific images per class, synthesised from noise.

  The recover machinery with the 'class_specific' parameterisation (one free image per
  subset and class) against one teacher (``config.baselines.sre2l_teacher``, default the
  first), with ``r_bn = config.baselines.sre2l_r_bn`` and the images clamped to the valid
  range after every Adam step (``config.baselines.sre2l_clamp = 'every_step'``, SRe2L's
  recipe; 'never' clamps only once at the end); the images are stored as uint8 (as image
  files would be) and labelled by all M teachers like every other set.
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
    clamp=str(config.baselines.get("sre2l_clamp", "every_step")),
  )
  metadata = {
    **synthetic.set_metadata(config, info, teachers, "sre2l", config.ipc, 0),
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
  soft = _labels_of_images(teachers, images, info, config.synthetic.relabel_batch_size)
  timings["recover (SRe2L-style)"] = time.perf_counter() - t
  s = synthetic.SyntheticSet(
    images=images,
    source_indices=np.full((k, c), -1, np.int64),
    compensators=None,
    labels=soft.reshape(k, 1, c, c),
    metadata=metadata,
  )
  return synthetic.save_on_primary(
    path, synthetic.cast(s, label_dtype=config.synthetic.label_dtype)
  )
