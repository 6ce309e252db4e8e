"""Relabelling streams the set: instances are materialised one batch at a time, so host
memory is bounded by the batch, not by the set."""

import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer_jax import models, relabel, synthetic
from infer_jax.runtime import checkpoint
from tests.conftest import toy_teacher_metadata

SHAPE = (16, 16, 3)
C = 4
M = 2
BATCH = 64


@pytest.fixture(scope="module")
def teachers():
  model = models.create_model("resnet_tiny", C)
  meta = toy_teacher_metadata("resnet_tiny", C, SHAPE)
  init = jax.jit(lambda k: model.init(k, jnp.zeros((1, *SHAPE)), train=False))
  return [checkpoint.Teacher(model, init(jax.random.key(s, impl="rbg")), meta) for s in (1, 2)]


def _set(k: int) -> synthetic.SyntheticSet:
  rng = np.random.default_rng(k)
  return synthetic.SyntheticSet(
    images=rng.integers(0, 256, (k, C, *SHAPE), dtype=np.uint8),
    source_indices=np.zeros((k, C), np.int64),
    compensators=rng.normal(0, 0.5, (k, M, *SHAPE)).astype(np.float32),
    labels=None,
    metadata={
      "num_classes": C,
      "image_shape": list(SHAPE),
      "mean": [0.5] * 3,
      "std": [0.25] * 3,
      "K": k,
      "M": M,
    },
  )


def _peak_bytes(fn) -> tuple[int, object]:
  """Peak of Python/numpy host allocations (tracemalloc) while ``fn()`` runs."""
  tracemalloc.start()
  try:
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  return peak, out


def test_set_labels_are_the_mean_logits_of_every_materialised_instance(teachers):
  s = _set(5)  # 60 instances: a padded last batch of 64
  got = relabel.set_labels(teachers, s, batch_size=BATCH)
  instances = synthetic.materialize(s)[0]
  by_hand = np.mean(
    [np.asarray(t.model.apply(t.variables, instances, train=False)) for t in teachers], axis=0
  )
  assert got.shape == (s.num_instances, C)
  np.testing.assert_allclose(got, by_hand, rtol=1e-5, atol=1e-5)
  assert np.abs(by_hand).min() > 1e-4  # live logits: a zero label would pass for anything


def test_relabel_host_memory_is_bounded_by_the_batch_not_the_set(teachers):
  small, large = _set(40), _set(160)  # 480 and 1,920 instances
  instance_bytes = int(np.prod(SHAPE)) * 4
  relabel.set_labels(teachers, small, batch_size=BATCH)  # compile outside the measurement
  peak_small, _ = _peak_bytes(lambda: relabel.set_labels(teachers, small, batch_size=BATCH))
  peak_large, _ = _peak_bytes(lambda: relabel.set_labels(teachers, large, batch_size=BATCH))
  labels_growth = (large.num_instances - small.num_instances) * C * 4
  stored_growth = large.compensators.nbytes - small.compensators.nbytes
  # The set grew by 1,440 instances (4.4 MB materialised). The peak may grow by the labels it
  # returns, the finite-check mask of the stored compensators (validation) and one batch.
  allowed = labels_growth + stored_growth // 2 + BATCH * instance_bytes
  assert peak_large - peak_small <= allowed, (peak_small, peak_large, allowed)
  bound = 8 * BATCH * instance_bytes + large.num_instances * C * 4
  assert peak_large <= bound, (peak_large, bound)
  # The measurement sees a whole-set materialisation: the same labels through materialize().
  peak_whole, _ = _peak_bytes(
    lambda: relabel.static_labels(teachers, synthetic.materialize(large)[0], batch_size=BATCH)
  )
  assert peak_whole >= large.num_instances * instance_bytes > bound
