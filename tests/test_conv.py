"""Conv2D: the nn.Conv replacement of every model, checked against nn.Conv itself.

Each case builds ``nn.Conv`` exactly as the models used to (symmetric ``kernel // 2``
padding, ``conv_init``) and the ``Conv2D`` returned by ``common.conv``, runs both on the
same parameters and compares outputs, input gradients and parameter gradients, for the
forced CPU forms ('shifted' depthwise, 'matmul' 1x1, 'taps' weight gradient of dense k x k)
and forced 'xla'; 'auto' is checked to compile to the CPU forms here and to agree with both.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer_jax.models import common
from infer_jax.models.common import conv, conv_impl

RTOL = 1e-5
# Initialisation keys: rbg, because every threefry sampling of a new shape is a slow XLA:CPU
# compilation (seconds per test otherwise).
KEY = jax.random.key(0, impl="rbg")

# (in_channels, features, kernel, stride, groups, spatial, use_bias): depthwise k=3/5 at
# stride 1/2 on odd and even sizes (stride 2 drops the last row/column of an even input but
# not of an odd one), dense 3x3 and 1x1 (stride 1 and 2), grouped 1x1 and 3x3; each kind
# with and without bias. Kept few: each case is one XLA compilation (~0.5 s for k=5).
CASES = {
  "dw3_s1_7": (8, 8, 3, 1, 8, 7, False),
  "dw3_s1_8_bias": (8, 8, 3, 1, 8, 8, True),
  "dw3_s2_7_bias": (8, 8, 3, 2, 8, 7, True),
  "dw3_s2_8": (8, 8, 3, 2, 8, 8, False),
  "dw5_s1_7_bias": (6, 6, 5, 1, 6, 7, True),
  "dw5_s2_7": (6, 6, 5, 2, 6, 7, False),
  "dw5_s2_8_bias": (6, 6, 5, 2, 6, 8, True),
  "dense3_s1_7_bias": (4, 6, 3, 1, 1, 7, True),
  "dense3_s2_8": (4, 6, 3, 2, 1, 8, False),
  "dense1_s1_7_bias": (8, 5, 1, 1, 1, 7, True),
  "dense1_s2_8": (8, 5, 1, 2, 1, 8, False),
  "group1_s1_8_bias": (8, 6, 1, 1, 2, 8, True),
  "group1_s2_7": (8, 6, 1, 2, 2, 7, False),
  "group3_s1_7": (8, 6, 3, 1, 2, 7, False),
}
# Implementations (depthwise, pointwise, dense) forced through the module attributes. 'auto'
# is the first triple on CPU (test_auto_lowers_direct_forms_for_cpu_and_lax_conv_for_...).
IMPLS = [("shifted", "matmul", "taps"), ("xla", "xla", "xla")]


def reference_conv(features, kernel, stride, groups, use_bias, dtype=jnp.float32):
  """The nn.Conv that ``common.conv`` built before Conv2D existed."""
  p = kernel // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((p, p), (p, p)),
    feature_group_count=groups,
    use_bias=use_bias,
    kernel_init=common.conv_init,
    dtype=dtype,
  )


def assert_close(actual, expected, rtol=RTOL):
  """Every leaf within ``rtol`` of the reference, relative to the reference's largest entry."""

  def check(a, e):
    scale = float(jnp.max(jnp.abs(e.astype(jnp.float32))))
    chex.assert_trees_all_close(a, e, rtol=rtol, atol=rtol * scale)

  chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
  jax.tree.map(check, actual, expected)


def init(module, x):
  """``module.init`` run with lax.conv.

  Parameters are created before any implementation is chosen, and one conv op is far cheaper
  to dispatch eagerly than k*k slices or a platform cond.
  """
  with conv_impl(depthwise="xla", pointwise="xla", dense="xla"):
    return module.init(KEY, x)


