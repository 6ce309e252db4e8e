"""Model registry: architectures by name.

Each family module registers its constructors with ``@register(name)``; a
constructor takes ``(num_classes, *, stem, width, dtype)`` and returns an unbound
Flax module. Users call :func:`create_model`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
  """Decorator registering a model constructor under ``name``."""

  def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if name in _REGISTRY:
      raise ValueError(f"Model {name!r} registered twice.")
    _REGISTRY[name] = fn
    return fn

  return wrap


def list_models() -> list[str]:
  """Names of all registered architectures, sorted."""
  return sorted(_REGISTRY)


def create_model(
  name: str, num_classes: int, *, stem: str = "cifar", width: float = 1.0, dtype: Any = jnp.float32
) -> nn.Module:
  """Builds a registered architecture.

  Args:
    name: architecture name, e.g. 'resnet18', 'mobilenetv2', 'efficientnet_b0',
      'shufflenet_g2', 'shufflenetv2', 'convnet' (see :func:`list_models`).
    num_classes: size of the classifier head.
    stem: 'cifar' (32x32 / 64x64 inputs: stride-1 stem, no max-pool) or 'imagenet'.
    width: channel multiplier; 1.0 is the reference architecture.
    dtype: computation dtype (parameters stay float32).

  Returns:
    An unbound ``flax.linen.Module`` mapping ``[N, H, W, 3] -> [N, num_classes]``.

  Raises:
    ValueError: unknown name, non-positive class count or width.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown architecture {name!r}. Available: {', '.join(list_models())}.")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
  if not width > 0:
    raise ValueError(f"width must be positive, got {width!r}.")
  return _REGISTRY[name](num_classes, stem=stem, width=width, dtype=dtype)
