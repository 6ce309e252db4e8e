"""scikit-learn's bundled 8x8 handwritten digits: a fixed, stratified 80/20 split."""

from __future__ import annotations

import numpy as np

from infer_jax.data.types import ArraySource, upsample

_DIGITS_TEST_FRACTION = 0.2


_DIGITS_SEED = 0


def load(image_size: int | None) -> tuple[ArraySource, ArraySource, list[str]]:
  from sklearn.datasets import load_digits

  d = load_digits()
  # 0..16 intensities -> 0..255; rounding keeps the mapping exact at both ends.
  x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
  x = np.repeat(x[..., None], 3, axis=-1)
  y = d.target.astype(np.int64)
  # Own stratified split with a fixed numpy Generator, so it does not depend on
  # scikit-learn's splitter implementation.
  rng = np.random.default_rng(_DIGITS_SEED)
  test_idx = []
  for c in range(10):
    idx = np.flatnonzero(y == c)
    test_idx.append(rng.permutation(idx)[: round(len(idx) * _DIGITS_TEST_FRACTION)])
  is_test = np.zeros(len(y), bool)
  is_test[np.concatenate(test_idx)] = True
  x = upsample(x, image_size, "digits")
  return (
    ArraySource(x[~is_test], y[~is_test]),
    ArraySource(x[is_test], y[is_test]),
    [str(c) for c in range(10)],
  )
