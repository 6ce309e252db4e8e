"""Subsets, the recover step (vmapped, sharded, resumable) and relabelling."""

import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from infer_jax import models, recover, relabel
from infer_jax.core import augment, bn_stats, subsets
from infer_jax.runtime import checkpoint
from infer_jax.runtime.errors import InputError

SHAPE = (8, 8, 3)
C = 4


@pytest.mark.parametrize(
  "ipc,classes,teachers,k",
  [
    (10, 10, 4, 7),
    (50, 10, 4, 35),  # CIFAR-10
    (10, 100, 4, 9),
    (50, 100, 4, 48),  # CIFAR-100
    (10, 1000, 3, 9),
    (50, 1000, 3, 49),  # ImageNet-1k
    (10, 200, 4, 9),
    (50, 200, 4, 49),  # Tiny-ImageNet
  ],
)
def test_num_subsets_matches_the_budget_table(ipc, classes, teachers, k):
  assert subsets.num_subsets(ipc, classes, teachers) == k
  assert k * (classes + teachers) <= ipc * classes


def test_budget_too_small_names_the_smallest_ipc():
  with pytest.raises(InputError, match=r"ipc >= 2"):
    subsets.num_subsets(1, 10, 4)
  assert subsets.num_subsets(2, 10, 4) == 1


def test_sample_subsets_one_distinct_image_per_class():
  labels = np.repeat(np.arange(5), 6)
  idx = subsets.sample_subsets(labels, 5, 4, seed=3)
  chex.assert_shape(idx, (4, 5))
  assert len(np.unique(idx)) == 20
  np.testing.assert_array_equal(labels[idx], np.tile(np.arange(5), (4, 1)))
  np.testing.assert_array_equal(idx, subsets.sample_subsets(labels, 5, 4, seed=3))
  assert not np.array_equal(idx, subsets.sample_subsets(labels, 5, 4, seed=4))
  with pytest.raises(InputError, match="Class"):
    subsets.sample_subsets(labels, 5, 7, seed=0)


def test_roll_is_a_cyclic_shift_within_jitter():
  x = jnp.arange(2 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 3)
  for seed in range(5):
    key = jax.random.key(seed)
    out = augment.roll(key, x, jitter=2)
    dy, dx = np.asarray(jax.random.randint(key, (2,), 0, 3))
    np.testing.assert_array_equal(out, np.roll(np.asarray(x), (dy, dx), axis=(1, 2)))


def test_random_resized_crop_is_differentiable_and_identity_at_full_scale():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  for seed in range(4):
    out = augment.subset_resized_crop_flip(
      jax.random.key(seed), x, scale=(1.0, 1.0), ratio=(1.0, 1.0)
    )
    ok = np.allclose(out, x, atol=1e-5) or np.allclose(out, x[:, :, ::-1], atol=1e-5)
    assert ok  # a full-size crop is the image itself, possibly flipped
  g = jax.grad(lambda x: augment.subset_resized_crop_flip(jax.random.key(1), x).sum())(x)
  chex.assert_tree_all_finite(g)
  assert float(jnp.abs(g).sum()) > 0


@pytest.fixture(scope="module")
def teacher():
  model = models.create_model("resnet_tiny", C)
  v = jax.jit(lambda k: model.init(k, jnp.zeros((1, *SHAPE)), train=False))(
    jax.random.key(0, impl="rbg")
  )
  rng = np.random.default_rng(0)
  stats = jax.tree.map(
    lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32), v["batch_stats"]
  )
  meta = checkpoint.teacher_metadata(
    architecture="resnet_tiny",
    stem="cifar",
    width=1.0,
    num_classes=C,
    image_shape=SHAPE,
    dataset="toy",
    mean=(0.5,) * 3,
    std=(0.25,) * 3,
    test_accuracy=None,
    source="test",
  )
  return checkpoint.Teacher(
    model=model, variables={"params": v["params"], "batch_stats": stats}, metadata=meta
  )


def _problem(k=3, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(k, C, *SHAPE)).astype(np.float32)
  labels = np.tile(np.arange(C), (k, 1))
  return base, labels


def test_compensator_gradient_is_the_sum_of_image_gradients(teacher):
  base, labels = _problem(k=1)
  cfg = recover.RecoverConfig(augment="none")
  first = bn_stats.bn_layer_order(teacher.model, teacher.variables, (C, *SHAPE))[0]

  def loss_u(u):
    return recover.subset_loss(
      teacher.model, teacher.variables, u, base[0], labels[0], jax.random.key(0), cfg, first
    )[0]

  def loss_x(x):
    return bn_stats.teacher_loss(
      teacher.model, teacher.variables, x, labels[0], r_bn=1.0, first_layer=first
    )[0]

  u = jnp.full((1, *SHAPE), 0.1)
  np.testing.assert_allclose(
    jax.grad(loss_u)(u)[0], jax.grad(loss_x)(base[0] + u).sum(0), rtol=1e-4, atol=1e-5
  )


