"""Building blocks shared by every model family.

Conventions (all families follow them):
  * Inputs are NHWC float arrays already normalised with the dataset mean/std;
    ``__call__(x, train=False)`` returns float32 logits ``[N, num_classes]``.
  * BatchNorm uses PyTorch's defaults (momentum 0.1 there, i.e. 0.9 here; eps 1e-5)
    so that running statistics mean the same thing as in the PyTorch references and
    converted checkpoints behave identically. Flax updates the running variance with
    the biased batch variance where PyTorch uses the unbiased one; this only affects
    training, never inference or the BN-matching loss.
  * Convolutions pad symmetrically by ``kernel // 2`` (PyTorch ``padding=k//2``), not
    XLA 'SAME', which pads asymmetrically for stride 2 and would shift every feature map.
  * Submodule names follow the PyTorch reference module names with '.' replaced by '_'
    (``layer1.0.conv1`` -> ``layer1_0/conv1``), so weight conversion is a renaming.
  * ``width`` scales every channel count; ``width=1`` is the reference architecture.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

STEMS = ("cifar", "imagenet")

# PyTorch BatchNorm2d defaults: momentum 0.1 (Flax counts the complement), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He-normal (fan_out) for convolutions as torchvision initialises them; PyTorch's
# default Linear init (uniform with bound 1/sqrt(fan_in)) for dense layers.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def batch_norm(
  train: bool,
  name: str | None = None,
  dtype: Any = jnp.float32,
  epsilon: float = BN_EPSILON,
  scale_init=nn.initializers.ones,
) -> nn.BatchNorm:
  """A BatchNorm layer with the project's conventions.

  Args:
    train: if True normalise with batch statistics and update the running ones;
      if False normalise with the running statistics (inference mode).
    name: module name (the PyTorch module name with '.' -> '_').
    dtype: computation dtype.
    epsilon: variance epsilon (1e-5 unless the reference says otherwise).
    scale_init: initialiser of the scale (zeros for a residual branch's last BN).

  Returns:
    ``nn.BatchNorm`` acting on the last (channel) axis.
  """
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=epsilon,
    dtype=dtype,
    name=name,
    scale_init=scale_init,
  )


def conv(
  features: int,
  kernel: int,
  stride: int = 1,
  groups: int = 1,
  use_bias: bool = False,
  name: str | None = None,
  dtype: Any = jnp.float32,
  padding: int | None = None,
) -> nn.Conv:
  """A 2-D convolution padded like PyTorch's ``padding=kernel//2``.

  Args:
    features: output channels.
    kernel: square kernel size.
    stride: square stride.
    groups: feature groups (``groups == in_channels`` gives a depthwise conv).
    use_bias: whether the conv has a bias.
    name: module name.
    dtype: computation dtype.
    padding: symmetric padding per side; default ``kernel // 2``.

  Returns:
    ``nn.Conv`` mapping ``[N, H, W, Cin] -> [N, H', W', features]``.
  """
  p = kernel // 2 if padding is None else padding
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((p, p), (p, p)),
    feature_group_count=groups,
    use_bias=use_bias,
    kernel_init=conv_init,
    dtype=dtype,
    name=name,
  )


def dense(features: int, name: str | None = None, dtype: Any = jnp.float32) -> nn.Dense:
  """A dense layer with PyTorch's default initialisation. ``[N, D] -> [N, features]``."""
  return nn.Dense(features, kernel_init=dense_init, dtype=dtype, name=name)


def scale_channels(channels: int, width: float, divisor: int = 1) -> int:
  """Channel count ``channels * width``, rounded to a multiple of ``divisor`` (>= divisor).

  ``width == 1`` returns ``channels`` unchanged whatever the divisor, so the full-width
  model is exactly the reference architecture.
  """
  if width == 1.0:
    return channels
  scaled = int(round(channels * width / divisor)) * divisor
  return max(divisor, scaled)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """Mean over the spatial axes. ``[N, H, W, C] -> [N, C]``."""
  return jnp.mean(x, axis=(1, 2))


def check_stem(stem: str) -> None:
  """Raises ValueError for a stem name other than 'cifar' or 'imagenet'."""
  if stem not in STEMS:
    raise ValueError(
      f"Unknown stem {stem!r}: use one of {STEMS} ('cifar' for 32x32 and 64x64 "
      "inputs, 'imagenet' for 224x224)."
    )


relu6 = functools.partial(jnp.clip, min=0.0, max=6.0)
