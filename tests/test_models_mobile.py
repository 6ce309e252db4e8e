"""MobileNetV2 and EfficientNet-B0 (both stems): reference structure and behaviour."""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from infer_jax import convert
from infer_jax.models import create_model, list_models
from infer_jax.models.efficientnet import CifarBlock, EfficientNet, MBConv, drop_connect
from tests.conftest import TORCH_HOW, require_module

# Parameter counts (BN scale/bias included, running statistics excluded) of the
# reference architectures. Obtained by counting the PyTorch modules in
# tests/torch_refs/mobile.py (written to the pytorch-cifar and torchvision layouts) with
# torch 2.13: `python tests/torch_refs/mobile.py`. The 'imagenet' numbers equal
# torchvision's published num_params (mobilenet_v2 3,504,872; efficientnet_b0 5,288,548).
# The pytorch-cifar EfficientNetB0 count includes the 1,088 parameters (32x32 conv1 +
# 32-channel bn1) that its expansion-1 first block builds but never runs.
REFERENCE_COUNTS = [
  ("mobilenetv2", "cifar", 10, 2_296_922),
  ("mobilenetv2", "cifar", 100, 2_412_212),
  ("mobilenetv2", "imagenet", 1000, 3_504_872),
  ("efficientnet_b0", "cifar", 10, 3_599_686),
  ("efficientnet_b0", "cifar", 100, 3_628_576),
  ("efficientnet_b0", "imagenet", 1000, 5_288_548),
]
FULL = ["mobilenetv2", "efficientnet_b0"]
TINY = ["mobilenetv2_tiny", "efficientnet_tiny"]
STEMS = ["cifar", "imagenet"]


def _param_count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@functools.cache
def _abstract(
  name: str, stem: str, num_classes: int = 10, width: float = 1.0, size: int = 32, dtype=jnp.float32
):
  """Variable shapes from tracing ``model.init`` (``jax.eval_shape``: nothing is computed)."""
  model = create_model(name, num_classes, stem=stem, width=width, dtype=dtype)
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, size, size, 3))), jax.random.key(0))


def _images(n: int = 4, size: int = 8, seed: int = 0) -> jnp.ndarray:
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 3)), jnp.float32)


