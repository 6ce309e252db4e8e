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
import optax
from flax import traverse_util

BN_INPUT_STATS = "bn_input_stats"

Path = tuple[str, ...]
PyTree = Any


def _input_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance over every axis but the last.

  Args:
    x: ``[N, H, W, C]`` (or any ``[..., C]``) BatchNorm input.

  Returns:
    ``(mean [C], var [C])`` in at least float32 (bf16/f16 inputs are promoted), because
    the matching loss compares them with float32 running statistics.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  # Two-pass variance: the one-pass E[x^2] - E[x]^2 loses precision when the mean is
  # large relative to the spread, which is exactly what the loss is sensitive to.
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return mean, var


def _is_bn_call(context: Any) -> bool:
  return isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__"


def _bn_input(args: tuple, kwargs: dict) -> jax.Array:
  return args[0] if args else kwargs["x"]


def capture_bn_statistics(
  model: nn.Module,
  variables: Mapping[str, PyTree],
  x: jax.Array,
  *,
  train: bool = False,
  rngs: Mapping[str, jax.Array] | None = None,
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

  Returns:
    ``(logits [N, num_classes], stats)`` where ``stats`` mirrors the structure of
    ``variables['batch_stats']`` for the BatchNorm layers that ran, with float32 leaves
    ``mean [C_l]`` and ``var [C_l]`` (biased).
  """

  def record(next_fun, args, kwargs, context):
    if _is_bn_call(context):
      mean, var = _input_moments(_bn_input(args, kwargs))
      context.module.put_variable(BN_INPUT_STATS, "mean", mean)
      context.module.put_variable(BN_INPUT_STATS, "var", var)
    return next_fun(*args, **kwargs)

  mutable = [BN_INPUT_STATS, "batch_stats"] if train else [BN_INPUT_STATS]
  with nn.intercept_methods(record):
    logits, collections = model.apply(dict(variables), x, train=train, mutable=mutable, rngs=rngs)
  return logits, collections.get(BN_INPUT_STATS, {})


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

  Returns:
    ``(loss, aux)``: scalar loss, and ``aux = {'ce': [], 'bn': [], 'logits': [N, classes]}``.
  """
  logits, stats = capture_bn_statistics(model, variables, x, train=False)
  logits32 = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits32, labels))
  bn = bn_matching_loss(
    stats, variables["batch_stats"], first_layer=first_layer, first_multiplier=first_multiplier
  )
  return ce + r_bn * bn, {"ce": ce, "bn": bn, "logits": logits}
