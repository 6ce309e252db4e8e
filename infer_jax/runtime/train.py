"""Supervised training of a classifier with BatchNorm: state, optimiser, steps, evaluation.

Used by the squeeze stage to train teachers (and reusable for students). Data-parallel
by construction: the batch is sharded over a one-axis device mesh ('data') and the
state replicated; ``jax.jit`` sees the global batch, so BatchNorm statistics are those
of the whole batch with no ``pmean`` in sight.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from infer_jax.data.pipeline import normalize
from infer_jax.runtime.errors import InputError

PyTree = Any

# Computation dtypes of teachers and students, by config name (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training (a pytree; checkpointed as is).

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: model parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: optax state.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree


def data_mesh(devices=None) -> Mesh:
  """A one-axis mesh named 'data' over all (or the given) devices.

  Devices are ordered by process, so that each process's devices hold adjacent rows of a
  sharded batch (the data pipeline loads one contiguous block of rows per process).
  """
  devices = jax.devices() if devices is None else devices
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), ("data",))


# Recover's two-axis mesh: subsets over SUBSET_AXIS (the 'data' axis of one-axis meshes),
# each subset's images over IMAGE_AXIS.
SUBSET_AXIS = "data"
IMAGE_AXIS = "images"


def subset_image_mesh(devices, image_shards: int) -> Mesh:
  """A ``[D / image_shards, image_shards]`` mesh with axes ('data', 'images').

  Args:
    devices: the D devices, e.g. ``data_mesh().devices`` (ordered by process); row r of the
      mesh is devices ``r * image_shards ... (r + 1) * image_shards - 1``, so a subset's
      devices are adjacent (on one host whenever ``image_shards`` <= its device count).
    image_shards: devices per subset; must divide D.

  Raises:
    InputError: ``image_shards`` does not divide D (one line, naming the divisors).
  """
  devices = np.asarray(devices).reshape(-1)
  d = devices.size
  if image_shards < 1 or d % image_shards:
    divisors = [i for i in range(1, d + 1) if d % i == 0]
    raise InputError(
      f"recover.image_shards={image_shards} does not divide the {d} devices of this run; "
      f"use one of {divisors} (or 0 to choose automatically)."
    )
  return Mesh(devices.reshape(d // image_shards, image_shards), (SUBSET_AXIS, IMAGE_AXIS))


def one_step_in_flight(mesh: Mesh) -> bool:
  """Whether multi-device steps must run one at a time on this mesh (XLA:CPU, > 1 device).

  XLA:CPU runs every host "device" of a program on one shared thread pool: with two
  sharded steps (or a step and another program) in flight, threads of the second can sit
  in its collectives waiting for devices still busy with the first, and the rendezvous
  never completes (seen with 8 host devices on 2 cores: "only 6 of 8 arrived", abort
  after 40 s). Callers block on each step's result there; the lost dispatch overlap is
  small on a CPU, and accelerators keep asynchronous dispatch.
  """
  return mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: leading axis split over 'data'."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of replicated values (parameters, optimiser state)."""
  return NamedSharding(mesh, P())


def cosine_decay(lr: float, total_steps) -> optax.Schedule:
  """``count -> lr * (1 + cos(pi * min(count, T) / T)) / 2`` with ``T = max(total_steps, 1)``.

  The formula of ``optax.cosine_decay_schedule(lr, T)``, but ``total_steps`` may also be a
  traced int32 scalar ``[]``: a jitted step that takes the schedule's length as an argument
  compiles once for runs of every length (the rows of a comparison).
  """

  def schedule(count):
    total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
    count = jnp.minimum(count, total)
    return lr * (0.5 * (1 + jnp.cos(jnp.pi * count / total)))

  return schedule


