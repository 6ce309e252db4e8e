"""Tests of ShuffleNet v1 (shufflenet_g2) and ShuffleNetV2 (shufflenetv2).

Tests needing torch (live parameter counts, logits against tests/torch_refs/shufflenet.py
with converted weights) skip where torch is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from infer_jax import convert
from infer_jax.models import create_model
from infer_jax.models.shufflenet import avg_pool_3x3_s2, channel_shuffle
from tests.conftest import TORCH_HOW, require_module

# Parameter counts (BN scale/bias included, running statistics not) of the reference
# architectures, measured by running `python tests/torch_refs/shufflenet.py` with torch
# 2.13; torchvision's shufflenet_v2_x1_0 has the documented 2,278,604. The 10/100-class
# CIFAR ShuffleNetV2 count differs from the 1000-class one only in the fc layer.
REFERENCE_COUNTS = [
  # (name, stem, num_classes, input side, parameters)
  ("shufflenet_g2", "cifar", 10, 32, 887_582),
  ("shufflenet_g2", "cifar", 100, 32, 959_672),
  ("shufflenetv2", "imagenet", 1000, 224, 2_278_604),
  ("shufflenetv2", "cifar", 10, 32, 1_263_854),
  ("shufflenetv2", "cifar", 100, 32, 1_356_104),
  ("shufflenet_g2_tiny", "cifar", 10, 32, 2_630),
  ("shufflenetv2_tiny", "cifar", 10, 32, 4_782),
]

TINY = ["shufflenet_g2_tiny", "shufflenetv2_tiny"]


def _variables_shape(model, side: int):
  """Variable shapes of ``model`` for a ``[1, side, side, 3]`` input, without computing."""
  x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _torch_refs():
  """tests/torch_refs/shufflenet.py loaded by path (works whether or not tests/ is a package)."""
  path = Path(__file__).parent / "torch_refs" / "shufflenet.py"
  spec = importlib.util.spec_from_file_location("_torch_ref_shufflenet", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(("name", "stem", "num_classes", "side", "expected"), REFERENCE_COUNTS)
def test_param_count_matches_reference(name, stem, num_classes, side, expected):
  variables = _variables_shape(create_model(name, num_classes, stem=stem), side)
  assert _count(variables["params"]) == expected


@pytest.mark.parametrize(("name", "stem", "num_classes", "side", "expected"), REFERENCE_COUNTS)
def test_param_count_matches_live_torch_reference(name, stem, num_classes, side, expected):
  require_module("torch", TORCH_HOW)
  refs = _torch_refs()
  if name.startswith("shufflenetv2"):
    ref = getattr(refs, name)(num_classes, stem=stem)
  else:
    ref = getattr(refs, name)(num_classes)
  assert refs.count_params(ref) == expected


@pytest.mark.parametrize(
  ("name", "stem", "side"),
  [
    ("shufflenet_g2_tiny", "cifar", 18),
    ("shufflenetv2_tiny", "cifar", 16),
    ("shufflenetv2_tiny", "imagenet", 33),
  ],
)
def test_logits_match_torch_reference(name, stem, side):
  # Catches shuffle-order, padding and pooling mistakes that parameter counts cannot see;
  # odd input sides exercise the ceil-mode sizes of the padded pools.
  torch = require_module("torch", TORCH_HOW)
  refs = _torch_refs()
  torch.manual_seed(0)
  ref = (
    getattr(refs, name)(5, stem=stem) if name.startswith("shufflenetv2") else getattr(refs, name)(5)
  )
  with torch.no_grad():
    for m in ref.modules():  # non-trivial BN statistics, so eval mode is really tested
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  ref.eval()
  x = torch.randn(2, 3, side, side)
  with torch.no_grad():
    expected = ref(x).numpy()
  model = create_model(name, 5, stem=stem)
  x_nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  abstract = jax.eval_shape(model.init, jax.random.key(0), x_nhwc)
  state = {k: v.numpy() for k, v in ref.state_dict().items()}
  variables = convert.torch_state_to_flax(state, abstract)  # every key must fit
  chex.assert_trees_all_equal_shapes(variables, abstract)
  with jax.default_matmul_precision("highest"):
    logits = jax.jit(model.apply)(variables, x_nhwc)
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=1e-4)


def test_channel_shuffle_matches_pytorch_permutation():
  x = jnp.arange(6, dtype=jnp.float32).reshape(1, 1, 1, 6)
  # PyTorch: view [2, 3] -> transpose [3, 2] -> flatten.
  np.testing.assert_array_equal(channel_shuffle(x, 2)[0, 0, 0], [0, 3, 1, 4, 2, 5])
  np.testing.assert_array_equal(channel_shuffle(x, 3)[0, 0, 0], [0, 2, 4, 1, 3, 5])
  np.testing.assert_array_equal(channel_shuffle(x, 1)[0, 0, 0], np.arange(6))
  # Spatial positions are untouched.
  y = jnp.arange(2 * 3 * 4 * 6).reshape(2, 3, 4, 6)
  np.testing.assert_array_equal(channel_shuffle(y, 2), y[..., jnp.array([0, 3, 1, 4, 2, 5])])


def test_channel_shuffle_rejects_indivisible_channels():
  with pytest.raises(ValueError, match="divisible"):
    channel_shuffle(jnp.zeros((1, 1, 1, 5)), 2)


def test_avg_pool_counts_padding():
  x = jnp.arange(1, 17, dtype=jnp.float32).reshape(1, 4, 4, 1)
  # Hand-computed windows of [[1..4], [5..8], [9..12], [13..16]] padded by one zero:
  # top-left 1+2+5+6, top-right 2+3+4+6+7+8, bottom-left 5+6+9+10+13+14, bottom-right
  # 6+7+8+10+11+12+14+15+16; every sum is divided by 9, padding included.
  expected = np.array([[14.0, 30.0], [57.0, 99.0]]) / 9.0
  np.testing.assert_allclose(avg_pool_3x3_s2(x)[0, :, :, 0], expected, rtol=1e-6)
  # Odd sides round up like PyTorch: 5 -> 3.
  chex.assert_shape(avg_pool_3x3_s2(jnp.ones((2, 5, 5, 3))), (2, 3, 3, 3))


TINY_CASES = [
  ("shufflenet_g2_tiny", "cifar"),
  ("shufflenetv2_tiny", "cifar"),
  ("shufflenetv2_tiny", "imagenet"),
]


@functools.cache
def _tiny_init(name: str):
  """(inputs [4, 8, 8, 3], variables) of a tiny model, shared by the tests below.

  Both stems have the same parameters, so one init serves both.
  """
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3)) + 1.0
  # A jitted init with the 'rbg' generator compiles several times faster than with the
  # default threefry one (which dominated this file's runtime on a 2-core CPU).
  key = jax.random.key(0, impl="rbg")
  return x, jax.jit(create_model(name, 7).init)(key, x)


@pytest.mark.parametrize(("name", "stem"), TINY_CASES)
def test_tiny_forward_shape_and_pre_logits(name, stem):
  model = create_model(name, 7, stem=stem)
  x, variables = _tiny_init(name)
  logits, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(variables, x)
  chex.assert_shape(logits, (4, 7))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  (pre_logits,) = state["intermediates"]["pre_logits"]
  head = variables["params"]["fc" if name.startswith("shufflenetv2") else "linear"]
  chex.assert_shape(pre_logits, (4, head["kernel"].shape[0]))


@pytest.mark.parametrize("name", TINY)
def test_bfloat16_compute_returns_float32_logits(name):
  # Parameters stay float32 whatever the compute dtype, so the float32 init is reused.
  model = create_model(name, 7, dtype=jnp.bfloat16)
  x, variables = _tiny_init(name)
  logits = jax.jit(model.apply)(variables, x)
  chex.assert_shape(logits, (4, 7))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name", TINY)
def test_train_mode_updates_batch_stats(name):
  model = create_model(name, 7)
  x, variables = _tiny_init(name)
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  _, updates = apply(variables, x)
  old = variables["batch_stats"]
  new = updates["batch_stats"]
  chex.assert_trees_all_equal_structs(old, new)
  old_flat = traverse_util.flatten_dict(old)
  new_flat = traverse_util.flatten_dict(new)
  # Every BN layer must move its running statistics; the mean alone may stay ~0 (a bias-free
  # conv right after a train-mode BN has zero batch mean), so mean or var must change.
  for layer in {k[:-1] for k in old_flat}:
    changed = [
      not np.allclose(old_flat[(*layer, s)], new_flat[(*layer, s)], atol=1e-6)
      for s in ("mean", "var")
    ]
    assert any(changed), layer


@pytest.mark.parametrize("name", ["shufflenet_g2", "shufflenetv2", *TINY])
def test_unknown_stem_is_rejected(name):
  model = create_model(name, 10, stem="resnet")
  with pytest.raises(ValueError, match="Unknown stem"):
    _variables_shape(model, 32)


@pytest.mark.parametrize("name", ["shufflenet_g2", "shufflenet_g2_tiny"])
def test_shufflenet_v1_has_no_imagenet_stem(name):
  model = create_model(name, 10, stem="imagenet")
  with pytest.raises(ValueError, match="CIFAR layout"):
    _variables_shape(model, 32)


@pytest.mark.parametrize("width", [0.1, 0.25, 0.5, 1.5])
def test_width_keeps_grouped_convs_valid(width):
  # eval_shape fails if any grouped conv's channels are not divisible by its groups.
  params = _variables_shape(create_model("shufflenet_g2", 10, width=width), 32)["params"]
  # The network's first unit keeps an ungrouped input conv whatever the stem width.
  stem_channels = params["conv1"]["kernel"].shape[-1]
  assert stem_channels != 24
  assert params["layer1_0"]["conv1"]["kernel"].shape[2] == stem_channels
  # Later units group their input conv in 2.
  in_planes = params["layer1_1"]["conv3"]["kernel"].shape[-1]
  assert params["layer1_1"]["conv1"]["kernel"].shape[2] == in_planes // 2
  v2 = _variables_shape(create_model("shufflenetv2", 10, width=width), 32)["params"]
  assert _count(v2) > 0


def test_names_follow_pytorch_modules():
  g2 = _variables_shape(create_model("shufflenet_g2", 10), 32)
  chex.assert_shape(g2["params"]["layer1_0"]["conv1"]["kernel"], (1, 1, 24, 44))
  chex.assert_shape(g2["params"]["layer2_0"]["conv3"]["kernel"], (1, 1, 25, 200))  # groups 2
  chex.assert_shape(g2["params"]["linear"]["kernel"], (800, 10))
  assert set(g2["batch_stats"]["layer3_3"]) == {"bn1", "bn2", "bn3"}
  v2 = _variables_shape(create_model("shufflenetv2", 10), 32)["params"]
  assert set(v2["stage2_0"]) == {
    "branch1_0",
    "branch1_1",
    "branch1_2",
    "branch1_3",
    "branch2_0",
    "branch2_1",
    "branch2_3",
    "branch2_4",
    "branch2_5",
    "branch2_6",
  }
  assert "branch1_0" not in v2["stage2_1"]
  chex.assert_shape(v2["stage4_0"]["branch1_0"]["kernel"], (3, 3, 1, 232))  # depthwise
  chex.assert_shape(v2["conv5_0"]["kernel"], (1, 1, 464, 1024))
  chex.assert_shape(v2["fc"]["kernel"], (1024, 10))
