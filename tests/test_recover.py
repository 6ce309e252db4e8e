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

from infer_jax import recover, relabel
from infer_jax.core import augment, bn_stats, subsets
from infer_jax.runtime import checkpoint
from infer_jax.runtime.errors import InputError
from tests.conftest import live_toy_teacher

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
  return live_toy_teacher(C, SHAPE)


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
    iterations=3,
    lr=0.1,
    parameterisation="class_specific",
    augment="none",
    checkpoint_every=0,
    log_every=0,
  )
  init = recover.init_params(cfg, k, C, SHAPE, teacher_index=1)
  chex.assert_shape(init, (k, C, *SHAPE))
  assert abs(init.std() - 1.0) < 0.1  # noise initialisation
  np.testing.assert_array_equal(
    init, np.random.default_rng([0, 1]).standard_normal((k, C, *SHAPE)).astype(np.float32)
  )  # seeded by (seed, teacher index)
  base, labels = np.zeros((k, C, *SHAPE), np.float32), np.tile(np.arange(C), (k, 1))
  out = recover.recover_teacher(teacher, base, labels, cfg, teacher_index=1, log=lambda s: None)
  chex.assert_shape(out, (k, C, *SHAPE))
  # One free image per class, optimised from the noise like a compensator from zero.
  expected = _hand_recover(teacher, base, labels, lr=0.1, iterations=3, init=init)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
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
  # Freshly initialised teachers: the fixture's random BN statistics silence every ReLU of
  # resnet_tiny, so its logits are all 0 and a sum would pass for a mean.
  model = teacher.model
  one, other = (
    checkpoint.Teacher(
      model,
      model.init(jax.random.key(seed, impl="rbg"), jnp.zeros((1, *SHAPE)), train=False),
      teacher.metadata,
    )
    for seed in (1, 2)
  )
  x = np.random.default_rng(1).normal(size=(13, *SHAPE)).astype(np.float32)
  labels = relabel.static_labels([one, other], x, batch_size=8)  # padded last batch
  a = np.asarray(model.apply(one.variables, x, train=False))
  b = np.asarray(model.apply(other.variables, x, train=False))
  assert np.abs(a).min() > 1e-3 and np.abs(b).min() > 1e-3 and np.abs(a - b).min() > 1e-3
  chex.assert_shape(labels, (13, C))
  np.testing.assert_allclose(labels, (a + b) / 2, rtol=1e-4, atol=1e-5)


def _hand_recover(teacher, base, labels, lr, iterations, shifts=None, init=None):
  """Recover written out from ALGORITHM.md with the tested building blocks: per subset,
  Adam(b1=0.5, b2=0.9) with lr cosine-decayed to 0 on ``teacher_loss(roll(x + u))``, the
  first BatchNorm layer (resnet_tiny's stem 'bn1', named by hand) weighted 10, no clipping.
  ``shifts[it][k]`` is the (dy, dx) roll of subset k at iteration it (None: no roll);
  ``init[k]`` the initial parameters of subset k (None: one zero compensator)."""
  tx = optax.adam(optax.cosine_decay_schedule(lr, iterations), b1=0.5, b2=0.9, eps=1e-8)

  @jax.jit
  def grad(u, x, y, shift):
    def loss(u):
      z = jnp.roll(x + u, shift, axis=(1, 2))
      return bn_stats.teacher_loss(
        teacher.model,
        teacher.variables,
        z,
        y,
        r_bn=1.0,
        first_layer=("bn1",),
        first_multiplier=10.0,
      )[0]

    return jax.grad(loss)(u)

  out = []
  for k in range(len(base)):
    u = jnp.zeros((1, *SHAPE)) if init is None else jnp.asarray(init[k])
    opt = tx.init(u)
    for it in range(iterations):
      shift = jnp.asarray((0, 0) if shifts is None else shifts[it][k], jnp.int32)
      updates, opt = tx.update(grad(u, base[k], labels[k], shift), opt, u)
      u = optax.apply_updates(u, updates)
    out.append(np.asarray(u))
  return np.stack(out)


def test_recover_teacher_equals_recover_written_out_by_hand(teacher):
  """The wired loop (first-layer choice, loss of x + u, optimiser, schedule) against a hand
  loop. The learning rate is large enough that u leaves every pixel range: nothing may clip
  the compensators during optimisation (only materialised instances are clipped)."""
  base, labels = _problem(k=2)
  cfg = recover.RecoverConfig(iterations=3, lr=3.0, augment="none", checkpoint_every=0, log_every=0)
  got = recover.recover_teacher(teacher, base, labels, cfg, teacher_index=0, log=lambda s: None)
  expected = _hand_recover(teacher, base, labels, lr=3.0, iterations=3)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # Normalised pixels span 1 / std = 4 here: |u| > 4 is outside any clip bound.
  assert np.abs(got).max() > 4.0


def test_the_roll_moves_the_whole_instance_x_plus_u(teacher):
  """subset_loss with the roll equals the loss of ``np.roll(x + u)`` for one of the
  (jitter + 1)**2 shifts -- never of ``x + roll(u)`` -- and several shifts are realised."""
  base, labels = _problem(k=1)
  x = base[0]
  u = np.random.default_rng(7).normal(0, 0.5, (1, *SHAPE)).astype(np.float32)
  cfg = recover.RecoverConfig(augment="roll", jitter=1)

  @jax.jit
  def loss_of(z):
    return bn_stats.teacher_loss(
      teacher.model, teacher.variables, z, labels[0], r_bn=1.0, first_layer=("bn1",)
    )[0]

  wired = jax.jit(
    lambda key: recover.subset_loss(
      teacher.model,
      teacher.variables,
      u,
      x,
      labels[0],
      recover.draw_subset_augment(cfg, key, x.shape[1:]),
      cfg,
      ("bn1",),
    )[0]
  )
  shifts = [(dy, dx) for dy in range(2) for dx in range(2)]
  whole = {s: float(loss_of(np.roll(x + u, s, axis=(1, 2)))) for s in shifts}
  u_only = {s: float(loss_of(x + np.roll(u, s, axis=(1, 2)))) for s in shifts if s != (0, 0)}
  realised = set()
  for seed in range(8):
    got = float(wired(jax.random.key(seed)))
    matches = [s for s, v in whole.items() if abs(v - got) <= 1e-5 * abs(v)]
    assert matches, f"key {seed}: loss {got} is not that of any roll of x + u: {whole}"
    assert all(abs(v - got) > 1e-5 * abs(v) for v in u_only.values())
    realised.add(matches[0])
  assert len(realised) >= 3, realised


def test_the_teacher_of_these_tests_has_live_logits(teacher):
  # Otherwise the cross-entropy term of every recover test above has no gradient.
  x = _problem(k=1)[0][0]
  logits = np.asarray(teacher.model.apply(teacher.variables, x, train=False))
  assert np.abs(logits).min() > 1e-3 and logits.std() > 0.01, logits