@functools.cache
def _variables(name: str, stem: str) -> dict:
  """Tiny-model variables of the traced ``init`` structure, filled with NumPy draws.

  ``init`` is traced (which runs its ``is_initializing`` branches) but not compiled:
  compiling the RNG of every parameter shape would dominate this file's runtime.
  """
  rng = np.random.default_rng(0)
  flat = {}
  for key, leaf in traverse_util.flatten_dict(_abstract(name, stem, size=8)).items():
    if key[-1] in ("var", "scale"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif key[-1] == "kernel":  # He-style scale keeps activations O(1) through the blocks
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    else:
      value = rng.normal(size=leaf.shape) * 0.1
    flat[key] = jnp.asarray(value, jnp.float32)
  return traverse_util.unflatten_dict(flat)


@functools.cache
def _jitted_apply(name: str, stem: str, train: bool, dtype=jnp.float32):
  """``apply`` compiled once per configuration (one XLA compile beats op-by-op dispatch)."""
  model = create_model(name, 10, stem=stem, dtype=dtype)
  mutable = ["batch_stats", "intermediates"] if train else ["intermediates"]
  return jax.jit(functools.partial(model.apply, train=train, mutable=mutable))


def _run(
  name: str,
  stem: str,
  x: jnp.ndarray,
  train: bool = False,
  seed: int | None = None,
  dtype=jnp.float32,
):
  """(logits, mutated collections) of a tiny model; ``seed`` gives a 'dropout' rng."""
  rngs = None if seed is None else {"dropout": jax.random.key(seed)}
  return _jitted_apply(name, stem, train, dtype)(_variables(name, stem), x, rngs=rngs)


def _unused_bn(name: str, stem: str) -> set[tuple[str, ...]]:
  """BN layers that exist but never run: pytorch-cifar EfficientNet's expansion-1 bn1."""
  return {("layers_0", "bn1")} if name.startswith("efficientnet") and stem == "cifar" else set()


def _load_torch_refs():
  """Imports tests/torch_refs/mobile.py by path (works whether or not tests is a package)."""
  path = pathlib.Path(__file__).parent / "torch_refs" / "mobile.py"
  spec = importlib.util.spec_from_file_location("_torch_refs_mobile", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------ reference structure


@pytest.mark.parametrize("name,stem,num_classes,expected", REFERENCE_COUNTS)
def test_param_counts_match_reference(name, stem, num_classes, expected):
  assert _param_count(_abstract(name, stem, num_classes)["params"]) == expected


@pytest.mark.parametrize("name,stem,num_classes,expected", REFERENCE_COUNTS)
def test_torch_reference_counts(name, stem, num_classes, expected):
  require_module("torch", TORCH_HOW)
  refs = _load_torch_refs()
  assert refs.count_params(refs.build(name, num_classes, stem)) == expected


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("stem", STEMS)
def test_converted_torch_reference_gives_same_logits(name, stem):
  """The reference's state_dict converts by renaming and the eval logits agree.

  The full-width networks are checked in tests/test_convert.py (logits, BN statistics,
  recover loss and its input gradient).
  """
  torch = require_module("torch", TORCH_HOW)
  refs = _load_torch_refs()
  torch.manual_seed(0)
  ref = refs.build(name, 10, stem)
  with torch.no_grad():  # non-trivial BN statistics so that eval-mode BN is exercised
    for m in ref.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
  ref.eval()
  size = 8
  x = np.asarray(_images(2, size), np.float32)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  state = {k: v.numpy() for k, v in ref.state_dict().items()}
  # The package's converter: a renaming plus layout changes, and every key must fit.
  variables = convert.torch_state_to_flax(state, _abstract(name, stem, size=size))
  logits = create_model(name, 10, stem=stem).apply(variables, jnp.asarray(x))
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_registered():
  assert {*FULL, *TINY} <= set(list_models())


def test_imagenet_layouts_use_torchvision_names():
  mbv2 = _abstract("mobilenetv2", "imagenet", 1000)["params"]
  # t == 1: no expansion conv, so the depthwise conv is conv.0 and the projection conv.1.
  assert set(mbv2["features_1"]) == {"conv_0_0", "conv_0_1", "conv_1", "conv_2"}
  assert set(mbv2["features_2"]) == {
    "conv_0_0",
    "conv_0_1",
    "conv_1_0",
    "conv_1_1",
    "conv_2",
    "conv_3",
  }
  assert {"features_0_0", "features_18_0", "classifier_1"} <= set(mbv2)
  eff = _abstract("efficientnet_b0", "imagenet", 1000)["params"]
  assert set(eff["features_1_0"]) == {
    "block_0_0",
    "block_0_1",
    "block_1_fc1",
    "block_1_fc2",
    "block_2_0",
    "block_2_1",
  }
  # SE squeezes to a quarter of the block *input* channels (16 // 4), not the expanded 96.
  assert eff["features_2_0"]["block_2_fc1"]["kernel"].shape == (1, 1, 96, 4)
  assert eff["features_6_3"]["block_1_0"]["kernel"].shape == (5, 5, 1, 1152)
  assert {"features_0_0", "features_8_0", "classifier_1"} <= set(eff)


def test_cifar_layouts_use_pytorch_cifar_names():
  mbv2 = _abstract("mobilenetv2", "cifar")["params"]
  assert set(mbv2["layers_0"]) == {
    "conv1",
    "bn1",
    "conv2",
    "bn2",
    "conv3",
    "bn3",
    "shortcut_0",
    "shortcut_1",
  }  # 32 -> 16 at stride 1
  assert "shortcut_0" not in mbv2["layers_2"]  # stride 2: no shortcut at all
  assert {"conv1", "bn1", "layers_16", "conv2", "bn2", "linear"} <= set(mbv2)
  eff = _abstract("efficientnet_b0", "cifar")["params"]
  assert eff["layers_0"]["se_se1"]["kernel"].shape == (1, 1, 32, 8)
  assert eff["layers_1"]["se_se1"]["kernel"].shape == (1, 1, 96, 4)  # int(16 * 0.25)
  assert eff["linear"]["kernel"].shape == (320, 10)  # no 1x1 head conv in this layout


@pytest.mark.parametrize("name", FULL)
@pytest.mark.parametrize("stem", STEMS)
def test_width_multiplier_shrinks_params(name, stem):
  full = _param_count(_abstract(name, stem)["params"])
  half = _abstract(name, stem, width=0.5)["params"]
  assert _param_count(half) < full / 2
  if stem == "imagenet":  # torchvision rounds every channel count to a multiple of 8
    kernels = [
      v
      for k, v in traverse_util.flatten_dict(half).items()
      if k[-1] == "kernel" and len(v.shape) == 4 and not k[-2].endswith("fc1")
    ]
    assert all(k.shape[-1] % 8 == 0 for k in kernels)


@pytest.mark.parametrize("name", FULL + TINY)
def test_unknown_stem_raises_value_error(name):
  with pytest.raises(ValueError, match="stem"):
    create_model(name, 10, stem="imagnet")


# ------------------------------------------------------------------------------ behaviour


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("stem", STEMS)
def test_tiny_forward_shape_dtype_finite(name, stem):
  logits, state = _run(name, stem, _images())
  chex.assert_shape(logits, (4, 10))
  assert logits.dtype == jnp.float32
  chex.assert_tree_all_finite(logits)
  (pre_logits,) = state["intermediates"]["pre_logits"]
  assert pre_logits.shape[0] == 4 and pre_logits.ndim == 2


@pytest.mark.parametrize("name", TINY)
def test_bfloat16_compute_returns_float32_logits(name):
  assert all(
    p.dtype == jnp.float32
    for p in jax.tree.leaves(_abstract(name, "cifar", size=8, dtype=jnp.bfloat16))
  )
  logits, _ = _run(name, "cifar", _images(), dtype=jnp.bfloat16)
  assert logits.dtype == jnp.float32
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("stem", STEMS)
def test_eval_is_deterministic_and_per_sample(name, stem):
  x = _images()
  a, _ = _run(name, stem, x)
  np.testing.assert_array_equal(a, _run(name, stem, x)[0])
  # Running statistics are used, so a sample's logits do not depend on the rest of the
  # batch: permuting the batch permutes the logits.
  perm = np.array([2, 0, 3, 1])
  np.testing.assert_allclose(a[perm], _run(name, stem, x[perm])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("stem", STEMS)
def test_train_mode_updates_batch_stats(name, stem):
  logits, updates = _run(name, stem, _images(), train=True, seed=1)
  chex.assert_shape(logits, (4, 10))
  before = traverse_util.flatten_dict(_variables(name, stem)["batch_stats"])
  after = traverse_util.flatten_dict(updates["batch_stats"])
  assert before.keys() == after.keys()
  changed = {k[:-1] for k in before if not np.allclose(before[k], after[k])}
  assert changed == {k[:-1] for k in before} - _unused_bn(name, stem)


@pytest.mark.parametrize(
  "name,stem",
  [
    ("efficientnet_tiny", "cifar"),
    ("efficientnet_tiny", "imagenet"),
    ("mobilenetv2_tiny", "imagenet"),
  ],
)
def test_train_mode_needs_dropout_rng_and_is_stochastic(name, stem):
  with pytest.raises(flax.errors.InvalidRngError):
    _run(name, stem, _images(), train=True)
  run = lambda seed: _run(name, stem, _images(), train=True, seed=seed)[0]
  assert not np.allclose(run(1), run(2))
  np.testing.assert_array_equal(run(3), run(3))


def test_mobilenetv2_cifar_trains_without_rng():
  """The pytorch-cifar MobileNetV2 has no dropout, so training needs no rng."""
  logits, _ = _run("mobilenetv2_tiny", "cifar", _images(), train=True)
  chex.assert_tree_all_finite(logits)


class _DropConnect(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x, train):
    return drop_connect(self, x, self.rate, train)


def test_drop_connect_drops_whole_samples_and_keeps_the_mean():
  x = jnp.ones((4000, 2, 2, 3))
  layer = _DropConnect(0.25)
  np.testing.assert_array_equal(layer.apply({}, x, False), x)
  y = layer.apply({}, x, True, rngs={"dropout": jax.random.key(0)})
  per_sample = np.asarray(y).reshape(4000, -1)
  assert np.all(per_sample == per_sample[:, :1])  # one decision per sample
  assert set(np.unique(per_sample)) == {0.0, np.float32(1 / 0.75)}
  assert abs(per_sample.mean() - 1.0) < 0.05


def test_drop_connect_skips_the_residual_branch_of_whole_samples():
  block = CifarBlock(8, 8, kernel=3, stride=1, expansion=1, drop_rate=0.5)
  tiny = _variables("efficientnet_tiny", "cifar")
  variables = {c: tiny[c]["layers_0"] for c in ("params", "batch_stats")}
  x = jnp.asarray(np.random.default_rng(1).normal(size=(32, 4, 4, 8)), jnp.float32)
  run = jax.jit(
    lambda key: block.apply(
      variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
    )[0]
  )
  dropped = np.all(np.asarray(run(jax.random.key(0)) == x), axis=(1, 2, 3))
  assert 0 < dropped.sum() < 32  # some samples keep only the identity path, others not
  np.testing.assert_array_equal(block.apply(variables, x), block.apply(variables, x))


def _block_drop_rates(model: nn.Module) -> list[float]:
  """Drop-connect rate of every MBConv block, in call order (traced only, not run)."""
  rates = []

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, (CifarBlock, MBConv)) and context.method_name == "__call__":
      rates.append(context.module.drop_rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3))), jax.random.key(0))
  return rates


