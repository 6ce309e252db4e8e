"""All Orbax checkpointing in one place: resumable training state and finished teachers.

On-disk layout of one teacher, ``<workdir>/teachers/<name>/``::

    train/<step>/{state, data_iter, meta}   resumable training checkpoints (removed once
                                            the teacher is final)
    final/0/{variables, meta}               the finished teacher: params + batch_stats and
                                            its metadata (architecture, dataset, classes,
                                            image shape, normalisation, test accuracy, ...)

Orbax commits each step atomically (it writes a temporary directory and renames it), so
a process killed at any moment leaves either the previous checkpoint or the new one,
never half of one. A finished teacher is only ever written once: a directory that holds
a teacher of another architecture, dataset or class count is refused, not overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from infer_jax import models
from infer_jax.runtime import distributed, train
from infer_jax.runtime.errors import InputError

PyTree = Any

TEACHER_FORMAT_VERSION = 1
# Metadata keys that must agree between a stored teacher and the run that wants it.
IDENTITY_KEYS = ("architecture", "stem", "width", "num_classes", "image_shape", "dataset")


# A deterministic preemption for kill-and-resume tests: ``[NAME:]N`` kills this process
# (SIGKILL: no cleanup, exactly what a preempted machine does) right after its N-th complete
# checkpoint save, counting only saves into directories with a path component NAME (e.g.
# ``recover`` or ``teachers``) when NAME is given. Read at every save, so a test can set it
# in a subprocess's environment; unset in normal use, where it costs one dict lookup.
STOP_AFTER_CHECKPOINT_ENV = "INFER_JAX_STOP_AFTER_CHECKPOINT"
_saves_counted = 0


def _parse_stop_after(value: str) -> tuple[str | None, int]:
  """``"3"`` -> (None, 3); ``"recover:1"`` -> ("recover", 1)."""
  name, _, count = value.rpartition(":")
  if not count.isdigit() or int(count) < 1:
    raise InputError(
      f"{STOP_AFTER_CHECKPOINT_ENV}={value!r} is not [NAME:]N with N >= 1 "
      "(e.g. 'recover:1'): fix or unset it."
    )
  return (name or None), int(count)


def _maybe_stop_after_save(directory: str) -> None:
  """Kills the process after the save the stop hook names (see STOP_AFTER_CHECKPOINT_ENV)."""
  global _saves_counted
  value = os.environ.get(STOP_AFTER_CHECKPOINT_ENV)
  if not value:
    return
  name, count = _parse_stop_after(value)
  if name is not None and name not in directory.split(os.sep):
    return
  _saves_counted += 1
  if _saves_counted == count:
    print(f"[checkpoint] {STOP_AFTER_CHECKPOINT_ENV}={value}: killing this process", flush=True)
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _manager(directory: str, max_to_keep: int | None = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    os.path.abspath(directory),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    ),
  )


def abstract_tree(tree: PyTree) -> PyTree:
  """``jax.ShapeDtypeStruct`` (with shardings) of every leaf: the target of a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# --------------------------------------------------------------------------- training


class TrainCheckpointer:
  """Resumable training checkpoints: a state pytree, the data-iterator state and metadata.

  Example::

    ckpt = TrainCheckpointer(os.path.join(teacher_dir, "train"))
    restored = ckpt.restore_latest(state)          # None on a fresh start
    ...
    ckpt.save(step, state, iterator.get_state(), {"epoch": epoch})
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = _manager(self.directory, max_to_keep)

  def latest_step(self) -> int | None:
    """Step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def save(
    self, step: int, state: PyTree, data_iter_state: Mapping[str, Any], meta: Mapping[str, Any]
  ) -> None:
    """Saves one checkpoint (blocking, atomic). ``state`` is any pytree of arrays."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=ocp.args.JsonSave(dict(data_iter_state)),
        meta=ocp.args.JsonSave(dict(meta)),
      ),
      force=True,
    )
    self._manager.wait_until_finished()
    _maybe_stop_after_save(self.directory)

  def read_json(self, step: int, item: str) -> dict:
    """One JSON item ('data_iter' or 'meta') of checkpoint ``step``, without its arrays."""
    restored = self._manager.restore(
      step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
    )
    return dict(restored[item])

  def restore_latest(self, like: PyTree) -> tuple[int, PyTree, dict, dict] | None:
    """Restores the newest checkpoint into the structure, shapes and shardings of ``like``.

    Returns:
      ``(step, state, data_iter_state, meta)`` or None when there is no checkpoint.

    Raises:
      InputError: the checkpoint does not fit ``like`` (another model or optimiser).
    """
    step = self.latest_step()
    if step is None:
      return None
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_tree(like)),
          data_iter=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore(),
        ),
      )
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(
        f"The training checkpoint {self.directory}/{step} does not match this run ({e}). "
        "It was written by a different model or optimiser configuration: use another "
        "--config.workdir, or delete that directory to start this teacher afresh."
      ) from e
    return step, restored.state, dict(restored.data_iter), dict(restored.meta)

  def close(self) -> None:
    self._manager.close()


# --------------------------------------------------------------------------- teachers


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A trained teacher: its Flax module, variables and metadata.

  Attributes:
    model: unbound Flax module (``__call__(x [N,H,W,3], train) -> [N, classes]``).
    variables: ``{'params': ..., 'batch_stats': ...}``.
    metadata: JSON-able dict (see :func:`teacher_metadata`).
  """

  model: nn.Module
  variables: PyTree
  metadata: dict


