"""The student's losses: KL divergence with a temperature, and MixUp of images and targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kl_divergence_with_temperature(
  student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> jax.Array:
  """``KL(softmax(teacher/T) || softmax(student/T))``, summed over classes, batch mean.

  PyTorch ``KLDivLoss(reduction='batchmean')(log_softmax(z/T), softmax(y/T))``; no ``T**2``
  factor (the INFER recipe does not use one).

  Args:
    student_logits: ``[B, C]`` logits ``z`` of the network being trained.
    teacher_logits: ``[B, C]`` target logits ``y`` (teacher logits, possibly MixUp-mixed).
    temperature: ``T > 0``.

  Returns:
    scalar (float32, or float64 for float64 logits), >= 0, zero when the two distributions
    are equal.
  """
  # At least float32 (bfloat16 logits are upcast); float64 inputs stay float64.
  dtype = jnp.promote_types(
    jnp.promote_types(jnp.result_type(student_logits), jnp.result_type(teacher_logits)), jnp.float32
  )
  student_logits = jnp.asarray(student_logits, dtype)
  teacher_logits = jnp.asarray(teacher_logits, dtype)
  log_p_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  log_p_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  # log_softmax is finite for finite logits, so p * (log p - log q) is 0 (not NaN) where p
  # underflows to 0.
  kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
  return jnp.mean(kl)


def draw_mixup(key: jax.Array, batch_size: int, alpha: float) -> dict:
  """The draws of :func:`mixup`: ``{'lam': float32 [], 'perm': int32 [B]}``; ``{}`` when
  ``alpha == 0`` (MixUp off)."""
  if alpha == 0:
    return {}
  lam_key, perm_key = jax.random.split(key)
  lam = jax.random.beta(lam_key, alpha, alpha, dtype=jnp.float32)
  perm = jax.random.permutation(perm_key, batch_size)
  return {"lam": lam, "perm": perm}


def apply_mixup(
  draws: dict, images: jax.Array, targets: jax.Array | None
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
  """:func:`mixup` with given draws (:func:`draw_mixup`); empty draws leave the inputs unchanged.

  Returns:
    ``(mixed_images [B, H, W, C], mixed_targets [B, K] or None, lam [])``.
  """
  if not draws:
    return images, targets, jnp.ones((), jnp.float32)
  lam, perm = draws["lam"], draws["perm"]

  def mix(x):
    return (lam * x + (1.0 - lam) * x[perm]).astype(x.dtype)

  return mix(images), None if targets is None else mix(targets), lam


def mixup(
  key: jax.Array, images: jax.Array, targets: jax.Array | None, alpha: float
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
  """MixUp with one ``lam ~ Beta(alpha, alpha)`` per batch and a permutation as partners.

  ``mixed = lam * x + (1 - lam) * x[perm]`` for the images and, with the same ``lam`` and
  ``perm``, for the targets (teacher logits or one-hot vectors: both mix linearly).

  Args:
    key: PRNG key; the same key gives the same ``lam`` and partners.
    images: ``[B, H, W, C]`` float images.
    targets: ``[B, K]`` targets, or None (dynamic labels are computed after mixing).
    alpha: Beta parameter; ``alpha == 0`` disables MixUp (``lam = 1``, inputs unchanged).

  Returns:
    ``(mixed_images [B, H, W, C], mixed_targets [B, K] or None, lam)``, ``lam`` a float32
    scalar in [0, 1].
  """
  return apply_mixup(draw_mixup(key, images.shape[0], alpha), images, targets)
