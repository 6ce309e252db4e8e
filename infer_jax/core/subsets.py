"""The INFER budget, the real images of each subset, and the compression ratio.

With ``ipc`` images per class of budget, ``C`` classes and ``M`` teachers, INFER builds
``K = floor(ipc * C / (C + M))`` subsets. Subset k stores one real image per class (C
images) and M compensators, so all subsets together store ``K * (C + M) <= ipc * C``
image equivalents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from infer_jax.runtime.errors import InputError


def num_subsets(ipc: int, num_classes: int, num_teachers: int) -> int:
  """K = (ipc * C) // (C + M), refusing budgets that give K = 0.

  Args:
    ipc: images-per-class budget.
    num_classes: C.
    num_teachers: M (compensators per subset).

  Returns:
    K >= 1.

  Raises:
    InputError: the budget gives K = 0 (the message names the smallest ipc that works).
  """
  if ipc < 1 or num_classes < 1 or num_teachers < 0:
    raise InputError(
      f"ipc, classes and teachers must be positive; got ipc={ipc}, "
      f"classes={num_classes}, teachers={num_teachers}."
    )
  k = (ipc * num_classes) // (num_classes + num_teachers)
  if k == 0:
    smallest = math.ceil((num_classes + num_teachers) / num_classes)
    raise InputError(
      f"ipc={ipc} is too small for INFER with {num_classes} classes and {num_teachers} "
      f"teachers: one subset needs {num_classes + num_teachers} image equivalents "
      f"({num_classes} real images + {num_teachers} compensators) but the budget is "
      f"{ipc * num_classes}. Use ipc >= {smallest}."
    )
  return k


def sample_subsets(labels: np.ndarray, num_classes: int, num_subsets: int, seed: int) -> np.ndarray:
  """Draws K * C distinct training images: one per class per subset.

  Args:
    labels: int ``[N]`` labels of the training set.
    num_classes: C.
    num_subsets: K.
    seed: the draw is a pure function of (labels, K, seed).

  Returns:
    int64 ``[K, C]``: ``indices[k, c]`` is a training image of class c; all distinct.

  Raises:
    InputError: a class has fewer than K training images.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  indices = np.empty((num_subsets, num_classes), np.int64)
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < num_subsets:
      raise InputError(
        f"Class {c} has {len(members)} training images but {num_subsets} "
        "subsets need one each: lower ipc."
      )
    indices[:, c] = rng.choice(members, size=num_subsets, replace=False)
  return indices


def compression_ratio(
  stored_bytes: int, num_train_images: int, image_shape: Sequence[int]
) -> float:
  """Stored bytes over the bytes of the original training set as uint8 pixels.

  Args:
    stored_bytes: bytes a method stores (a synthetic set's ``storage_bytes()['total']``, plus
      the teachers' weights for online labels).
    num_train_images: size of the original training set (> 0).
    image_shape: ``(H, W, C)`` (C = 3, or 1 for greyscale).

  Returns:
    ``stored_bytes / (num_train_images * H * W * C)``.

  Raises:
    InputError: ``num_train_images`` is not positive.
  """
  if int(num_train_images) <= 0:
    raise InputError(
      f"num_train_images is {num_train_images}; pass the training-set size (> 0), e.g. "
      "DatasetInfo.num_train."
    )
  return stored_bytes / (int(num_train_images) * math.prod(image_shape))
