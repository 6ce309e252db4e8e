"""Tests of the ResNet and ConvNet families: structure, parameter counts, forward passes."""

from __future__ import annotations

import importlib.util
import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer_jax.models import create_model
from infer_jax.runtime.errors import InputError
from tests.conftest import TORCH_HOW, require_module

# Reference parameter counts (trainable parameters: conv/linear weights and biases plus BN
# scale/bias; running statistics are buffers in PyTorch and `batch_stats` in Flax).
#   * ImageNet stem, 1000 classes: torchvision's published counts for resnet18/34/50/101.
#   * CIFAR stem (3x3 stride-1 conv, no max-pool), 10 / 100 classes, and ConvNet-128 at
#     32x32: counted with torch 2.13 on the PyTorch modules in tests/torch_refs/resnet.py,
#     written to the torchvision / pytorch-cifar layouts (`python tests/torch_refs/resnet.py`).
# The stem changes the count only through conv1 (7x7 vs 3x3 kernels); the head adds
# (512 or 2048 + 1) * num_classes.
REFERENCE_COUNTS = [
  ("resnet18", "imagenet", 1000, 11_689_512),
  ("resnet34", "imagenet", 1000, 21_797_672),
  ("resnet50", "imagenet", 1000, 25_557_032),
  ("resnet101", "imagenet", 1000, 44_549_160),
  ("resnet18", "cifar", 10, 11_173_962),
  ("resnet34", "cifar", 10, 21_282_122),
  ("resnet50", "cifar", 10, 23_520_842),
  ("resnet101", "cifar", 10, 42_512_970),
  ("resnet18", "cifar", 100, 11_220_132),
  ("resnet50", "cifar", 100, 23_705_252),
  ("convnet", "cifar", 10, 320_010),
]

TINY = ["resnet_tiny", "convnet_tiny"]
# What these tests check does not depend on the initial values. An rbg key's random bits
# compile several times faster than threefry's on XLA:CPU (the tiny ResNet's jitted init: 10 s
# -> 2 s of compilation on 2 cores; its forward test 17 s -> 7 s).
INIT_KEY = jax.random.key(0, impl="rbg")


