"""Orbax checkpoints of teachers and training state: round trips and refusals."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer_jax import models
from infer_jax.runtime import checkpoint
from infer_jax.runtime.errors import InputError

IMAGE_SHAPE = (8, 8, 3)


def _meta(**overrides):
  kw = dict(
    architecture="resnet_tiny",
    stem="cifar",
    width=1.0,
    num_classes=10,
    image_shape=IMAGE_SHAPE,
    dataset="digits",
    mean=(0.1, 0.2, 0.3),
    std=(0.5, 0.5, 0.5),
    test_accuracy=0.9,
    source="test",
  )
  kw.update(overrides)
  return checkpoint.teacher_metadata(**kw)


@pytest.fixture(scope="module")
def tiny_variables():
  model = models.create_model("resnet_tiny", 10)
  v = jax.jit(lambda k: model.init(k, jnp.zeros((1, *IMAGE_SHAPE)), train=False))(
    jax.random.key(0, impl="rbg")
  )
  # Non-trivial running statistics, so a restore that dropped them would be noticed.
  v = {"params": v["params"], "batch_stats": jax.tree.map(lambda a: a + 0.25, v["batch_stats"])}
  return v


def test_teacher_round_trip(tmp_path, tiny_variables):
  d = str(tmp_path / "t")
  assert not checkpoint.teacher_exists(d)
  checkpoint.save_teacher(d, tiny_variables, _meta())
  assert checkpoint.teacher_exists(d)
  teacher = checkpoint.load_teacher(
    d, expected={"num_classes": 10, "dataset": "digits", "image_shape": IMAGE_SHAPE}
  )
  chex.assert_trees_all_equal(teacher.variables, tiny_variables)
  assert teacher.metadata["test_accuracy"] == 0.9
  assert teacher.metadata["image_shape"] == list(IMAGE_SHAPE)
  logits = teacher.model.apply(teacher.variables, jnp.zeros((2, *IMAGE_SHAPE)))
  chex.assert_shape(logits, (2, 10))


def test_teacher_is_never_overwritten(tmp_path, tiny_variables):
  d = str(tmp_path / "t")
  checkpoint.save_teacher(d, tiny_variables, _meta())
  with pytest.raises(InputError, match="already exists"):
    checkpoint.save_teacher(d, tiny_variables, _meta(test_accuracy=0.1))
  assert checkpoint.read_teacher_metadata(d)["test_accuracy"] == 0.9


@pytest.mark.parametrize(
  "expected,problem",
  [
    ({"architecture": "mobilenetv2_tiny"}, "architecture"),
    ({"num_classes": 100}, "num_classes"),
    ({"image_shape": (32, 32, 3)}, "image_shape"),
    ({"dataset": "cifar10"}, "dataset"),
  ],
)
def test_teacher_of_another_setting_is_refused(tmp_path, tiny_variables, expected, problem):
  d = str(tmp_path / "t")
  checkpoint.save_teacher(d, tiny_variables, _meta())
  with pytest.raises(InputError, match=f"different setting.*{problem}.*fresh --config.workdir"):
    checkpoint.load_teacher(d, expected=expected)
  # The refusal leaves the checkpoint intact.
  chex.assert_trees_all_equal(checkpoint.load_teacher(d).variables, tiny_variables)


def test_metadata_that_lies_about_the_arrays_is_refused(tmp_path, tiny_variables):
  d = str(tmp_path / "t")
  checkpoint.save_teacher(d, tiny_variables, _meta(num_classes=7))  # arrays have 10 classes
  with pytest.raises(InputError, match="do not fit"):
    checkpoint.load_teacher(d)


def test_missing_teacher(tmp_path):
  with pytest.raises(InputError, match="No finished teacher"):
    checkpoint.load_teacher(str(tmp_path / "nothing"))


def test_train_checkpointer_round_trip_and_mismatch(tmp_path):
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(3, jnp.int32)}
  ckpt = checkpoint.TrainCheckpointer(str(tmp_path / "train"))
  assert ckpt.restore_latest(state) is None
  ckpt.save(10, state, {"step": 10, "seed": 1}, {"architecture": "x"})
  ckpt.save(20, jax.tree.map(lambda a: a + 1, state), {"step": 20, "seed": 1}, {"a": 1})
  step, restored, it_state, meta = ckpt.restore_latest(state)
  assert step == 20 and it_state == {"step": 20, "seed": 1} and meta == {"a": 1}
  np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3) + 1)
  with pytest.raises(InputError, match="does not match this run"):
    ckpt.restore_latest({"w": jnp.zeros((4, 4)), "step": jnp.asarray(0, jnp.int32)})
  ckpt.close()


def test_uncommitted_step_is_ignored(tmp_path):
  # What a kill in the middle of a save leaves behind: a temporary directory that Orbax
  # never renamed to its step. It must not be mistaken for a checkpoint.
  state = {"w": jnp.ones(3)}
  ckpt = checkpoint.TrainCheckpointer(str(tmp_path / "train"))
  ckpt.save(5, state, {}, {})
  os.makedirs(tmp_path / "train" / "9.orbax-checkpoint-tmp-123" / "state")
  assert checkpoint.TrainCheckpointer(str(tmp_path / "train")).latest_step() == 5


def test_stop_hook_counts_only_the_saves_it_names(tmp_path, monkeypatch):
  """The kill-and-resume tests' hook: ``NAME:N`` counts saves into directories with a path
  component NAME; other saves, and an unset variable, never stop the process. (The kill
  itself is exercised by the SIGKILL tests of squeeze, distill and the two-process run.)"""
  state = {"w": jnp.arange(3.0)}
  monkeypatch.setattr(checkpoint, "_saves_counted", 0)
  monkeypatch.setenv(checkpoint.STOP_AFTER_CHECKPOINT_ENV, "recover:1")
  # "recover" only as part of a longer name: not the directory it names.
  ckpt = checkpoint.TrainCheckpointer(str(tmp_path / "recovered" / "train"))
  for step in (1, 2):
    ckpt.save(step, state, {}, {})
  assert checkpoint._saves_counted == 0 and ckpt.latest_step() == 2
  monkeypatch.delenv(checkpoint.STOP_AFTER_CHECKPOINT_ENV)
  ckpt = checkpoint.TrainCheckpointer(str(tmp_path / "recover" / "0_resnet"))
  ckpt.save(1, state, {}, {})
  assert checkpoint._saves_counted == 0


@pytest.mark.parametrize("value", ["0", "recover:", "recover:x", "-1", "recover:0"])
def test_stop_hook_rejects_a_malformed_value(tmp_path, monkeypatch, value):
  monkeypatch.setenv(checkpoint.STOP_AFTER_CHECKPOINT_ENV, value)
  ckpt = checkpoint.TrainCheckpointer(str(tmp_path / "train"))
  with pytest.raises(InputError, match=r"INFER_JAX_STOP_AFTER_CHECKPOINT=.* is not \[NAME:\]N"):
    ckpt.save(1, {"w": jnp.zeros(2)}, {}, {})
