"""Evaluate a synthetic set: train a student from scratch on it, report top-1 on the real test set.

This is the "Student training (evaluation)" stage of docs/algorithm.md. The set is read through the
grain input pipeline and every per-step operation on the batch runs inside one jitted step:

  grain: shuffle (per epoch) -> batch -> shard    device: augment (per image) -> MixUp ->
                                                          targets -> loss -> update

* Input: :class:`infer_jax.data.set_source.SetSource` exposes the instances (materialised arrays,
  or a ``SyntheticSet`` whose ``clip(x + u)`` instances are built as they are read) to
  :func:`infer_jax.data.pipeline.train_iterator`, which shuffles with ``cfg.seed`` (a new order
  each epoch), drops the last partial batch (static shapes), prefetches on a background thread and
  places each global batch sharded over the mesh's 'data' axis (each process loads only its own
  rows). A set smaller than ``batch_size`` is trained with one batch of all of it per epoch (the
  batch size is clamped to ``N``, rounded down to a multiple of the device count, with a printed
  note), which is what a PyTorch ``DataLoader`` does with such a set.
* Augmentation (:mod:`infer_jax.core.augment`): 'crop_flip' pads every image by ``crop_padding``
  pixels per side and takes a random window of the original size, then flips it left-right with
  p=0.5. The padding is *black*: the instances are in normalised space, so the pad value is
  ``-mean/std`` per channel, which is exactly what the PyTorch recipe (pad the [0, 1] image with
  0, then normalise) feeds the network. 'rrc_flip' is torchvision's RandomResizedCrop (scale
  (0.08, 1), ratio (3/4, 4/3), ten tries then a centre-crop fallback) resized back bilinearly with
  antialiasing, then a flip. 'flip' and 'none' do what they say. Parameters are drawn per image.
* MixUp (:mod:`infer_jax.core.losses`): ``lam ~ Beta(alpha, alpha)`` once per batch, partner = a
  random permutation of the batch; images and targets (teacher *logits* for static soft labels,
  one-hot vectors for hard labels) are mixed with the same ``lam``.
* Targets and loss: static soft labels -> ``KL(softmax(y/T) || softmax(z/T))``, batch mean, no
  ``T**2`` factor; hard labels -> cross-entropy on the mixed one-hot targets; ``label_fn``
  (INFER+Dyn) -> soft labels computed on the augmented, mixed batch inside the step, same KL.
* Randomness: parameters from ``key(seed, impl='rbg')`` (XLA:CPU compiles threefry
  initialisers of deep networks slowly); the order from grain's shuffle seeded with ``seed``;
  augmentation and MixUp from threefry ``key(seed)`` folded with the step. Every batch is a
  pure function of ``(seed, step)``: the same seed gives the same result, bit for bit, on one
  machine, whatever the prefetching.
* Sharding: the state is replicated over the mesh, the batch is split over its 'data' axis
  (``batch_size`` must be divisible by the device count).

Protocol (docs/protocol.md): the figure to report is ``final_top1``. ``best_top1`` (with
``eval_every_epochs > 0``) selects an epoch on the test set and is for comparison with papers
only, labelled as such wherever it is printed. For INFER+Dyn the caller divides the epochs by
``M + 1`` (docs/algorithm.md, "Relabel") to keep the work comparable.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from infer_jax import models
from infer_jax.core import augment, losses
from infer_jax.data import pipeline
from infer_jax.data.set_source import SetSource
from infer_jax.runtime import config_lib, train
from infer_jax.runtime import progress as progress_lib
from infer_jax.runtime.errors import InputError

OPTIMIZERS = ("adamw", "sgd")


@dataclasses.dataclass(frozen=True, eq=False)
class Labeller:
  """INFER+Dyn's online labeller: ``fn(variables, images [B, H, W, 3]) -> logits [B, classes]``.

  ``variables`` (e.g. the teachers' weights) enter the jitted student step as an argument
  rather than being closed over: XLA would otherwise fold them into the program as constants,
  which makes compilation very slow. Hashed by identity.
  """

  fn: Callable[[Any, jax.Array], jax.Array]
  variables: Any


LABEL_MODES = ("static", "hard", "dynamic")


# ---------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class StudentConfig:
  """The student recipe (docs/algorithm.md "Recipes"; defaults are the CIFAR static-label recipe).

  Attributes:
    arch: registry name of the student (``infer_jax.models.list_models()``).
    width: channel multiplier of the student.
    stem: 'cifar' or 'imagenet'.
    epochs: passes over the synthetic set.
    batch_size: global batch size (divisible by the device count).
    optimizer: 'adamw' (decoupled weight decay) or 'sgd' (momentum, coupled weight decay).
    lr: peak learning rate; cosine-decayed to 0 over all steps, no warm-up.
    weight_decay: weight decay of either optimiser.
    momentum: SGD momentum (ignored by AdamW).
    temperature: KL temperature ``T`` for soft labels.
    mixup_alpha: MixUp Beta parameter; 0 disables MixUp.
    augment: 'crop_flip', 'rrc_flip', 'flip' or 'none'.
    crop_padding: pixels of (black) padding per side for 'crop_flip'.
    eval_every_epochs: 0 evaluates only at the end; ``k`` also every ``k`` epochs (the best
      epoch is then tracked and reported, labelled as test-selected).
    seed: seed of the initialisation, shuffling, augmentation and MixUp.
    dtype: computation dtype, 'float32' or 'bfloat16' (parameters stay float32).
    log_every_epochs: progress line every this many epochs; 0 logs only at evaluations.
  """

  arch: str = "resnet18"
  width: float = 1.0
  stem: str = "cifar"
  epochs: int = 400
  batch_size: int = 64
  optimizer: str = "adamw"
  lr: float = 1e-3
  weight_decay: float = 0.01
  momentum: float = 0.9
  temperature: float = 30.0
  mixup_alpha: float = 0.8
  augment: str = "crop_flip"
  crop_padding: int = 4
  eval_every_epochs: int = 0
  seed: int = 0
  dtype: str = "float32"
  log_every_epochs: int = 0

  def __post_init__(self):
    problems = []
    if self.arch not in models.list_models():
      problems.append(f"arch {self.arch!r} is not a registered architecture")
    if self.stem not in ("cifar", "imagenet"):
      problems.append(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
    if not self.width > 0:
      problems.append(f"width must be positive, got {self.width}")
    if self.epochs < 1:
      problems.append(f"epochs must be >= 1, got {self.epochs}")
    if self.batch_size < 1:
      problems.append(f"batch_size must be >= 1, got {self.batch_size}")
    if self.optimizer not in OPTIMIZERS:
      problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
    if not self.lr > 0:
      problems.append(f"lr must be positive, got {self.lr}")
    if self.weight_decay < 0 or not 0 <= self.momentum < 1:
      problems.append(
        f"weight_decay must be >= 0 and momentum in [0, 1), got {self.weight_decay}, "
        f"{self.momentum}"
      )
    if not self.temperature > 0:
      problems.append(f"temperature must be positive, got {self.temperature}")
    if self.mixup_alpha < 0:
      problems.append(f"mixup_alpha must be >= 0 (0 disables MixUp), got {self.mixup_alpha}")
    if self.augment not in augment.AUGMENTATIONS:
      problems.append(f"augment must be one of {augment.AUGMENTATIONS}, got {self.augment!r}")
    if self.crop_padding < 0:
      problems.append(f"crop_padding must be >= 0, got {self.crop_padding}")
    if self.eval_every_epochs < 0 or self.log_every_epochs < 0:
      problems.append("eval_every_epochs and log_every_epochs must be >= 0 (0 = at the end)")
    if not 0 <= self.seed < 2**32:
      problems.append(f"seed must be in [0, 2**32), got {self.seed}")
    if self.dtype not in train.DTYPES:
      problems.append(f"dtype must be one of {list(train.DTYPES)}, got {self.dtype!r}")
    if problems:
      raise InputError(
        "Invalid student config: "
        + "; ".join(problems)
        + f". Architectures: {', '.join(models.list_models())}."
      )

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> StudentConfig:
    """Builds the config from a ConfigDict block (or mapping) holding some of these fields.

    Missing fields take the defaults above; other keys of the block (settings of the caller,
    such as the number of evaluation seeds) are ignored. Values are converted to the field's
    type, so ``epochs=400.0`` or ``lr=1`` from a command line are accepted.

    Raises:
      InputError: a value cannot be converted or is invalid.
    """
    return cls(**config_lib.typed_fields(cls, cfg, "student"))


# ---------------------------------------------------------------------------------------------
# Pure numeric core.


def make_optimizer(cfg: StudentConfig, total_steps) -> optax.GradientTransformation:
  """The recipe's optimiser, its learning rate cosine-decayed from ``cfg.lr`` to 0 over
  ``total_steps`` (an int, or a traced int32 scalar ``[]``: :func:`train.cosine_decay`).

  'adamw': ``optax.adamw`` (decoupled weight decay on every parameter, as
  ``torch.optim.AdamW``); 'sgd': :func:`infer_jax.runtime.train.sgd_optimizer` (momentum, coupled
  weight decay, as ``torch.optim.SGD``).
  """
  if cfg.optimizer == "adamw":
    return optax.adamw(train.cosine_decay(cfg.lr, total_steps), weight_decay=cfg.weight_decay)
  return train.sgd_optimizer(
    lr=cfg.lr,
    momentum=cfg.momentum,
    nesterov=False,
    weight_decay=cfg.weight_decay,
    total_steps=total_steps,
  )


# ---------------------------------------------------------------------------------------------
# The training step.


def draw_step(cfg: StudentConfig, key: jax.Array, step, image_shape) -> dict:
  """The random draws of one student step for a batch of shape ``[B, H, W, 3]``.

  Returns:
    ``{'augment': augment.draw_batch(...) (per-image [B] leaves), 'mixup':
    losses.draw_mixup(...) ({'lam': float32 [], 'perm': int32 [B]}, or {} without MixUp)}``,
    a pure function of ``(key, step)``.
  """
  augment_key, mixup_key = jax.random.split(jax.random.fold_in(key, step))
  return {
    "augment": augment.draw_batch(
      augment_key, image_shape, cfg.augment, crop_padding=cfg.crop_padding
    ),
    "mixup": losses.draw_mixup(mixup_key, image_shape[0], cfg.mixup_alpha),
  }


def make_student_step(
  model,
  tx: optax.GradientTransformation | Callable[[jax.Array], optax.GradientTransformation],
  cfg: StudentConfig,
  *,
  mean: Sequence[float],
  std: Sequence[float],
  num_classes: int,
  label_mode: str,
  label_fn: Labeller | None = None,
):
  """Builds the jitted ``step(state, batch, key, label_variables, draws, total_steps) -> (state,
  {'loss': []})``.

  ``batch = {'image': float32 [B, H, W, 3] (normalised), 'label': int32 [B],
  'soft_label': [B, C]}`` from the input pipeline (``soft_label`` only for static labels),
  sharded along the batch axis; ``key = data_key(seed)``; ``label_variables`` the
  ``Labeller.variables`` of a dynamic ``label_fn`` (None otherwise). The step augments every image,
  applies MixUp and takes the loss of ``label_mode`` ('static', 'hard' or 'dynamic'). Its
  randomness is a pure function of ``(key, state.step)``: :func:`draw_step`, drawn inside the
  step unless ``draws`` (tests) gives them. ``cfg.seed`` is not used: the seed is an argument,
  so that one compiled step serves every evaluation seed.

  ``tx`` is the optimiser, or a function ``total_steps -> optimiser`` (as
  ``functools.partial(make_optimizer, cfg)``); then the step's ``total_steps`` (int32 ``[]``)
  sets the length of the learning-rate schedule at run time, so that one compiled step also
  serves every row of a comparison, whatever its number of steps.
  """
  fixed_tx = isinstance(tx, optax.GradientTransformation)
  _check_label_mode(label_mode, label_fn)
  # Black in normalised space: what padding the [0, 1] image with 0 before normalising gives.
  fill = tuple(-m / s for m, s in zip(mean, std, strict=True))

  def loss_fn(params, batch_stats, images, targets):
    logits, updates = model.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if label_mode == "hard":
      loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    else:
      loss = losses.kl_divergence_with_temperature(logits, targets, cfg.temperature)
    return loss, updates["batch_stats"]

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(
    state: train.TrainState,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    label_variables=None,
    draws=None,
    total_steps=None,
  ):
    if fixed_tx != (total_steps is None):
      raise ValueError(
        "Pass total_steps to the step exactly when make_student_step got a function "
        "total_steps -> optimiser instead of an optimiser."
      )
    optimizer = tx if fixed_tx else tx(total_steps)
    if draws is None:
      draws = draw_step(cfg, key, state.step, batch["image"].shape)
    # float32 in production; float64 images (reference comparisons under x64) stay float64.
    dtype = jnp.promote_types(batch["image"].dtype, jnp.float32)
    images = augment.apply_batch(
      draws["augment"],
      batch["image"].astype(dtype),
      cfg.augment,
      crop_padding=cfg.crop_padding,
      fill=fill,
    )
    if label_mode == "static":
      targets = batch["soft_label"].astype(dtype)
    elif label_mode == "hard":
      targets = jax.nn.one_hot(batch["label"], num_classes, dtype=dtype)
    else:
      targets = None
    images, targets, _ = losses.apply_mixup(draws["mixup"], images, targets)
    if label_mode == "dynamic":
      # Labels of what the student actually sees (augmented and mixed): INFER+Dyn.
      targets = label_fn.fn(label_variables, images)
      targets = jax.lax.stop_gradient(targets.astype(jnp.promote_types(targets.dtype, dtype)))

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats, images, targets
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, {"loss": loss}

  return step


def data_key(seed: int) -> jax.Array:
  """The key of a run's augmentation and MixUp draws (a stream apart from its shuffle seed)."""
  return jax.random.fold_in(jax.random.key(seed), 1)


@functools.lru_cache(maxsize=4)
def _compiled_parts(
  cfg: StudentConfig,
  num_classes: int,
  mean: tuple[float, ...],
  std: tuple[float, ...],
  label_mode: str,
  label_fn: Labeller | None,
):
  """(model, optimiser for initialisation, jitted train step, eval step) shared by runs that
  differ only in seed and length.

  ``cfg`` must have ``seed=0`` and ``epochs=1``: the seed and the schedule's length enter the
  step as arguments, so the evaluation seeds of one method, and the methods of one comparison
  with the same label mode, reuse one compilation.
  """
  model = models.create_model(
    cfg.arch, num_classes, stem=cfg.stem, width=cfg.width, dtype=train.DTYPES[cfg.dtype]
  )
  step = make_student_step(
    model,
    functools.partial(make_optimizer, cfg),
    cfg,
    mean=mean,
    std=std,
    num_classes=num_classes,
    label_mode=label_mode,
    label_fn=label_fn,
  )
  # The optimiser's state does not depend on the schedule's length: any length initialises it.
  return model, make_optimizer(cfg, 1), step, train.make_eval_step(model, mean=mean, std=std)


# ---------------------------------------------------------------------------------------------
# Orchestration.


def _check_inputs(instances, soft_labels, hard_labels, info):
  """Validates and converts array inputs; returns (images, soft or None, hard or None)."""
  images = np.asarray(instances)
  shape = tuple(int(s) for s in info.image_shape)
  if images.ndim != 4 or images.shape[1:] != shape or images.shape[0] == 0:
    raise InputError(
      f"instances must be a non-empty float array [N, {', '.join(map(str, shape))}] (the test "
      f"images' shape), got {images.dtype} {images.shape}."
    )
  if not np.issubdtype(images.dtype, np.floating):
    raise InputError(
      f"instances must be float images in the dataset's normalised space, got {images.dtype}; "
      "normalise uint8 images first (infer_jax.data.pipeline.normalize with info.mean/std)."
    )
  n, num_classes = images.shape[0], info.num_classes
  soft = None
  if soft_labels is not None:
    soft = np.asarray(soft_labels, np.float32)
    if soft.shape != (n, num_classes):
      raise InputError(
        f"soft_labels must be [N, num_classes] = [{n}, {num_classes}] (teacher logits), got "
        f"{soft.shape}."
      )
  hard = None
  if hard_labels is not None:
    hard = np.asarray(hard_labels)
    if hard.shape != (n,) or not np.issubdtype(hard.dtype, np.integer):
      raise InputError(f"hard_labels must be integers [N] = [{n}], got {hard.dtype} {hard.shape}.")
    if hard.size and (hard.min() < 0 or hard.max() >= num_classes):
      raise InputError(
        f"hard_labels must lie in [0, {num_classes}), got [{hard.min()}, {hard.max()}]."
      )
    hard = hard.astype(np.int32)
  return images.astype(np.float32), soft, hard


def _label_mode(requested: str | None, has_soft: bool, has_hard: bool, label_fn) -> str:
  """The label protocol: ``requested``, or inferred (label_fn > soft labels > hard labels)."""
  mode = requested
  if mode is None and not (has_soft or has_hard or label_fn is not None):
    raise InputError("Give soft_labels, hard_labels or a label_fn: the student needs targets.")
  if mode is None:
    mode = "dynamic" if label_fn is not None else "static" if has_soft else "hard"
  _check_label_mode(mode, label_fn)
  if mode == "static" and not has_soft:
    raise InputError("label_mode='static' needs soft labels (the teachers' logits); none given.")
  if mode == "hard" and not has_hard:
    raise InputError("label_mode='hard' needs hard labels (class indices).")
  return mode


def _check_label_mode(mode: str, label_fn) -> None:
  """InputError unless ``mode`` is a label protocol and ``label_fn`` comes with 'dynamic' only."""
  if mode not in LABEL_MODES:
    raise InputError(f"label_mode must be one of {LABEL_MODES}, got {mode!r}.")
  if (mode == "dynamic") != (label_fn is not None):
    raise InputError("label_fn (the teacher ensemble) is needed for, and only for, dynamic labels.")


def effective_batch_size(
  batch_size: int, n: int, devices: int, log: Callable[[str], Any] = print
) -> int:
  """The batch size a set of ``n`` instances is trained with on ``devices`` devices.

  ``batch_size`` itself when ``n >= batch_size``; otherwise the whole set, rounded down to a
  multiple of ``devices`` (one batch per epoch), with a note sent to ``log``.

  Raises:
    InputError: ``batch_size`` is not a multiple of ``devices``, or ``n < devices``.
  """
  pipeline.check_divisible(batch_size, devices, "batch_size")
  if n >= batch_size:
    return batch_size
  clamped = n // devices * devices
  if clamped == 0:
    raise InputError(
      f"The synthetic set has {n} instances, fewer than the {devices} devices the batch is "
      f"sharded over; run on at most {n} devices (train.data_mesh(jax.devices()[:{n}]))."
    )
  log(
    f"note: the synthetic set ({n} instances) is smaller than batch_size {batch_size}; "
    f"training with one batch of {clamped} per epoch"
    + (
      f" ({n - clamped} dropped each epoch: a multiple of {devices} devices)" if clamped < n else ""
    )
  )
  return clamped


def train_student(
  cfg: StudentConfig,
  instances,
  soft_labels,
  hard_labels,
  test_source,
  info,
  *,
  mesh: Mesh | None = None,
  label_fn: Labeller | None = None,
  label_mode: str | None = None,
  eval_batch_size: int = 500,
  worker_count: int = 0,
  curve_every: int = 0,
  log: Callable[[str], Any] = print,
) -> dict[str, Any]:
  """Trains ``cfg.arch`` from scratch on a synthetic set and evaluates it on the real test set.

  The set is read through the grain input pipeline (:func:`infer_jax.data.pipeline.
  train_iterator`: seeded shuffle, batches sharded over the mesh's 'data' axis, prefetched by a
  background thread or ``worker_count`` processes); augmentation and MixUp run on device.

  Args:
    cfg: the student recipe.
    instances: float32 ``[N, H, W, 3]`` synthetic images in the dataset's normalised space, or
      a ``synthetic.SyntheticSet`` (instances materialised as they are read; its soft labels
      and class indices are used and ``soft_labels`` / ``hard_labels`` must be None).
    soft_labels: float32 ``[N, num_classes]`` static labels (teacher mean logits), or None.
    hard_labels: int ``[N]`` classes, or None.
    test_source: the real test split (uint8 ``[H, W, 3]`` images, see ``data.sources``).
    info: the dataset's ``DatasetInfo`` (class count, image shape, mean/std).
    mesh: device mesh; default all devices (``train.data_mesh()``).
    label_fn: INFER+Dyn: a :class:`Labeller`, ``fn(variables, normalised images [B, H, W, 3])
      -> logits [B, num_classes]`` (e.g. a teacher ensemble in inference mode).
      When given it replaces the stored soft labels with labels of the augmented, mixed batch.
    label_mode: 'static', 'hard' or 'dynamic'; default: 'dynamic' with a ``label_fn``, else
      'static' when there are soft labels, else 'hard'.
    eval_batch_size: test batch size (rounded up to a multiple of the device count; the last
      batch is padded and masked).
    worker_count: grain worker processes preparing batches (0: a background thread).
    curve_every: > 0 also tests the student every this many optimisation steps (a learning
      curve, to judge convergence; nothing is selected from it). 0: only at the end.
    log: where progress lines go.

  Returns:
    ``{'final_top1', 'best_top1', 'best_epoch', 'epochs', 'steps', 'steps_per_epoch',
    'batch_size', 'label_mode', 'train_seconds', 'images_per_second', 'final_loss', 'history',
    'params', 'curve'}``: top-1 in [0, 1]; ``curve`` ``[[step, top1], ...]`` every
    ``curve_every`` steps and at the last step (None when ``curve_every`` is 0);
    ``best_*`` None unless ``cfg.eval_every_epochs > 0`` (then selected on the test set: for
    comparison only); ``history`` a list of ``{'epoch', 'top1'}``;
    ``train_seconds`` the wall time of training (compilation included, evaluation excluded);
    ``images_per_second`` the steady rate after the first (compiling) step.

  Raises:
    InputError: inconsistent shapes, no targets, or a batch size the devices cannot split.
  """
  mesh = train.data_mesh() if mesh is None else mesh
  if hasattr(instances, "compensators"):  # a SyntheticSet
    if soft_labels is not None or hard_labels is not None:
      raise InputError("Pass a SyntheticSet alone: its labels come with it.")
    instances.validate()
    source = SetSource.from_synthetic(instances)
    has_hard = True
  else:
    images, soft, hard = _check_inputs(instances, soft_labels, hard_labels, info)
    has_hard = hard is not None
    if hard is None:  # the pipeline always carries a class index; unused without hard labels
      hard = np.zeros(len(images), np.int32)
    source = SetSource.from_arrays(images, soft, hard)
  label_mode = _label_mode(label_mode, source.has_soft, has_hard, label_fn)
  n = len(source)
  devices = mesh.shape["data"]
  batch_size = effective_batch_size(cfg.batch_size, n, devices, log)
  # batch_size <= n here, so this is n // batch_size (>= 1).
  epoch_steps = steps_per_epoch(n, batch_size)
  total_steps = cfg.epochs * epoch_steps

  model, tx, step_fn, eval_step = _compiled_parts(
    dataclasses.replace(cfg, seed=0, epochs=1),
    info.num_classes,
    tuple(map(float, info.mean)),
    tuple(map(float, info.std)),
    label_mode,
    label_fn,
  )
  key = data_key(cfg.seed)
  schedule_steps = jax.device_put(np.int32(total_steps), train.replicated(mesh))
  label_variables = None
  if label_fn is not None:
    label_variables = jax.device_put(label_fn.variables, train.replicated(mesh))
  state = train.create_train_state(
    model, tx, jax.random.key(cfg.seed, impl="rbg"), tuple(info.image_shape), mesh
  )
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  batches = pipeline.train_iterator(
    source,
    batch_size=batch_size,
    seed=cfg.seed,
    num_epochs=cfg.epochs,
    augment="none",  # augmentation runs on device, inside the step
    sharding=train.batch_sharding(mesh),
    worker_count=worker_count,
    extra_keys=("soft_label",) if label_mode == "static" else (),
  )
  eval_batch_size = -(-eval_batch_size // devices) * devices

  def test_top1() -> float:
    # Finish every dispatched train step first: XLA:CPU can deadlock when another
    # multi-device program is dispatched while sharded steps with all-reduces are in flight.
    jax.block_until_ready(state)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    batches = pipeline.eval_batches(
      test_source, batch_size=eval_batch_size, sharding=train.batch_sharding(mesh)
    )
    return train.evaluate(eval_step, variables, batches)

  tag = f"[student {cfg.arch}]"
  log(
    f"{tag} {n} instances, {label_mode} labels, batch {batch_size} x {epoch_steps} steps x "
    f"{cfg.epochs} epochs = {total_steps} steps, {num_params:,} params, {devices} device(s)"
  )
  serialize_steps = train.one_step_in_flight(mesh)
  history: list[dict[str, Any]] = []
  curve: list[list[float]] = []
  curve_seconds = 0.0  # test time inside the training segments, taken out of train_seconds
  train_seconds = 0.0
  epoch_losses: list[jax.Array] = []
  last_loss = float("nan")
  progress = progress_lib.Progress(tag, log)
  for epoch in range(1, cfg.epochs + 1):
    segment_start = time.perf_counter()
    for i in range(epoch_steps):
      state, metrics = step_fn(
        state, next(batches), key, label_variables, total_steps=schedule_steps
      )
      epoch_losses.append(metrics["loss"])
      if serialize_steps:
        jax.block_until_ready(state)
      progress.count(batch_size)
      progress.first_step_done(state)
      done = (epoch - 1) * epoch_steps + i + 1
      if curve_every and done % curve_every == 0 and done < total_steps:
        t_curve = time.perf_counter()
        curve.append([done, test_top1()])
        curve_seconds += time.perf_counter() - t_curve
    evaluate_now = epoch == cfg.epochs or (
      cfg.eval_every_epochs and epoch % cfg.eval_every_epochs == 0
    )
    log_now = evaluate_now or (cfg.log_every_epochs and epoch % cfg.log_every_epochs == 0)
    if log_now:
      # One transfer for the losses of every step since the last line (blocks on them).
      last_loss = float(np.mean(jax.device_get(epoch_losses)))
      epoch_losses = []
    train_seconds += time.perf_counter() - segment_start - curve_seconds
    curve_seconds = 0.0
    if log_now:
      now = time.perf_counter()
      line = (
        f"{tag} epoch {epoch}/{cfg.epochs} step {epoch * epoch_steps}/{total_steps} "
        f"loss {last_loss:.4f}"
      )
      # The window is empty right after the (compiling) first step: no rate to show yet.
      if progress.window_items > 0:
        rate = progress.rate(now)
        eta = progress.eta((cfg.epochs - epoch) * epoch_steps * batch_size, rate)
        line += f" {rate:8.1f} img/s eta {eta}"
      if evaluate_now:
        top1 = test_top1()
        history.append({"epoch": epoch, "top1": top1})
        line += f" test top-1 {100 * top1:.2f}%"
      log(line)
      progress.reset_window()

  batches.close()
  final_top1 = history[-1]["top1"]
  if curve_every:
    curve.append([total_steps, final_top1])
  best_top1 = best_epoch = None
  if cfg.eval_every_epochs:
    best = max(history, key=lambda h: h["top1"])
    best_top1, best_epoch = best["top1"], best["epoch"]
  steady_seconds = train_seconds - (progress.first_step_seconds or 0.0)
  steady_images = (total_steps - 1) * batch_size
  images_per_second = steady_images / steady_seconds if steady_images and steady_seconds > 0 else 0
  summary = (
    f"{tag} final-epoch test top-1 {100 * final_top1:.2f}% after {cfg.epochs} epochs "
    f"({total_steps} steps, {progress_lib.format_duration(train_seconds)} training, "
    f"{images_per_second:.1f} img/s)"
  )
  if best_top1 is not None:
    summary += (
      f"; best epoch {best_epoch}: {100 * best_top1:.2f}% (selected on the test set, "
      "for comparison only)"
    )
  log(summary)
  return {
    "final_top1": final_top1,
    "best_top1": best_top1,
    "best_epoch": best_epoch,
    "epochs": cfg.epochs,
    "steps": total_steps,
    "steps_per_epoch": epoch_steps,
    "batch_size": batch_size,
    "label_mode": label_mode,
    "train_seconds": train_seconds,
    "images_per_second": float(images_per_second),
    "final_loss": last_loss,
    "history": history,
    "params": num_params,
    "curve": curve if curve_every else None,
  }


def steps_per_epoch(num_instances: int, batch_size: int) -> int:
  """Optimisation steps in one epoch over ``num_instances`` (one when the set is smaller
  than a batch: the student then trains on all of it at once, see
  :func:`effective_batch_size`). The one place this count is defined: the trainer and the
  comparison's step budget both use it."""
  return max(1, num_instances // batch_size)