def test_vmapped_all_subsets_step_equals_a_loop_and_traces_once(teacher):
  base, labels = _problem(k=3)
  cfg = recover.RecoverConfig(iterations=5, lr=0.1, jitter=2)
  tx = recover.optimizer(cfg)
  first = bn_stats.bn_layer_order(teacher.model, teacher.variables, (C, *SHAPE))[0]
  step = recover.make_step(teacher.model, cfg, first, tx)
  params = jnp.zeros((3, 1, *SHAPE))
  opt = tx.init(params)
  for it in range(3):
    params, opt, _ = step(teacher.variables, params, opt, base, labels, jnp.int32(it))
  assert step._cache_size() == 1  # same shapes: traced and compiled once
  keys = [recover.step_keys(cfg, 0, it, 3) for it in range(3)]
  for k in range(3):
    # Subset k alone, with the same augmentation draws, through the un-vmapped loss.
    p_k = jnp.zeros((1, *SHAPE))
    o_k = tx.init(p_k)
    for it in range(3):
      draws = recover.draw_subset_augment(cfg, keys[it][k], SHAPE)
      g = jax.grad(
        lambda p, b, y, d: recover.subset_loss(
          teacher.model, teacher.variables, p, b, y, d, cfg, first
        )[0]
      )(p_k, base[k], labels[k], draws)
      updates, o_k = tx.update(g, o_k, p_k)
      p_k = optax.apply_updates(p_k, updates)
    np.testing.assert_allclose(params[k], p_k, rtol=1e-5, atol=1e-6)


def test_sharded_over_8_devices_equals_one_device(teacher):
  assert jax.device_count() == 8, "tests/conftest.py should create 8 CPU devices"
  base, labels = _problem(k=3)  # 3 subsets padded to 8 on the 8-device mesh
  cfg = recover.RecoverConfig(iterations=4, lr=0.1, jitter=2, checkpoint_every=0, log_every=0)
  one = recover.recover_teacher(
    teacher,
    base,
    labels,
    cfg,
    teacher_index=0,
    mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",)),
    log=lambda s: None,
  )
  eight = recover.recover_teacher(
    teacher,
    base,
    labels,
    cfg,
    teacher_index=0,
    mesh=Mesh(np.asarray(jax.devices()), ("data",)),
    log=lambda s: None,
  )
  chex.assert_shape(eight, (3, 1, *SHAPE))
  np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-6)
  assert np.abs(one).sum() > 0


def test_class_specific_parameterisation(teacher):
  k = 2
  cfg = recover.RecoverConfig(
    iterations=6, lr=0.1, parameterisation="class_specific", checkpoint_every=0, log_every=0
  )
  init = recover.init_params(cfg, k, C, SHAPE, teacher_index=1)
  chex.assert_shape(init, (k, C, *SHAPE))
  assert abs(init.std() - 1.0) < 0.1  # noise initialisation
  out = recover.recover_teacher(
    teacher,
    np.zeros((k, C, *SHAPE), np.float32),
    np.tile(np.arange(C), (k, 1)),
    cfg,
    teacher_index=1,
    log=lambda s: None,
  )
  chex.assert_shape(out, (k, C, *SHAPE))
  assert not np.allclose(out, init)
  compensator = recover.init_params(recover.RecoverConfig(), k, C, SHAPE, 0)
  chex.assert_shape(compensator, (k, 1, *SHAPE))
  assert not compensator.any()


@pytest.mark.parametrize("augment_name", ["roll", "rrc_flip_roll"])
def test_step_with_explicit_draws_equals_the_production_step_bit_for_bit(teacher, augment_name):
  """The production call (draws from the key inside the step) and the same step given the
  draws of :func:`recover.step_draws` explicitly (as the reference comparisons do) agree bit
  for bit with integer draws (roll), and to float rounding of the crop window otherwise."""
  base, labels = _problem(k=2)
  cfg = recover.RecoverConfig(iterations=5, lr=0.1, jitter=3, augment=augment_name)
  tx = recover.optimizer(cfg)
  first = bn_stats.bn_layer_order(teacher.model, teacher.variables, (C, *SHAPE))[0]
  step = recover.make_step(teacher.model, cfg, first, tx, teacher_index=2)
  runs = []
  for explicit in (False, True):
    params = jnp.zeros((2, 1, *SHAPE))
    opt = tx.init(params)
    for it in range(3):
      draws = recover.step_draws(cfg, 2, it, 2, SHAPE) if explicit else None
      params, opt, metrics = step(
        teacher.variables, params, opt, base, labels, jnp.int32(it), draws
      )
    runs.append((np.asarray(params), np.asarray(metrics["loss"])))
  assert np.any(np.asarray(recover.step_draws(cfg, 2, 0, 2, SHAPE)["roll"]) != 0)
  if augment_name == "roll":
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
  else:
    # The crop window is float: computed in another program (outside the step) its last bits
    # may differ, which moves the parameters by ~1e-6.
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-5)


