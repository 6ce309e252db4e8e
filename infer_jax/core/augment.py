"""On-device augmentation: pure functions of a PRNG key and images, jitted inside the steps.

Student augmentations draw their parameters per image (``augment_batch`` vmaps over per-image
keys); recover augmentations draw once per subset (the C images of a subset move together) and
are differentiable, so gradients flow back to the synthetic parameters.

* ``crop_flip``: pad by ``padding`` pixels per side with a fill value, take a random window of
  the original size, flip left-right with p=0.5 (PyTorch ``RandomCrop`` + ``RandomHorizontalFlip``).
* ``rrc_flip``: torchvision ``RandomResizedCrop`` (scale ``RRC_SCALE``, ratio ``RRC_RATIO``,
  ``RRC_TRIES`` candidate windows, then a centre-crop fallback), resized back bilinearly with
  antialiasing, then a flip.
* ``flip`` / ``none``.
* Recover (``SUBSET_AUGMENTATIONS``): ``roll`` (a cyclic shift of up to ``jitter`` pixels) and
  ``rrc_flip_roll`` (a differentiable resized crop and flip of the whole subset, then the roll).

The host-side (grain) pipeline of ``infer_jax.data.pipeline`` implements the same student
augmentations in NumPy and takes its names and constants from here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infer_jax.runtime.errors import InputError

# Student (and teacher-training) augmentations, by name.
AUGMENTATIONS = ("crop_flip", "rrc_flip", "flip", "none")
# Recover's per-subset augmentations.
SUBSET_AUGMENTATIONS = ("roll", "rrc_flip_roll", "none")

# torchvision RandomResizedCrop defaults and its number of candidate windows before falling back
# to a centre crop.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
RRC_TRIES = 10


def draw_crop_flip(key: jax.Array, padding: int) -> dict:
  """The draws of :func:`random_crop_flip` for one image.

  Returns:
    ``{'top': int32 [], 'left': int32 [], 'flip': bool []}`` (no 'top'/'left' when
    ``padding == 0``).
  """
  crop_key, flip_key = jax.random.split(key)
  draws = {"flip": draw_flip(flip_key)}
  if padding > 0:
    draws["top"], draws["left"] = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
  return draws


def apply_crop_flip(
  draws: dict, image: jax.Array, padding: int, fill: jax.Array | Sequence[float] = 0.0
) -> jax.Array:
  """:func:`random_crop_flip` with given draws (:func:`draw_crop_flip`); ``[H, W, C]``."""
  h, w, c = image.shape
  if padding > 0:
    # Build the padded canvas from the fill and write the image into it (rather than padding
    # image - fill with zeros and adding fill back), so that interior pixels stay bit-exact.
    canvas = jnp.broadcast_to(jnp.asarray(fill, image.dtype), (h + 2 * padding, w + 2 * padding, c))
    canvas = jax.lax.dynamic_update_slice(canvas, image, (padding, padding, 0))
    # np.int32: a Python 0 would be int64 under x64, and the indices must share one dtype.
    image = jax.lax.dynamic_slice(canvas, (draws["top"], draws["left"], np.int32(0)), (h, w, c))
  return apply_flip(draws["flip"], image)


def random_crop_flip(
  key: jax.Array, image: jax.Array, padding: int, fill: jax.Array | Sequence[float] = 0.0
) -> jax.Array:
  """Pads one image by ``padding`` pixels per side with ``fill``, crops a random window of the
  original size, and mirrors it left-right with probability 0.5 (PyTorch
  ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip``).

  Args:
    key: PRNG key.
    image: ``[H, W, C]``.
    padding: pixels per side; the window's corner is uniform in ``[0, 2 * padding]**2``.
    fill: pad value, scalar or ``[C]`` (per channel, e.g. the normalised value of black).

  Returns:
    ``[H, W, C]``, same dtype.
  """
  return apply_crop_flip(draw_crop_flip(key, padding), image, padding, fill)


def draw_resized_crop_flip(
  key: jax.Array,
  image_shape: Sequence[int],
  scale: tuple[float, float] = RRC_SCALE,
  ratio: tuple[float, float] = RRC_RATIO,
) -> dict:
  """The draws of :func:`random_resized_crop_flip` for one image of shape ``[H, W, C]``.

  Returns:
    ``{'top', 'left', 'height', 'width'}`` int32 scalars (the window, as torchvision's
    ``RandomResizedCrop.get_params``) and ``'flip'`` bool.
  """
  area_key, ratio_key, top_key, left_key, flip_key = jax.random.split(key, 5)
  h, w = image_shape[0], image_shape[1]
  target_area = h * w * jax.random.uniform(area_key, (RRC_TRIES,), minval=scale[0], maxval=scale[1])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(jax.random.uniform(ratio_key, (RRC_TRIES,), minval=log_lo, maxval=log_hi))
  # jnp.round rounds half to even like Python's round(), which torchvision uses.
  cand_w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
  cand_h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
  fits = (cand_w > 0) & (cand_w <= w) & (cand_h > 0) & (cand_h <= h)
  first = jnp.argmax(fits)
  # Fallback (static: the image size is known at trace time).
  lo, hi = min(ratio), max(ratio)
  if w / h < lo:
    fallback_w, fallback_h = w, round(w / lo)
  elif w / h > hi:
    fallback_w, fallback_h = round(h * hi), h
  else:
    fallback_w, fallback_h = w, h
  found = fits[first]
  crop_w = jnp.where(found, cand_w[first], fallback_w)
  crop_h = jnp.where(found, cand_h[first], fallback_h)
  top = jnp.where(found, jax.random.randint(top_key, (), 0, h - crop_h + 1), (h - crop_h) // 2)
  left = jnp.where(found, jax.random.randint(left_key, (), 0, w - crop_w + 1), (w - crop_w) // 2)
  return {"top": top, "left": left, "height": crop_h, "width": crop_w, "flip": draw_flip(flip_key)}


def apply_resized_crop_flip(draws: dict, image: jax.Array) -> jax.Array:
  """:func:`random_resized_crop_flip` with given draws; ``[H, W, C]`` float in and out."""
  h, w, _ = image.shape
  # Output pixel x samples input x / scale - translation / scale: maps the window onto [0, W).
  scale_hw = jnp.stack([h / draws["height"], w / draws["width"]]).astype(jnp.float32)
  translation = -jnp.stack([draws["top"], draws["left"]]).astype(jnp.float32) * scale_hw
  out = jax.image.scale_and_translate(
    image, image.shape, (0, 1), scale_hw, translation, method="linear", antialias=True
  )
  return apply_flip(draws["flip"], out.astype(image.dtype))


def random_resized_crop_flip(
  key: jax.Array,
  image: jax.Array,
  scale: tuple[float, float] = RRC_SCALE,
  ratio: tuple[float, float] = RRC_RATIO,
) -> jax.Array:
  """torchvision ``RandomResizedCrop`` back to the image's size, then a flip with p=0.5.

  Up to ten windows with area fraction ~ U(scale) and aspect ratio (w/h) ~ logU(ratio) are
  drawn; the first that fits is used, at a uniform integer position; if none fits, the largest
  centred window with the aspect ratio clamped into ``ratio``. The window is resampled
  bilinearly with antialiasing (``jax.image.scale_and_translate``).

  Args:
    key: PRNG key.
    image: ``[H, W, C]`` float.
    scale: (min, max) fraction of the image area.
    ratio: (min, max) width / height.

  Returns:
    ``[H, W, C]``, same dtype.
  """
  return apply_resized_crop_flip(draw_resized_crop_flip(key, image.shape, scale, ratio), image)


def draw_flip(key: jax.Array) -> jax.Array:
  """bool ``[]``: whether to mirror (p=0.5)."""
  return jax.random.bernoulli(key)


def apply_flip(flip: jax.Array, image: jax.Array) -> jax.Array:
  """Mirrors ``image [H, W, C]`` left-right where ``flip`` (bool ``[]``); returns ``[H, W, C]``."""
  return jnp.where(flip, image[:, ::-1], image)


def random_flip(key: jax.Array, image: jax.Array) -> jax.Array:
  """Mirrors ``image [H, W, C]`` left-right with probability 0.5; returns ``[H, W, C]``."""
  return apply_flip(draw_flip(key), image)


def _check_augment(augment: str) -> None:
  if augment not in AUGMENTATIONS:
    raise InputError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}.")


def draw_batch(
  key: jax.Array, image_shape: Sequence[int], augment: str, *, crop_padding: int = 4
) -> dict:
  """Per-image draws of :func:`augment_batch` for a batch of shape ``[B, H, W, C]``.

  Returns:
    a dict of ``[B]`` arrays: 'crop_flip' -> ``{'top', 'left', 'flip'}`` (``{'flip'}`` when
    ``crop_padding == 0``), 'rrc_flip' -> ``{'top', 'left', 'height', 'width', 'flip'}``,
    'flip' -> ``{'flip'}``, 'none' -> ``{}``.
  """
  _check_augment(augment)
  if augment == "none":
    return {}
  keys = jax.random.split(key, image_shape[0])
  if augment == "crop_flip":
    return jax.vmap(lambda k: draw_crop_flip(k, crop_padding))(keys)
  if augment == "rrc_flip":
    return jax.vmap(lambda k: draw_resized_crop_flip(k, image_shape[1:]))(keys)
  return {"flip": jax.vmap(draw_flip)(keys)}


def apply_batch(
  draws: dict,
  images: jax.Array,
  augment: str,
  *,
  crop_padding: int = 4,
  fill: jax.Array | Sequence[float] = 0.0,
) -> jax.Array:
  """:func:`augment_batch` with given per-image draws (:func:`draw_batch`); ``[B, H, W, C]``."""
  _check_augment(augment)
  if augment == "none":
    return images
  if augment == "crop_flip":
    one = functools.partial(apply_crop_flip, padding=crop_padding, fill=fill)
  elif augment == "rrc_flip":
    one = apply_resized_crop_flip
  else:
    return jax.vmap(apply_flip)(draws["flip"], images)
  return jax.vmap(one)(draws, images)


def augment_batch(
  key: jax.Array,
  images: jax.Array,
  augment: str,
  *,
  crop_padding: int = 4,
  fill: jax.Array | Sequence[float] = 0.0,
) -> jax.Array:
  """Augments every image of a batch with its own parameters (``vmap`` over per-image keys).

  Args:
    key: PRNG key of the batch.
    images: ``[B, H, W, C]`` float images (normalised).
    augment: 'crop_flip', 'rrc_flip', 'flip' or 'none' (see the module docstring).
    crop_padding: padding per side for 'crop_flip'.
    fill: pad value for 'crop_flip', scalar or ``[C]``.

  Returns:
    ``[B, H, W, C]``.
  """
  draws = draw_batch(key, images.shape, augment, crop_padding=crop_padding)
  return apply_batch(draws, images, augment, crop_padding=crop_padding, fill=fill)


def draw_roll(key: jax.Array, jitter: int) -> jax.Array:
  """int32 ``[2]``: the shift ``(dy, dx)`` of :func:`roll`, each uniform in {0, ..., jitter}."""
  return jax.random.randint(key, (2,), 0, jitter + 1)


def apply_roll(offsets: jax.Array, x: jax.Array) -> jax.Array:
  """Cyclic shift of ``x [C, H, W, 3]`` by ``offsets = (dy, dx)`` along H and W
  (``jnp.roll``: pixel ``(i, j)`` moves to ``((i + dy) % H, (j + dx) % W)``)."""
  dy, dx = offsets
  return jnp.roll(x, (dy, dx), axis=(1, 2))


def roll(key: jax.Array, x: jax.Array, jitter: int) -> jax.Array:
  """Cyclic shift of a whole subset by (dy, dx), each uniform in {0, ..., jitter}.

  Args:
    key: PRNG key (one draw for the subset).
    x: ``[C, H, W, 3]``.
    jitter: maximal shift.

  Returns:
    ``[C, H, W, 3]``, rolled along H and W.
  """
  return apply_roll(draw_roll(key, jitter), x)


def draw_subset_crop_flip(
  key: jax.Array,
  image_shape: Sequence[int],
  scale: tuple[float, float] = RRC_SCALE,
  ratio: tuple[float, float] = RRC_RATIO,
) -> dict:
  """The draws of :func:`subset_resized_crop_flip` for images ``[H, W, 3]``.

  Returns:
    ``{'top', 'left', 'height', 'width'}`` float32 scalars (a continuous window clamped to the
    image) and ``'flip'`` bool.
  """
  h, w = image_shape[0], image_shape[1]
  k_area, k_ratio, k_top, k_left, k_flip = jax.random.split(key, 5)
  area = h * w * jax.random.uniform(k_area, (), minval=scale[0], maxval=scale[1])
  log_r = jax.random.uniform(k_ratio, (), minval=np.log(ratio[0]), maxval=np.log(ratio[1]))
  aspect = jnp.exp(log_r)
  crop_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
  crop_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
  top = jax.random.uniform(k_top, ()) * (h - crop_h)
  left = jax.random.uniform(k_left, ()) * (w - crop_w)
  flip = jax.random.bernoulli(k_flip)
  return {"top": top, "left": left, "height": crop_h, "width": crop_w, "flip": flip}


def apply_subset_crop_flip(draws: dict, x: jax.Array) -> jax.Array:
  """:func:`subset_resized_crop_flip` with given draws; ``[C, H, W, 3]`` in and out."""
  _, h, w, _ = x.shape
  sy, sx = h / draws["height"], w / draws["width"]
  out = jax.image.scale_and_translate(
    x,
    x.shape,
    spatial_dims=(1, 2),
    scale=jnp.stack([sy, sx]),
    translation=jnp.stack([-draws["top"] * sy, -draws["left"] * sx]),
    method="linear",
    antialias=False,
  )
  return jnp.where(draws["flip"], out[:, :, ::-1], out)


def subset_resized_crop_flip(
  key: jax.Array,
  x: jax.Array,
  scale: tuple[float, float] = RRC_SCALE,
  ratio: tuple[float, float] = RRC_RATIO,
) -> jax.Array:
  """Differentiable random resized crop + horizontal flip, one draw for the subset.

  The crop (area fraction in ``scale``, log-uniform aspect ratio in ``ratio``, clamped to
  the image) is resized back to ``H x W`` bilinearly with ``jax.image.scale_and_translate``,
  so gradients flow to the input.

  Args:
    key: PRNG key.
    x: ``[C, H, W, 3]``.
    scale: area fraction range.
    ratio: aspect-ratio range (w / h).

  Returns:
    ``[C, H, W, 3]``.
  """
  return apply_subset_crop_flip(draw_subset_crop_flip(key, x.shape[1:], scale, ratio), x)


def draw_subset(
  key: jax.Array,
  image_shape: Sequence[int],
  augment: str,
  jitter: int,
  rrc_scale: tuple[float, float] = RRC_SCALE,
) -> dict:
  """The draws of one subset's recover augmentation (:func:`augment_subset`).

  Args:
    key: PRNG key of the subset's draw.
    image_shape: ``[H, W, 3]``.
    augment: one of ``SUBSET_AUGMENTATIONS``.
    jitter: maximal shift of the roll.
    rrc_scale: area range of the resized crop ('rrc_flip_roll').

  Returns:
    'none' -> ``{}``; 'roll' -> ``{'roll': int32 [2]}``; 'rrc_flip_roll' -> also ``'crop'``
    (:func:`draw_subset_crop_flip`).
  """
  if augment == "none":
    return {}
  k_crop, k_roll = jax.random.split(key)
  draws = {"roll": draw_roll(k_roll, jitter)}
  if augment == "rrc_flip_roll":
    draws["crop"] = draw_subset_crop_flip(k_crop, image_shape, rrc_scale)
  return draws


def apply_subset(draws: dict, x: jax.Array, augment: str) -> jax.Array:
  """:func:`augment_subset` with given draws (:func:`draw_subset`); ``[C, H, W, 3]`` in and out."""
  if augment == "none":
    return x
  if augment == "rrc_flip_roll":
    x = apply_subset_crop_flip(draws["crop"], x)
  return apply_roll(draws["roll"], x)


def augment_subset(
  key: jax.Array, x: jax.Array, augment: str, jitter: int, rrc_scale: tuple[float, float]
) -> jax.Array:
  """The per-step recover augmentation of one subset ``x [C, H, W, 3]``; returns ``[C, H, W, 3]``.

  Args:
    key: PRNG key of the subset's draw.
    x: ``[C, H, W, 3]`` synthetic images of one subset.
    augment: one of ``SUBSET_AUGMENTATIONS``.
    jitter: maximal shift of the roll.
    rrc_scale: area range of the resized crop ('rrc_flip_roll').
  """
  return apply_subset(draw_subset(key, x.shape[1:], augment, jitter, rrc_scale), x, augment)
