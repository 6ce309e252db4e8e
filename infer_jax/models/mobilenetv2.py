"""MobileNetV2 in two reference layouts, selected by ``stem``.

* ``stem='cifar'``: the pytorch-cifar (kuangliu) CIFAR MobileNetV2 that INFER's authors
  train: 3x3/1 stem, the second stage at stride 1 instead of 2, plain ReLU, every block
  has its 1x1 expansion conv (even at expansion 1) and, at stride 1, a shortcut that is
  the identity or a 1x1 conv + BN when the channel count changes.
* ``stem='imagenet'``: torchvision's ``mobilenet_v2``: 3x3/2 stem, ReLU6, no expansion
  conv at expansion 1, a residual only at stride 1 with equal channels, and a
  dropout + linear classifier.

Flax module names are the PyTorch module names with '.' -> '_' per nesting level (the
block ``layers.3`` is the submodule ``layers_3`` holding ``conv1`` ...; torchvision's
``features.2.conv.0.0`` is ``features_2/conv_0_0``), so converting a state_dict is a
renaming: join the Flax path with '_' and compare with the PyTorch name with '.' -> '_'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from infer_jax.models.common import (
  BN_EPSILON,
  batch_norm,
  check_stem,
  conv,
  dense,
  global_avg_pool,
  relu6,
  scale_channels,
)
from infer_jax.models.registry import register

# (expansion t, output channels c, repeats n, first stride s) per stage.
BlockTable = Sequence[tuple[int, int, int, int]]

# pytorch-cifar: the second stage runs at stride 1 so 32x32 inputs end at 4x4.
CIFAR_BLOCKS: BlockTable = (
  (1, 16, 1, 1),
  (6, 24, 2, 1),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
# torchvision / the MobileNetV2 paper's table.
IMAGENET_BLOCKS: BlockTable = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
# Tiny test table: exercises an expansion-1 block, an identity residual, a projected
# (1x1 conv) shortcut in the cifar layout and a strided block without residual.
TINY_BLOCKS: BlockTable = ((1, 8, 1, 1), (2, 16, 2, 1), (2, 24, 1, 2))


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Rounds a channel count to the nearest multiple of ``divisor`` as torchvision does.

  The result is at least ``min_value`` (default ``divisor``) and is bumped up by one
  ``divisor`` when rounding down would lose more than 10% of ``value``.

  Args:
    value: the unrounded channel count (e.g. ``channels * width``).
    divisor: the multiple to round to.
    min_value: lower bound of the result.

  Returns:
    The rounded channel count (an int).
  """
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


class CifarBlock(nn.Module):
  """pytorch-cifar inverted residual. ``[N, H, W, in_planes] -> [N, H/s, W/s, out_planes]``.

  Attributes:
    in_planes: input channels.
    out_planes: output channels.
    expansion: hidden channels = ``expansion * in_planes`` (the 1x1 expansion conv is
      present even at expansion 1, as in the reference).
    stride: depthwise stride; at stride 1 a shortcut is added.
    dtype: computation dtype.
  """

  in_planes: int
  out_planes: int
  expansion: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """``[N, H, W, in_planes] -> [N, H/stride, W/stride, out_planes]``."""
    planes = self.expansion * self.in_planes
    bn = lambda name: batch_norm(train, name=name, dtype=self.dtype, epsilon=BN_EPSILON)
    y = nn.relu(bn("bn1")(conv(planes, 1, name="conv1", dtype=self.dtype)(x)))
    y = conv(planes, 3, self.stride, groups=planes, name="conv2", dtype=self.dtype)(y)
    y = nn.relu(bn("bn2")(y))
    y = bn("bn3")(conv(self.out_planes, 1, name="conv3", dtype=self.dtype)(y))
    # The reference adds a shortcut at every stride-1 block (projecting it when the
    # channel count changes) and none at stride 2.
    if self.stride != 1:
      return y
    if self.in_planes != self.out_planes:
      x = bn("shortcut_1")(conv(self.out_planes, 1, name="shortcut_0", dtype=self.dtype)(x))
    return y + x


