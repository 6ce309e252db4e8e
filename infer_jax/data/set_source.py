"""A synthetic set as a random-access source of the input pipeline (:mod:`infer_jax.data.pipeline`).

The student trainer reads every synthetic set through :class:`SetSource`: the instances
``clip(x + u)`` of a :class:`~infer_jax.synthetic.SyntheticSet` are materialised as they are
read, so a set never needs to exist as float32 in memory (ImageNet-scale sets).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from infer_jax import synthetic


class SetSource:
  """Random-access view of a synthetic set for the grain input pipeline.

  ``source[i] == {'image': float32 [H, W, 3], 'label': int32, 'soft_label': float32 [C]}``
  (``soft_label`` only when the set has soft labels), and ``read_batch(indices)`` gives the
  same fields stacked for a whole batch in one vectorised read (what the pipeline uses).
  Built from materialised arrays (:meth:`from_arrays`) or from a
  :class:`~infer_jax.synthetic.SyntheticSet`, whose instances ``clip(x + u)`` are then
  materialised as they are read, so the set never needs to exist as float32 in memory
  (ImageNet-scale sets).
  """

  def __init__(
    self, length: int, read_rows: Callable[[np.ndarray], dict[str, np.ndarray]], has_soft: bool
  ):
    self._length = length
    self._read_rows = read_rows
    self.has_soft = has_soft

  @classmethod
  def from_arrays(cls, images: np.ndarray, soft: np.ndarray | None, hard: np.ndarray) -> SetSource:
    """``images`` float32 ``[N, H, W, 3]``, ``soft`` ``[N, C]`` or None, ``hard`` int ``[N]``."""

    def read_rows(rows: np.ndarray) -> dict[str, np.ndarray]:
      out = {"image": images[rows], "label": hard[rows]}
      if soft is not None:
        out["soft_label"] = soft[rows]
      return out

    return cls(len(images), read_rows, soft is not None)

  @classmethod
  def from_synthetic(cls, s: synthetic.SyntheticSet) -> SetSource:
    """Materialises instances of ``s`` (a validated ``SyntheticSet``) as they are read."""

    def read_rows(rows: np.ndarray) -> dict[str, np.ndarray]:
      images, soft, hard = synthetic.materialize_rows(s, rows)
      out = {"image": images, "label": hard}
      if soft is not None:
        out["soft_label"] = soft
      return out

    return cls(s.num_instances, read_rows, s.labels is not None)

  def __len__(self) -> int:
    return self._length

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Fields of the instances ``indices`` (int ``[b]``), each stacked: ``[b, ...]``."""
    return self._read_rows(np.asarray(indices, np.int64))

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.read_batch(np.asarray([index])).items()}
