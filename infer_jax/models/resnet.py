"""ResNet-18/34/50/101 in the torchvision layout, with a CIFAR or an ImageNet stem.

The blocks follow torchvision: BasicBlock (two 3x3 convs) for ResNet-18/34, Bottleneck
(1x1 -> 3x3 -> 1x1, expansion 4, stride on the 3x3 conv as in "ResNet v1.5") for
ResNet-50/101, and a projection shortcut (1x1 conv + BN) whenever the stride or the
channel count changes. Module names are torchvision's with '.' -> '_' (``layer1.0.conv1``
-> ``layer1_0/conv1``, ``layer1.0.downsample.0`` -> ``layer1_0/downsample_0``).

The 'cifar' stem (3x3 stride-1 conv, no max-pool) is the widely used pytorch-cifar
variant for 32x32 / 64x64 inputs; the 'imagenet' stem is torchvision's (7x7 stride-2 conv
then a 3x3 stride-2 max-pool).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from infer_jax.models.common import (
  batch_norm,
  check_stem,
  conv,
  dense,
  global_avg_pool,
  scale_channels,
)
from infer_jax.models.registry import register


def _shortcut(
  x: jnp.ndarray, out_channels: int, stride: int, train: bool, dtype: Any
) -> jnp.ndarray:
  """Identity, or the 1x1 conv + BN projection (``downsample.0/1``) when shapes change.

  Must be called from inside a compact block's ``__call__`` so that the submodules are
  created in (and named under) that block.
  ``[N, H, W, Cin] -> [N, H/stride, W/stride, out_channels]``.
  """
  if stride == 1 and x.shape[-1] == out_channels:
    return x
  y = conv(out_channels, 1, stride, name="downsample_0", dtype=dtype)(x)
  return batch_norm(train, name="downsample_1", dtype=dtype)(y)


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers with a residual connection (ResNet-18/34).

  ``[N, H, W, Cin] -> [N, H/stride, W/stride, planes]``.

  Attributes:
    planes: output channels.
    stride: stride of the first conv (and of the projection shortcut).
    dtype: computation dtype.
  """

  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Applies the block. ``x``: ``[N, H, W, Cin]``."""
    out_channels = self.planes * self.expansion
    y = conv(self.planes, 3, self.stride, name="conv1", dtype=self.dtype)(x)
    y = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(y))
    y = conv(self.planes, 3, name="conv2", dtype=self.dtype)(y)
    y = batch_norm(train, name="bn2", dtype=self.dtype)(y)
    shortcut = _shortcut(x, out_channels, self.stride, train, self.dtype)
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4), with a residual connection.

  ``[N, H, W, Cin] -> [N, H/stride, W/stride, 4 * planes]``. The stride sits on the 3x3
  conv as in torchvision (not on the first 1x1 as in the original paper), which matters
  for converted checkpoints and for accuracy.

  Attributes:
    planes: bottleneck channels; the block outputs ``4 * planes``.
    stride: stride of the 3x3 conv (and of the projection shortcut).
    dtype: computation dtype.
  """

  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Applies the block. ``x``: ``[N, H, W, Cin]``."""
    out_channels = self.planes * self.expansion
    y = conv(self.planes, 1, name="conv1", dtype=self.dtype)(x)
    y = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(y))
    y = conv(self.planes, 3, self.stride, name="conv2", dtype=self.dtype)(y)
    y = nn.relu(batch_norm(train, name="bn2", dtype=self.dtype)(y))
    y = conv(out_channels, 1, name="conv3", dtype=self.dtype)(y)
    y = batch_norm(train, name="bn3", dtype=self.dtype)(y)
    shortcut = _shortcut(x, out_channels, self.stride, train, self.dtype)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet classifier. ``[N, H, W, 3] -> [N, num_classes]`` float32 logits.

  Stage ``i`` has ``base_width * 2**i`` (times ``width``) planes and stride 1 for the first
  stage, 2 afterwards; the reference models have four stages of 64, 128, 256, 512.

  Attributes:
    stage_sizes: number of blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    block_cls: ``BasicBlock`` or ``Bottleneck``.
    num_classes: size of the linear head ``fc``.
    stem: 'cifar' (3x3 stride-1 conv, no max-pool) or 'imagenet' (7x7 stride-2 conv and
      3x3 stride-2 max-pool).
    width: channel multiplier applied to every conv; 1.0 is the reference model.
    base_width: planes of the first stage (and of the stem) at ``width == 1``.
    dtype: computation dtype; parameters and the returned logits are float32.
  """

  stage_sizes: Sequence[int]
  block_cls: type[nn.Module]
  num_classes: int
  stem: str = "cifar"
  width: float = 1.0
  base_width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Classifies a batch.

    Args:
      x: ``[N, H, W, 3]`` normalised images.
      train: batch statistics (and running-stat updates, which need
        ``mutable=['batch_stats']``) if True; running statistics if False.

    Returns:
      ``[N, num_classes]`` float32 logits. The pooled features ``[N, C]`` are sown as
      ``intermediates/pre_logits``.
    """
    check_stem(self.stem)
    stem_channels = scale_channels(self.base_width, self.width)
    if self.stem == "imagenet":
      x = conv(stem_channels, 7, 2, name="conv1", dtype=self.dtype)(x)
    else:
      x = conv(stem_channels, 3, 1, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(x))
    if self.stem == "imagenet":
      # Flax's max_pool pads with -inf like PyTorch's MaxPool2d(3, 2, padding=1), so the
      # border never wins against a negative activation (there are none after ReLU, but
      # this keeps the equivalence exact rather than incidental).
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    for i, num_blocks in enumerate(self.stage_sizes):
      planes = scale_channels(self.base_width * 2**i, self.width)
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(
          planes=planes, stride=stride, dtype=self.dtype, name=f"layer{i + 1}_{j}"
        )(x, train=train)

    features = global_avg_pool(x)
    self.sow("intermediates", "pre_logits", features)
    logits = dense(self.num_classes, name="fc", dtype=self.dtype)(features)
    # float32 logits (float64 when computing in float64, for reference comparisons).
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def _make(
  stage_sizes: Sequence[int],
  block_cls: type[nn.Module],
  num_classes: int,
  stem: str,
  width: float,
  dtype: Any,
  base_width: int = 64,
) -> ResNet:
  """Validates the stem eagerly (so a typo fails at construction) and builds the model."""
  check_stem(stem)
  return ResNet(
    stage_sizes=tuple(stage_sizes),
    block_cls=block_cls,
    num_classes=num_classes,
    stem=stem,
    width=width,
    base_width=base_width,
    dtype=dtype,
  )


@register("resnet18")
def resnet18(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> ResNet:
  """ResNet-18: BasicBlock stages (2, 2, 2, 2). ``[N, H, W, 3] -> [N, num_classes]``."""
  return _make((2, 2, 2, 2), BasicBlock, num_classes, stem, width, dtype)


@register("resnet34")
def resnet34(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> ResNet:
  """ResNet-34: BasicBlock stages (3, 4, 6, 3). ``[N, H, W, 3] -> [N, num_classes]``."""
  return _make((3, 4, 6, 3), BasicBlock, num_classes, stem, width, dtype)


@register("resnet50")
def resnet50(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> ResNet:
  """ResNet-50: Bottleneck stages (3, 4, 6, 3). ``[N, H, W, 3] -> [N, num_classes]``."""
  return _make((3, 4, 6, 3), Bottleneck, num_classes, stem, width, dtype)


@register("resnet101")
def resnet101(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> ResNet:
  """ResNet-101: Bottleneck stages (3, 4, 23, 3). ``[N, H, W, 3] -> [N, num_classes]``."""
  return _make((3, 4, 23, 3), Bottleneck, num_classes, stem, width, dtype)


@register("resnet_tiny")
def resnet_tiny(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> ResNet:
  """Test-sized ResNet: two BasicBlock stages of 8 and 16 channels. Same code path as
  ResNet-18 (stem, identity and projection shortcuts, pooling, head) at a fraction of the
  cost. ``[N, H, W, 3] -> [N, num_classes]``."""
  return _make((1, 1), BasicBlock, num_classes, stem, width, dtype, base_width=8)
