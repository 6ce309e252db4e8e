"""Relabel: INFER's static soft labels, the teachers' mean logits on each instance.

    y(s) = (1 / M) * sum_m f_m(s)

computed once on the un-augmented instances (real images included), teachers in
inference mode, in batches sharded over the devices.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from infer_jax.runtime import checkpoint, distributed, train


@functools.lru_cache(maxsize=32)
def _logits_fn(model):
  return jax.jit(lambda variables, x: model.apply(variables, x, train=False).astype(jnp.float32))


def teacher_logits(
  teacher: checkpoint.Teacher,
  instances: np.ndarray,
  *,
  batch_size: int = 500,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Logits of one teacher on every instance.

  Args:
    teacher: the teacher (inference mode).
    instances: float ``[N, H, W, 3]`` normalised images.
    batch_size: images per device batch (rounded up to a multiple of the device count;
      the last batch is padded and the padding dropped).
    mesh: device mesh (one 'data' axis); default all devices.

  Returns:
    float32 ``[N, num_classes]``.
  """
  mesh = mesh if mesh is not None else train.data_mesh()
  batch_size = -(-batch_size // mesh.size) * mesh.size
  shard = train.batch_sharding(mesh)
  variables = jax.device_put(teacher.variables, train.replicated(mesh))
  fn = _logits_fn(teacher.model)
  out = []
  for start in range(0, len(instances), batch_size):
    chunk = np.asarray(instances[start : start + batch_size], np.float32)
    n = len(chunk)
    if n < batch_size:  # one shape for every batch: one compilation
      chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.float32)])
    out.append(distributed.to_host(fn(variables, jax.device_put(chunk, shard)))[:n])
  return np.concatenate(out)


def static_labels(
  teachers: Sequence[checkpoint.Teacher],
  instances: np.ndarray,
  *,
  batch_size: int = 500,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """INFER's static soft labels: the mean over teachers of their logits.

  Args:
    teachers: the M teachers.
    instances: float ``[N, H, W, 3]`` normalised, un-augmented instances.
    batch_size: see :func:`teacher_logits`.
    mesh: device mesh.

  Returns:
    float32 ``[N, num_classes]`` mean logits.
  """
  total = None
  for teacher in teachers:
    logits = teacher_logits(teacher, instances, batch_size=batch_size, mesh=mesh)
    total = logits if total is None else total + logits
  return total / len(teachers)