def _param_count(tree) -> int:
  """Total number of elements in a pytree of arrays or ShapeDtypeStructs."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract_variables(
  name: str, num_classes: int, stem: str = "cifar", width: float = 1.0, size: int = 32
):
  """Variable shapes of a model without computing anything (``jax.eval_shape``)."""
  model = create_model(name, num_classes, stem=stem, width=width)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def _init(name: str, num_classes: int = 5, stem: str = "cifar", size: int = 8):
  """A tiny model, its variables and a ``[4, size, size, 3]`` batch."""
  model = create_model(name, num_classes, stem=stem)
  x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
  variables = model.init(INIT_KEY, x)
  return model, variables, x


@pytest.mark.parametrize(("name", "stem", "num_classes", "expected"), REFERENCE_COUNTS)
def test_param_counts_match_reference(name, stem, num_classes, expected):
  # 32x32 is enough for the ImageNet stem too: ResNet's count does not depend on the input
  # size (global pooling), and ConvNet's reference count is defined at 32x32.
  variables = _abstract_variables(name, num_classes, stem)
  assert _param_count(variables["params"]) == expected


def _load_torch_refs():
  """Imports tests/torch_refs/resnet.py by path (works whether or not tests is a package)."""
  path = pathlib.Path(__file__).parent / "torch_refs" / "resnet.py"
  spec = importlib.util.spec_from_file_location("_torch_refs_resnet", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(("name", "stem", "num_classes", "expected"), REFERENCE_COUNTS)
def test_torch_reference_counts(name, stem, num_classes, expected):
  require_module("torch", TORCH_HOW)
  refs = _load_torch_refs()
  assert refs.count_params(refs.build(name, num_classes, stem)) == expected


@pytest.mark.parametrize("name", ["resnet_tiny", "resnet18", "resnet50"])
def test_resnet_structure_uses_torchvision_names(name):
  params = _abstract_variables(name, 10)["params"]
  assert {"conv1", "bn1", "fc", "layer1_0", "layer2_0"} <= set(params)
  # First stage, stride 1: projection only where channels change (Bottleneck's x4).
  has_conv3 = name == "resnet50"
  assert ("downsample_0" in params["layer1_0"]) == has_conv3
  assert ("conv3" in params["layer1_0"]) == has_conv3
  # Second stage starts with stride 2, always projected.
  assert {"downsample_0", "downsample_1"} <= set(params["layer2_0"])
  chex.assert_shape(params["layer2_0"]["downsample_0"]["kernel"], (1, 1, None, None))


def test_stem_kernels():
  cifar = _abstract_variables("resnet18", 10, "cifar")["params"]["conv1"]["kernel"]
  imagenet = _abstract_variables("resnet18", 10, "imagenet")["params"]["conv1"]["kernel"]
  chex.assert_shape(cifar, (3, 3, 3, 64))
  chex.assert_shape(imagenet, (7, 7, 3, 64))


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_shape_dtype_finite(name, stem):
  model, variables, x = _init(name, stem=stem)
  logits = model.apply(variables, x)  # train=False needs no mutable collections
  chex.assert_shape(logits, (4, 5))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name", TINY)
def test_bfloat16_compute_returns_float32_logits(name):
  model = create_model(name, 3, dtype=jnp.bfloat16)
  x = jnp.ones((2, 8, 8, 3))
  variables = model.init(INIT_KEY, x)
  # dtype is the computation dtype only; parameters stay float32 for the optimiser.
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
  logits = model.apply(variables, x)
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name", TINY)
def test_train_mode_updates_batch_stats(name):
  model, variables, x = _init(name)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  chex.assert_shape(logits, (4, 5))
  chex.assert_tree_all_finite(updates)
  chex.assert_trees_all_equal_structs(updates["batch_stats"], variables["batch_stats"])
  changed = jax.tree.map(
    lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], variables["batch_stats"]
  )
  assert all(jax.tree.leaves(changed))
  # Batch statistics differ from the (initial) running ones, so the two modes disagree.
  assert not np.allclose(logits, model.apply(variables, x))


@pytest.mark.parametrize("name", TINY)
def test_pre_logits_are_sown(name):
  model, variables, x = _init(name)
  _, state = model.apply(variables, x, mutable=["intermediates"])
  (pre_logits,) = state["intermediates"]["pre_logits"]
  assert pre_logits.shape[0] == 4
  assert pre_logits.shape[1] == variables["params"]["fc"]["kernel"].shape[0]


@pytest.mark.parametrize("name", TINY)
def test_every_batch_stat_belongs_to_an_nn_batchnorm(name):
  # BN-statistics matching intercepts nn.BatchNorm calls; a hand-rolled norm would be missed.
  model, variables, x = _init(name)
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      seen.append(context.module.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply(variables, x)
  leaves = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
  stats_modules = {tuple(key.key for key in path[:-1]) for path, _ in leaves}
  assert set(seen) == stats_modules


@pytest.mark.parametrize(
  ("name", "size"), [("resnet18", 32), ("convnet", 32), *[(n, 8) for n in TINY]]
)
def test_width_multiplier_shrinks_params(name, size):
  full = _param_count(_abstract_variables(name, 10, size=size)["params"])
  half = _param_count(_abstract_variables(name, 10, width=0.5, size=size)["params"])
  assert half < full
  if name == "resnet18":
    assert _abstract_variables(name, 10, width=0.5)["params"]["conv1"]["kernel"].shape[-1] == 32


@pytest.mark.parametrize("name", ["resnet_tiny", "resnet18", "convnet_tiny"])
def test_unknown_stem_raises_value_error(name):
  with pytest.raises(ValueError, match="stem"):
    create_model(name, 10, stem="mnist")


def test_convnet_too_deep_for_image_raises_input_error():
  model = create_model("convnet", 10)  # depth 3 needs at least 8x8
  with pytest.raises(InputError, match=r"depth 3.*8x8.*4x4"):
    model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
  # 8x8 is the smallest size that works: three halvings leave a 1x1 map.
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  chex.assert_shape(variables["params"]["fc"]["kernel"], (128, 10))
