"""ShuffleNet v1 (2 groups, CIFAR layout) and ShuffleNetV2 (torchvision layout).

* ``shufflenet_g2``: the CIFAR ShuffleNetG2 of the kuangliu ``pytorch-cifar`` collection,
  which INFER's authors train as a cross-architecture model. It only exists with a CIFAR
  stem (1x1 conv, no downsampling before the first stage).
* ``shufflenetv2``: torchvision's ``shufflenet_v2_x1_0``; the 'imagenet' stem is the
  torchvision one, the 'cifar' stem uses a stride-1 first conv and drops the max-pool.

Channel shuffle reproduces PyTorch's NCHW semantics exactly, so that converted weights
see their channels in the same order as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
  """Shuffles channels across ``groups`` exactly as PyTorch's NCHW channel shuffle.

  PyTorch views the C channels as ``[groups, C // groups]``, transposes to
  ``[C // groups, groups]`` and flattens, so output channel ``j * groups + i`` is input
  channel ``i * (C // groups) + j`` (6 channels, 2 groups -> ``[0, 3, 1, 4, 2, 5]``).

  Args:
    x: ``[N, H, W, C]`` with ``C`` divisible by ``groups``.
    groups: number of groups.

  Returns:
    ``[N, H, W, C]`` with permuted channels.
  """
  *lead, c = x.shape
  if c % groups:
    raise ValueError(f"channel_shuffle: {c} channels are not divisible by {groups} groups.")
  x = x.reshape(*lead, groups, c // groups)
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(*lead, c)


def avg_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
  """PyTorch ``AvgPool2d(3, stride=2, padding=1)`` (``count_include_pad=True``).

  Every window is divided by 9, zero padding included, as in the reference; dividing by
  the number of valid pixels instead would change the border values of every shortcut.

  Args:
    x: ``[N, H, W, C]``.

  Returns:
    ``[N, ceil(H / 2), ceil(W / 2), C]``.
  """
  return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)


class ShuffleBottleneck(nn.Module):
  """ShuffleNet v1 unit (pytorch-cifar ``Bottleneck``).

  ``[N, H, W, Cin] -> [N, H, W, Cin]`` (stride 1: residual add, needs ``out_planes == Cin``)
  or ``[N, H/2, W/2, out_planes + Cin]`` (stride 2: concat with an average-pooled shortcut).

  Attributes:
    out_planes: channels of the residual branch.
    stride: 1 or 2.
    groups: groups of the 1x1 convolutions.
    first_block: the network's very first unit, whose input conv is not grouped (its
      input is the narrow stem output).
    dtype: computation dtype.
  """

  out_planes: int
  stride: int
  groups: int
  first_block: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """``[N, H, W, Cin] -> [N, H', W', C']`` as described in the class docstring."""
    mid = self.out_planes // 4
    g = 1 if self.first_block else self.groups
    out = conv(mid, 1, groups=g, name="conv1", dtype=self.dtype)(x)
    out = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(out))
    out = channel_shuffle(out, g)
    out = conv(mid, 3, stride=self.stride, groups=mid, name="conv2", dtype=self.dtype)(out)
    out = nn.relu(batch_norm(train, name="bn2", dtype=self.dtype)(out))
    out = conv(self.out_planes, 1, groups=self.groups, name="conv3", dtype=self.dtype)(out)
    out = batch_norm(train, name="bn3", dtype=self.dtype)(out)
    if self.stride == 2:
      return nn.relu(jnp.concatenate([out, avg_pool_3x3_s2(x).astype(out.dtype)], axis=-1))
    return nn.relu(out + x)


class ShuffleNetV1(nn.Module):
  """ShuffleNet v1 for CIFAR-sized inputs (pytorch-cifar ``ShuffleNet``). ``[N,H,W,3] -> [N,K]``.

  Attributes:
    num_classes: classifier size K.
    stem: only 'cifar' exists (1x1 stem conv, stride 1, no max-pool).
    width: channel multiplier; 1.0 is the reference ShuffleNetG2.
    dtype: computation dtype.
    out_planes: output channels of the three layers (before width scaling).
    num_blocks: units per layer.
    groups: groups of the grouped 1x1 convolutions.
    stem_channels: stem conv output channels (before width scaling).
  """

  num_classes: int
  stem: str = "cifar"
  width: float = 1.0
  dtype: Any = jnp.float32
  out_planes: Sequence[int] = (200, 400, 800)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 2
  stem_channels: int = 24

  def _channels(self) -> tuple[int, list[int]]:
    """Width-scaled (stem channels, per-layer out_planes), keeping every grouped conv valid."""
    # A unit's out_planes must split into 4 * groups (mid = out / 4, then mid and out are
    # both divided into `groups`); the stem is a multiple of the same so that the
    # first unit's out_planes - in_planes stays one too.
    div = 4 * self.groups
    stem_ch = scale_channels(self.stem_channels, self.width, div)
    outs, prev = [], stem_ch
    for planes in self.out_planes:
      # Downsampling units concatenate the shortcut, so each layer must be wider than its
      # input; a tiny width could otherwise round two layers to the same size.
      planes = max(scale_channels(planes, self.width, div), prev + div)
      outs.append(planes)
      prev = planes
    return stem_ch, outs

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Logits. ``x``: ``[N, H, W, 3]`` normalised images; returns float32 ``[N, K]``."""
    check_stem(self.stem)
    if self.stem != "cifar":
      raise ValueError(
        f"ShuffleNet v1 (shufflenet_g2) only exists with the CIFAR layout; "
        f"got stem={self.stem!r}, use stem='cifar'."
      )
    stem_ch, outs = self._channels()
    x = x.astype(self.dtype)
    x = conv(stem_ch, 1, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(x))
    in_planes = stem_ch
    for li, (planes, blocks) in enumerate(zip(outs, self.num_blocks, strict=True)):
      for bi in range(blocks):
        stride = 2 if bi == 0 else 1
        # The downsampling unit's branch only supplies the channels the shortcut lacks.
        branch = planes - in_planes if bi == 0 else planes
        x = ShuffleBottleneck(
          branch,
          stride,
          self.groups,
          first_block=li == 0 and bi == 0,
          dtype=self.dtype,
          name=f"layer{li + 1}_{bi}",
        )(x, train)
        in_planes = planes
    x = global_avg_pool(x)
    self.sow("intermediates", "pre_logits", x)
    logits = dense(self.num_classes, name="linear", dtype=self.dtype)(x)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


class InvertedResidual(nn.Module):
  """ShuffleNetV2 unit (torchvision ``InvertedResidual``).

  ``[N, H, W, Cin] -> [N, H / stride, W / stride, oup]``; stride 1 requires ``Cin == oup``.
  Submodules are named after torchvision's ``branch1.<i>`` / ``branch2.<i>`` Sequential
  indices (ReLUs occupy the indices that have no parameters).

  Attributes:
    oup: output channels (even).
    stride: 1 or 2.
    dtype: computation dtype.
  """

  oup: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """``[N, H, W, Cin] -> [N, H', W', oup]`` as described in the class docstring."""
    bf = self.oup // 2
    inp = x.shape[-1]
    dt = self.dtype

    def branch2(h: jnp.ndarray) -> jnp.ndarray:
      h = conv(bf, 1, name="branch2_0", dtype=dt)(h)
      h = nn.relu(batch_norm(train, name="branch2_1", dtype=dt)(h))
      h = conv(bf, 3, stride=self.stride, groups=bf, name="branch2_3", dtype=dt)(h)
      h = batch_norm(train, name="branch2_4", dtype=dt)(h)
      h = conv(bf, 1, name="branch2_5", dtype=dt)(h)
      return nn.relu(batch_norm(train, name="branch2_6", dtype=dt)(h))

    if self.stride == 1:
      if inp != 2 * bf:
        raise ValueError(f"A stride-1 ShuffleNetV2 unit needs {2 * bf} input channels, got {inp}.")
      # torch.chunk(2, dim=1): the first half passes through untouched.
      x1, x2 = x[..., :bf], x[..., bf:]
      out = jnp.concatenate([x1, branch2(x2)], axis=-1)
    else:
      b1 = conv(inp, 3, stride=self.stride, groups=inp, name="branch1_0", dtype=dt)(x)
      b1 = batch_norm(train, name="branch1_1", dtype=dt)(b1)
      b1 = conv(bf, 1, name="branch1_2", dtype=dt)(b1)
      b1 = nn.relu(batch_norm(train, name="branch1_3", dtype=dt)(b1))
      out = jnp.concatenate([b1, branch2(x)], axis=-1)
    return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
  """ShuffleNetV2 (torchvision layout, 1.0x by default). ``[N, H, W, 3] -> [N, K]``.

  Attributes:
    num_classes: classifier size K.
    stem: 'imagenet' (3x3 stride-2 conv + 3x3 stride-2 max-pool, as torchvision) or
      'cifar' (3x3 stride-1 conv, no max-pool).
    width: channel multiplier applied to every conv; 1.0 is ``shufflenet_v2_x1_0``.
    dtype: computation dtype.
    stage_channels: stem, stage2, stage3, stage4 output channels (before width scaling).
    stage_repeats: units per stage.
    conv5_channels: channels of the last 1x1 conv (before width scaling).
  """

  num_classes: int
  stem: str = "cifar"
  width: float = 1.0
  dtype: Any = jnp.float32
  stage_channels: Sequence[int] = (24, 116, 232, 464)
  stage_repeats: Sequence[int] = (4, 8, 4)
  conv5_channels: int = 1024

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Logits. ``x``: ``[N, H, W, 3]`` normalised images; returns float32 ``[N, K]``."""
    check_stem(self.stem)
    dt = self.dtype
    # Stage widths must be even (channel split and 2-group shuffle); multiples of 4 like
    # torchvision's own 0.5x / 1.5x / 2.0x variants.
    stem_ch = scale_channels(self.stage_channels[0], self.width, 8)
    stages = [scale_channels(c, self.width, 4) for c in self.stage_channels[1:]]
    conv5_ch = scale_channels(self.conv5_channels, self.width, 8)

    x = x.astype(dt)
    stride = 2 if self.stem == "imagenet" else 1
    x = conv(stem_ch, 3, stride=stride, name="conv1_0", dtype=dt)(x)
    x = nn.relu(batch_norm(train, name="conv1_1", dtype=dt)(x))
    if self.stem == "imagenet":
      # Max-pool pads with -inf, like PyTorch's MaxPool2d(3, 2, 1).
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for si, (oup, repeats) in enumerate(zip(stages, self.stage_repeats, strict=True)):
      for bi in range(repeats):
        x = InvertedResidual(oup, 2 if bi == 0 else 1, dtype=dt, name=f"stage{si + 2}_{bi}")(
          x, train
        )
    x = conv(conv5_ch, 1, name="conv5_0", dtype=dt)(x)
    x = nn.relu(batch_norm(train, name="conv5_1", dtype=dt)(x))
    x = global_avg_pool(x)
    self.sow("intermediates", "pre_logits", x)
    logits = dense(self.num_classes, name="fc", dtype=dt)(x)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


@register("shufflenet_g2")
def shufflenet_g2(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> nn.Module:
  """pytorch-cifar ShuffleNetG2 (CIFAR layout only). ``[N, H, W, 3] -> [N, num_classes]``."""
  return ShuffleNetV1(num_classes, stem=stem, width=width, dtype=dtype)


@register("shufflenet_g2_tiny")
def shufflenet_g2_tiny(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> nn.Module:
  """Test-sized ShuffleNetG2 (same code paths, 32/64/96 channels, 2/1/1 units)."""
  return ShuffleNetV1(
    num_classes,
    stem=stem,
    width=width,
    dtype=dtype,
    out_planes=(32, 64, 96),
    num_blocks=(2, 1, 1),
    stem_channels=16,
  )


@register("shufflenetv2")
def shufflenetv2(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> nn.Module:
  """torchvision ShuffleNetV2 1.0x. ``[N, H, W, 3] -> [N, num_classes]``."""
  return ShuffleNetV2(num_classes, stem=stem, width=width, dtype=dtype)


@register("shufflenetv2_tiny")
def shufflenetv2_tiny(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> nn.Module:
  """Test-sized ShuffleNetV2 (same code paths, 8/16/24/32 channels, 2/1/1 units, conv5 32)."""
  return ShuffleNetV2(
    num_classes,
    stem=stem,
    width=width,
    dtype=dtype,
    stage_channels=(8, 16, 24, 32),
    stage_repeats=(2, 1, 1),
    conv5_channels=32,
  )
