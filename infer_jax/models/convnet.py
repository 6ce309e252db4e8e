"""The dataset-distillation "ConvNet" (ConvNet-128, ConvNetD3 at depth 3).

``depth`` blocks of [3x3 conv with bias -> BatchNorm -> ReLU -> 2x2 average pool], then
flatten and a linear head. This is the small network most dataset-distillation papers
evaluate on (with BatchNorm, i.e. the "ConvNetBN" variant, which the BN-statistics
matching of INFER needs). Module names are ``features_{i}_conv`` / ``features_{i}_bn``
and ``fc`` (the PyTorch reference in ``tests/torch_refs/resnet.py`` uses
``features[i].conv`` / ``features[i].bn``). Converting PyTorch weights needs one step
beyond renaming: PyTorch flattens the last feature map in (C, H, W) order and Flax in
(H, W, C) order, so the rows of ``fc``'s kernel must be permuted accordingly.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from infer_jax.models.common import batch_norm, check_stem, conv, dense, scale_channels
from infer_jax.models.registry import register
from infer_jax.runtime.errors import InputError


class ConvNet(nn.Module):
  """ConvNet classifier. ``[N, H, W, C] -> [N, num_classes]`` float32 logits.

  The head sees ``(H // 2**depth) * (W // 2**depth) * channels`` features, so the
  parameter count depends on the input size (320,010 for depth 3, width 128, 10 classes
  at 32x32).

  Attributes:
    num_classes: size of the linear head ``fc``.
    depth: number of conv-BN-ReLU-pool blocks.
    net_width: channels of every conv at ``width == 1``.
    stem: validated for a uniform model interface; it does not change ConvNet (the same
      network is used at every resolution, with more depth for larger images).
    width: channel multiplier.
    dtype: computation dtype; parameters and the returned logits are float32.
  """

  num_classes: int
  depth: int = 3
  net_width: int = 128
  stem: str = "cifar"
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Classifies a batch.

    Args:
      x: ``[N, H, W, C]`` normalised images.
      train: batch statistics (and running-stat updates, which need
        ``mutable=['batch_stats']``) if True; running statistics if False.

    Returns:
      ``[N, num_classes]`` float32 logits. The flattened features ``[N, D]`` are sown as
      ``intermediates/pre_logits``.

    Raises:
      InputError: the image is too small for ``depth`` halvings.
    """
    check_stem(self.stem)
    height, width = x.shape[1], x.shape[2]
    if min(height, width) // 2**self.depth < 1:
      # Shapes are static under jit, so this fires at trace time with a clear message
      # instead of a zero-sized array deep inside XLA.
      max_depth = int(math.floor(math.log2(min(height, width)))) if min(height, width) else 0
      raise InputError(
        f"ConvNet of depth {self.depth} halves the image {self.depth} times and needs inputs "
        f"of at least {2**self.depth}x{2**self.depth}, got {height}x{width}. Use depth <= "
        f"{max_depth} for this image size (e.g. 3 for 32x32, 4 for 64x64, 5 for 128x128)."
      )
    channels = scale_channels(self.net_width, self.width)
    for i in range(self.depth):
      x = conv(channels, 3, use_bias=True, name=f"features_{i}_conv", dtype=self.dtype)(x)
      x = nn.relu(batch_norm(train, name=f"features_{i}_bn", dtype=self.dtype)(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    features = x.reshape((x.shape[0], -1))
    self.sow("intermediates", "pre_logits", features)
    logits = dense(self.num_classes, name="fc", dtype=self.dtype)(features)
    # float32 logits (float64 when computing in float64, for reference comparisons).
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


@register("convnet")
def convnet(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> ConvNet:
  """ConvNet-128 of depth 3 (for 32x32 inputs). ``[N, H, W, C] -> [N, num_classes]``."""
  check_stem(stem)
  return ConvNet(
    num_classes=num_classes, depth=3, net_width=128, stem=stem, width=width, dtype=dtype
  )


@register("convnet_tiny")
def convnet_tiny(
  num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> ConvNet:
  """Test-sized ConvNet: depth 2, 8 channels. ``[N, H, W, C] -> [N, num_classes]``."""
  check_stem(stem)
  return ConvNet(num_classes=num_classes, depth=2, net_width=8, stem=stem, width=width, dtype=dtype)
