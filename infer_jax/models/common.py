"""Building blocks shared by every model family.

Conventions (all families follow them):
  * Inputs are NHWC float arrays already normalised with the dataset mean/std;
    ``__call__(x, train=False)`` returns float32 logits ``[N, num_classes]``.
  * BatchNorm uses PyTorch's defaults (momentum 0.1 there, i.e. 0.9 here; eps 1e-5)
    so that running statistics mean the same thing as in the PyTorch references and
    converted checkpoints behave identically. Flax updates the running variance with
    the biased batch variance where PyTorch uses the unbiased one; this only affects
    training, never inference or the BN-matching loss.
  * Convolutions pad symmetrically by ``kernel // 2`` (PyTorch ``padding=k//2``), not
    XLA 'SAME', which pads asymmetrically for stride 2 and would shift every feature map.
  * Every convolution is a :class:`Conv2D` (built by :func:`conv`): ``nn.Conv``'s parameters
    and numerics, but depthwise and 1x1 convolutions, and the weight gradient of dense k x k
    ones, are computed in a form that is fast on XLA:CPU when the computation is lowered for
    the CPU (see :class:`Conv2D`).
  * Submodule names follow the PyTorch reference module names with '.' replaced by '_'
    (``layer1.0.conv1`` -> ``layer1_0/conv1``), so weight conversion is a renaming.
  * ``width`` scales every channel count; ``width=1`` is the reference architecture.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import default_kernel_init
from jax import lax

STEMS = ("cifar", "imagenet")

# PyTorch BatchNorm2d defaults: momentum 0.1 (Flax counts the complement), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He-normal (fan_out) for convolutions as torchvision initialises them; PyTorch's
# default Linear init (uniform with bound 1/sqrt(fan_in)) for dense layers.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def batch_norm(
  train: bool,
  name: str | None = None,
  dtype: Any = jnp.float32,
  epsilon: float = BN_EPSILON,
  scale_init=nn.initializers.ones,
) -> nn.BatchNorm:
  """A BatchNorm layer with the project's conventions.

  Args:
    train: if True normalise with batch statistics and update the running ones;
      if False normalise with the running statistics (inference mode).
    name: module name (the PyTorch module name with '.' -> '_').
    dtype: computation dtype.
    epsilon: variance epsilon (1e-5 unless the reference says otherwise).
    scale_init: initialiser of the scale (zeros for a residual branch's last BN).

  Returns:
    ``nn.BatchNorm`` acting on the last (channel) axis.
  """
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=epsilon,
    dtype=dtype,
    name=name,
    scale_init=scale_init,
  )


DEPTHWISE_IMPLS = ("auto", "shifted", "xla")
POINTWISE_IMPLS = ("auto", "matmul", "xla")
DENSE_IMPLS = ("auto", "taps", "xla")

# Trace-time override of the 'auto' choice, set by ``conv_impl`` (benchmarks and tests):
# ((kind, impl), ...) pairs, a tuple because a ContextVar default must not be mutable.
_IMPL_OVERRIDE: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
  "conv_impl_override", default=()
)


@contextlib.contextmanager
def conv_impl(
  depthwise: str | None = None, pointwise: str | None = None, dense: str | None = None
) -> Iterator[None]:
  """Forces the implementation of every :class:`Conv2D` left at ``'auto'``, at trace time.

  For A/B benchmarks and tests of whole models, whose convolutions are built inside model
  code. Only tracing inside the ``with`` block is affected: a function jitted under one
  setting keeps its compiled form when called later, so build a fresh ``jax.jit`` per setting.

  Args:
    depthwise: one of ``DEPTHWISE_IMPLS`` or None (unchanged).
    pointwise: one of ``POINTWISE_IMPLS`` or None (unchanged).
    dense: one of ``DENSE_IMPLS`` or None (unchanged).
  """
  override = dict(_IMPL_OVERRIDE.get())
  for kind, impl, allowed in (
    ("depthwise", depthwise, DEPTHWISE_IMPLS),
    ("pointwise", pointwise, POINTWISE_IMPLS),
    ("dense", dense, DENSE_IMPLS),
  ):
    if impl is not None:
      _check_impl(kind, impl, allowed)
      override[kind] = impl
  token = _IMPL_OVERRIDE.set(tuple(override.items()))
  try:
    yield
  finally:
    _IMPL_OVERRIDE.reset(token)


def _check_impl(kind: str, impl: str, allowed: tuple[str, ...]) -> None:
  if impl not in allowed:
    raise ValueError(f"Unknown {kind} convolution implementation {impl!r}: use one of {allowed}.")


def _xla_conv(
  x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int, groups: int
) -> jnp.ndarray:
  """``lax.conv_general_dilated`` exactly as ``nn.Conv`` calls it. NHWC x HWIO -> NHWC."""
  return lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    ((padding, padding), (padding, padding)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
  )


def _accumulation_dtype(dtype: Any) -> Any:
  # Sum in at least float32, as XLA's convolutions accumulate: a bfloat16 running sum of
  # k*k taps would lose bits that lax.conv keeps.
  return jnp.promote_types(dtype, jnp.float32)


def _tap_patch(xp: jnp.ndarray, i: int, j: int, ho: int, wo: int, stride: int) -> jnp.ndarray:
  """``[N, H', W', C]``: the pixels of the padded input ``xp`` that kernel tap ``(i, j)``
  reads; output pixel (a, b) reads padded pixel (a * stride + i, b * stride + j)."""
  n, _, _, c = xp.shape
  return lax.slice(
    xp,
    (0, i, j, 0),
    (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
    (1, stride, stride, 1),
  )


def _shifted_depthwise(
  x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int
) -> jnp.ndarray:
  """Depthwise convolution as a sum of k*k shifted (strided) slices times per-channel taps.

  XLA:CPU runs ``feature_group_count == C`` convolutions at under 1 GFLOP/s (forward, input
  and weight gradient alike); these element-wise products fuse into one loop and their
  gradients (pads of the cotangent, per-tap reductions) stay element-wise too.

  Args:
    x: ``[N, H, W, C]``.
    kernel: ``[k, k, 1, C]``.
    stride: square stride.
    padding: symmetric zero padding per side.

  Returns:
    ``[N, H', W', C]`` in ``x.dtype``, ``H' = (H + 2 * padding - k) // stride + 1``.
  """
  n, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  ho = (h + 2 * padding - kh) // stride + 1
  wo = (w + 2 * padding - kw) // stride + 1
  acc = _accumulation_dtype(x.dtype)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))).astype(acc)
  taps = kernel.astype(acc)
  y = None
  for i in range(kh):
    for j in range(kw):
      term = _tap_patch(xp, i, j, ho, wo, stride) * taps[i, j, 0]
      y = term if y is None else y + term
  return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense_taps_grad(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int) -> jnp.ndarray:
  """A dense (``groups == 1``) k x k convolution whose weight gradient is k*k matrix products.

  The forward pass and the input gradient are XLA's own (``lax.conv`` and its transpose).
  XLA:CPU computes the weight gradient of a 3x3 convolution as a convolution over the batch
  that runs at a fraction of the forward pass's rate (15x slower than the forward on
  ResNet-18's 32x32x64 layers at batch 64); here it is
  ``dW[i, j] = patch_ij(x)^T @ dY`` with ``patch_ij`` the (strided) slice of the padded input
  that tap ``(i, j)`` reads, a ``[Cin, N*H'*W'] @ [N*H'*W', F]`` product per tap.

  Args:
    x: ``[N, H, W, Cin]``.
    kernel: ``[k, k, Cin, F]``.
    stride: square stride.
    padding: symmetric zero padding per side.

  Returns:
    ``[N, H', W', F]``, as :func:`_xla_conv`.
  """
  return _xla_conv(x, kernel, stride, padding, 1)


def _dense_taps_fwd(x, kernel, stride, padding):
  return _xla_conv(x, kernel, stride, padding, 1), (x, kernel)


def _dense_taps_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _xla_conv(x, kernel, stride, padding, 1), x)[1](dy)[0]
  n, h, w, c = x.shape
  kh, kw, _, features = kernel.shape
  _, ho, wo, _ = dy.shape
  acc = _accumulation_dtype(kernel.dtype)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  d2 = dy.reshape(n * ho * wo, features)
  taps = []
  for i in range(kh):
    for j in range(kw):
      patch = _tap_patch(xp, i, j, ho, wo, stride)
      taps.append(
        lax.dot_general(
          patch.reshape(n * ho * wo, c), d2, (((0,), (0,)), ((), ())), preferred_element_type=acc
        )
      )
  dw = jnp.stack(taps).reshape(kh, kw, c, features).astype(kernel.dtype)
  return _sum_to_type_of(dx, x), _sum_to_type_of(dw, kernel)


def _sum_to_type_of(cotangent: jnp.ndarray, primal: jnp.ndarray) -> jnp.ndarray:
  """Inside ``shard_map``: sums a cotangent over the mesh axes it varies along and its primal
  does not (e.g. the weight gradient of a kernel replicated over devices that each hold some
  of the images), as JAX's own transpose of the implicit broadcast does. A custom VJP must
  return cotangents of its primals' types. Outside ``shard_map``: the identity."""
  extra = _varying_axes(cotangent) - _varying_axes(primal)
  return lax.psum(cotangent, tuple(sorted(extra))) if extra else cotangent


def _varying_axes(a: jnp.ndarray) -> frozenset:
  """The ``shard_map`` mesh axes along which ``a`` differs between devices (empty outside)."""
  return jax.typeof(a).manual_axis_type.varying


_dense_taps_grad.defvjp(_dense_taps_fwd, _dense_taps_bwd)


def _pointwise_matmul(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, groups: int) -> jnp.ndarray:
  """1x1 convolution (no padding) as 2-D matrix products ``[N*H'*W', C] @ [C, F]`` per group.

  On XLA:CPU the matmul's input and weight gradients are 3-12x faster than those of the
  equivalent ``lax.conv``; an ``einsum`` over the unflattened ``[N, H, W, C]`` input is about
  half as fast as the flattened form in the backward pass, hence the reshape.

  Args:
    x: ``[N, H, W, C]``.
    kernel: ``[1, 1, C / groups, F]``.
    stride: square stride (the 1x1 window reads every ``stride``-th pixel from 0).
    groups: feature groups; output channels ``[g F/G, (g+1) F/G)`` read input group g.

  Returns:
    ``[N, H', W', F]`` in ``x.dtype``, ``H' = (H - 1) // stride + 1``.
  """
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  n, h, w, c = x.shape
  features = kernel.shape[-1]
  acc = _accumulation_dtype(x.dtype)
  x2 = x.reshape(n * h * w, c)
  k2 = kernel.reshape(c // groups, features)
  if groups == 1:
    y = jnp.dot(x2, k2, preferred_element_type=acc)
  else:
    cg, fg = c // groups, features // groups
    y = jnp.concatenate(
      [
        jnp.dot(
          x2[:, g * cg : (g + 1) * cg], k2[:, g * fg : (g + 1) * fg], preferred_element_type=acc
        )
        for g in range(groups)
      ],
      axis=1,
    )
  return y.reshape(n, h, w, features).astype(x.dtype)


class Conv2D(nn.Module):
  """2-D convolution with ``nn.Conv``'s parameters and semantics, fast on XLA:CPU too.

  Parameters are exactly those of ``nn.Conv(features, (k, k), feature_group_count=groups)``:
  ``kernel [k, k, in/groups, features]`` and ``bias [features]`` (when ``use_bias``) in
  ``param_dtype``, created in that order with the same initialisers, so the same rng gives
  the same values, checkpoints and parameter counts are unchanged, and inputs, kernel and bias
  are promoted to ``dtype`` as ``nn.Conv`` does (``None``: inferred from them).

  Depthwise convolutions (``groups == in == features > 1``) are computed as k*k shifted
  multiply-adds and 1x1 unpadded convolutions as matrix products when the computation is
  lowered for the CPU: on the CIFAR MobileNetV2 / ShuffleNet layers XLA:CPU's ``lax.conv``
  is 9-50x slower than the former in the forward pass, 17-160x in the input gradient and
  2-4x in the weight gradient, and 1.6-3x slower than the latter forward and 6-12x backward.
  Dense k x k convolutions (``groups == 1``, k > 1) keep ``lax.conv`` for the forward pass
  and the input gradient but, on the CPU, take their weight gradient as k*k matrix products
  (:func:`_dense_taps_grad`; 2.4-6x faster than XLA:CPU's on ResNet-18's 32x32 and 16x16
  layers, about 2x on the whole ResNet-18 student step). On GPU/TPU (cuDNN, the TPU
  convolution emitter) and for grouped k x k convolutions ``lax.conv_general_dilated`` is
  used as ``nn.Conv`` uses it. The backend is chosen with
  ``lax.platform_dependent``: both forms are traced and staged out as a ``case`` on a
  platform index that is a constant once the platform the computation is *lowered for* is
  known, so XLA keeps only that branch (no conditional is left in the compiled CPU code).
  Unlike a Python test of ``jax.default_backend()`` at trace time this stays right when a
  function is lowered for a non-default device or exported for another platform. The
  results agree with ``lax.conv`` to float32 rounding (the summation order differs); lower
  precision dtypes are accumulated in float32 as XLA's convolutions do.

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    strides: square stride.
    padding: symmetric zero padding per side (PyTorch ``padding``).
    feature_group_count: feature groups (``in_channels`` for a depthwise conv).
    use_bias: whether to add a bias.
    dtype: computation dtype (None: promoted from inputs and parameters, as ``nn.Conv``).
    param_dtype: parameter dtype.
    kernel_init: kernel initialiser (``nn.Conv``'s default unless given).
    bias_init: bias initialiser.
    depthwise_impl: 'auto' (shifted on CPU, ``lax.conv`` elsewhere), 'shifted' or 'xla'
      (forced on every backend); 'auto' defers to :func:`conv_impl` when one is active.
    pointwise_impl: 'auto' (matmul on CPU, ``lax.conv`` elsewhere), 'matmul' or 'xla'.
    dense_impl: 'auto' (weight gradient as matmuls on CPU, ``lax.conv``'s elsewhere), 'taps'
      or 'xla'.
  """

  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()
  depthwise_impl: str = "auto"
  pointwise_impl: str = "auto"
  dense_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``[..., H, W, in] -> [..., H', W', features]``, ``H' = (H + 2p - k) // stride + 1``.

    Leading batch dimensions are flattened for the convolution and restored, as in
    ``nn.Conv`` (an unbatched ``[H, W, in]`` input is allowed).
    """
    k, s, p, groups = self.kernel_size, self.strides, self.padding, self.feature_group_count
    *batch, h, w, cin = x.shape
    if cin % groups or self.features % groups:
      raise ValueError(
        f"Conv2D {self.name}: {cin} input and {self.features} output channels must both be "
        f"divisible by feature_group_count={groups}."
      )
    kernel = self.param(
      "kernel", self.kernel_init, (k, k, cin // groups, self.features), self.param_dtype
    )
    bias = None
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)

    x = x.reshape(-1, h, w, cin)
    xla = functools.partial(_xla_conv, stride=s, padding=p, groups=groups)
    if groups > 1 and groups == cin == self.features:
      impl = self._resolve("depthwise", self.depthwise_impl, DEPTHWISE_IMPLS)
      direct = functools.partial(_shifted_depthwise, stride=s, padding=p)
    elif k == 1 and p == 0:
      impl = self._resolve("pointwise", self.pointwise_impl, POINTWISE_IMPLS)
      direct = functools.partial(_pointwise_matmul, stride=s, groups=groups)
    elif groups == 1:
      impl = self._resolve("dense", self.dense_impl, DENSE_IMPLS)
      direct = lambda x, kernel: _dense_taps_grad(x, kernel, s, p)  # noqa: E731
    else:
      impl, direct = "xla", None
    if impl == "xla":
      y = xla(x, kernel)
    elif impl != "auto":
      y = direct(x, kernel)
    else:
      y = lax.platform_dependent(x, kernel, cpu=direct, default=xla)

    if bias is not None:
      y = y + bias
    return y.reshape(*batch, *y.shape[1:])

  @staticmethod
  def _resolve(kind: str, impl: str, allowed: tuple[str, ...]) -> str:
    _check_impl(kind, impl, allowed)
    if impl == "auto":
      return dict(_IMPL_OVERRIDE.get()).get(kind, "auto")
    return impl


def conv(
  features: int,
  kernel: int,
  stride: int = 1,
  groups: int = 1,
  use_bias: bool = False,
  name: str | None = None,
  dtype: Any = jnp.float32,
  padding: int | None = None,
  depthwise_impl: str = "auto",
  pointwise_impl: str = "auto",
  dense_impl: str = "auto",
) -> Conv2D:
  """A 2-D convolution padded like PyTorch's ``padding=kernel//2``.

  Args:
    features: output channels.
    kernel: square kernel size.
    stride: square stride.
    groups: feature groups (``groups == in_channels`` gives a depthwise conv).
    use_bias: whether the conv has a bias.
    name: module name.
    dtype: computation dtype.
    padding: symmetric padding per side; default ``kernel // 2``.
    depthwise_impl: see :class:`Conv2D` ('auto', 'shifted' or 'xla').
    pointwise_impl: see :class:`Conv2D` ('auto', 'matmul' or 'xla').
    dense_impl: see :class:`Conv2D` ('auto', 'taps' or 'xla').

  Returns:
    :class:`Conv2D` mapping ``[N, H, W, Cin] -> [N, H', W', features]``, with the
    parameters of the ``nn.Conv`` it replaces.
  """
  return Conv2D(
    features,
    kernel,
    strides=stride,
    padding=kernel // 2 if padding is None else padding,
    feature_group_count=groups,
    use_bias=use_bias,
    dtype=dtype,
    kernel_init=conv_init,
    name=name,
    depthwise_impl=depthwise_impl,
    pointwise_impl=pointwise_impl,
    dense_impl=dense_impl,
  )


def dense(features: int, name: str | None = None, dtype: Any = jnp.float32) -> nn.Dense:
  """A dense layer with PyTorch's default initialisation. ``[N, D] -> [N, features]``."""
  return nn.Dense(features, kernel_init=dense_init, dtype=dtype, name=name)


def scale_channels(channels: int, width: float, divisor: int = 1) -> int:
  """Channel count ``channels * width``, rounded to a multiple of ``divisor`` (>= divisor).

  ``width == 1`` returns ``channels`` unchanged whatever the divisor, so the full-width
  model is exactly the reference architecture.
  """
  if width == 1.0:
    return channels
  scaled = int(round(channels * width / divisor)) * divisor
  return max(divisor, scaled)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """Mean over the spatial axes. ``[N, H, W, C] -> [N, C]``."""
  return jnp.mean(x, axis=(1, 2))


def check_stem(stem: str) -> None:
  """Raises ValueError for a stem name other than 'cifar' or 'imagenet'."""
  if stem not in STEMS:
    raise ValueError(
      f"Unknown stem {stem!r}: use one of {STEMS} ('cifar' for 32x32 and 64x64 "
      "inputs, 'imagenet' for 224x224)."
    )


relu6 = functools.partial(jnp.clip, min=0.0, max=6.0)