def test_sre2l_clamp_keeps_every_step_in_the_valid_range(teacher):
  """clamp='every_step' (SRe2L's recipe) keeps the class-specific images inside the normalised
  image of [0, 1] (here [-2, 2]: mean 0.5, std 0.25) although their noise initialisation is
  not; INFER's compensators cannot be clamped."""
  k = 1
  cfg = recover.RecoverConfig(
    iterations=3,
    lr=0.1,
    parameterisation="class_specific",
    clamp="every_step",
    checkpoint_every=0,
    log_every=0,
  )
  init = recover.init_params(cfg, k, C, SHAPE, teacher_index=0)
  assert np.abs(init).max() > 2.5
  out = recover.recover_teacher(
    teacher,
    np.zeros((k, C, *SHAPE), np.float32),
    np.tile(np.arange(C), (k, 1)),
    cfg,
    teacher_index=0,
    log=lambda s: None,
  )
  assert out.min() >= -2.0 and out.max() <= 2.0
  assert np.isclose(out, 2.0).sum() > 0 and np.isclose(out, -2.0).sum() > 0
  with pytest.raises(InputError, match="never clamped"):
    recover.RecoverConfig(clamp="every_step")
  with pytest.raises(InputError, match="clamp must be one of"):
    recover.RecoverConfig(parameterisation="class_specific", clamp="always")


def test_resume_equals_uninterrupted(tmp_path, teacher):
  base, labels = _problem(k=2)
  cfg = recover.RecoverConfig(iterations=10, lr=0.1, jitter=2, checkpoint_every=5, log_every=0)
  straight = recover.recover_teacher(
    teacher, base, labels, cfg, teacher_index=0, directory=str(tmp_path / "a"), log=lambda s: None
  )
  # A run that stopped after its iteration-5 checkpoint: drop the final one and resume.
  recover.recover_teacher(
    teacher, base, labels, cfg, teacher_index=0, directory=str(tmp_path / "b"), log=lambda s: None
  )
  shutil.rmtree(tmp_path / "b" / "10")
  messages = []
  resumed = recover.recover_teacher(
    teacher, base, labels, cfg, teacher_index=0, directory=str(tmp_path / "b"), log=messages.append
  )
  assert any("resuming at iteration 5" in m for m in messages)
  np.testing.assert_array_equal(resumed, straight)  # bit for bit


def test_resume_on_another_device_count(tmp_path, teacher):
  # A job preempted on 8 devices (3 subsets padded to 8) and relaunched on 2 (padded to 4).
  base, labels = _problem(k=3)
  cfg = recover.RecoverConfig(iterations=6, lr=0.1, jitter=2, checkpoint_every=3, log_every=0)
  quiet = lambda s: None  # noqa: E731
  straight = recover.recover_teacher(teacher, base, labels, cfg, teacher_index=0, log=quiet)
  recover.recover_teacher(
    teacher, base, labels, cfg, teacher_index=0, directory=str(tmp_path), log=quiet
  )
  shutil.rmtree(tmp_path / "6")
  messages = []
  resumed = recover.recover_teacher(
    teacher,
    base,
    labels,
    cfg,
    teacher_index=0,
    directory=str(tmp_path),
    mesh=Mesh(np.asarray(jax.devices()[:2]), ("data",)),
    log=messages.append,
  )
  assert any("resuming at iteration 3" in m for m in messages)
  np.testing.assert_allclose(resumed, straight, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_is_an_error_and_nothing_is_saved(tmp_path, teacher):
  broken = jax.tree.map(lambda a: -jnp.ones_like(a), teacher.variables["batch_stats"])
  bad = checkpoint.Teacher(
    teacher.model, {"params": teacher.variables["params"], "batch_stats": broken}, teacher.metadata
  )
  base, labels = _problem(k=2)
  cfg = recover.RecoverConfig(iterations=3, checkpoint_every=1, log_every=0)
  with pytest.raises(InputError, match="non-finite"):
    recover.recover_teacher(
      bad, base, labels, cfg, teacher_index=0, directory=str(tmp_path / "r"), log=lambda s: None
    )
  saved = (
    [d for d in os.listdir(tmp_path / "r") if d.isdigit()] if (tmp_path / "r").exists() else []
  )
  assert saved == []


def test_static_labels_are_the_mean_of_teacher_logits(teacher):
  other = checkpoint.Teacher(
    teacher.model, jax.tree.map(lambda a: a * 1.1, teacher.variables), teacher.metadata
  )
  x = np.random.default_rng(1).normal(size=(13, *SHAPE)).astype(np.float32)
  labels = relabel.static_labels([teacher, other], x, batch_size=8)  # padded last batch
  expected = (teacher.model.apply(teacher.variables, x) + other.model.apply(other.variables, x)) / 2
  chex.assert_shape(labels, (13, C))
  np.testing.assert_allclose(labels, expected, rtol=1e-4, atol=1e-5)
