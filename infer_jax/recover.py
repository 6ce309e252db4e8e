"""Recover: optimise the synthetic parameters of all K subsets against one teacher at once.

One parameterisation serves both methods that recover images from a teacher:

* ``compensator`` (INFER): subset k holds real images ``x_k [C, H, W, 3]`` and ONE shared
  compensator ``u_k [1, H, W, 3]``, zero-initialised; the teacher sees ``x_k + u_k``.
* ``class_specific`` (SRe2L-style baseline): no real images (base 0) and one free image
  per class ``u_k [C, H, W, 3]``, initialised from a standard normal.

In both, the synthetic batch of subset k is ``base_k + params_k`` (broadcast over the C
classes when params_k has one row), everything lives in the dataset's normalised space,
and the loss is INFER's ``CE + r_bn * BN-matching`` with the teacher in inference mode
(:func:`infer_jax.core.bn_stats.teacher_loss`). Each step draws one augmentation per subset
(a cyclic roll, optionally after a random resized crop and flip), computes every
subset's gradient with ``jax.vmap`` (each subset's BN statistics over its own C images)
and applies Adam(b1=0.5, b2=0.9) with a cosine-decayed learning rate. Adam is
element-wise, so one optimiser over the stacked ``[K, ...]`` parameters is exactly K
independent optimisers. The subset axis is sharded over the devices of a one-axis mesh
(K padded to a multiple of the device count; the padding is dropped from the result).
Where one pass over all K subsets does not fit the devices, the subsets are recovered in
sequential chunks (``subset_chunk``; exact: subsets never interact and each one's draws
depend only on its index), and a subset's C images can be split over several devices
(``image_shards``; exact up to the order of floating-point sums).

Progress is checkpointed with Orbax every ``checkpoint_every`` iterations; the random
draws are pure functions of (seed, teacher index, iteration), so a run killed at any
point and resumed ends with bit-for-bit the parameters of an uninterrupted run -- also when
it resumes on another number of devices or hosts (the padding of K is redone).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from infer_jax.core import bn_stats
from infer_jax.core.augment import RRC_SCALE, SUBSET_AUGMENTATIONS, apply_subset, draw_subset
from infer_jax.runtime import checkpoint, distributed, train
from infer_jax.runtime import progress as progress_lib
from infer_jax.runtime.errors import InputError

PARAMETERISATIONS = ("compensator", "class_specific")
# When the synthetic images are clamped to the valid range during optimisation: never (INFER:
# its compensators are free) or after every Adam step (SRe2L's recipe for class-specific images).
CLAMPS = ("never", "every_step")


@dataclasses.dataclass(frozen=True)
class RecoverConfig:
  """Recover hyper-parameters (docs/algorithm.md, "Recover" and "Recipes").

  Attributes:
    iterations: optimisation steps per teacher.
    lr: Adam learning rate, cosine-decayed to 0 over ``iterations`` (no warm-up).
    r_bn: weight of the BN-matching term.
    first_bn_multiplier: weight of the first BatchNorm layer's term.
    jitter: maximal cyclic shift (pixels) of the roll augmentation.
    augment: 'roll' (CIFAR), 'rrc_flip_roll' (Tiny-ImageNet / ImageNet) or 'none'.
    rrc_scale: area range of the random resized crop.
    parameterisation: 'compensator' (INFER) or 'class_specific' (SRe2L-style).
    clamp: 'never' or 'every_step': clamp the images to the normalised image of [0, 1] after
      every Adam step (SRe2L's recipe; 'class_specific' only: INFER's compensators are never
      clamped during optimisation).
    checkpoint_every: iterations between Orbax checkpoints (0: never).
    log_every: iterations between progress lines (0: never).
    seed: base seed of the augmentation draws and of noise initialisation.
    image_shards: devices that share one subset's C images (the 'images' axis of a
      subsets x images mesh; BatchNorm statistics and the CE mean are reduced over it).
      0: chosen from the device count and a memory estimate (:func:`plan_split`);
      otherwise a divisor of the device count. 1: every subset on one device.
    remat: 'none' or 'blocks': recompute the inside of each of the teacher's top-level
      blocks in the backward pass instead of keeping it (:func:`bn_stats.capture_bn_statistics`).
    subset_chunk: subsets optimised together in one program; the K subsets are recovered in
      ``ceil(K / chunk)`` sequential chunks of equal padded size (one compiled program), each
      checkpointed on its own. 0: chosen from the device memory (:func:`plan_split`): all K
      at once wherever they fit, which is always on XLA:CPU (it reports no limit). The
      result does not depend on it.
    dtype: the teacher's computation dtype in recover, 'float32' or 'bfloat16' (bfloat16
      shrinks the activations kept for the backward pass, to 62-69% of float32's residuals
      on the ImageNet teachers, docs/scaling.md; parameters, the BatchNorm moments, the
      loss, the compensators and Adam stay float32).
  """

  iterations: int = 1000
  lr: float = 0.25
  r_bn: float = 1.0
  first_bn_multiplier: float = 10.0
  jitter: int = 4
  augment: str = "roll"
  rrc_scale: tuple[float, float] = RRC_SCALE
  parameterisation: str = "compensator"
  clamp: str = "never"
  checkpoint_every: int = 100
  log_every: int = 100
  seed: int = 0
  image_shards: int = 0
  remat: str = "none"
  subset_chunk: int = 0
  dtype: str = "float32"

  def __post_init__(self):
    if self.parameterisation not in PARAMETERISATIONS:
      raise InputError(
        f"recover parameterisation must be one of {PARAMETERISATIONS}, got "
        f"{self.parameterisation!r}."
      )
    if self.clamp not in CLAMPS:
      raise InputError(f"recover clamp must be one of {CLAMPS}, got {self.clamp!r}.")
    if self.clamp == "every_step" and self.parameterisation != "class_specific":
      raise InputError(
        "recover clamp='every_step' is for parameterisation='class_specific' (SRe2L-style); "
        "INFER's compensators are never clamped during optimisation: use clamp='never'."
      )
    if self.augment not in SUBSET_AUGMENTATIONS:
      raise InputError(
        f"recover augment must be one of {SUBSET_AUGMENTATIONS}, got {self.augment!r}."
      )
    if self.remat not in bn_stats.REMAT:
      raise InputError(f"recover remat must be one of {bn_stats.REMAT}, got {self.remat!r}.")
    if self.image_shards < 0:
      raise InputError(
        f"recover image_shards must be >= 0 (0 = automatic), got {self.image_shards}."
      )
    if self.subset_chunk < 0:
      raise InputError(
        f"recover subset_chunk must be >= 0 (0 = automatic), got {self.subset_chunk}."
      )
    if self.dtype not in train.DTYPES:
      raise InputError(f"recover dtype must be one of {list(train.DTYPES)}, got {self.dtype!r}.")
    if self.iterations < 1 or self.lr <= 0 or self.jitter < 0:
      raise InputError(
        f"recover needs iterations >= 1, lr > 0 and jitter >= 0; got "
        f"{self.iterations}, {self.lr}, {self.jitter}."
      )

  @classmethod
  def from_config(cls, cfg: Any, **overrides: Any) -> RecoverConfig:
    """Builds from a ConfigDict/mapping holding (some of) the field names."""
    items = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: (tuple(v) if k == "rrc_scale" else v) for k, v in items.items() if k in fields}
    kw.update(overrides)
    return cls(**kw)


# --------------------------------------------------------------------------- the step


def init_params(
  cfg: RecoverConfig, num_subsets: int, num_classes: int, image_shape, teacher_index: int
) -> np.ndarray:
  """Initial synthetic parameters.

  Returns:
    float32 ``[K, 1, H, W, 3]`` zeros (compensator) or ``[K, C, H, W, 3]`` standard normal
    noise (class_specific; seeded by (seed, teacher_index)).
  """
  if cfg.parameterisation == "compensator":
    return np.zeros((num_subsets, 1, *image_shape), np.float32)
  rng = np.random.default_rng([cfg.seed, teacher_index])
  return rng.standard_normal((num_subsets, num_classes, *image_shape)).astype(np.float32)


def optimizer(cfg: RecoverConfig) -> optax.GradientTransformation:
  """Adam(b1=0.5, b2=0.9, eps=1e-8) with lr cosine-decayed from ``cfg.lr`` to 0."""
  schedule = optax.cosine_decay_schedule(cfg.lr, cfg.iterations)
  return optax.adam(schedule, b1=0.5, b2=0.9, eps=1e-8)


def subset_loss(
  model,
  variables,
  params_k,
  base_k,
  labels_k,
  draws_k,
  cfg: RecoverConfig,
  first_layer,
  axis_name: str | None = None,
  weights_k: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
  """Loss of one subset: ``teacher_loss(A(base_k + params_k), labels_k)``.

  Args:
    params_k: ``[1 or C, H, W, 3]`` synthetic parameters of the subset.
    base_k: ``[C, H, W, 3]`` normalised real images (zeros for class_specific).
    labels_k: ``[C]`` int labels.
    draws_k: this subset's augmentation draws (:func:`draw_subset_augment`).
    axis_name: inside ``shard_map``, the mesh axis over which the subset's images are split
      (the arrays above then hold this device's share of them); None: all on this device.
    weights_k: ``[C]`` 0/1 with ``axis_name``: 0 marks padding images.

  Returns:
    ``(loss, {'ce', 'bn'})`` scalars.
  """
  x = apply_subset(draws_k, base_k + params_k, cfg.augment)
  loss, aux = bn_stats.teacher_loss(
    model,
    variables,
    x,
    labels_k,
    r_bn=cfg.r_bn,
    first_layer=first_layer,
    first_multiplier=cfg.first_bn_multiplier,
    axis_name=axis_name,
    weights=weights_k,
    remat=cfg.remat,
  )
  return loss, {"ce": aux["ce"], "bn": aux["bn"]}


def step_keys(cfg: RecoverConfig, teacher_index, iteration, k: int) -> jax.Array:
  """The K augmentation keys of one iteration: a pure function of (seed, teacher, it).

  ``split(key, k)[i]`` does not depend on k (partitionable threefry), so padding the
  subset axis for more devices leaves the real subsets' draws unchanged.
  """
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), teacher_index), iteration)
  return jax.random.split(key, k)


def draw_subset_augment(cfg: RecoverConfig, key: jax.Array, image_shape) -> dict:
  """One subset's augmentation draws for one iteration (``image_shape = [H, W, 3]``).

  Returns:
    ``{}`` ('none'), ``{'roll': int32 [2]}`` ('roll'; ``(dy, dx)`` in ``{0..jitter}``) and for
    'rrc_flip_roll' also ``'crop'`` (``{'top', 'left', 'height', 'width'}`` float32 scalars,
    ``'flip'`` bool); see :mod:`infer_jax.core.augment`.
  """
  return draw_subset(key, image_shape, cfg.augment, cfg.jitter, cfg.rrc_scale)


def step_draws(cfg: RecoverConfig, teacher_index, iteration, k: int, image_shape) -> dict:
  """The draws the production step takes for ``k`` subsets at ``iteration``: each leaf of
  :func:`draw_subset_augment` with a leading ``[k]`` axis."""
  keys = step_keys(cfg, teacher_index, iteration, k)
  return jax.vmap(lambda key: draw_subset_augment(cfg, key, image_shape))(keys)


def _split_subset_losses(model, cfg: RecoverConfig, first_layer, mesh: Mesh) -> Callable:
  """Every subset's ``(loss [K], {'ce', 'bn'} [K])`` with its images split over the mesh's
  'images' axis (``shard_map``; same arguments as the one-device vmap in :func:`make_step`).

  Each device holds ``[K / S, C / I, ...]`` of the images and labels (labels < 0: padding
  images, weight 0) and runs the teacher on them alone; only the BatchNorm moments and the
  CE sum cross devices (``psum`` over 'images'). A compensator ``[K / S, 1, ...]`` is
  replicated over 'images', so the transpose of its broadcast adds its gradient over the
  subset's devices; class-specific parameters are split like the images.
  """
  subsets = P(train.SUBSET_AXIS)
  images = P(train.SUBSET_AXIS, train.IMAGE_AXIS)

  def local_losses(params, variables, base, labels, draws):
    weights = (labels >= 0).astype(jnp.float32)
    labels = jnp.maximum(labels, 0)
    return jax.vmap(
      lambda p, b, y, w, d: subset_loss(
        model, variables, p, b, y, d, cfg, first_layer, train.IMAGE_AXIS, w
      )
    )(params, base, labels, weights, draws)

  param_spec = subsets if cfg.parameterisation == "compensator" else images
  # The losses leave reduced over 'images' (equal on a subset's devices).
  return jax.shard_map(
    local_losses,
    mesh=mesh,
    in_specs=(param_spec, P(), images, images, subsets),
    out_specs=(subsets, subsets),
  )


def make_step(
  model,
  cfg: RecoverConfig,
  first_layer,
  tx: optax.GradientTransformation,
  teacher_index: int = 0,
  clip_bounds: tuple[np.ndarray, np.ndarray] | None = None,
  mesh: Mesh | None = None,
  num_draws: int | None = None,
) -> Callable:
  """The jitted all-subsets step ``(variables, params, opt_state, base, labels, iteration,
  draws=None, first_subset=None)``.

  Args:
    model: teacher module.
    cfg: recover config.
    first_layer: path of the teacher's first BatchNorm layer.
    tx: the optimiser.
    teacher_index: seeds the augmentation draws (with cfg.seed and the iteration).
    clip_bounds: ``(lo [3], hi [3])``, the normalised images of pixel values 0 and 1; needed
      by ``cfg.clamp == 'every_step'`` (the parameters are clamped to them after each update,
      Adam's moments untouched).
    mesh: a subsets x images mesh (:func:`infer_jax.runtime.train.subset_image_mesh`) whose
      'images' axis has more than one device: each subset's C images are split over that
      axis (``shard_map``), every BatchNorm statistic and the CE mean are summed over it
      (``psum``), and labels < 0 mark padding images (C padded to a multiple of the axis).
      None, or an 'images' axis of one device: the one-device program, shardings taken from
      the inputs.
    num_draws: with ``first_subset`` (a chunk of a larger set of subsets): how many subsets'
      draws to derive, of which the step takes ``[first_subset, first_subset + K)``; at
      least the largest such end. None: K.

  Returns:
    ``step(variables, params [K,P,H,W,3], opt_state, base [K,C,H,W,3], labels [K,C],
    iteration int32 [], draws=None, first_subset=None) -> (params, opt_state,
    {'loss','ce','bn'} each [K])``.
    ``draws`` (tests): the subsets' augmentation draws, leaves ``[K, ...]`` as
    :func:`step_draws` gives them; None (production) draws them inside the step from
    (``cfg.seed``, ``teacher_index``, ``iteration``). ``first_subset`` (int32 []): the
    index of the chunk's first subset among ``num_draws``, so that a chunk gets the draws
    its subsets have in a single pass over all of them; None: 0 (and the program of a
    single pass).
  """

  if mesh is not None and mesh.shape.get(train.IMAGE_AXIS, 1) > 1:
    subset_losses = _split_subset_losses(model, cfg, first_layer, mesh)
  else:

    def subset_losses(params, variables, base, labels, draws):
      return jax.vmap(
        lambda p, b, y, d: subset_loss(model, variables, p, b, y, d, cfg, first_layer)
      )(params, base, labels, draws)

  def all_losses(params, variables, base, labels, draws):
    losses, aux = subset_losses(params, variables, base, labels, draws)
    # Subsets are independent, so the gradient of the sum is each subset's own gradient.
    return jnp.sum(losses), (losses, aux)

  def step(variables, params, opt_state, base, labels, iteration, draws=None, first_subset=None):
    if draws is None and first_subset is None:
      # The draws are derived inside the step: no per-iteration host work and no second
      # multi-device program (a reshard of host-made keys) in flight beside the step.
      draws = step_draws(cfg, teacher_index, iteration, params.shape[0], base.shape[2:])
    elif draws is None:
      # A chunk: every subset's draws (cheap: a few scalars each; split(key, n)[i] does not
      # depend on n), then this chunk's rows. The offset is an argument, so every chunk
      # runs the same compiled program.
      n = num_draws or params.shape[0]
      every = step_draws(cfg, teacher_index, iteration, n, base.shape[2:])
      draws = jax.tree.map(
        lambda a: jax.lax.dynamic_slice_in_dim(a, first_subset, params.shape[0]), every
      )
    grads, (losses, aux) = jax.grad(all_losses, has_aux=True)(
      params, variables, base, labels, draws
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if cfg.clamp == "every_step":
      # base is 0 for class_specific, so the parameters are the images; [3] broadcasts over C.
      lo, hi = (jnp.asarray(b, params.dtype) for b in clip_bounds)
      params = jnp.clip(params, lo, hi)
    return params, opt_state, {"loss": losses, **aux}

  if cfg.clamp == "every_step" and clip_bounds is None:
    raise InputError("recover clamp='every_step' needs clip_bounds=(lo, hi) (per channel).")

  # Shardings come from the inputs: the caller places the [K, ...] arrays on a
  # NamedSharding over the subset axis and the teacher variables replicated; XLA keeps
  # every per-subset array on its device (the subsets never communicate).
  return jax.jit(step, donate_argnums=(1, 2))


# --------------------------------------------------------------------------- the loop


def _pad_subsets(a: np.ndarray, multiple: int, size: int | None = None) -> np.ndarray:
  """Pads the leading (subset) axis to ``size`` (None: the next multiple of ``multiple``)
  by repeating the first subset."""
  pad = (size - len(a)) if size is not None else -len(a) % multiple
  return np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) if pad else a


def _pad_classes(a: np.ndarray, size: int, fill) -> np.ndarray:
  """Pads axis 1 (the C images of a subset) to ``size`` with ``fill`` (padding images)."""
  pad = size - a.shape[1]
  if pad <= 0:
    return a
  return np.concatenate([a, np.full((a.shape[0], pad, *a.shape[2:]), fill, a.dtype)], axis=1)


def activation_bytes_per_image(model, variables, image_shape) -> int:
  """Bytes of every layer output of the teacher's forward pass for one image.

  An estimate of what the input-gradient backward pass keeps per image (each BatchNorm
  input is needed by the gradient of its statistics; ReLU masks and cotangents come on
  top): traced abstractly, no FLOPs.

  Args:
    model: the teacher module; variables: its variables (shapes only);
    image_shape: ``[H, W, 3]``.
  """
  total = [0]

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      total[0] += sum(int(np.prod(y.shape)) * y.dtype.itemsize for y in jax.tree.leaves(out))
    return out

  def run(v, x):
    with nn.intercept_methods(record):
      return model.apply(v, x, train=False)

  jax.eval_shape(run, dict(variables), jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return total[0]


def residual_bytes(model, variables, cfg: RecoverConfig, images: int, image_shape) -> int:
  """Bytes of the residuals that one subset's differentiated loss keeps for its backward
  pass: traced abstractly (no FLOPs, nothing compiled), so independent of the backend.

  What the program asks the backward pass to hold, before a compiler schedules, fuses or
  rematerialises it: without remat every BatchNorm input, ReLU mask and the like; with
  ``cfg.remat == 'blocks'`` only each block's input; with ``model`` computing in bfloat16
  (:func:`compute_model`), half-size activations.

  Args:
    model: the teacher module as recover runs it; variables: its variables (shapes only).
    cfg: recover config (remat, augment); images: the subset's images on one device.
    image_shape: ``[H, W, 3]``.
  """
  shape = tuple(image_shape)
  first = bn_stats.bn_layer_order(model, variables, (images, *shape))[0]

  def residuals(params, variables, base, labels):
    draws = jax.tree.map(lambda a: a[0], step_draws(cfg, 0, 0, 1, shape))

    def loss(p):
      return subset_loss(model, variables, p, base, labels, draws, cfg, first)[0]

    # jax.vjp's backward function is a pytree whose leaves are the residuals.
    return jax.tree.leaves(jax.vjp(loss, params)[1])

  out = jax.eval_shape(
    residuals,
    jax.ShapeDtypeStruct((1, *shape), jnp.float32),
    variables,
    jax.ShapeDtypeStruct((images, *shape), jnp.float32),
    jax.ShapeDtypeStruct((images,), jnp.int32),
  )
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in out)


# What the backward pass holds per image, in units of activation_bytes_per_image: fitted on
# XLA:CPU's buffer assignment of the compiled step (benchmarks/recover_memory.py).
_BACKWARD_FACTOR = 2.0
# Share of a device's memory the automatic split plans to use.
_MEMORY_FRACTION = 0.8


def plan_split(
  k: int,
  c: int,
  devices: int,
  per_image: float,
  fixed: float,
  limit: float | None,
  image_shards: int = 0,
  subset_chunk: int = 0,
) -> tuple[int, int]:
  """How recover lays out K subsets of C images on D devices: ``(I, chunk)``.

  Per device, a pass over ``chunk`` subsets on a ``D / I`` (subset groups) x ``I`` (image
  shards) mesh needs ``fixed + ceil(chunk / (D / I)) * ceil(C / I) * per_image`` bytes.
  Within ``_MEMORY_FRACTION`` of ``limit``, and unless set (non-zero arguments are kept):

  * I: the smallest divisor of D (I <= C) that fits all K subsets in one pass; else the
    smallest that fits one subset per device (then in chunks); else the largest;
  * chunk: K where they fit, else as many subsets per device as fit, times D / I.

  Without a limit (XLA:CPU reports none): I = 1 and chunk = K.

  Args:
    k, c: subsets and images per subset; devices: D.
    per_image: bytes one image adds (activations kept for the backward pass and its own
      copies); fixed: bytes that do not scale with images (teacher variables).
    limit: bytes a device holds, or None.
    image_shards, subset_chunk: the settings (0 = choose).

  Returns:
    ``(I, chunk)`` with ``1 <= chunk <= K``.
  """
  k = max(k, 1)
  if not limit or (image_shards and devices % image_shards):
    # No limit to plan for; or image shards that do not divide the devices, which the mesh
    # refuses with a one-line error naming the divisors.
    return image_shards or 1, min(subset_chunk or k, k)
  budget = _MEMORY_FRACTION * limit

  def fits(i: int, chunk: int) -> bool:
    return fixed + -(-chunk // (devices // i)) * -(-c // i) * per_image <= budget

  candidates = [i for i in range(1, devices + 1) if devices % i == 0 and i <= max(c, 1)]
  shards = image_shards
  if not shards:
    whole = [i for i in candidates if fits(i, k)]
    chunked = [i for i in candidates if fits(i, devices // i)]
    shards = (whole or chunked or candidates[-1:])[0]
  if subset_chunk:
    return shards, min(subset_chunk, k)
  if fits(shards, k):
    return shards, k
  per_device = max(1, int((budget - fixed) // (-(-c // shards) * per_image)))
  return shards, min(k, per_device * (devices // shards))


def _memory_per_image(model, variables, image_shape) -> tuple[float, float]:
  """``(per_image, fixed)`` bytes for :func:`plan_split`: the teacher's layer outputs times
  a backward factor plus the image's own float32 copies, and twice the teacher's
  variables."""
  per_image = _BACKWARD_FACTOR * activation_bytes_per_image(model, variables, image_shape)
  per_image += 4 * 4 * int(np.prod(image_shape))  # the real image, its sum and cotangent
  fixed = 2 * sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(variables))
  return per_image, fixed


def _device_limit(devices) -> int | None:
  """Bytes this process's first device of ``devices`` reports as its limit (None: none)."""
  devices = list(np.asarray(devices).reshape(-1))
  # This process's own device (another host's cannot be asked): every process decides
  # alone, so the devices of a slice are assumed alike, as every multi-host run assumes.
  local = next(d for d in devices if d.process_index == jax.process_index())
  return (local.memory_stats() or {}).get("bytes_limit") or None


def auto_image_shards(teacher: checkpoint.Teacher, k: int, c: int, image_shape, devices) -> int:
  """The image shards :func:`plan_split` chooses for all K subsets of ``teacher`` on
  ``devices`` (1 on devices that report no memory limit, such as XLA:CPU).

  Returns:
    I, a divisor of ``len(devices)``.
  """
  limit = _device_limit(devices)
  if not limit:
    return 1
  per_image, fixed = _memory_per_image(teacher.model, teacher.variables, image_shape)
  return plan_split(k, c, np.asarray(devices).size, per_image, fixed, limit)[0]


def compute_model(teacher: checkpoint.Teacher, cfg: RecoverConfig) -> nn.Module:
  """The teacher's module computing in ``cfg.dtype`` (its own module for float32)."""
  if cfg.dtype == "float32":
    return teacher.model
  return teacher.model.clone(dtype=train.DTYPES[cfg.dtype])


def recover_teacher(
  teacher: checkpoint.Teacher,
  base: np.ndarray,
  labels: np.ndarray,
  cfg: RecoverConfig,
  *,
  teacher_index: int,
  directory: str | None = None,
  mesh: Mesh | None = None,
  log: Callable[[str], None] = print,
) -> np.ndarray:
  """Optimises the synthetic parameters of all subsets against one teacher.

  Args:
    teacher: the teacher (inference mode is used).
    base: float32 ``[K, C, H, W, 3]`` normalised real images (zeros for class_specific).
    labels: int ``[K, C]`` labels of the synthetic images.
    cfg: recover config.
    teacher_index: position of the teacher (seeds its draws; names nothing on disk).
    directory: where progress is checkpointed; None disables checkpointing.
    mesh: the devices: a one-axis mesh (default all devices), split into subsets x images
      by ``cfg.image_shards``, or a ready subsets x images mesh
      (:func:`infer_jax.runtime.train.subset_image_mesh`).
    log: progress printer.

  Returns:
    float32 ``[K, P, H, W, 3]`` optimised parameters (P = 1 for compensators, C otherwise).

  Raises:
    InputError: the loss became non-finite (nothing of that state is saved), or
      ``cfg.image_shards`` does not divide the device count.
  """
  mesh = mesh if mesh is not None else train.data_mesh()
  k, c = labels.shape
  image_shape = base.shape[2:]
  name = teacher.metadata["architecture"]
  model = compute_model(teacher, cfg)
  laid_out = train.IMAGE_AXIS in mesh.axis_names
  shards = mesh.shape[train.IMAGE_AXIS] if laid_out else cfg.image_shards
  limit = None if shards and cfg.subset_chunk else _device_limit(mesh.devices)
  per_image, fixed = _memory_per_image(model, teacher.variables, image_shape) if limit else (0, 0)
  shards, chunk = plan_split(
    k, c, mesh.devices.size, per_image, fixed, limit, shards, cfg.subset_chunk
  )
  if not laid_out and shards != 1:
    mesh = train.subset_image_mesh(mesh.devices, shards)
  groups = mesh.shape[train.SUBSET_AXIS]
  if chunk < k:
    # Chunks of one padded size, a multiple of the subset groups: one compiled program.
    chunk = max(groups, chunk // groups * groups)
  if chunk >= k:
    return _recover_subsets(model, teacher, base, labels, cfg, teacher_index, directory, mesh, log)
  n = -(-k // chunk)
  size = -(-k // n)
  padded = -(-size // groups) * groups
  log(
    f"[recover {name}] {k} subsets in {n} sequential chunks of at most {size} "
    f"(each padded to {padded})"
  )
  out = []
  for lo in range(0, k, size):
    hi = min(k, lo + size)
    sub = os.path.join(directory, f"subsets_{lo}-{hi - 1}") if directory else None
    chunk_of = _Chunk(first=lo, num_subsets=k, padded=padded, num_draws=(n - 1) * size + padded)
    out.append(
      _recover_subsets(
        model, teacher, base[lo:hi], labels[lo:hi], cfg, teacher_index, sub, mesh, log, chunk_of
      )
    )
  return np.concatenate(out)


@dataclasses.dataclass(frozen=True)
class _Chunk:
  """Where a chunk of subsets sits in the whole: its first subset, the whole's K, the padded
  size every chunk runs at, and how many subsets' draws the step derives."""

  first: int
  num_subsets: int
  padded: int
  num_draws: int


def _recover_subsets(
  model,
  teacher: checkpoint.Teacher,
  base: np.ndarray,
  labels: np.ndarray,
  cfg: RecoverConfig,
  teacher_index: int,
  directory: str | None,
  mesh: Mesh,
  log: Callable[[str], None],
  chunk: _Chunk | None = None,
) -> np.ndarray:
  """:func:`recover_teacher` for the subsets given (all K, or one chunk of them) on a
  laid-out mesh, ``model`` computing in ``cfg.dtype``. Same arguments and result."""
  k, c = labels.shape
  image_shape = base.shape[2:]
  name = teacher.metadata["architecture"]
  split = mesh.shape.get(train.IMAGE_AXIS, 1) > 1
  groups = mesh.shape[train.SUBSET_AXIS]
  # C padded to a multiple of the image shards (padding images weigh 0, labels -1).
  c_pad = c + (-c % mesh.shape[train.IMAGE_AXIS]) if split else c
  per_class = cfg.parameterisation == "class_specific"
  tx = optimizer(cfg)
  pspec = P(train.SUBSET_AXIS, train.IMAGE_AXIS) if split and per_class else P(train.SUBSET_AXIS)
  shard = NamedSharding(mesh, pspec)
  image_shard = NamedSharding(mesh, P(train.SUBSET_AXIS, train.IMAGE_AXIS) if split else pspec)
  repl = train.replicated(mesh)

  def pad(a: np.ndarray) -> np.ndarray:
    # Parameters (and Adam's moments) of the original K x C problem -> this mesh's padding.
    if per_class:
      a = _pad_classes(a, c_pad, 0)
    return _pad_subsets(a, groups, chunk.padded if chunk else None)

  init = init_params(cfg, chunk.num_subsets if chunk else k, c, image_shape, teacher_index)
  if chunk:
    init = init[chunk.first : chunk.first + k]  # the chunk's rows of a single pass's start
  params = jax.device_put(pad(init), shard)

  def place(tree):
    # Per-subset arrays split over devices, scalars (Adam's step count) replicated; also
    # after an Orbax restore, which may bring scalars back on one device.
    return jax.tree.map(lambda a: jax.device_put(a, shard if np.ndim(a) else repl), tree)

  opt_state = place(tx.init(params))
  start = 0
  ckpt = checkpoint.TrainCheckpointer(directory) if directory and cfg.checkpoint_every else None
  identity = {
    "architecture": name,
    "teacher_index": teacher_index,
    "num_subsets": k,
    "parameterisation": cfg.parameterisation,
    "iterations": cfg.iterations,
  }
  if cfg.clamp != "never":
    # Only when set: checkpoints of unclamped runs written before the setting existed resume.
    identity["clamp"] = cfg.clamp
  if cfg.dtype != "float32":
    identity["dtype"] = cfg.dtype
  if chunk:
    identity.update(first_subset=chunk.first, of_subsets=chunk.num_subsets)
  padded = params.shape[0]
  padded_classes = params.shape[1] if per_class else c
  if ckpt is not None:
    like = {"params": params, "opt_state": opt_state}
    latest = ckpt.latest_step()
    saved = (padded, padded_classes)
    if latest is not None:
      data_iter = ckpt.read_json(latest, "data_iter")
      saved = (int(data_iter["padded_subsets"]), int(data_iter.get("padded_classes", c)))
    if saved != (padded, padded_classes):
      # Written on another mesh (a preempted job relaunched on another allocation or split):
      # K (and, per class, C) was padded to other multiples. Restore replicated, re-pad.
      def saved_like(a):
        if not a.ndim:
          return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl)
        shape = (saved[0], saved[1], *a.shape[2:]) if per_class else (saved[0], *a.shape[1:])
        return jax.ShapeDtypeStruct(shape, a.dtype, sharding=repl)

      like = jax.tree.map(saved_like, like)
    restored = ckpt.restore_latest(like)
    if restored is not None:
      start, state, _, meta = restored
      if meta != identity:
        raise InputError(
          f"The recover checkpoint in {directory} belongs to another run "
          f"({meta} != {identity}); use a fresh --config.workdir."
        )
      if saved != (padded, padded_classes):
        state = jax.tree.map(
          lambda a: (
            pad(distributed.to_host(a)[:k, :c] if per_class else distributed.to_host(a)[:k])
            if a.ndim
            else a
          ),
          state,
        )
      params, opt_state = place(state["params"]), place(state["opt_state"])
      log(f"[recover {name}] resuming at iteration {start}/{cfg.iterations}")

  def result(params):
    # With several processes each holds only its devices' subsets: gather them all.
    out = distributed.to_host(params)[:k]
    return out[:, :c] if per_class else out

  if start >= cfg.iterations:
    if ckpt is not None:
      ckpt.close()
    return result(params)

  first_layer = bn_stats.bn_layer_order(model, teacher.variables, (c, *image_shape))[0]
  bounds = None
  if cfg.clamp == "every_step":
    # As synthetic.clip_bounds: the normalised values of pixels 0 and 1, in float32.
    mean = np.asarray(teacher.metadata["mean"], np.float32)
    std = np.asarray(teacher.metadata["std"], np.float32)
    bounds = ((np.float32(0.0) - mean) / std, (np.float32(1.0) - mean) / std)
  step = make_step(
    model,
    cfg,
    first_layer,
    tx,
    teacher_index,
    bounds,
    mesh=mesh if split else None,
    num_draws=chunk.num_draws if chunk else None,
  )
  # A chunk's subsets take the draws they have in a single pass (see make_step).
  offset = {"first_subset": jax.device_put(np.int32(chunk.first), repl)} if chunk else {}
  if split:
    log(
      f"[recover {name}] {groups} subset group(s) x {mesh.shape[train.IMAGE_AXIS]} image "
      f"shards: {-(-k // groups)} subset(s) of {c_pad // mesh.shape[train.IMAGE_AXIS]} "
      "images per device"
    )
  variables = jax.device_put(teacher.variables, repl)
  size = chunk.padded if chunk else None
  base_d = _pad_subsets(_pad_classes(base.astype(np.float32), c_pad, 0), groups, size)
  labels_d = _pad_subsets(_pad_classes(labels.astype(np.int32), c_pad, -1), groups, size)
  base_d = jax.device_put(base_d, image_shard)
  labels_d = jax.device_put(labels_d, image_shard)

  def check_finite(metrics, it):
    # Every process gathers the losses, so all of them stop together on a bad one.
    loss = distributed.to_host(metrics["loss"])[:k]
    if not np.all(np.isfinite(loss)):
      raise InputError(
        f"[recover {name}] the loss became non-finite at iteration {it} (subsets "
        f"{np.flatnonzero(~np.isfinite(loss)).tolist()}): lower the recover lr "
        f"(now {cfg.lr}) or r_bn (now {cfg.r_bn}). The last good checkpoint is kept."
      )
    return loss

  serialize = train.one_step_in_flight(mesh)
  progress = progress_lib.Progress(f"[recover {name}]", log, unit="iteration")
  metrics = None
  for it in range(start, cfg.iterations):
    iteration = jax.device_put(np.int32(it), repl)
    params, opt_state, metrics = step(
      variables, params, opt_state, base_d, labels_d, iteration, **offset
    )
    if serialize:
      jax.block_until_ready(params)
    done = it + 1
    progress.count(k * c)
    progress.first_step_done(params)
    if cfg.log_every and done % cfg.log_every == 0:
      loss = check_finite(metrics, done)
      rate = progress.rate()
      log(
        f"[recover {name}] it {done}/{cfg.iterations} loss {loss.mean():.4f} "
        f"ce {distributed.to_host(metrics['ce'])[:k].mean():.4f} "
        f"bn {distributed.to_host(metrics['bn'])[:k].mean():.4f} {rate:.1f} img-it/s"
      )
      progress.reset_window()
    if ckpt is not None and (done % cfg.checkpoint_every == 0 or done == cfg.iterations):
      check_finite(metrics, done)
      jax.block_until_ready(params)
      ckpt.save(
        done,
        {"params": params, "opt_state": opt_state},
        {"iteration": done, "padded_subsets": padded, "padded_classes": padded_classes},
        identity,
      )
  check_finite(metrics, cfg.iterations)
  jax.block_until_ready(params)
  if ckpt is not None:
    ckpt.close()
  return result(params)


def recover_all(
  teachers: list[checkpoint.Teacher],
  base: np.ndarray,
  labels: np.ndarray,
  cfg: RecoverConfig,
  *,
  directory: str | None = None,
  mesh: Mesh | None = None,
  log: Callable[[str], None] = print,
) -> np.ndarray:
  """Runs :func:`recover_teacher` for each teacher, one after the other.

  Args:
    teachers: the M teachers.
    base: float32 ``[K, C, H, W, 3]`` normalised real images (zeros for class_specific).
    labels: int ``[K, C]``.
    cfg: recover config.
    directory: checkpoint root (one sub-directory per teacher); None: no checkpoints.
    mesh: device mesh.
    log: progress printer.

  Returns:
    float32 ``[K, M, H, W, 3]`` compensators (parameterisation 'compensator') or
    ``[K, M, C, H, W, 3]`` class-specific images per teacher.
  """
  out = []
  for m, teacher in enumerate(teachers):
    sub = None
    if directory:
      sub = os.path.join(directory, f"{m}_{teacher.metadata['architecture']}")
    params = recover_teacher(
      teacher, base, labels, cfg, teacher_index=m, directory=sub, mesh=mesh, log=log
    )
    out.append(params[:, 0] if cfg.parameterisation == "compensator" else params)
  return np.stack(out, axis=1)