@pytest.mark.parametrize(
  "stem,rate,expected_last",
  [("imagenet", None, 0.2 * 15 / 16), ("cifar", None, 0.0), ("cifar", 0.2, 0.2 * 15 / 16)],
)
def test_drop_connect_schedule(stem, rate, expected_last):
  """Linear in the block index; pytorch-cifar's effective rate is 0 (its counter is stuck)."""
  rates = _block_drop_rates(EfficientNet(10, stem=stem, drop_connect_rate=rate))
  assert len(rates) == 16 and rates[0] == 0.0
  np.testing.assert_allclose(rates[-1], expected_last)
  np.testing.assert_allclose(np.diff(rates), expected_last / 15)


def _bn_calls(name: str, stem: str, train: bool) -> list[tuple[str, ...]]:
  """Paths of the nn.BatchNorm modules that run in one apply, in call order.

  The apply is only traced (``jax.eval_shape``): interception happens at trace time.
  """
  calls = []

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      calls.append(context.module.path)
    return next_fun(*args, **kwargs)

  model = create_model(name, 10, stem=stem)
  with nn.intercept_methods(spy):
    jax.eval_shape(
      lambda v, x: model.apply(
        v, x, train=train, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
      ),
      _variables(name, stem),
      _images(),
    )
  return calls


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("stem", STEMS)
def test_every_batch_norm_runs_except_the_unused_one(name, stem):
  """What BN-statistics capture sees: each BN that runs, once; the unused one never."""
  stats = {k[:-1] for k in traverse_util.flatten_dict(_variables(name, stem)["batch_stats"])}
  calls = _bn_calls(name, stem, train=False)
  assert len(calls) == len(set(calls))
  assert set(calls) == stats - _unused_bn(name, stem)


@pytest.mark.parametrize("train", [False, True])
def test_efficientnet_cifar_unused_expansion_bn_exists_but_never_runs(train):
  """pytorch-cifar's expansion-1 block builds conv1/bn1 (counted) without running them."""
  full = _abstract("efficientnet_b0", "cifar")
  assert full["params"]["layers_0"]["conv1"]["kernel"].shape == (1, 1, 32, 32)
  assert full["batch_stats"]["layers_0"]["bn1"]["mean"].shape == (32,)
  tiny = _variables("efficientnet_tiny", "cifar")
  assert "conv1" in tiny["params"]["layers_0"] and "bn1" in tiny["batch_stats"]["layers_0"]
  calls = _bn_calls("efficientnet_tiny", "cifar", train)
  assert ("layers_0", "bn1") not in calls
  assert ("layers_1", "bn1") in calls  # expansion blocks do run theirs