def teacher_metadata(
  *,
  architecture: str,
  stem: str,
  width: float,
  num_classes: int,
  image_shape: tuple[int, int, int],
  dataset: str,
  mean,
  std,
  test_accuracy: float | None,
  source: str,
  **extra: Any,
) -> dict:
  """The metadata stored with every teacher checkpoint, as a JSON-able dict."""
  return {
    "format_version": TEACHER_FORMAT_VERSION,
    "architecture": architecture,
    "stem": stem,
    "width": float(width),
    "num_classes": int(num_classes),
    "image_shape": [int(s) for s in image_shape],
    "dataset": dataset,
    "mean": [float(m) for m in mean],
    "std": [float(s) for s in std],
    "test_accuracy": None if test_accuracy is None else float(test_accuracy),
    "source": source,
    **extra,
  }


def variables_digest(variables: PyTree) -> str:
  """sha256 (hex) over a teacher's variables: every leaf's path, dtype, shape and bytes.

  Leaves are taken in sorted path order, so the digest depends only on the values, not on
  how the tree was built or restored. Two teachers with the same digest label identically.
  """
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  h = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def teacher_identity(teacher: Teacher) -> dict[str, str]:
  """What names one trained teacher exactly: architecture, dataset and variables' digest."""
  return {
    "architecture": teacher.metadata["architecture"],
    "dataset": teacher.metadata["dataset"],
    "digest": variables_digest(teacher.variables),
  }


def _final_dir(directory: str) -> str:
  return os.path.join(os.path.abspath(directory), "final")


def teacher_exists(directory: str) -> bool:
  """True if ``directory`` holds a finished (committed) teacher."""
  path = _final_dir(directory)
  if not os.path.isdir(path):
    return False
  with _manager(path) as mngr:
    return mngr.latest_step() is not None


def read_teacher_metadata(directory: str) -> dict:
  """Reads only the metadata of a finished teacher (cheap: no arrays are loaded).

  Raises:
    InputError: no finished teacher in ``directory``.
  """
  if not teacher_exists(directory):
    raise InputError(
      f"No finished teacher checkpoint in {directory} (expected "
      f"{_final_dir(directory)}/<step>). Train it with `python -m "
      "infer_jax.squeeze` or point the config at the right directory."
    )
  try:
    with _manager(_final_dir(directory)) as mngr:
      meta = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  except Exception as e:  # Orbax and TensorStore raise many types for missing files
    raise _damaged(directory, e) from e
  return dict(meta.meta)


def _damaged(directory: str, e: BaseException) -> InputError:
  """The error for a finished teacher whose checkpoint files are missing or unreadable."""
  files = re.findall(r'local file "([^"]+)"', str(e))
  if files:
    detail = f"cannot read {files[-1]}"
  else:
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
  return InputError(
    f"The teacher checkpoint {os.path.basename(os.path.abspath(directory))!r} in {directory} "
    f"is incomplete or damaged (files missing or unreadable: {detail}). Delete that folder "
    "to retrain the teacher (or convert it again), then rerun the same command."
  )