class InvertedResidual(nn.Module):
  """torchvision inverted residual. ``[N, H, W, in_planes] -> [N, H/s, W/s, out_planes]``.

  Attributes:
    in_planes: input channels.
    out_planes: output channels.
    expansion: hidden channels = ``round(expansion * in_planes)``; no expansion conv at 1.
    stride: depthwise stride.
    dtype: computation dtype.
  """

  in_planes: int
  out_planes: int
  expansion: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """``[N, H, W, in_planes] -> [N, H/stride, W/stride, out_planes]``."""
    hidden = int(round(self.in_planes * self.expansion))
    bn = lambda name: batch_norm(train, name=name, dtype=self.dtype, epsilon=BN_EPSILON)
    # torchvision's ``conv`` Sequential: [expand (Conv-BN-ReLU6)], depthwise (Conv-BN-ReLU6),
    # project conv, project BN; indices shift by one when there is no expansion.
    i = 0
    y = x
    if self.expansion != 1:
      y = conv(hidden, 1, name=f"conv_{i}_0", dtype=self.dtype)(y)
      y = relu6(bn(f"conv_{i}_1")(y))
      i += 1
    y = conv(hidden, 3, self.stride, groups=hidden, name=f"conv_{i}_0", dtype=self.dtype)(y)
    y = relu6(bn(f"conv_{i}_1")(y))
    y = conv(self.out_planes, 1, name=f"conv_{i + 1}", dtype=self.dtype)(y)
    y = bn(f"conv_{i + 2}")(y)
    if self.stride == 1 and self.in_planes == self.out_planes:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 classifier. ``[N, H, W, 3] -> [N, num_classes]`` float32 logits.

  Attributes:
    num_classes: classifier outputs.
    stem: 'cifar' (pytorch-cifar layout) or 'imagenet' (torchvision layout).
    width: channel multiplier. 'cifar' scales with :func:`scale_channels`; 'imagenet'
      rounds to multiples of 8 like torchvision and never shrinks the 1280-wide head.
    dtype: computation dtype (parameters stay float32).
    blocks: stage table ``(t, c, n, s)``; None uses the reference table of ``stem``.
    stem_channels: channels of the first conv before width scaling.
    last_channels: channels of the final 1x1 conv before width scaling.
  """

  num_classes: int
  stem: str = "cifar"
  width: float = 1.0
  dtype: Any = jnp.float32
  blocks: BlockTable | None = None
  stem_channels: int = 32
  last_channels: int = 1280

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Logits ``[N, num_classes]`` (float32) for images ``[N, H, W, 3]``.

    ``train=True`` normalises with batch statistics and updates ``batch_stats`` (pass
    ``mutable=['batch_stats']``); the 'imagenet' classifier dropout then needs a
    'dropout' rng. ``train=False`` is deterministic.
    """
    check_stem(self.stem)
    if self.stem == "cifar":
      return self._cifar(x, train)
    return self._imagenet(x, train)

  def _cifar(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    blocks = CIFAR_BLOCKS if self.blocks is None else self.blocks
    bn = lambda name: batch_norm(train, name=name, dtype=self.dtype, epsilon=BN_EPSILON)
    ch = scale_channels(self.stem_channels, self.width)
    x = conv(ch, 3, 1, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(bn("bn1")(x))
    index = 0
    for expansion, out, repeats, stride in blocks:
      out = scale_channels(out, self.width)
      for r in range(repeats):
        x = CifarBlock(
          ch, out, expansion, stride if r == 0 else 1, dtype=self.dtype, name=f"layers_{index}"
        )(x, train=train)
        ch = out
        index += 1
    last = scale_channels(self.last_channels, self.width)
    x = nn.relu(bn("bn2")(conv(last, 1, name="conv2", dtype=self.dtype)(x)))
    # The reference's avg_pool2d(4) on the 4x4 map of a 32x32 input is a global pool;
    # a global pool also keeps the head valid for 64x64 inputs.
    features = global_avg_pool(x)
    self.sow("intermediates", "pre_logits", features)
    logits = dense(self.num_classes, name="linear", dtype=self.dtype)(features)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

  def _imagenet(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    blocks = IMAGENET_BLOCKS if self.blocks is None else self.blocks
    bn = lambda name: batch_norm(train, name=name, dtype=self.dtype, epsilon=BN_EPSILON)
    ch = make_divisible(self.stem_channels * self.width)
    x = conv(ch, 3, 2, name="features_0_0", dtype=self.dtype)(x)
    x = relu6(bn("features_0_1")(x))
    index = 1
    for expansion, out, repeats, stride in blocks:
      out = make_divisible(out * self.width)
      for r in range(repeats):
        x = InvertedResidual(
          ch, out, expansion, stride if r == 0 else 1, dtype=self.dtype, name=f"features_{index}"
        )(x, train=train)
        ch = out
        index += 1
    last = make_divisible(self.last_channels * max(1.0, self.width))
    x = conv(last, 1, name=f"features_{index}_0", dtype=self.dtype)(x)
    x = relu6(bn(f"features_{index}_1")(x))
    features = global_avg_pool(x)
    self.sow("intermediates", "pre_logits", features)
    features = nn.Dropout(0.2, deterministic=not train, name="classifier_0")(features)
    logits = dense(self.num_classes, name="classifier_1", dtype=self.dtype)(features)
    # float32 logits (float64 when computing in float64, for reference comparisons).
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


@register("mobilenetv2")
def mobilenetv2(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> MobileNetV2:
  """MobileNetV2 (2.30M params for 10 classes at 'cifar'; 3.50M for 1000 at 'imagenet')."""
  check_stem(stem)
  return MobileNetV2(num_classes, stem=stem, width=width, dtype=dtype)


@register("mobilenetv2_tiny")
def mobilenetv2_tiny(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> MobileNetV2:
  """A few-thousand-parameter MobileNetV2 on the same code path, for fast tests."""
  check_stem(stem)
  return MobileNetV2(
    num_classes,
    stem=stem,
    width=width,
    dtype=dtype,
    blocks=TINY_BLOCKS,
    stem_channels=8,
    last_channels=32,
  )
