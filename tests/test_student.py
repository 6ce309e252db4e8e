"""The student (evaluation) stage: KL, MixUp, on-device augmentation, training end to end."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from infer_jax import models, student
from infer_jax.core import augment as augmentation
from infer_jax.core import losses
from infer_jax.data import pipeline, sources
from infer_jax.runtime import train
from infer_jax.runtime.errors import InputError

# ---------------------------------------------------------------------------------------------
# KL divergence with temperature.


def _numpy_kl(student_logits, teacher_logits, temperature):
  """KL(softmax(y/T) || softmax(z/T)) summed over classes, batch mean, in float64."""

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p = softmax(np.asarray(teacher_logits, np.float64) / temperature)
  q = softmax(np.asarray(student_logits, np.float64) / temperature)
  return np.mean(np.sum(p * np.log(p / q), -1))


def test_kl_matches_a_hand_computed_value():
  z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
  y = np.array([[3.0, 2.0, 1.0], [1.0, 0.0, -1.0]], np.float32)
  # Row 1 at T=1 by hand: p = softmax(3,2,1) = (.6652, .2447, .0900), q = its reverse, so
  # KL = (.6652 - .0900) * 2 = 1.1504; row 2: p = softmax(1,0,-1), q uniform,
  # KL = log 3 - H(p) = 1.0986 - 0.8324 = 0.2662; mean 0.7083.
  np.testing.assert_allclose(losses.kl_divergence_with_temperature(z, y, 1.0), 0.70831, atol=1e-4)
  for temperature in (1.0, 2.0, 30.0):
    expected = _numpy_kl(z, y, temperature)
    eager = losses.kl_divergence_with_temperature(z, y, temperature)
    jitted = jax.jit(losses.kl_divergence_with_temperature, static_argnums=2)(z, y, temperature)
    # At T=30 the KL is ~1e-3, a difference of nearly equal float32 log-probabilities.
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jitted, expected, rtol=1e-5, atol=1e-7)


def test_kl_is_zero_for_equal_logits_and_has_the_expected_invariances():
  key_z, key_y = jax.random.split(jax.random.key(0))
  z = 5.0 * jax.random.normal(key_z, (6, 10))
  y = 5.0 * jax.random.normal(key_y, (6, 10))
  kl = losses.kl_divergence_with_temperature
  np.testing.assert_allclose(kl(z, z, 30.0), 0.0, atol=1e-7)
  assert kl(z, y, 30.0) > 0
  # Softmax ignores a per-row shift of the logits.
  shift = jnp.arange(6.0)[:, None] * 7.0
  np.testing.assert_allclose(kl(z + shift, y - shift, 30.0), kl(z, y, 30.0), rtol=1e-5)
  # T only divides the logits: no T**2 factor.
  np.testing.assert_allclose(kl(z, y, 30.0), kl(z / 30.0, y / 30.0, 1.0), rtol=1e-5)
  # A batch mean: repeating the batch changes nothing.
  np.testing.assert_allclose(kl(jnp.tile(z, (2, 1)), jnp.tile(y, (2, 1)), 4.0), kl(z, y, 4.0))


def test_kl_gradient_is_the_softmax_difference():
  z = jnp.array([[1.0, -2.0, 0.5]])
  y = jnp.array([[0.0, 1.0, 2.0]])
  temperature = 3.0
  grad = jax.grad(losses.kl_divergence_with_temperature)(z, y, temperature)
  expected = (jax.nn.softmax(z / temperature) - jax.nn.softmax(y / temperature)) / temperature
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# MixUp.


# One jitted MixUp with fixed shapes, shared by the tests below (each new shape recompiles the
# Beta sampler, about a second on XLA:CPU).
_mixup = jax.jit(losses.mixup, static_argnums=3)
_MIX_IMAGES = jnp.broadcast_to(jnp.arange(8, dtype=jnp.float32)[:, None, None, None], (8, 2, 2, 3))
_MIX_LOGITS = jax.random.normal(jax.random.key(1), (8, 5)) * 10.0


def test_mixup_mixes_images_and_logits_with_the_same_lam_and_partner():
  b = 8
  # Image i is the constant i, so each mixed image reveals its partner.
  images, logits = _MIX_IMAGES, _MIX_LOGITS
  for seed in range(4):
    key = jax.random.key(seed)
    mixed_images, mixed_logits, lam = _mixup(key, images, logits, 0.8)
    lam = float(lam)
    assert 0.0 <= lam <= 1.0
    assert 1e-3 < lam < 1 - 1e-3, "pick seeds whose lam identifies the partner"
    partner = np.round((np.asarray(mixed_images[:, 0, 0, 0]) - lam * np.arange(b)) / (1 - lam))
    partner = partner.astype(int)
    assert sorted(partner) == list(range(b))  # a permutation of the batch
    np.testing.assert_allclose(mixed_images, lam * images + (1 - lam) * images[partner], atol=1e-5)
    np.testing.assert_allclose(mixed_logits, lam * logits + (1 - lam) * logits[partner], atol=1e-5)
    # Same key, same draw.
    chex.assert_trees_all_equal(_mixup(key, images, logits, 0.8), (mixed_images, mixed_logits, lam))
  # The un-jitted function draws the same.
  eager = losses.mixup(key, images, logits, 0.8)
  chex.assert_trees_all_close(eager, (mixed_images, mixed_logits, lam), atol=1e-6)


def test_mixup_lam_follows_the_beta_distribution_and_alpha_zero_disables_it():
  from scipy import stats

  n = 20_000
  keys = jax.random.split(jax.random.key(0), n)
  lams = np.asarray(jax.jit(jax.vmap(lambda k: losses.mixup(k, _MIX_IMAGES, None, 0.8)[2]))(keys))
  assert lams.min() >= 0.0 and lams.max() <= 1.0
  # Kolmogorov-Smirnov: the largest gap between the empirical CDF and Beta(0.8, 0.8)'s must
  # stay below the 1e-3 critical value sqrt(-ln(1e-3 / 2) / 2) / sqrt(n) ~ 0.0138. U(0, 1)
  # lies 0.033 from Beta(0.8, 0.8) in that distance, so a uniform lam (or Beta(1, 1), or
  # another alpha) is rejected: its gap to Beta(0.8, 0.8) exceeds 0.033 - 0.0138.
  critical = np.sqrt(-np.log(1e-3 / 2) / 2) / np.sqrt(n)
  assert stats.kstest(lams, stats.beta(0.8, 0.8).cdf).statistic < critical
  assert stats.kstest(lams, stats.uniform().cdf).statistic > critical
  assert stats.kstest(lams, stats.beta(0.6, 0.6).cdf).statistic > critical
  out_images, out_targets, lam = losses.mixup(jax.random.key(0), _MIX_IMAGES, None, 0.0)
  assert out_targets is None and float(lam) == 1.0 and out_images is _MIX_IMAGES


# ---------------------------------------------------------------------------------------------
# Augmentation.


def _windows(image, padding, fill):
  """Every crop (and its mirror) of the fill-padded image, as a list of arrays."""
  h, w, c = image.shape
  canvas = np.empty((h + 2 * padding, w + 2 * padding, c), image.dtype)
  canvas[...] = fill
  canvas[padding : padding + h, padding : padding + w] = image
  out = []
  for top in range(2 * padding + 1):
    for left in range(2 * padding + 1):
      window = canvas[top : top + h, left : left + w]
      out += [window, window[:, ::-1]]
  return out


def test_crop_flip_returns_windows_of_the_padded_image():
  image = np.arange(1, 4 * 5 * 2 + 1, dtype=np.float32).reshape(4, 5, 2)
  fill = np.array([-1.0, -2.0], np.float32)  # per-channel pad value (normalised black)
  candidates = _windows(image, 1, fill)
  crop = jax.jit(augmentation.random_crop_flip, static_argnums=2)
  seen = set()
  for seed in range(60):
    out = np.asarray(crop(jax.random.key(seed), jnp.asarray(image), 1, jnp.asarray(fill)))
    matches = [i for i, c in enumerate(candidates) if np.array_equal(out, c)]
    assert matches, f"seed {seed}: not a window of the padded image:\n{out[..., 0]}"
    seen.add(matches[0])
  # 9 offsets x 2 flips = 18 outcomes; 60 draws see most of them.
  assert len(seen) >= 12
  # No padding: only the image or its mirror.
  for seed in range(10):
    out = np.asarray(augmentation.random_crop_flip(jax.random.key(seed), jnp.asarray(image), 0))
    assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])


def test_augment_batch_draws_per_image():
  b = 64
  image = np.arange(1, 6 * 6 * 3 + 1, dtype=np.float32).reshape(6, 6, 3)
  batch = jnp.broadcast_to(image, (b, 6, 6, 3))
  fill = np.array([-1.0, -2.0, -3.0], np.float32)
  augment = jax.jit(augmentation.augment_batch, static_argnums=2, static_argnames="crop_padding")
  # crop_flip: every image is exactly one of the 3 x 3 offsets x 2 flips of the padded image
  # (NumPy windows), drawn per image: 64 draws realise nearly all 18 outcomes.
  windows = _windows(image, 1, fill)
  out = np.asarray(augment(jax.random.key(3), batch, "crop_flip", crop_padding=1, fill=fill))
  realised = []
  for i, o in enumerate(out):
    matches = [j for j, w in enumerate(windows) if np.array_equal(o, w)]
    assert matches, f"image {i} is not a window of the padded image"
    realised.append(matches[0])
  assert len(set(realised)) >= 14, sorted(set(realised))
  # flip: the image or its mirror, each about half the time (Binomial(64, 1/2): 32 +- 4).
  out = np.asarray(augment(jax.random.key(3), batch, "flip"))
  mirrored = [bool(np.array_equal(o, image[:, ::-1])) for o in out]
  assert all(m or np.array_equal(o, image) for m, o in zip(mirrored, out, strict=True))
  assert 16 <= sum(mirrored) <= 48, sum(mirrored)
  # rrc_flip: a window per image -- most of the 64 differ.
  out = np.asarray(augment(jax.random.key(3), batch, "rrc_flip"))
  assert len({o.tobytes() for o in out}) >= b // 2
  np.testing.assert_array_equal(augmentation.augment_batch(jax.random.key(0), batch, "none"), batch)


def test_random_resized_crop_windows():
  image = jnp.arange(8 * 8, dtype=jnp.float32).reshape(8, 8, 1)
  rrc = jax.jit(augmentation.random_resized_crop_flip, static_argnames=("scale", "ratio"))
  # The whole image as the window: the resample is the identity (up to the flip).
  out = rrc(jax.random.key(0), image, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  assert np.allclose(out, image, atol=1e-4) or np.allclose(out, image[:, ::-1], atol=1e-4)
  # Small windows: every output value lies within the image's range (a zoomed-in window,
  # no padding), and an upsampled window varies less than the whole image.
  for seed in range(5):
    out = rrc(jax.random.key(seed), image, scale=(0.1, 0.3))
    assert float(out.min()) >= -1e-4 and float(out.max()) <= 63 + 1e-4
    assert float(out.max() - out.min()) < 63


# ---------------------------------------------------------------------------------------------
# Config.


def test_config_from_a_config_dict_and_validation():
  block = ml_collections.ConfigDict(
    {"arch": "convnet_tiny", "epochs": 3.0, "lr": 1, "augment": "none", "eval_seeds": 3}
  )
  cfg = student.StudentConfig.from_config(block)
  assert cfg.arch == "convnet_tiny" and cfg.epochs == 3 and isinstance(cfg.epochs, int)
  assert cfg.lr == 1.0 and cfg.temperature == 30.0 and cfg.batch_size == 64
  with pytest.raises(InputError, match="epochs"):
    student.StudentConfig.from_config({"epochs": 2.5})
  with pytest.raises(InputError, match="not a registered architecture"):
    student.StudentConfig(arch="resnet9000")
  with pytest.raises(InputError, match="optimizer"):
    student.StudentConfig(optimizer="lamb")
  with pytest.raises(InputError, match="augment"):
    student.StudentConfig(augment="cutmix")


# ---------------------------------------------------------------------------------------------
# End to end on the digits.


@pytest.fixture(scope="module")
def digits():
  """200 normalised digits training images, a decent linear teacher's logits on them, and the
  teacher as a JAX function (ridge regression on the whole training split: ~93% test top-1)."""
  dataset = sources.load_dataset("digits")
  info = dataset.info

  def normalised(source, indices):
    return np.asarray(pipeline.normalize(source.images(indices), info.mean, info.std))

  x_all = normalised(dataset.train, np.arange(len(dataset.train))).reshape(len(dataset.train), -1)
  features = np.concatenate([x_all, np.ones((len(x_all), 1))], axis=1)
  targets = 10.0 * np.eye(10)[dataset.train.labels]
  weights = np.linalg.solve(
    features.T @ features + np.eye(features.shape[1]), features.T @ targets
  ).astype(np.float32)
  indices = np.random.default_rng(0).choice(len(dataset.train), 200, replace=False)
  images = normalised(dataset.train, indices)
  soft = np.concatenate([images.reshape(200, -1), np.ones((200, 1), np.float32)], 1) @ weights

  def linear(w, batch):
    return batch.reshape(batch.shape[0], -1) @ w[:-1] + w[-1]

  return {
    "dataset": dataset,
    "images": images,
    "soft": soft.astype(np.float32),
    "hard": dataset.train.labels[indices].astype(np.int32),
    "teacher": student.Labeller(linear, jnp.asarray(weights)),
  }


def small_config(**overrides):
  base = dict(
    arch="convnet_tiny", epochs=15, batch_size=32, lr=0.01, crop_padding=1, log_every_epochs=5
  )
  return student.StudentConfig(**{**base, **overrides})


def run(digits, cfg, soft=True, hard=True, **kwargs):
  kwargs.setdefault("log", lambda line: None)
  return student.train_student(
    cfg,
    digits["images"],
    digits["soft"] if soft else None,
    digits["hard"] if hard else None,
    digits["dataset"].test,
    digits["dataset"].info,
    **kwargs,
  )


@pytest.fixture(scope="module")
def static_run(digits):
  """One static-soft-label run of the small config, shared by the tests that compare to it."""
  lines = []
  return run(digits, small_config(), log=lines.append), lines


@pytest.mark.slow
def test_static_soft_labels_learn_and_are_reproducible(digits, static_run):
  first, lines = static_run
  assert first["label_mode"] == "static"
  # Measured 0.474 (359 test images, chance 0.1). The bound sits ~3 binomial standard
  # deviations of that estimate (sqrt(0.47 * 0.53 / 359) = 0.026) below it: a regression
  # that costs the student more than ~7 points fails here.
  assert first["final_top1"] > 0.4, first
  assert first["steps"] == 15 * (200 // 32) and first["steps_per_epoch"] == 6
  assert first["best_top1"] is None and first["best_epoch"] is None
  assert [h["epoch"] for h in first["history"]] == [15]
  assert first["params"] > 0 and first["images_per_second"] > 0
  assert any("img/s" in line for line in lines)
  assert any("final-epoch test top-1" in line for line in lines)
  second = run(digits, small_config())
  assert second["final_top1"] == first["final_top1"]
  assert second["final_loss"] == first["final_loss"]  # bitwise: same seed, same steps


def test_train_student_gives_the_schedule_its_own_length(digits, monkeypatch):
  # The step's compilation is shared by runs of every length: the length must come with
  # every call. 200 images in batches of 32: 6 steps per epoch, 2 epochs, 12 steps.
  seen = []
  build = student.make_student_step

  def spy(*args, **kwargs):
    step = build(*args, **kwargs)

    def recorded(state, batch, key, label_variables=None, draws=None, total_steps=None):
      seen.append(int(total_steps))
      return step(state, batch, key, label_variables, draws, total_steps)

    return recorded

  monkeypatch.setattr(student, "make_student_step", spy)
  student._compiled_parts.cache_clear()  # build the step again, through the spy
  try:
    result = run(digits, small_config(epochs=2))
  finally:
    student._compiled_parts.cache_clear()  # no later test may get the spied step
  assert result["steps"] == 12 and seen == [12] * 12


@pytest.mark.slow
def test_hard_labels_learn_with_sgd_and_track_the_best_epoch(digits):
  lines = []
  cfg = small_config(optimizer="sgd", lr=0.05, weight_decay=5e-4, eval_every_epochs=1)
  result = run(digits, cfg, soft=False, log=lines.append)
  assert result["label_mode"] == "hard"
  history = result["history"]
  assert [h["epoch"] for h in history] == list(range(1, 16))
  # Measured: 0.100 (chance) after epoch 1, 0.437 after epoch 15. The bounds sit ~2.5 binomial
  # standard deviations (0.026 on 359 test images) below, and it must have learnt since epoch 1.
  assert result["final_top1"] > 0.37, result
  assert history[-1]["top1"] > history[0]["top1"] + 0.25, history
  best = max(history, key=lambda h: h["top1"])
  assert best["epoch"] != 15, "this recipe's best epoch is not its last: keep it so"
  # The figure to report is the last epoch's, whatever the best one was.
  assert result["final_top1"] == history[-1]["top1"] < best["top1"]
  assert result["best_top1"] == best["top1"] and result["best_epoch"] == best["epoch"]
  summary = lines[-1]
  assert f"final-epoch test top-1 {100 * history[-1]['top1']:.2f}%" in summary
  labelled = f"best epoch {best['epoch']}: {100 * best['top1']:.2f}% (selected on the test set"
  assert labelled in summary


@pytest.mark.slow
def test_dynamic_labels_replace_the_stored_ones(digits, static_run):
  # The label_fn alone is enough (no stored labels), and it changes the training.
  dynamic = run(digits, small_config(), soft=False, hard=False, label_fn=digits["teacher"])
  assert dynamic["label_mode"] == "dynamic"
  assert np.isfinite(dynamic["final_loss"])
  assert dynamic["final_loss"] != static_run[0]["final_loss"]


def test_batch_size_errors_and_small_sets(digits):
  with pytest.raises(InputError, match=r"not divisible by the 8 devices.*e\.g\. 24 or 32"):
    run(digits, small_config(batch_size=30))
  tiny = {**digits, "images": digits["images"][:5], "soft": digits["soft"][:5]}
  tiny["hard"] = digits["hard"][:5]
  with pytest.raises(InputError, match="fewer than the 8 devices"):
    run(tiny, small_config())
  with pytest.raises(InputError, match="soft_labels must be"):
    student.train_student(
      small_config(),
      digits["images"],
      digits["soft"][:, :5],
      None,
      digits["dataset"].test,
      digits["dataset"].info,
    )
  with pytest.raises(InputError, match="needs targets"):
    run(digits, small_config(), soft=False, hard=False)
  with pytest.raises(InputError, match="normalised space"):
    student.train_student(
      small_config(),
      (digits["images"] * 10).astype(np.int32),
      digits["soft"],
      None,
      digits["dataset"].test,
      digits["dataset"].info,
    )


def test_a_set_smaller_than_the_batch_is_one_clamped_batch_per_epoch():
  lines = []
  assert student.effective_batch_size(64, 20, 8, lines.append) == 16
  assert "smaller than batch_size 64" in lines[0] and "4 dropped" in lines[0]
  assert student.effective_batch_size(64, 24, 8, lines.append) == 24
  assert student.effective_batch_size(64, 100, 8, lines.append) == 64
  assert student.effective_batch_size(64, 64, 1, lines.append) == 64
  assert len(lines) == 2


def test_cosine_decay_with_a_run_time_length_is_optaxs_schedule():
  lr = 0.3
  for total in (1, 7, 100):
    counts = np.arange(total + 3, dtype=np.int32)
    # Inside compiled code, as in a step: optax's schedule of a fixed length, and ours with the
    # length fixed or traced (an argument of the compiled function).
    want = jax.jit(optax.cosine_decay_schedule(lr, total))(counts)
    fixed = jax.jit(train.cosine_decay(lr, total))(counts)
    traced = jax.jit(lambda c, t: train.cosine_decay(lr, t)(c))(counts, np.int32(total))
    np.testing.assert_array_equal(np.asarray(fixed), np.asarray(want))
    # XLA simplifies arithmetic with a constant length differently: equal to float32 rounding.
    np.testing.assert_allclose(np.asarray(traced), np.asarray(want), rtol=0, atol=1e-7)
  # By hand: lr at 0, lr / 2 half-way, 0 from the end on; a length of 0 counts as 1.
  by_hand = train.cosine_decay(lr, 10)(np.int32([0, 5, 10, 12]))
  np.testing.assert_allclose(by_hand, [lr, lr / 2, 0, 0], atol=1e-7)
  zero = train.cosine_decay(lr, np.int32(0))(np.int32([0, 1]))
  np.testing.assert_allclose(zero, [lr, 0], atol=1e-7)


def test_the_step_compiles_once_and_is_a_function_of_seed_step_and_length(digits):
  info = digits["dataset"].info
  # No augmentation or MixUp: this test is about the step's bookkeeping, and they compile slowly.
  cfg = small_config(batch_size=16, augment="none", mixup_alpha=0.0)
  mesh = train.data_mesh()
  model = models.create_model(cfg.arch, 10)
  batch = jax.device_put(
    {
      "image": digits["images"][:16],
      "label": np.arange(16, dtype=np.int32) % 10,
      "soft_label": digits["soft"][:16],
    },
    train.batch_sharding(mesh),
  )
  step_kwargs = dict(mean=info.mean, std=info.std, num_classes=10, label_mode="static")
  # As train_student builds it: the optimiser as a function of the schedule's length.
  step = student.make_student_step(
    model, functools.partial(student.make_optimizer, cfg), cfg, **step_kwargs
  )

  def losses(step, total_steps=None):
    tx = student.make_optimizer(cfg, total_steps=1)  # its state does not depend on the length
    state = train.create_train_state(model, tx, jax.random.key(0, impl="rbg"), (8, 8, 3), mesh)
    extra = () if total_steps is None else (None, None, np.int32(total_steps))
    out = []
    for _ in range(5):
      state, metrics = step(state, batch, student.data_key(cfg.seed), *extra)
      jax.block_until_ready(state)
      out.append(float(metrics["loss"]))
    assert int(state.step) == 5
    return out

  ten = losses(step, 10)
  assert losses(step, 10) == ten
  twenty = losses(step, 20)
  # Runs of two lengths share one compilation ...
  assert step._cache_size() == 1
  # ... and the length reaches the schedule: the first step has the same rate (lr at count 0),
  # the later ones a slower decay.
  assert twenty[:2] == ten[:2] and twenty[2:] != ten[2:]
  # The same as a step compiled with the length fixed in its optimiser (up to the rounding of
  # the learning rate, see the test above).
  fixed = student.make_student_step(model, student.make_optimizer(cfg, 10), cfg, **step_kwargs)
  np.testing.assert_allclose(losses(fixed), ten, rtol=1e-6)
  with pytest.raises(ValueError, match="Pass total_steps to the step exactly when"):
    losses(step)


@pytest.mark.parametrize("augment_name", ["crop_flip", "rrc_flip"])
def test_step_with_explicit_draws_equals_the_production_step(digits, augment_name):
  """The production call (crop, flip, lam and permutation drawn from (key, step) inside the
  step) and the same step given :func:`student.draw_step`'s draws explicitly, as the
  reference comparisons do, agree over 3 steps (to the float rounding of lam).

  SGD, not AdamW: Adam's first updates are about lr * sign(g), so a last-bit difference of
  lam flips the update of a parameter whose gradient is near zero; an SGD update is
  proportional to the gradient and keeps that difference at rounding size."""
  info = digits["dataset"].info
  cfg = small_config(batch_size=16, augment=augment_name, mixup_alpha=0.8, optimizer="sgd")
  model = models.create_model(cfg.arch, 10)
  tx = student.make_optimizer(cfg, total_steps=10)
  batch = {
    "image": digits["images"][:16],
    "label": np.arange(16, dtype=np.int32) % 10,
    "soft_label": digits["soft"][:16],
  }
  step = student.make_student_step(
    model, tx, cfg, mean=info.mean, std=info.std, num_classes=10, label_mode="static"
  )
  key = student.data_key(3)
  runs = []
  for explicit in (False, True):
    state = train.create_train_state(
      model, tx, jax.random.key(0, impl="rbg"), (8, 8, 3), train.data_mesh()
    )
    out = []
    for t in range(3):
      draws = student.draw_step(cfg, key, t, batch["image"].shape) if explicit else None
      state, metrics = step(state, batch, key, None, draws)
      out.append(np.asarray(metrics["loss"]))
    runs.append((out, [np.asarray(a) for a in jax.tree.leaves(state.params)]))
  draws = student.draw_step(cfg, key, 0, batch["image"].shape)
  assert 0 < float(draws["mixup"]["lam"]) < 1 and np.asarray(draws["augment"]["flip"]).any()
  for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1], strict=True):
    # lam is a float drawn in another program (outside the step): its last bits may differ.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_config_is_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError):
    student.StudentConfig().epochs = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# The wired step with MixUp on: its loss against a NumPy computation.


class _Probe(nn.Module):
  """A linear student that hands every batch it sees to ``record`` (a host callback).

  It keeps one (unused) BatchNorm-collection counter because the student step threads
  ``batch_stats`` through every update.
  """

  num_classes: int
  record: object

  @nn.compact
  def __call__(self, x, train=False):
    self.variable("batch_stats", "calls", lambda: jnp.zeros((), jnp.float32))
    jax.debug.callback(self.record, x)
    return nn.Dense(self.num_classes, name="fc")(x.reshape((x.shape[0], -1)))


def _mixup_from_one_hot_images(mixed):
  """``(lam, perm)`` of a MixUp of one-hot images (image i is 1 at pixel i, else 0).

  ``mixed[j] = lam * onehot(j) + (1 - lam) * onehot(perm[j])``: pixel j holds lam (1 where
  perm[j] == j) and pixel perm[j] holds 1 - lam.
  """
  flat = np.asarray(mixed, np.float64)[..., 0].reshape(len(mixed), -1)
  perm = np.arange(len(flat))
  lam = None
  for j, row in enumerate(flat):
    others = [p for p in np.flatnonzero(row > 1e-7) if p != j]
    if others:
      (perm[j],) = others
      lam = row[j]
  assert lam is not None, "this draw left every image unmixed; pick another key"
  return lam, perm


@pytest.mark.parametrize("label_mode", ["static", "hard", "dynamic"])
def test_the_wired_step_mixes_images_and_targets_with_one_lam(label_mode):
  """The step's loss (augmentation off, MixUp on) equals the loss computed in NumPy from the
  mixed batch the student saw: targets ``lam * y + (1 - lam) * y[perm]`` for static and hard
  labels, the labeller's output *on the mixed images* for dynamic labels."""
  b, classes, shape, temperature = 8, 5, (4, 4, 3), 2.0
  seen, labelled = [], []
  model = _Probe(classes, lambda x: seen.append(np.asarray(x)))
  images = np.zeros((b, *shape), np.float32)
  images.reshape(b, -1, 3)[np.arange(b), np.arange(b)] = 1.0  # image i: one-hot at pixel i
  rng = np.random.default_rng(0)
  soft = rng.normal(0, 3, (b, classes)).astype(np.float32)
  hard = rng.integers(0, classes, b).astype(np.int32)
  label_w = rng.normal(0, 2, (int(np.prod(shape)), classes)).astype(np.float32)

  def teacher(w, x):
    jax.debug.callback(lambda v: labelled.append(np.asarray(v)), x)
    return x.reshape(x.shape[0], -1) @ w

  labeller = student.Labeller(teacher, jnp.asarray(label_w)) if label_mode == "dynamic" else None
  cfg = student.StudentConfig(
    arch="convnet_tiny", augment="none", mixup_alpha=0.8, temperature=temperature, lr=0.1
  )
  tx = student.make_optimizer(cfg, total_steps=1)
  step = student.make_student_step(
    model,
    tx,
    cfg,
    mean=(0.5,) * 3,
    std=(0.25,) * 3,
    num_classes=classes,
    label_mode=label_mode,
    label_fn=labeller,
  )
  mesh = train.data_mesh(jax.devices()[:1])  # one device: the callbacks see the whole batch
  state = train.create_train_state(model, tx, jax.random.key(0, impl="rbg"), shape, mesh)
  w = np.asarray(state.params["fc"]["kernel"], np.float64)
  bias = np.asarray(state.params["fc"]["bias"], np.float64)
  batch = {"image": images, "label": hard}
  if label_mode == "static":
    batch["soft_label"] = soft
  seen.clear()  # the initialisation ran the model once
  _, metrics = step(state, batch, student.data_key(6), labeller.variables if labeller else None)
  loss = float(metrics["loss"])
  jax.effects_barrier()
  (mixed,) = seen
  lam, perm = _mixup_from_one_hot_images(mixed)
  # A lam far from 1/2 (so lam and 1 - lam differ) and from 0 and 1 (so both images count).
  assert 0.05 < lam < 0.4, lam
  # The student saw lam * x + (1 - lam) * x[perm].
  np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[perm], atol=1e-6)
  logits = mixed.reshape(b, -1).astype(np.float64) @ w + bias
  if label_mode == "hard":
    one_hot = np.eye(classes)[hard]
    target = lam * one_hot + (1 - lam) * one_hot[perm]
    log_q = logits - logits.max(1, keepdims=True)
    log_q = log_q - np.log(np.exp(log_q).sum(1, keepdims=True))
    expected = -(target * log_q).sum(1).mean()
  else:
    if label_mode == "static":
      target = lam * soft + (1 - lam) * soft[perm]
    else:
      (to_label,) = labelled
      np.testing.assert_array_equal(to_label, mixed)  # labels of what the student sees
      target = mixed.reshape(b, -1).astype(np.float64) @ label_w
    expected = _numpy_kl(logits, target, temperature)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-7)