def sgd_optimizer(
  *,
  lr: float,
  momentum: float,
  nesterov: bool,
  weight_decay: float,
  total_steps,
  warmup_steps: int = 0,
) -> optax.GradientTransformation:
  """SGD with momentum, PyTorch-style coupled weight decay and a cosine schedule.

  Weight decay is added to the gradient before momentum, for every parameter (BatchNorm
  and biases included), as ``torch.optim.SGD(weight_decay=...)`` does; the learning rate
  decays from ``lr`` to 0 along a cosine over ``total_steps`` after a linear warm-up.
  Without warm-up ``total_steps`` may be a traced int32 scalar (:func:`cosine_decay`).
  """
  if warmup_steps > 0:
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, 1))
  else:
    schedule = cosine_decay(lr, total_steps)
  return optax.chain(
    optax.add_decayed_weights(weight_decay),
    optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov),
  )


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_shape, mesh: Mesh
) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimiser state, replicated on ``mesh``.

  Args:
    model: Flax classifier.
    tx: optimiser.
    rng: PRNG key for parameter initialisation.
    image_shape: ``(H, W, C)`` (C = 3, or 1 for greyscale).
    mesh: device mesh; the state is replicated over it.
  """

  @functools.partial(jax.jit, out_shardings=replicated(mesh))
  def init(rng):
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
    )

  return init(rng)


def make_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  *,
  mean,
  std,
  label_smoothing: float = 0.0,
  seed: int = 0,
):
  """Builds the jitted training step ``(state, batch) -> (state, metrics)``.

  The step normalises uint8 images on device, runs the model in training mode (batch
  statistics, running statistics updated), takes cross-entropy with optional label
  smoothing, and applies ``tx``. The dropout key is ``fold_in(key(seed), step)``, so a
  resumed run draws exactly what an uninterrupted one would.

  Args:
    model: Flax classifier.
    tx: optimiser.
    mean, std: per-channel normalisation (one float per channel each).
    label_smoothing: label smoothing of the cross-entropy.
    seed: base seed of stochastic layers.

  Returns:
    ``step(state, batch)`` with ``batch = {'image': uint8 [B,H,W,3], 'label': int [B]}``;
    metrics ``{'loss': [], 'accuracy': []}`` (batch means).
  """
  mean = tuple(float(m) for m in mean)
  std = tuple(float(s) for s in std)
  base_key = jax.random.key(seed)

  def loss_fn(params, batch_stats, images, labels, rng):
    logits, updates = model.apply(
      {"params": params, "batch_stats": batch_stats},
      images,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": rng},
    )
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, (updates["batch_stats"], accuracy)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state: TrainState, batch: Mapping[str, jax.Array]):
    images = normalize(batch["image"], mean, std)
    rng = jax.random.fold_in(base_key, state.step)
    (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats, images, batch["label"], rng
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, {"loss": loss, "accuracy": accuracy}

  return step


def make_eval_step(model: nn.Module, *, mean, std):
  """Builds the jitted ``(variables, batch) -> (correct, count)`` for masked batches.

  ``batch = {'image': uint8 [B,H,W,3], 'label': int [B], 'mask': bool [B]}``; padding
  examples (mask False) are not counted.
  """
  mean = tuple(float(m) for m in mean)
  std = tuple(float(s) for s in std)

  @jax.jit
  def eval_step(variables, batch):
    logits = model.apply(variables, normalize(batch["image"], mean, std), train=False)
    correct = (jnp.argmax(logits, -1) == batch["label"]) & batch["mask"]
    return jnp.sum(correct), jnp.sum(batch["mask"])

  return eval_step


def evaluate(eval_step, variables: PyTree, batches: Iterable[Mapping[str, jax.Array]]) -> float:
  """Top-1 accuracy in [0, 1] of ``variables`` over every batch of ``batches``."""
  correct, count = 0, 0
  for batch in batches:
    c, n = eval_step(variables, batch)
    correct += int(c)
    count += int(n)
  if count == 0:
    raise ValueError("evaluate() got no examples.")
  return correct / count
