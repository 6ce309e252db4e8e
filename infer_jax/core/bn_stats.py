"""BatchNorm-input statistics and the BN-matching loss, as pure functions.

INFER (like SRe2L) matches, at every BatchNorm layer l of a teacher that runs in
inference mode, the per-channel mean and *biased* variance of the layer's input over
a synthetic batch against the layer's running statistics:

    L_bn = sum_l w_l * (||mu_l - mu_hat_l||_2 + ||var_l - var_hat_l||_2),

with w = first_multiplier for the first BatchNorm layer that runs and 1 for the rest.

The statistics are recorded without touching model code: ``nn.intercept_methods``
intercepts every ``nn.BatchNorm.__call__`` (the JAX counterpart of a PyTorch forward
hook) and stores the moments of its input in the side collection
``BN_INPUT_STATS``. The resulting tree has the structure of
``variables['batch_stats']`` restricted to the layers that actually ran, with leaves
``{'mean': [C_l], 'var': [C_l]}`` -- the same leaf names as the running statistics, so
the two trees line up path by path.

Everything here is a pure function of arrays and pytrees: it can be jitted (it traces
once per input shape) and ``jax.vmap``-ed over a leading subset axis, in which case
each subset's statistics are computed over its own images only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

BN_INPUT_STATS = "bn_input_stats"

Path = tuple[str, ...]
PyTree = Any


def _input_moments(
  x: jax.Array, axis_name: str | None = None, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance over every axis but the last.

  Args:
    x: ``[N, H, W, C]`` (or any ``[..., C]``) BatchNorm input.
    axis_name: a mesh axis (inside ``shard_map``) over which the N images are split; the
      moments are then those of all images of every device on that axis, reduced with
      ``psum`` -- the same two-pass mean and variance as on one device, summed in another
      order. None: the images of this array only.
    weights: ``[N]`` 0/1 per image (only with ``axis_name``): images of weight 0 are
      padding and count nowhere.

  Returns:
    ``(mean [C], var [C])`` in at least float32 (bf16/f16 inputs are promoted), because
    the matching loss compares them with float32 running statistics.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = tuple(range(x.ndim - 1))
  if axis_name is None:
    mean = jnp.mean(x, axis=axes)
    # Two-pass variance: the one-pass E[x^2] - E[x]^2 loses precision when the mean is
    # large relative to the spread, which is exactly what the loss is sensitive to.
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return mean, var
  # Split over devices: sums of this device's images, added over the axis, over the global
  # count. Still two passes (the global mean first), so it is the one-device variance.
  w = jnp.ones(x.shape[:1], x.dtype) if weights is None else weights.astype(x.dtype)
  w = w.reshape(w.shape + (1,) * (x.ndim - 1))
  per_image = float(np.prod(x.shape[1:-1], dtype=np.int64))
  count = jax.lax.psum(jnp.sum(w) * per_image, axis_name)
  mean = jax.lax.psum(jnp.sum(x * w, axis=axes), axis_name) / count
  var = jax.lax.psum(jnp.sum(jnp.square(x - mean) * w, axis=axes), axis_name) / count
  return mean, var


def _is_bn_call(context: Any) -> bool:
  return isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__"


def _bn_input(args: tuple, kwargs: dict) -> jax.Array:
  return args[0] if args else kwargs["x"]


# Leaf layers: never "blocks" for rematerialisation (their outputs are what a block's
# recomputation rebuilds).
_LEAF_LAYERS = (nn.BatchNorm, nn.Conv, nn.Dense, nn.Dropout)
REMAT = ("none", "blocks")


def _is_block_call(context: Any) -> bool:
  """A direct child of the top-level model (a residual / inverted-residual block, a stem
  layer) called as a whole: the boundaries kept by ``remat='blocks'``."""
  module = context.module
  return (
    context.method_name == "__call__"
    and len(module.path) == 1
    and not isinstance(module, _LEAF_LAYERS)
    and type(module).__name__ != "Conv2D"
  )


def capture_bn_statistics(
  model: nn.Module,
  variables: Mapping[str, PyTree],
  x: jax.Array,
  *,
  train: bool = False,
  rngs: Mapping[str, jax.Array] | None = None,
  axis_name: str | None = None,
  weights: jax.Array | None = None,
  remat: str = "none",
) -> tuple[jax.Array, PyTree]:
  """Runs ``model`` and records the input moments of every BatchNorm layer that runs.

  Args:
    model: a Flax module whose ``__call__(x, train)`` returns logits.
    variables: ``{'params': ..., 'batch_stats': ...}``.
    x: ``[N, H, W, 3]`` normalised images. Under ``jax.vmap`` over a leading axis
      ``[K, N, H, W, 3]`` each of the K slices gets its own statistics.
    train: run BatchNorm in training mode (batch statistics). The matching loss uses
      inference mode (False); True is useful to cross-check against Flax's own
      batch statistics. Running statistics are not updated either way.
    rngs: PRNG keys for stochastic layers when ``train`` is True (e.g. 'dropout').
    axis_name: mesh axis (inside ``shard_map``) over which the images of one batch are
      split: the recorded moments are over all of them (see :func:`_input_moments`).
    weights: ``[N]`` 0/1 per image with ``axis_name``: 0 marks padding images.
    remat: 'none', or 'blocks': every top-level block of the model (a direct child that is
      not a single layer: residual and inverted-residual blocks) runs under Flax's lifted
      ``nn.remat`` (``jax.checkpoint``), so a gradient taken through this call keeps only
      the blocks' inputs and recomputes their inside during the backward pass, for about
      one more forward pass of compute. The values and gradients are the same computation.

  Returns:
    ``(logits [N, num_classes], stats)`` where ``stats`` mirrors the structure of
    ``variables['batch_stats']`` for the BatchNorm layers that ran, with float32 leaves
    ``mean [C_l]`` and ``var [C_l]`` (biased).
  """
  if remat not in REMAT:
    raise ValueError(f"remat must be one of {REMAT}, got {remat!r}.")

  in_block = [False]

  def record(next_fun, args, kwargs, context):
    if remat == "blocks" and not in_block[0] and _is_block_call(context):
      return _rematerialised_call(context.module, args, kwargs, in_block)
    if _is_bn_call(context):
      mean, var = _input_moments(_bn_input(args, kwargs), axis_name, weights)
      context.module.put_variable(BN_INPUT_STATS, "mean", mean)
      context.module.put_variable(BN_INPUT_STATS, "var", var)
    return next_fun(*args, **kwargs)

  mutable = [BN_INPUT_STATS, "batch_stats"] if train else [BN_INPUT_STATS]
  with nn.intercept_methods(record):
    logits, collections = model.apply(dict(variables), x, train=train, mutable=mutable, rngs=rngs)
  return logits, collections.get(BN_INPUT_STATS, {})


def _rematerialised_call(module: nn.Module, args: tuple, kwargs: dict, in_block: list) -> Any:
  """Calls the block ``module`` under Flax's lifted ``nn.remat`` (``jax.checkpoint``): its
  backward pass recomputes the block's inside from its input instead of keeping it.

  Only the array input is an argument of the checkpointed function; the rest (``train``
  flags) stays static. ``in_block`` stops the interceptor from wrapping the block again when
  the lifted function calls it.
  """
  x, rest = args[0], args[1:]

  def body(block, x):
    in_block[0] = True
    try:
      return block(x, *rest, **kwargs)
    finally:
      in_block[0] = False

  return nn.remat(body)(module, x)


def bn_layer_order(
  model: nn.Module, variables: Mapping[str, PyTree], input_shape: Sequence[int]
) -> tuple[Path, ...]:
  """Paths of the BatchNorm layers in the order they run in inference mode.

  Pytrees sort dictionary keys, so call order cannot be recovered from the stats tree;
  this traces the model abstractly (``jax.eval_shape``: no FLOPs) and records it.

  Args:
    model: the Flax module.
    variables: its variables (only shapes matter).
    input_shape: ``(N, H, W, 3)`` of the input.

  Returns:
    Tuple of module paths, e.g. ``(('bn1',), ('layer1_0', 'bn1'), ...)``; the first one is
    the layer that gets the first-layer multiplier.
  """
  order: list[Path] = []

  def record(next_fun, args, kwargs, context):
    if _is_bn_call(context):
      order.append(tuple(context.module.path))
    return next_fun(*args, **kwargs)

  def run(v, x):
    with nn.intercept_methods(record):
      return model.apply(v, x, train=False)

  jax.eval_shape(run, dict(variables), jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  if not order:
    raise ValueError(
      f"{type(model).__name__} ran no BatchNorm layer: the BN-matching loss needs "
      "a teacher with BatchNorm."
    )
  return tuple(order)


def _layer_paths(tree: PyTree) -> list[Path]:
  """Paths of the layers (the parents of 'mean'/'var' leaves) in a stats tree."""
  flat = traverse_util.flatten_dict(tree)
  return sorted({k[:-1] for k in flat if k[-1] == "mean"})


def bn_matching_loss(
  stats: PyTree, running_stats: PyTree, *, first_layer: Path | None, first_multiplier: float = 10.0
) -> jax.Array:
  """The BN-matching loss ``sum_l w_l (||mu_l - mu_hat_l|| + ||var_l - var_hat_l||)``.

  Args:
    stats: captured input statistics (from :func:`capture_bn_statistics`), leaves
      ``mean``/``var`` of shape ``[..., C_l]``; any leading axes (e.g. a subset axis)
      are kept.
    running_stats: ``variables['batch_stats']`` of the teacher, leaves ``[C_l]``.
    first_layer: path of the first BatchNorm layer that runs (``bn_layer_order(...)[0]``);
      it is weighted by ``first_multiplier``. ``None`` weights every layer by 1.
    first_multiplier: the weight w_0 of the first layer (10 in INFER and SRe2L).

  Returns:
    The loss, shape ``[...]`` (the leading axes of ``stats``; a scalar for one subset).

  Raises:
    KeyError: a captured layer has no running statistics in ``running_stats``.
  """
  flat_running = traverse_util.flatten_dict(running_stats)
  flat_stats = traverse_util.flatten_dict(stats)
  paths = _layer_paths(stats)
  if not paths:
    raise ValueError("No BatchNorm statistics were captured: is the teacher BatchNorm-free?")
  if first_layer is not None and tuple(first_layer) not in paths:
    raise KeyError(f"first_layer {first_layer} is not among the captured BatchNorm layers.")
  total = 0.0
  for path in paths:
    if path + ("mean",) not in flat_running:
      raise KeyError(f"BatchNorm layer {'/'.join(path)} has no running statistics in batch_stats.")
    # optax.safe_norm: the exact L2 norm, with a zero (not NaN) gradient at 0.
    term = optax.safe_norm(
      flat_stats[path + ("mean",)] - flat_running[path + ("mean",)], 0.0, axis=-1
    )
    term = term + optax.safe_norm(
      flat_stats[path + ("var",)] - flat_running[path + ("var",)], 0.0, axis=-1
    )
    weight = first_multiplier if first_layer is not None and path == tuple(first_layer) else 1.0
    total = total + weight * term
  return total


def teacher_loss(
  model: nn.Module,
  variables: Mapping[str, PyTree],
  x: jax.Array,
  labels: jax.Array,
  *,
  r_bn: float,
  first_layer: Path | None,
  first_multiplier: float = 10.0,
  axis_name: str | None = None,
  weights: jax.Array | None = None,
  remat: str = "none",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """INFER's per-teacher objective on one batch: mean CE + r_bn * BN-matching loss.

  The teacher runs in inference mode (running statistics normalise), as in the method.

  Args:
    model: the teacher's Flax module.
    variables: ``{'params', 'batch_stats'}`` of the teacher.
    x: ``[N, H, W, 3]`` normalised (already augmented) images; vmap for subsets.
    labels: ``[N]`` int class labels.
    r_bn: weight of the BN-matching term.
    first_layer: path of the first BatchNorm layer (see :func:`bn_layer_order`).
    first_multiplier: weight of the first BatchNorm layer's term.
    axis_name: mesh axis (inside ``shard_map``) over which the batch's images are split:
      BN statistics and the CE mean are over the images of every device on it (psum).
    weights: ``[N]`` 0/1 per image with ``axis_name`` (0: padding, counted nowhere).
    remat: 'none' or 'blocks' (see :func:`capture_bn_statistics`).

  Returns:
    ``(loss, aux)``: scalar loss, and ``aux = {'ce': [], 'bn': [], 'logits': [N, classes]}``.
  """
  logits, stats = capture_bn_statistics(
    model, variables, x, train=False, axis_name=axis_name, weights=weights, remat=remat
  )
  logits32 = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  per_image = optax.softmax_cross_entropy_with_integer_labels(logits32, labels)
  if axis_name is None:
    ce = jnp.mean(per_image)
  else:
    w = jnp.ones_like(per_image) if weights is None else weights.astype(per_image.dtype)
    ce = jax.lax.psum(jnp.sum(per_image * w), axis_name) / jax.lax.psum(jnp.sum(w), axis_name)
  bn = bn_matching_loss(
    stats, variables["batch_stats"], first_layer=first_layer, first_multiplier=first_multiplier
  )
  return ce + r_bn * bn, {"ce": ce, "bn": bn, "logits": logits}