def check_teacher_metadata(
  found: Mapping[str, Any], expected: Mapping[str, Any], directory: str
) -> None:
  """Raises InputError if a stored teacher is not the one ``expected`` describes.

  Only the keys in IDENTITY_KEYS that ``expected`` names are compared.
  """
  problems = []
  for key in IDENTITY_KEYS:
    if key not in expected:
      continue
    want, have = expected[key], found.get(key)
    if key == "image_shape":
      want, have = list(want), list(have or [])
    if key == "width":
      want, have = float(want), float(have) if have is not None else None
    if want != have:
      problems.append(f"{key}: checkpoint has {have!r}, this run needs {want!r}")
  if problems:
    raise InputError(
      f"The teacher checkpoint in {directory} was written for a different setting: "
      + "; ".join(problems)
      + ". Use a fresh --config.workdir for this setting (or delete that teacher directory "
      "to retrain it)."
    )


def save_teacher(directory: str, variables: PyTree, metadata: Mapping[str, Any]) -> None:
  """Writes a finished teacher atomically; refuses to replace an existing one.

  Args:
    directory: the teacher directory (``final/`` is created inside).
    variables: ``{'params', 'batch_stats'}``.
    metadata: from :func:`teacher_metadata`.

  Raises:
    InputError: a finished teacher already exists there.
  """
  if teacher_exists(directory):
    raise InputError(
      f"A finished teacher already exists in {directory}; delete it first to replace it."
    )
  # Every process must have looked before any of them writes: a process that looked after
  # process 0 had committed would see a teacher and refuse, and the processes would part.
  distributed.barrier("save_teacher")
  variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  with _manager(_final_dir(directory), max_to_keep=None) as mngr:
    mngr.save(
      0,
      args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(dict(metadata))
      ),
    )
    mngr.wait_until_finished()


def build_teacher_model(metadata: Mapping[str, Any], dtype: Any = jnp.float32) -> nn.Module:
  """The Flax module a teacher's metadata describes."""
  return models.create_model(
    metadata["architecture"],
    int(metadata["num_classes"]),
    stem=metadata["stem"],
    width=float(metadata["width"]),
    dtype=dtype,
  )


def abstract_variables(model: nn.Module, image_shape) -> PyTree:
  """Shapes/dtypes of ``{'params', 'batch_stats'}`` of ``model`` for one image shape."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  return {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}


def load_teacher(
  directory: str, expected: Mapping[str, Any] | None = None, dtype: Any = jnp.float32
) -> Teacher:
  """Loads a finished teacher, checking it is the one the caller expects.

  Args:
    directory: the teacher directory.
    expected: metadata values that must match (any of IDENTITY_KEYS), e.g.
      ``{'dataset': 'cifar10', 'num_classes': 10, 'image_shape': (32, 32, 3)}``.
    dtype: computation dtype of the rebuilt module.

  Returns:
    The :class:`Teacher`.

  Raises:
    InputError: missing checkpoint, mismatched metadata or mismatched arrays.
  """
  meta = read_teacher_metadata(directory)
  if expected:
    check_teacher_metadata(meta, expected, directory)
  try:
    model = build_teacher_model(meta, dtype)
  except ValueError as e:
    raise InputError(
      f"The teacher in {directory} names an architecture this version cannot build: {e}"
    ) from e
  # Replicated over every device of every process: each process then holds the whole
  # teacher, as the recover, relabel and evaluation steps need (and a multi-host restore
  # needs a sharding for every array).
  replicated = train.replicated(train.data_mesh())
  target = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
    abstract_variables(model, meta["image_shape"]),
  )
  try:
    with _manager(_final_dir(directory)) as mngr:
      restored = mngr.restore(
        mngr.latest_step(), args=ocp.args.Composite(variables=ocp.args.StandardRestore(target))
      )
  except (ValueError, KeyError, TypeError) as e:
    if any(code in str(e) for code in ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE")):
      raise _damaged(directory, e) from e  # TensorStore's codes for missing/short files
    raise InputError(
      f"The arrays of the teacher in {directory} do not fit the "
      f"{meta['architecture']} its metadata names ({e}); the checkpoint is "
      "corrupted or was edited. Retrain or re-convert it."
    ) from e
  except Exception as e:  # TensorStore raises a bare Exception for a missing array file
    raise _damaged(directory, e) from e
  return Teacher(model=model, variables=restored.variables, metadata=meta)


def remove_training_checkpoints(directory: str) -> None:
  """Deletes ``train/`` of a teacher once its final checkpoint is committed."""
  if not teacher_exists(directory):
    raise RuntimeError("Refusing to delete training checkpoints of an unfinished teacher.")
  # One process deletes (a shared directory); the others wait so none sees half of it.
  distributed.on_primary(
    "remove_training_checkpoints",
    lambda: shutil.rmtree(os.path.join(os.path.abspath(directory), "train"), ignore_errors=True),
  )
