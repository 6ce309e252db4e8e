"""Relabel: INFER's static soft labels, the teachers' mean logits on each instance.

    y(s) = (1 / M) * sum_m f_m(s)

computed once on the un-augmented instances (real images included), teachers in
inference mode, in batches sharded over the devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from infer_jax import synthetic
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
  return streamed_labels(
    teachers, len(instances), lambda rows: instances[rows], batch_size=batch_size, mesh=mesh
  )


def streamed_labels(
  teachers: Sequence[checkpoint.Teacher],
  num_instances: int,
  fetch: Callable[[np.ndarray], np.ndarray],
  *,
  batch_size: int = 500,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Static soft labels of instances made one batch at a time: host memory holds one batch
  of instances (plus the labels), whatever the set's size.

  Args:
    teachers: the M teachers.
    num_instances: N.
    fetch: ``rows int64 [R] -> float [R, H, W, 3]`` normalised instances of those rows
      (e.g. :func:`infer_jax.synthetic.materialize_rows`); called once per batch, in order.
    batch_size: instances per batch (rounded up to a multiple of the device count; the last
      batch is padded and the padding dropped).
    mesh: device mesh (one 'data' axis); default all devices.

  Returns:
    float32 ``[N, num_classes]``: the mean of the teachers' logits, summed in teacher order
    (as :func:`static_labels` always did).
  """
  mesh = mesh if mesh is not None else train.data_mesh()
  batch_size = -(-batch_size // mesh.size) * mesh.size
  shard = train.batch_sharding(mesh)
  variables = [jax.device_put(t.variables, train.replicated(mesh)) for t in teachers]
  fns = [_logits_fn(t.model) for t in teachers]
  out = None
  for start in range(0, num_instances, batch_size):
    rows = np.arange(start, min(num_instances, start + batch_size))
    chunk = np.asarray(fetch(rows), np.float32)
    n = len(chunk)
    if n < batch_size:  # one shape for every batch: one compilation
      chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.float32)])
    x = jax.device_put(chunk, shard)
    del chunk
    total = None
    for fn, v in zip(fns, variables, strict=True):
      logits = distributed.to_host(fn(v, x))[:n]
      total = logits if total is None else total + logits
    if out is None:
      out = np.empty((num_instances, total.shape[1]), np.float32)
    out[start : start + n] = total / len(teachers)
  return out


def set_labels(
  teachers: Sequence[checkpoint.Teacher],
  s: synthetic.SyntheticSet,
  *,
  batch_size: int = 500,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Static soft labels of every instance of a set, materialised per batch.

  Equal to ``static_labels(teachers, synthetic.materialize(s)[0])`` without ever holding the
  materialised set (ImageNet-1k ipc 10: 36,000 float32 instances, 22 GB).

  Returns:
    float32 ``[K * (M + 1) * C, num_classes]`` in the set's instance order.
  """
  s.validate()
  return streamed_labels(
    teachers,
    s.num_instances,
    lambda rows: synthetic.materialize_rows(s, rows)[0],
    batch_size=batch_size,
    mesh=mesh,
  )
