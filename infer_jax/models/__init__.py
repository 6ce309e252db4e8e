"""Flax model zoo: ResNet, MobileNetV2, EfficientNet-B0, ShuffleNet v1/v2, ConvNet.

Importing this package registers every family; build models with
:func:`create_model`.
"""

from infer_jax.models import convnet, efficientnet, mobilenetv2, resnet, shufflenet  # noqa: F401
from infer_jax.models.registry import create_model, list_models, register

__all__ = ["create_model", "list_models", "register"]