def outputs_and_grads(module, params, x, cotangent):
  """Forward output and the gradients of ``<y, cotangent>`` w.r.t. x and the parameters."""

  def f(x, params):
    return module.apply({"params": params}, x)

  y, vjp = jax.vjp(f, x, params)
  dx, dparams = vjp(cotangent.astype(y.dtype))
  return y, dx, dparams


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_nn_conv(case):
  """Outputs, input and parameter gradients equal nn.Conv's for every implementation."""
  cin, features, kernel, stride, groups, size, use_bias = CASES[case]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, size, size, cin)), jnp.float32)
  params = {"kernel": jnp.asarray(rng.normal(size=(kernel, kernel, cin // groups, features)))}
  if use_bias:
    params["bias"] = jnp.asarray(rng.normal(size=(features,)), jnp.float32)
  params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  ref = reference_conv(features, kernel, stride, groups, use_bias)
  cotangent = jnp.asarray(rng.normal(size=jax.eval_shape(ref.apply, {"params": params}, x).shape))
  ours = [
    conv(features, kernel, stride, groups, use_bias, depthwise_impl=dw, pointwise_impl=pw).clone(
      dense_impl=dense
    )
    for dw, pw, dense in IMPLS
  ]

  # One compilation per case: op-by-op dispatch of the k*k distinct slices is slower.
  @jax.jit
  def run(x, params):
    expected = outputs_and_grads(ref, params, x, cotangent)
    return expected, [outputs_and_grads(m, params, x, cotangent) for m in ours]

  expected, actual = run(x, params)
  for impl, result in zip(IMPLS, actual, strict=True):
    try:
      assert_close(result, expected)
    except AssertionError as e:
      raise AssertionError(f"implementation {impl}") from e


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_params_match_nn_conv(case):
  """Same tree, shapes, dtypes and (same rng) values as nn.Conv: checkpoints are unchanged."""
  cin, features, kernel, stride, groups, size, _ = CASES[case]
  x = jnp.zeros((1, size, size, cin))
  for use_bias in (False, True):
    ours = init(conv(features, kernel, stride, groups, use_bias=use_bias), x)
    ref = reference_conv(features, kernel, stride, groups, use_bias).init(KEY, x)
    chex.assert_trees_all_equal(ours, ref)
    assert set(ours["params"]) == ({"kernel", "bias"} if use_bias else {"kernel"})


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i[0])
@pytest.mark.parametrize(
  "case", ["dw3_s2_7_bias", "dense1_s1_7_bias", "group1_s1_8_bias", "dense3_s2_8"]
)
def test_bfloat16_compute_float32_params(case, impl):
  """dtype=bfloat16: bfloat16 activations and input gradients, float32 parameters/gradients."""
  cin, features, kernel, stride, groups, size, _ = CASES[case]
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, size, size, cin)), jnp.float32)
  dw, pw, dense = impl
  ours = conv(
    features, kernel, stride, groups, dtype=jnp.bfloat16, depthwise_impl=dw, pointwise_impl=pw
  ).clone(dense_impl=dense)
  ref = reference_conv(features, kernel, stride, groups, False, dtype=jnp.bfloat16)
  params = init(ours, x)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  cotangent = jnp.ones((2, *ref.apply({"params": params}, x).shape[1:]))
  run = jax.jit(outputs_and_grads, static_argnums=0)
  y, dx, dparams = run(ours, params, x.astype(jnp.bfloat16), cotangent)
  chex.assert_type([y, dx], jnp.bfloat16)
  chex.assert_type(dparams["kernel"], jnp.float32)
  # Both round inputs and weights to bfloat16 and accumulate in float32; they may differ in
  # the last bit of a bfloat16 result.
  expected = run(ref, params, x.astype(jnp.bfloat16), cotangent)
  assert_close((y, dx, dparams), expected, rtol=1e-2)


def test_forced_implementations_agree_and_conv_impl_overrides_auto():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 9, 9, 12)), jnp.float32)
  module = conv(12, 3, 2, groups=12, use_bias=True)
  variables = init(module, x)
  auto = jax.jit(module.apply)(variables, x)
  for depthwise in ("shifted", "xla"):
    forced = jax.jit(module.clone(depthwise_impl=depthwise).apply)(variables, x)
    with conv_impl(depthwise=depthwise):
      overridden = jax.jit(module.apply)(variables, x)
    assert_close(forced, auto)
    assert_close(overridden, auto)
  with pytest.raises(ValueError, match="Unknown depthwise"), conv_impl(depthwise="einsum"):
    pass
  with pytest.raises(ValueError, match="Unknown pointwise"):
    conv(4, 1, pointwise_impl="shifted").init(jax.random.key(0), x)


def _lowers_to_conv(modules, x, platform: str, **override) -> bool:
  """Whether the forward + input and weight gradients of ``modules``, lowered by JAX for
  ``platform`` (no device of it needed), contain a StableHLO convolution."""
  variables = [init(m, x) for m in modules]

  def loss(x, variables):
    return sum(jnp.sum(jnp.sin(m.apply(v, x))) for m, v in zip(modules, variables, strict=True))

  with conv_impl(**override):
    exported = jax.export.export(jax.jit(jax.grad(loss, argnums=(0, 1))), platforms=[platform])(
      x, variables
    )
  return "stablehlo.convolution" in exported.mlir_module()


