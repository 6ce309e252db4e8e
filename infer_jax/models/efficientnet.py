"""EfficientNet-B0 in two reference layouts, selected by ``stem``.

* ``stem='cifar'``: the pytorch-cifar (kuangliu) ``EfficientNetB0`` that INFER's authors
  train: 3x3/1 stem, MBConv blocks with swish and squeeze-excitation, no 1x1 head conv
  (the classifier reads the 320-channel map), dropout 0.2 before the linear layer.
  Its expansion-1 block builds a 1x1 expansion conv + BN that it never runs; they are
  created here too (at init only) so parameter counts and state_dicts match, and they
  never run in ``apply``, so BN-statistics capture only sees the BN layers that run.
* ``stem='imagenet'``: torchvision's ``efficientnet_b0``: 3x3/2 stem, the same MBConv
  table, SE squeeze width ``max(1, block_input // 4)``, a 1x1 head conv to 1280,
  stochastic depth 0.2 scaled linearly with the block index, dropout 0.2 + linear.

BatchNorm epsilon is PyTorch's default 1e-5 in both: torchvision's ``efficientnet_b0``
passes no ``norm_layer`` (plain ``nn.BatchNorm2d``); only B5-B7 (eps 1e-3, momentum
0.01) and the V2 models (eps 1e-3) override it.

Flax module names are the PyTorch module names with '.' -> '_' per nesting level
(``layers.4.se.se1`` -> ``layers_4/se_se1``; ``features.2.1.block.0.0`` ->
``features_2_1/block_0_0``), so converting a state_dict is a renaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from infer_jax.models.common import (
  BN_EPSILON,
  batch_norm,
  check_stem,
  conv,
  dense,
  global_avg_pool,
  scale_channels,
)
from infer_jax.models.mobilenetv2 import make_divisible
from infer_jax.models.registry import register

# (expansion, output channels, repeats, kernel, first stride) per stage (B0, both layouts).
BlockTable = Sequence[tuple[int, int, int, int, int]]

B0_BLOCKS: BlockTable = (
  (1, 16, 1, 3, 1),
  (6, 24, 2, 3, 2),
  (6, 40, 2, 5, 2),
  (6, 80, 3, 3, 2),
  (6, 112, 3, 5, 1),
  (6, 192, 4, 5, 2),
  (6, 320, 1, 3, 1),
)
# Tiny test table: an expansion-1 block with a skip (so the unused expansion conv and
# drop-connect are both exercised), a strided 5x5 stage and a stride-1 skip block.
TINY_BLOCKS: BlockTable = ((1, 8, 1, 3, 1), (2, 16, 2, 5, 2))

DROPOUT_RATE = 0.2
# torchvision's stochastic_depth_prob. pytorch-cifar configures drop_connect_rate 0.2 too,
# but its per-block rate ``0.2 * b / blocks`` uses a counter ``b`` that is never
# incremented, so every block gets rate 0 and the CIFAR reference never drops a branch.
IMAGENET_DROP_CONNECT = 0.2
CIFAR_DROP_CONNECT = 0.0


def drop_connect(module: nn.Module, x: jnp.ndarray, rate: float, train: bool) -> jnp.ndarray:
  """Per-sample stochastic depth on a residual branch (torchvision's mode 'row').

  Zeroes whole samples with probability ``rate`` and rescales the rest by
  ``1 / (1 - rate)``; the identity unless ``train`` and ``rate > 0``.

  Args:
    module: the calling module (supplies the 'dropout' rng).
    x: branch output ``[N, H, W, C]``.
    rate: drop probability.
    train: whether the model is training.

  Returns:
    ``[N, H, W, C]``, same dtype as ``x``.
  """
  if not train or rate <= 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0], 1, 1, 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x)).astype(x.dtype)


class CifarBlock(nn.Module):
  """pytorch-cifar MBConv block. ``[N, H, W, in_channels] -> [N, H/s, W/s, out_channels]``.

  Attributes:
    in_channels: input channels.
    out_channels: output channels.
    kernel: depthwise kernel size (padding ``kernel // 2``).
    stride: depthwise stride.
    expansion: hidden channels = ``expansion * in_channels``.
    drop_rate: drop-connect probability of the skip branch during training.
    dtype: computation dtype.
  """

  in_channels: int
  out_channels: int
  kernel: int
  stride: int
  expansion: int
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """``[N, H, W, in_channels] -> [N, H/stride, W/stride, out_channels]``."""
    channels = self.expansion * self.in_channels
    bn = lambda name: batch_norm(train, name=name, dtype=self.dtype, epsilon=BN_EPSILON)
    conv1 = conv(channels, 1, name="conv1", dtype=self.dtype)
    bn1 = bn("bn1")
    if self.expansion != 1:
      y = nn.swish(bn1(conv1(x)))
    else:
      y = x
      # The reference builds conv1/bn1 at expansion 1 but skips them: create their
      # variables at init (so counts and state_dicts match) and never run them in apply.
      if self.is_initializing():
        bn1(conv1(x))
    y = conv(channels, self.kernel, self.stride, groups=channels, name="conv2", dtype=self.dtype)(y)
    y = nn.swish(bn("bn2")(y))
    # Squeeze-excitation, squeezing to a quarter of the block *input* channels.
    se_channels = max(1, int(self.in_channels * 0.25))
    w = jnp.mean(y, axis=(1, 2), keepdims=True)
    w = nn.swish(conv(se_channels, 1, use_bias=True, name="se_se1", dtype=self.dtype)(w))
    w = nn.sigmoid(conv(channels, 1, use_bias=True, name="se_se2", dtype=self.dtype)(w))
    y = y * w
    y = bn("bn3")(conv(self.out_channels, 1, name="conv3", dtype=self.dtype)(y))
    if self.stride == 1 and self.in_channels == self.out_channels:
      y = drop_connect(self, y, self.drop_rate, train) + x
    return y


class MBConv(nn.Module):
  """torchvision MBConv block. ``[N, H, W, in_channels] -> [N, H/s, W/s, out_channels]``.

  Attributes:
    in_channels: input channels.
    out_channels: output channels.
    kernel: depthwise kernel size.
    stride: depthwise stride.
    expansion: hidden channels = ``make_divisible(in_channels * expansion, 8)``.
    drop_rate: stochastic-depth probability of the residual branch during training.
    dtype: computation dtype.
  """

  in_channels: int
  out_channels: int
  kernel: int
  stride: int
  expansion: int
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """``[N, H, W, in_channels] -> [N, H/stride, W/stride, out_channels]``."""
    hidden = make_divisible(self.in_channels * self.expansion)
    bn = lambda name: batch_norm(train, name=name, dtype=self.dtype, epsilon=BN_EPSILON)
    # torchvision's ``block`` Sequential: [expand], depthwise, SE, project; indices shift
    # by one when the expansion leaves the channel count unchanged (no expand conv).
    i = 0
    y = x
    if hidden != self.in_channels:
      y = nn.silu(bn(f"block_{i}_1")(conv(hidden, 1, name=f"block_{i}_0", dtype=self.dtype)(y)))
      i += 1
    y = conv(
      hidden, self.kernel, self.stride, groups=hidden, name=f"block_{i}_0", dtype=self.dtype
    )(y)
    y = nn.silu(bn(f"block_{i}_1")(y))
    i += 1
    squeeze = max(1, self.in_channels // 4)
    w = jnp.mean(y, axis=(1, 2), keepdims=True)
    w = nn.silu(conv(squeeze, 1, use_bias=True, name=f"block_{i}_fc1", dtype=self.dtype)(w))
    w = nn.sigmoid(conv(hidden, 1, use_bias=True, name=f"block_{i}_fc2", dtype=self.dtype)(w))
    y = y * w
    i += 1
    y = bn(f"block_{i}_1")(conv(self.out_channels, 1, name=f"block_{i}_0", dtype=self.dtype)(y))
    if self.stride == 1 and self.in_channels == self.out_channels:
      y = drop_connect(self, y, self.drop_rate, train) + x
    return y


class EfficientNet(nn.Module):
  """EfficientNet-B0 classifier. ``[N, H, W, 3] -> [N, num_classes]`` float32 logits.

  Attributes:
    num_classes: classifier outputs.
    stem: 'cifar' (pytorch-cifar layout) or 'imagenet' (torchvision layout).
    width: channel multiplier. 'cifar' scales with :func:`scale_channels`; 'imagenet'
      rounds to multiples of 8 like torchvision's ``width_mult``.
    dtype: computation dtype (parameters stay float32).
    blocks: stage table ``(expansion, c, n, kernel, s)``; None is B0.
    stem_channels: channels of the first conv before width scaling.
    drop_connect_rate: base stochastic-depth rate: block ``b`` (0-based) of ``B`` drops its
      residual branch with probability ``rate * b / B``; None uses the reference's value
      for ``stem`` (0.2 for 'imagenet', effectively 0 for 'cifar', see
      ``CIFAR_DROP_CONNECT``).
  """

  num_classes: int
  stem: str = "cifar"
  width: float = 1.0
  dtype: Any = jnp.float32
  blocks: BlockTable | None = None
  stem_channels: int = 32
  drop_connect_rate: float | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Logits ``[N, num_classes]`` (float32) for images ``[N, H, W, 3]``.

    ``train=True`` normalises with batch statistics, updates ``batch_stats`` (pass
    ``mutable=['batch_stats']``) and applies dropout / drop-connect, which need a
    'dropout' rng. ``train=False`` is deterministic.
    """
    check_stem(self.stem)
    blocks = B0_BLOCKS if self.blocks is None else self.blocks
    cifar = self.stem == "cifar"
    rate = self.drop_connect_rate
    if rate is None:
      rate = CIFAR_DROP_CONNECT if cifar else IMAGENET_DROP_CONNECT
    scale = (
      (lambda c: scale_channels(c, self.width))
      if cifar
      else (lambda c: make_divisible(c * self.width))
    )
    bn = lambda name: batch_norm(train, name=name, dtype=self.dtype, epsilon=BN_EPSILON)

    ch = scale(self.stem_channels)
    if cifar:
      x = nn.swish(bn("bn1")(conv(ch, 3, 1, name="conv1", dtype=self.dtype)(x)))
    else:
      x = nn.silu(bn("features_0_1")(conv(ch, 3, 2, name="features_0_0", dtype=self.dtype)(x)))

    total = sum(stage[2] for stage in blocks)
    b = 0
    for s, (expansion, out, repeats, kernel, stride) in enumerate(blocks):
      out = scale(out)
      for r in range(repeats):
        block_stride = stride if r == 0 else 1
        drop = rate * b / total
        if cifar:
          x = CifarBlock(
            ch, out, kernel, block_stride, expansion, drop, dtype=self.dtype, name=f"layers_{b}"
          )(x, train=train)
        else:
          x = MBConv(
            ch,
            out,
            kernel,
            block_stride,
            expansion,
            drop,
            dtype=self.dtype,
            name=f"features_{s + 1}_{r}",
          )(x, train=train)
        ch = out
        b += 1

    if cifar:
      features = global_avg_pool(x)
      self.sow("intermediates", "pre_logits", features)
      features = nn.Dropout(DROPOUT_RATE, deterministic=not train, name="dropout")(features)
      logits = dense(self.num_classes, name="linear", dtype=self.dtype)(features)
    else:
      head = len(blocks) + 1
      x = conv(4 * ch, 1, name=f"features_{head}_0", dtype=self.dtype)(x)
      x = nn.silu(bn(f"features_{head}_1")(x))
      features = global_avg_pool(x)
      self.sow("intermediates", "pre_logits", features)
      features = nn.Dropout(DROPOUT_RATE, deterministic=not train, name="classifier_0")(features)
      logits = dense(self.num_classes, name="classifier_1", dtype=self.dtype)(features)
    # float32 logits (float64 when computing in float64, for reference comparisons).
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


@register("efficientnet_b0")
def efficientnet_b0(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> EfficientNet:
  """EfficientNet-B0 (3.60M params for 10 classes at 'cifar'; 5.29M for 1000 at 'imagenet')."""
  check_stem(stem)
  return EfficientNet(num_classes, stem=stem, width=width, dtype=dtype)


@register("efficientnet_tiny")
def efficientnet_tiny(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> EfficientNet:
  """A few-thousand-parameter EfficientNet on the same code path, for fast tests."""
  check_stem(stem)
  return EfficientNet(
    num_classes, stem=stem, width=width, dtype=dtype, blocks=TINY_BLOCKS, stem_channels=8
  )