def test_auto_lowers_direct_forms_for_cpu_and_lax_conv_for_accelerators():
  """'auto' depthwise and 1x1 convolutions lower without a convolution op for the CPU and
  with one for GPU and TPU; dense and grouped k > 1 convolutions always use lax.conv."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 8)), jnp.float32)
  direct = [conv(8, 3, 1, groups=8), conv(8, 3, 2, groups=8), conv(6, 1), conv(6, 1, 2, 2)]
  assert not _lowers_to_conv(direct, x, "cpu")
  assert _lowers_to_conv(direct, x, "cpu", depthwise="xla", pointwise="xla")
  for platform in ("cuda", "tpu"):
    assert _lowers_to_conv(direct, x, platform)
  assert _lowers_to_conv([conv(6, 3), conv(6, 3, groups=2)], x, "cpu")


def _count_convs(module, x, platform: str, **override) -> int:
  """StableHLO convolutions in the forward + input and weight gradients of ``module``."""
  variables = init(module, x)

  def loss(x, variables):
    return jnp.sum(jnp.sin(module.apply(variables, x)))

  with conv_impl(**override):
    exported = jax.export.export(jax.jit(jax.grad(loss, argnums=(0, 1))), platforms=[platform])(
      x, variables
    )
  return exported.mlir_module().count("stablehlo.convolution")


@pytest.mark.parametrize("stride", [1, 2])
def test_auto_dense_weight_gradient_is_matmuls_on_cpu_only(stride):
  """A dense 3x3 convolution keeps lax.conv for its forward pass and input gradient everywhere;
  on the CPU its weight gradient is the k*k matrix products (2 convolutions, not 3)."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 4)), jnp.float32)
  assert _count_convs(conv(6, 3, stride), x, "cpu") == 2
  assert _count_convs(conv(6, 3, stride), x, "cpu", dense="xla") == 3
  for platform in ("cuda", "tpu"):
    assert _count_convs(conv(6, 3, stride), x, platform) == 3


def test_auto_runs_the_direct_form_on_cpu(monkeypatch):
  """What runs, not only what is lowered: a marker added to the direct forms shows up in the
  output of an 'auto' convolution on the CPU, and not in a forced lax.conv one."""
  from infer_jax.models import common

  assert jax.default_backend() == "cpu"
  for name in ("_shifted_depthwise", "_pointwise_matmul", "_dense_taps_grad"):
    real = getattr(common, name)
    monkeypatch.setattr(common, name, lambda *a, _real=real, **k: _real(*a, **k) + 1.0)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 8)), jnp.float32)
  for module, kind in (
    (conv(8, 3, 1, groups=8), "depthwise"),
    (conv(6, 1), "pointwise"),
    (conv(6, 3), "dense"),
  ):
    variables = init(module, x)
    auto = jax.jit(module.apply)(variables, x)
    with conv_impl(**{kind: "xla"}):
      xla = jax.jit(module.apply)(variables, x)
    np.testing.assert_allclose(auto - xla, 1.0, atol=1e-4)  # every output shifted: direct ran


def test_leading_batch_dims_like_nn_conv():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 7, 7, 4)), jnp.float32)
  ours, ref = conv(4, 3, 2, groups=4), reference_conv(4, 3, 2, 4, False)
  variables = ref.init(KEY, x)
  for xs in (x, x[0, 0]):
    assert_close(jax.jit(ours.apply)(variables, xs), ref.apply(variables, xs))


def test_model_logits_unchanged_by_implementation():
  """A whole MobileNetV2 (depthwise, 1x1, dense stem) gives the same logits either way."""
  from infer_jax.models import create_model

  model = create_model("mobilenetv2_tiny", 10, stem="cifar")
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  with conv_impl(depthwise="xla", pointwise="xla"):
    variables = jax.jit(lambda x: model.init(KEY, x, train=False))(x)

  def logits(variables, x):
    return model.apply(variables, x, train=False)

  with conv_impl(depthwise="xla", pointwise="xla"):
    ref = jax.jit(logits)(variables, x)
  np.testing.assert_allclose(jax.jit(logits)(variables, x), ref, rtol=1e-4, atol=1e-5)


def test_dense_weight_gradient_inside_shard_map_is_summed_over_the_devices():
  """A dense 3x3 kernel replicated over 8 devices that each convolve 1 of 8 images: its
  gradient is the sum of the devices' gradients (JAX's own rule for a replicated input),
  equal to the gradient of the unsplit batch -- the recover step split over an image axis."""
  from jax.sharding import Mesh
  from jax.sharding import PartitionSpec as P

  module = conv(8, 3, 1, padding=1)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 6, 6, 4)), jnp.float32)
  variables = init(module, x)

  def loss(variables, x):
    return jnp.sum(jnp.sin(module.apply(variables, x)))

  mesh = Mesh(np.array(jax.devices()[:8]), ("images",))

  def split_loss(variables, x):
    local = jax.shard_map(
      lambda v, xs: jax.lax.psum(loss(v, xs), "images"),
      mesh=mesh,
      in_specs=(P(), P("images")),
      out_specs=P(),
    )
    return local(variables, x)

  expected = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)
  got = jax.jit(jax.grad(split_loss, argnums=(0, 1)))(variables, x)
  assert_close(got, expected)
