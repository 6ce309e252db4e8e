"""The one on-disk format of synthetic sets, shared by every method (INFER, baselines).

A :class:`SyntheticSet` holds K subsets. Subset k is one image per class (``images[k, c]``
is the class-c image, uint8) and M compensators ``u_{k,m}`` (one per teacher, in the
dataset's normalised space). The student sees ``K * (M + 1) * C`` instances: every image
alone (m = 0) and every image plus every compensator of its subset, clipped to the
normalised image of [0, 1]. Baselines are the special case M = 0 (no compensators).

Instance order (used by :func:`materialize`, the stored labels and everything built on
them) is k-major, then m, then c::

    n = (k * (M + 1) + m) * C + c        m = 0: the real image; m >= 1: + u_{k, m-1}

Files are single uncompressed ``.npz`` archives written atomically by :func:`save` and
checked (structure, shapes, dtypes, sha256 of every array, expected metadata) by
:func:`load`; ``docs/synthetic_format.md`` describes the layout and how to read it without
this package. Byte accounting for the budget is :func:`storage_bytes`.

Example::

    s = synthetic.cast(s, compensator_dtype="bfloat16", label_dtype="float16")
    synthetic.save("workdir/synthetic/infer.npz", s)
    s = synthetic.load("workdir/synthetic/infer.npz", expected={"dataset": "cifar10"})
    instances, soft_labels, hard_labels = synthetic.materialize(s)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from infer_jax.runtime import atomic, checkpoint, distributed
from infer_jax.runtime.errors import InputError

FORMAT_VERSION = 2  # 2: uint8 compensators (+ scale, offset); a float set is written as 1
# Dtypes a compensator or label array may have; the names are what files and configs use.
FLOAT_DTYPES: dict[str, np.dtype] = {
  "float32": np.dtype(np.float32),
  "float16": np.dtype(np.float16),
  "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
# Compensators may also be stored quantised: uint8 codes with one affine (scale, offset) pair
# per compensator, float32 (``quantize_compensators``).
COMPENSATOR_DTYPES = (*FLOAT_DTYPES, "uint8")
# Metadata keys every set must carry: they are needed to interpret its arrays.
REQUIRED_METADATA = ("num_classes", "image_shape", "mean", "std", "K", "M")
# Archive members: arrays of the set, the set's metadata and the format header.
_ARRAYS = (
  "images",
  "source_indices",
  "compensators",
  "labels",
  "compensator_scale",
  "compensator_offset",
)
_METADATA_MEMBER = "metadata"
_HEADER_MEMBER = "format"
# Rows materialised at once by the chunked paths (bounds the float32 temporaries).
CHUNK_ROWS = 4096


# --------------------------------------------------------------------------- the set


@dataclasses.dataclass
class SyntheticSet:
  """K subsets of one image per class plus M compensators per subset, and their labels.

  Attributes:
    images: uint8 ``[K, C, H, W, ch]``; ``images[k, c]`` is the class-c image of subset k;
      ``ch`` is the dataset's channel count, 3 (RGB) or 1 (greyscale).
    source_indices: int64 ``[K, C]``; index of ``images[k, c]`` in the source training set,
      -1 where the image was synthesised (e.g. SRe2L-style images).
    compensators: ``[K, M, H, W, ch]`` in the dataset's normalised space (float32, float16 or
      bfloat16), or uint8 codes of them (see ``compensator_scale``); None when M == 0.
    labels: static soft labels (the teachers' mean logits) ``[K, M + 1, C, num_classes]``
      (float32, float16 or bfloat16): ``labels[k, 0, c]`` labels the real image,
      ``labels[k, m + 1, c]`` labels ``clip(images[k, c] + u_{k, m})``. None = hard labels
      only (the class index c).
    metadata: JSON-able dict. Required: ``num_classes`` (== C), ``image_shape``
      ``[H, W, ch]`` (it records the channel count), ``mean``/``std`` (the normalisation:
      ``ch`` floats each, for images scaled to [0, 1]), ``K``,
      ``M``. Conventional: ``method`` ('infer' | 'infer_wo_ufc' | 'random' | 'sre2l' | ...),
      ``dataset``, ``ipc``, ``teachers`` and ``teacher_accuracies``, ``config``, ``seed``.

    compensator_scale, compensator_offset: float32 ``[K, M]``, only with uint8 compensators:
      compensator (k, m) is ``codes[k, m] * scale[k, m] + offset[k, m]``
      (:func:`quantize_compensators`); None otherwise.

  Arrays are converted to numpy on construction (so jax arrays are accepted); nothing is
  checked until :meth:`validate`, which :func:`save`, :func:`load` and :func:`materialize`
  call.
  """

  images: np.ndarray
  source_indices: np.ndarray
  compensators: np.ndarray | None
  labels: np.ndarray | None
  metadata: dict
  compensator_scale: np.ndarray | None = None
  compensator_offset: np.ndarray | None = None

  def __post_init__(self):
    # np.asarray keeps the dtype (a jax bfloat16 array becomes an ml_dtypes one).
    self.images = np.asarray(self.images)
    self.source_indices = np.asarray(self.source_indices)
    for name in ("compensators", "labels", "compensator_scale", "compensator_offset"):
      if getattr(self, name) is not None:
        setattr(self, name, np.asarray(getattr(self, name)))

  @property
  def quantized(self) -> bool:
    """Whether the compensators are stored as uint8 codes with a scale and offset each."""
    return self.compensators is not None and self.compensators.dtype == np.uint8

  @property
  def K(self) -> int:  # The paper's names: K subsets, C classes, M teachers.
    """Number of subsets."""
    return int(self.images.shape[0])

  @property
  def C(self) -> int:
    """Number of classes (images per subset)."""
    return int(self.images.shape[1])

  @property
  def M(self) -> int:
    """Compensators per subset (number of teachers); 0 without compensators."""
    return 0 if self.compensators is None else int(self.compensators.shape[1])

  @property
  def num_instances(self) -> int:
    """Instances the student sees: ``K * (M + 1) * C``."""
    return self.K * (self.M + 1) * self.C

  def validate(self) -> None:
    """Checks shapes, dtypes and metadata agree with each other.

    Raises:
      InputError: naming the first inconsistency found.
    """
    md = self.metadata
    if not isinstance(md, Mapping):
      raise InputError(
        f"Synthetic-set metadata must be a dict, got {type(md).__name__}. Pass a dict with "
        f"at least the keys {list(REQUIRED_METADATA)}."
      )
    missing = [key for key in REQUIRED_METADATA if key not in md]
    if missing:
      raise InputError(
        f"Synthetic-set metadata lacks the keys {missing}. Add them (num_classes, "
        "image_shape [H, W, channels], mean and std of the dataset, K subsets, M compensators "
        "per subset)."
      )
    _to_json(md)  # Raises InputError when something cannot be stored.
    try:
      num_classes = int(md["num_classes"])
      image_shape = tuple(int(v) for v in md["image_shape"])
      mean = [float(v) for v in md["mean"]]
      std = [float(v) for v in md["std"]]
      k, m = int(md["K"]), int(md["M"])
    except (TypeError, ValueError) as e:
      raise InputError(
        f"Synthetic-set metadata has a malformed value ({e}): num_classes, K and M must be "
        "integers, image_shape three integers, mean and std one float per channel."
      ) from e
    if len(image_shape) != 3 or image_shape[2] not in (1, 3) or min(image_shape) < 1:
      raise InputError(
        f"metadata image_shape is {list(image_shape)}; it must be [H, W, 3] (RGB) or "
        "[H, W, 1] (greyscale). Use the dataset's DatasetInfo.image_shape."
      )
    ch = image_shape[2]
    if len(mean) != ch or len(std) != ch or not all(np.isfinite(mean + std)) or min(std) <= 0:
      raise InputError(
        f"metadata mean {mean} / std {std} must be {ch} finite float(s) each (one per "
        "channel of image_shape), std > 0. Use the dataset's DatasetInfo.mean and .std."
      )
    if k < 1 or m < 0 or num_classes < 1:
      raise InputError(
        f"metadata K={k}, M={m}, num_classes={num_classes}: a set needs K >= 1 subsets, "
        "M >= 0 compensators and at least one class."
      )
    h, w, _ = image_shape
    want = (k, num_classes, h, w, ch)
    if self.images.dtype != np.uint8 or self.images.shape != want:
      raise InputError(
        f"images is {self.images.dtype} {list(self.images.shape)}; metadata (K={k}, "
        f"num_classes={num_classes}, image_shape={list(image_shape)}) needs uint8 "
        f"{list(want)} [K, C, H, W, channels]. Fix the array or the metadata."
      )
    if self.source_indices.dtype != np.int64 or self.source_indices.shape != (k, num_classes):
      raise InputError(
        f"source_indices is {self.source_indices.dtype} {list(self.source_indices.shape)}; "
        f"it must be int64 [K, C] = {[k, num_classes]} (cast with .astype(np.int64))."
      )
    if self.source_indices.size and self.source_indices.min() < -1:
      raise InputError(
        "source_indices holds values below -1; use the index in the source training set, "
        "or -1 for a synthesised image."
      )
    if m == 0:
      if self.compensators is not None:
        raise InputError(
          f"compensators is given ({list(self.compensators.shape)}) but metadata M is 0; "
          "set M to the number of compensators per subset, or compensators to None."
        )
    elif self.quantized:
      if self.compensators.shape != (k, m, h, w, ch):
        raise InputError(
          f"compensators has shape {list(self.compensators.shape)}; metadata needs "
          f"[K, M, H, W, channels] = {[k, m, h, w, ch]}. Fix the array or the metadata."
        )
      for name in ("compensator_scale", "compensator_offset"):
        a = getattr(self, name)
        if a is None or a.dtype != np.float32 or a.shape != (k, m):
          got = "None" if a is None else f"{a.dtype} {list(a.shape)}"
          raise InputError(
            f"uint8 compensators need {name} as float32 [K, M] = {[k, m]}, got {got}; "
            "build them with synthetic.quantize_compensators (or synthetic.cast)."
          )
        if not np.isfinite(a).all():
          raise InputError(f"{name} holds NaN or infinite values; regenerate the set.")
      if (self.compensator_scale < 0).any():
        raise InputError("compensator_scale holds negative values; regenerate the set.")
    else:
      _check_float("compensators", self.compensators, (k, m, h, w, ch), "[K, M, H, W, channels]")
    if not self.quantized and (
      self.compensator_scale is not None or self.compensator_offset is not None
    ):
      raise InputError(
        "compensator_scale / compensator_offset are given but the compensators are not uint8 "
        "codes; drop them (set them to None) or quantise with synthetic.cast."
      )
    if self.labels is not None:
      _check_float(
        "labels", self.labels, (k, m + 1, num_classes, num_classes), "[K, M + 1, C, num_classes]"
      )


def _check_float(name: str, a: np.ndarray | None, shape: tuple[int, ...], doc: str) -> None:
  if a is None:
    raise InputError(
      f"{name} is None but metadata M > 0 needs a {doc} array {list(shape)}; pass it, or "
      "set metadata M to 0."
    )
  if a.dtype not in FLOAT_DTYPES.values():
    raise InputError(
      f"{name} has dtype {a.dtype}; allowed: {list(FLOAT_DTYPES)} (convert with synthetic.cast)."
    )
  if a.shape != shape:
    raise InputError(
      f"{name} has shape {list(a.shape)}; metadata needs {doc} = {list(shape)}. Fix the "
      "array or the metadata (K, M, num_classes, image_shape)."
    )
  # A NaN/inf would silently poison every student trained on the set.
  if not np.isfinite(a.astype(np.float32, copy=False)).all():
    raise InputError(
      f"{name} holds NaN or infinite values; the run that produced them diverged. "
      "Regenerate the set (e.g. with a lower learning rate)."
    )


def _np_to_python(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _to_json(metadata: Mapping[str, Any]) -> str:
  """Metadata as strict JSON text (numpy scalars/arrays become Python values)."""
  try:
    return json.dumps(metadata, default=_np_to_python, allow_nan=False, sort_keys=True)
  except (TypeError, ValueError) as e:
    raise InputError(
      f"Synthetic-set metadata cannot be stored as JSON ({e}). Use only str, int, float "
      "(finite), bool, None, lists and dicts with string keys."
    ) from e


def normalize_metadata(metadata: Mapping[str, Any]) -> dict:
  """``metadata`` as :func:`load` returns it: a JSON round trip (tuples become lists)."""
  return json.loads(_to_json(metadata))


# Settings recorded in a set's metadata (provenance) that only say how the set was computed,
# not what it is: how a subset's images were split over devices, whether the teacher's
# blocks were recomputed in the backward pass, in how many chunks the subsets were recovered,
# how often recover checkpointed and logged.
# They change the result by float rounding at most, so a set, a resumed run or a summary row
# made with other values is still the same one. Sets written before a setting existed lack it.
EXECUTION_SETTINGS: dict[str, tuple[str, ...]] = {
  "recover": ("image_shards", "remat", "subset_chunk", "checkpoint_every", "log_every"),
}
# Settings added after sets were first written, with the value that reproduces those older
# sets: at that value they are left out of the comparison, so an older set (which lacks
# them) and a new one made the same way still compare equal; any other value is a
# different set.
LATER_SETTINGS: dict[str, dict[str, Any]] = {
  "recover": {"dtype": "float32"},
}
# A set's ``storage`` metadata when compensators and labels are float32: sets written before
# storage was recorded lack the key, and compare as this.
FLOAT32_STORAGE = {"compensators": "float32", "labels": "float32"}


def comparable_metadata(metadata: Mapping[str, Any]) -> dict:
  """``metadata`` (JSON round-tripped) without :data:`EXECUTION_SETTINGS`: what two sets must
  share to be the same set. Used by :func:`load`'s ``expected`` check and by the row
  fingerprints of a comparison's summary."""
  out = normalize_metadata(metadata)
  if "storage" in out and _storage(out) == FLOAT32_STORAGE:
    del out["storage"]  # as sets written before storage was recorded (FLOAT32_STORAGE)
  for section in EXECUTION_SETTINGS.keys() | LATER_SETTINGS.keys():
    if isinstance(out.get(section), dict):
      keys, later = EXECUTION_SETTINGS.get(section, ()), LATER_SETTINGS.get(section, {})
      out[section] = {
        k: v
        for k, v in out[section].items()
        if k not in keys and not (k in later and v == later[k])
      }
  return out


def cast(
  s: SyntheticSet,
  compensator_dtype: str | None = None,
  label_dtype: str | None = None,
) -> SyntheticSet:
  """Returns ``s`` with compensators and/or labels stored in another dtype.

  Args:
    s: the set.
    compensator_dtype: 'float32' | 'float16' | 'bfloat16' | 'uint8' (affine per compensator,
      :func:`quantize_compensators`), or None to keep.
    label_dtype: 'float32' | 'float16' | 'bfloat16', or None to keep.

  Returns:
    A new set (arrays not cast are shared with ``s``). Narrowing rounds to nearest even;
    uint8 codes are dequantised first when cast back to a float dtype.
  """
  compensators, labels = s.compensators, s.labels
  scale, offset = s.compensator_scale, s.compensator_offset
  if compensator_dtype is not None and compensators is not None:
    if compensator_dtype not in COMPENSATOR_DTYPES:
      raise InputError(
        f"Unknown compensator dtype {compensator_dtype!r}; use one of "
        f"{list(COMPENSATOR_DTYPES)} (config key synthetic.compensator_dtype)."
      )
    if compensator_dtype == "uint8":
      if not s.quantized:
        compensators, scale, offset = quantize_compensators(compensators)
    else:
      if s.quantized:
        compensators = dequantize_compensators(compensators, scale, offset)
        scale = offset = None
      compensators = compensators.astype(dtype_from_name(compensator_dtype))
  if label_dtype is not None and labels is not None:
    labels = labels.astype(dtype_from_name(label_dtype))
  return dataclasses.replace(
    s,
    compensators=compensators,
    labels=labels,
    compensator_scale=scale,
    compensator_offset=offset,
  )


def quantize_compensators(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Affine uint8 quantisation, one (scale, offset) pair per compensator.

  For compensator ``u[k, m]`` (``[H, W, ch]``): ``offset = min(u[k, m])``,
  ``scale = (max - min) / 255`` and ``codes = rint((u - offset) / scale)`` in [0, 255]
  (all zeros when the compensator is constant, scale 0). :func:`dequantize_compensators`
  gives ``codes * scale + offset``, within ``scale / 2`` of ``u`` per element (up to float32
  rounding). A compensator stored this way weighs one uint8 image plus 8 bytes, the unit the
  paper's budget counts it in.

  Args:
    u: float ``[K, M, H, W, ch]`` compensators.

  Returns:
    ``(codes uint8 [K, M, H, W, ch], scale float32 [K, M], offset float32 [K, M])``.
  """
  u = np.asarray(u).astype(np.float32)
  flat = u.reshape(*u.shape[:2], -1)
  lo = flat.min(axis=-1)
  scale = ((flat.max(axis=-1) - lo) / np.float32(255.0)).astype(np.float32)
  # A constant compensator has scale 0: every code 0, dequantised exactly to its offset.
  safe = np.where(scale > 0, scale, np.float32(1.0))
  codes = np.rint((flat - lo[..., None]) / safe[..., None])
  codes = np.clip(codes, 0, 255).astype(np.uint8).reshape(u.shape)
  return codes, scale, lo.astype(np.float32)


def dequantize_compensators(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
  """float32 ``codes * scale + offset``: uint8 ``[R, ..., H, W, ch]`` with ``scale`` and
  ``offset`` ``[R, ...]`` (the leading axes of ``codes``) -> float32 like ``codes``."""
  scale = np.asarray(scale, np.float32)
  offset = np.asarray(offset, np.float32)
  expand = (...,) + (None,) * (codes.ndim - scale.ndim)
  return codes.astype(np.float32) * scale[expand] + offset[expand]


def compensator_values(s: SyntheticSet, k: np.ndarray, m: np.ndarray) -> np.ndarray:
  """float32 ``[R, H, W, ch]``: the compensators ``u_{k[r], m[r]}`` (m counts teachers from
  0), dequantised when stored as uint8."""
  if s.quantized:
    return dequantize_compensators(
      s.compensators[k, m], s.compensator_scale[k, m], s.compensator_offset[k, m]
    )
  return s.compensators[k, m].astype(np.float32)


def dtype_from_name(name: str | np.dtype) -> np.dtype:
  """'float32' | 'float16' | 'bfloat16' (or such a numpy dtype) -> numpy dtype."""
  key = str(np.dtype(name)) if not isinstance(name, str) else name
  if key not in FLOAT_DTYPES:
    raise InputError(
      f"Unknown storage dtype {name!r}; use one of {list(FLOAT_DTYPES)} "
      "(config keys synthetic.compensator_dtype / synthetic.label_dtype)."
    )
  return FLOAT_DTYPES[key]


# --------------------------------------------------------------------------- materialise


def normalization(metadata: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """float32 ``(mean [ch], std [ch])`` of the set's dataset (ch = 3, or 1 for greyscale)."""
  return np.asarray(metadata["mean"], np.float32), np.asarray(metadata["std"], np.float32)


def normalize_uint8(images: np.ndarray, mean, std) -> np.ndarray:
  """Host-side normalisation, uint8 ``[..., H, W, ch]`` -> float32 ``(x / 255 - mean) / std``.

  The one expression (and float32 rounding) used both for the real images that recover
  optimises against and for materialised instances, so the two agree bit for bit.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  return (np.asarray(images).astype(np.float32) / 255.0 - mean) / std


def clip_bounds(metadata: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """float32 ``(lo [ch], hi [ch])``: the normalised images of pixel values 0 and 1.

  They equal the normalised value of uint8 0 and 255 bit for bit, so real images always
  lie inside them.
  """
  mean, std = normalization(metadata)
  return (np.float32(0.0) - mean) / std, (np.float32(1.0) - mean) / std


def instance_coordinates(s: SyntheticSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """int64 ``(k [N], m [N], c [N])`` of every instance n, in the order of :func:`materialize`."""
  k, m, c = np.unravel_index(np.arange(s.num_instances), (s.K, s.M + 1, s.C))
  return k.astype(np.int64), m.astype(np.int64), c.astype(np.int64)


def _fill(s: SyntheticSet, rows: np.ndarray, out: np.ndarray) -> None:
  """Writes the float32 instances ``rows`` (flat indices) into ``out [len(rows), H, W, ch]``."""
  mean, std = normalization(s.metadata)
  lo, hi = clip_bounds(s.metadata)
  k, m, c = np.unravel_index(rows, (s.K, s.M + 1, s.C))
  out[...] = normalize_uint8(s.images[k, c], mean, std)
  compensated = np.flatnonzero(m > 0)
  if compensated.size:
    u = compensator_values(s, k[compensated], m[compensated] - 1)
    out[compensated] = np.clip(out[compensated] + u, lo, hi)


def materialize_rows(
  s: SyntheticSet, rows: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
  """Materialises some instances (for data loaders that do not hold the whole set).

  Args:
    s: the set (assumed valid; :func:`materialize` validates).
    rows: int ``[R]`` flat instance indices in ``[0, K*(M+1)*C)`` (order of
      :func:`materialize`).

  Returns:
    ``(instances float32 [R, H, W, ch], soft_labels float32 [R, num_classes] or None,
    hard_labels int32 [R])``, equal to the same rows of :func:`materialize`.
  """
  rows = np.asarray(rows, np.int64).reshape(-1)
  if rows.size and (rows.min() < 0 or rows.max() >= s.num_instances):
    raise InputError(
      f"Instance rows must lie in [0, {s.num_instances}) for this set (K={s.K}, M={s.M}, "
      f"C={s.C}); got values in [{rows.min()}, {rows.max()}]."
    )
  out = np.empty((rows.size, *s.images.shape[2:]), np.float32)
  _fill(s, rows, out)
  soft = None
  if s.labels is not None:
    soft = s.labels.reshape(s.num_instances, -1)[rows].astype(np.float32)
  return out, soft, (rows % s.C).astype(np.int32)


def materialize(s: SyntheticSet) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
  """Every instance the student sees, in normalised space.

  Instance ``n = (k * (M + 1) + m) * C + c`` (k-major, then m, then c) is
  ``x = (images[k, c] / 255 - mean) / std`` for m = 0 and
  ``clip(x + u_{k, m-1}, -mean/std, (1 - mean)/std)`` (per channel, summed in float32)
  for m >= 1.

  Args:
    s: the set; validated first.

  Returns:
    ``(instances float32 [N, H, W, ch], soft_labels float32 [N, num_classes] or None,
    hard_labels int32 [N])`` with ``N = K * (M + 1) * C``; soft labels are the stored
    logits (None for a hard-label set), hard labels the class index c.
  """
  s.validate()
  n = s.num_instances
  instances = np.empty((n, *s.images.shape[2:]), np.float32)
  # Chunks keep the temporaries small next to the output (large sets are GBs).
  for start in range(0, n, CHUNK_ROWS):
    rows = np.arange(start, min(n, start + CHUNK_ROWS))
    _fill(s, rows, instances[rows[0] : rows[-1] + 1])
  soft = None if s.labels is None else s.labels.reshape(n, -1).astype(np.float32)
  hard = np.tile(np.arange(s.C, dtype=np.int32), s.K * (s.M + 1))
  return instances, soft, hard


def denormalize_uint8(instances: np.ndarray, metadata: Mapping[str, Any]) -> np.ndarray:
  """Normalised float ``[..., H, W, ch]`` -> uint8: ``clip(rint((x * std + mean) * 255))``."""
  mean, std = normalization(metadata)
  pixels = (np.asarray(instances, np.float32) * std + mean) * np.float32(255.0)
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- bytes


def storage_bytes(s: SyntheticSet) -> dict[str, int]:
  """Exact bytes of what is stored, split by kind.

  Returns:
    ``{'images': K*C*H*W*ch, 'compensators': K*M*H*W*ch*itemsize (0 when M == 0; uint8
    codes add their float32 scale and offset, 8*K*M bytes),
    'labels': K*(M+1)*C*num_classes*itemsize (0 for hard labels), 'total': the sum of those
    three, 'provenance': source_indices bytes}``. ``provenance`` (which training images were
    picked) is reported but not part of ``total``: a student never reads it. File-format
    overhead (headers, metadata JSON) and teacher weights are not counted either; a
    dynamic-label protocol must add its teachers' bytes itself.
  """
  images = int(s.images.nbytes)
  compensators = 0 if s.compensators is None else int(s.compensators.nbytes)
  if s.quantized:
    compensators += int(s.compensator_scale.nbytes + s.compensator_offset.nbytes)
  labels = 0 if s.labels is None else int(s.labels.nbytes)
  return {
    "images": images,
    "compensators": compensators,
    "labels": labels,
    "total": images + compensators + labels,
    "provenance": int(s.source_indices.nbytes),
  }


# --------------------------------------------------------------------------- save / load


def _sha256(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


def _stored(a: np.ndarray) -> np.ndarray:
  # npz has no bfloat16: store its raw bits; the header keeps the dtype name.
  return a.view(np.uint16) if a.dtype == FLOAT_DTYPES["bfloat16"] else a


def save(path: str, s: SyntheticSet) -> None:
  """Writes ``s`` to one uncompressed ``.npz`` file at ``path``, atomically.

  The archive is written to a temporary file in the same directory, fsynced and renamed
  over ``path``, so ``path`` holds either its previous content or the complete new set,
  never part of one. The parent directory is created when missing.

  Raises:
    InputError: ``s`` is inconsistent (see :meth:`SyntheticSet.validate`).
  """
  s.validate()
  metadata_json = _to_json(s.metadata)
  members: dict[str, np.ndarray] = {}
  specs: dict[str, dict[str, Any]] = {}
  for name in _ARRAYS:
    a = getattr(s, name)
    if a is None:
      continue
    a = np.ascontiguousarray(a)
    stored = _stored(a)
    members[name] = stored
    specs[name] = {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": _sha256(stored)}
  members[_METADATA_MEMBER] = np.array(metadata_json)
  specs[_METADATA_MEMBER] = {
    "dtype": "json",
    "sha256": hashlib.sha256(metadata_json.encode("utf-8")).hexdigest(),
  }
  header = {
    "format": "infer_jax.synthetic",
    # A float set keeps version 1, so readers that predate uint8 compensators still read it.
    "format_version": FORMAT_VERSION if s.quantized else 1,
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "instance_order": "n = (k * (M + 1) + m) * C + c",
    "arrays": specs,
  }
  members[_HEADER_MEMBER] = np.array(json.dumps(header, sort_keys=True))

  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic.write(path, lambda f: np.savez(f, **members))


def _corrupt(path: str, problem: str) -> InputError:
  return InputError(
    f"{path} is not a readable synthetic set: {problem}. The file is truncated, corrupted or "
    "not written by infer_jax.synthetic.save; regenerate the set (delete the file and rerun "
    "the command that produced it)."
  )


def _read_header(path: str, archive: np.lib.npyio.NpzFile) -> dict[str, Any]:
  if _HEADER_MEMBER not in archive.files:
    raise _corrupt(path, f"it has no '{_HEADER_MEMBER}' entry")
  header = json.loads(str(archive[_HEADER_MEMBER][()]))
  if not isinstance(header, dict) or header.get("format") != "infer_jax.synthetic":
    raise _corrupt(path, "its header does not name the infer_jax.synthetic format")
  version = header.get("format_version")
  if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
    raise InputError(
      f"{path} has synthetic-set format version {version!r}; this infer_jax reads versions "
      f"1..{FORMAT_VERSION}. Upgrade infer_jax (or regenerate the set with this version)."
    )
  if not isinstance(header.get("arrays"), dict):
    raise _corrupt(path, "its header lists no arrays")
  return header


def _open(path: str) -> np.lib.npyio.NpzFile:
  if not os.path.isfile(path):
    raise InputError(
      f"No synthetic set at {path} (missing or not a file). Check the path, or create the "
      "set first (python -m infer_jax.distill)."
    )
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise _corrupt(path, f"it is not a valid .npz archive ({e})") from e
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise _corrupt(path, "it is a single .npy array, not an .npz archive")
  return archive


def load(path: str, *, expected: Mapping[str, Any] | None = None) -> SyntheticSet:
  """Reads a set written by :func:`save` and checks it.

  Args:
    path: the ``.npz`` file.
    expected: metadata values the set must have, e.g. ``{'dataset': 'cifar10',
      'num_classes': 10, 'image_shape': (32, 32, 3)}`` (compared after a JSON round trip,
      so tuples match lists; :data:`EXECUTION_SETTINGS` are not compared).

  Returns:
    The set; ``metadata`` is the stored JSON (tuples come back as lists).

  Raises:
    InputError: the file is missing, truncated or corrupted (a checksum differs), has an
      unknown format version, inconsistent arrays, or metadata that differs from
      ``expected``.
  """
  with _open(path) as archive:
    try:
      header = _read_header(path, archive)
      specs = header["arrays"]
      wanted = set(specs) | {_HEADER_MEMBER}
      if set(archive.files) != wanted:
        raise _corrupt(
          path, f"it holds the entries {sorted(archive.files)}, its header lists {sorted(wanted)}"
        )
      missing = [n for n in ("images", "source_indices", _METADATA_MEMBER) if n not in specs]
      if missing:
        raise _corrupt(path, f"it lacks the arrays {missing}")
      raw = {name: archive[name] for name in specs}
    except InputError:
      raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
      # zipfile verifies each member's CRC-32 while reading it: a flipped byte lands here.
      raise _corrupt(path, f"an entry cannot be read ({e})") from e

  metadata_json = str(raw.pop(_METADATA_MEMBER)[()])
  digest = hashlib.sha256(metadata_json.encode("utf-8")).hexdigest()
  if digest != specs[_METADATA_MEMBER].get("sha256"):
    raise _corrupt(path, "the sha256 checksum of 'metadata' does not match its header")
  arrays: dict[str, np.ndarray | None] = dict.fromkeys(_ARRAYS)
  for name, stored in raw.items():
    if name not in _ARRAYS:
      raise _corrupt(path, f"it holds an unknown array {name!r}")
    spec = specs[name]
    if _sha256(stored) != spec.get("sha256"):
      raise _corrupt(path, f"the sha256 checksum of {name!r} does not match its header")
    dtype_name = spec.get("dtype")
    allowed = {
      "images": ("uint8",),
      "source_indices": ("int64",),
      "compensators": COMPENSATOR_DTYPES,
      "compensator_scale": ("float32",),
      "compensator_offset": ("float32",),
    }.get(name, FLOAT_DTYPES)
    if dtype_name not in allowed:
      raise _corrupt(path, f"{name!r} has dtype {dtype_name!r}, allowed: {list(allowed)}")
    dtype = np.dtype(ml_dtypes.bfloat16) if dtype_name == "bfloat16" else np.dtype(dtype_name)
    if stored.dtype != _stored(np.empty(0, dtype)).dtype:
      raise _corrupt(path, f"{name!r} is stored as {stored.dtype}, its header says {dtype_name}")
    a = stored.view(dtype)
    if list(a.shape) != spec.get("shape"):
      raise _corrupt(path, f"{name!r} has shape {list(a.shape)}, its header says {spec['shape']}")
    arrays[name] = a

  try:
    metadata = json.loads(metadata_json)
  except ValueError as e:
    raise _corrupt(path, f"its metadata is not JSON ({e})") from e
  s = SyntheticSet(metadata=metadata, **arrays)
  try:
    s.validate()
  except InputError as e:
    raise _corrupt(path, f"its arrays are inconsistent ({e})") from e
  if expected:
    # Execution settings (EXECUTION_SETTINGS) are recorded but not compared.
    want, have = comparable_metadata(expected), comparable_metadata(metadata)
    if "storage" in expected:
      # Compared even when float32 (left out of comparable_metadata), so a float32 run never
      # takes a uint8 set for its own, nor the other way round.
      want["storage"], have["storage"] = _storage(expected), _storage(metadata)
    diffs = [
      f"{key}: file has {have.get(key, '<missing>')!r}, expected {value!r}"
      for key, value in want.items()
      if have.get(key) != value
    ]
    if diffs:
      hint = ""
      if "storage" in want and want["storage"] != have["storage"]:
        flags = [
          f"--config.synthetic.{key}={have['storage'][kind]}"
          for kind, key in (("compensators", "compensator_dtype"), ("labels", "label_dtype"))
          if have["storage"][kind] != want["storage"][kind]
        ]
        hint = f" To use it as it is stored, run with {' '.join(flags)}."
      raise InputError(
        f"The synthetic set {path} does not match this run ({'; '.join(diffs)}). Use the set "
        f"made for this dataset and setting, or regenerate it.{hint}"
      )
  return s


def set_metadata(config, info, teachers, method: str, k: int, m: int) -> dict[str, Any]:
  """The metadata every set of a run records (``config``: the run config, ``info``: the
  dataset's ``DatasetInfo``, ``teachers``: the M teachers; ``k``, ``m``: the set's K and M).

  ``storage`` (``{'compensators': dtype, 'labels': dtype}``, the config's
  ``synthetic.compensator_dtype`` / ``label_dtype``; labels only when M = 0) is always
  recorded; a set written before it was recorded lacks it and reads as
  :data:`FLOAT32_STORAGE`, which :func:`comparable_metadata` leaves out, so such sets and
  their rows' fingerprints still match."""
  storage = storage_metadata(config)
  if m == 0:
    # A set without compensators stores none: their dtype is not part of what it is (a
    # Random or SRe2L-style set stays reusable when only compensator_dtype changes).
    del storage["compensators"]
  return {
    "storage": storage,
    "method": method,
    "dataset": info.name,
    "num_classes": info.num_classes,
    "image_shape": list(info.image_shape),
    "mean": list(info.mean),
    "std": list(info.std),
    "ipc": int(config.ipc),
    "K": int(k),
    "M": int(m),
    "teachers": [t.metadata["architecture"] for t in teachers],
    "teacher_accuracies": [t.metadata["test_accuracy"] for t in teachers],
    # Which exact teachers made (and labelled) the set: dynamic labels must come from them.
    "teacher_identities": [checkpoint.teacher_identity(t) for t in teachers],
    "recover": config.recover.to_dict(),
    "seed": int(config.seed),
  }


def storage_metadata(config) -> dict[str, str]:
  """``{'compensators': dtype, 'labels': dtype}`` of ``config.synthetic``."""
  return {
    "compensators": str(config.synthetic.compensator_dtype),
    "labels": str(config.synthetic.label_dtype),
  }


def _storage(metadata: Mapping[str, Any]) -> dict[str, str]:
  """The ``storage`` of a set's metadata, float32 (:data:`FLOAT32_STORAGE`) for each kind it
  does not record."""
  return {**FLOAT32_STORAGE, **(metadata.get("storage") or {})}


def save_on_primary(path: str, s: SyntheticSet) -> SyntheticSet:
  """Saves ``s`` (every process holds the same set; the primary one writes it)."""

  def write() -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save(path, s)

  distributed.on_primary(f"save {os.path.basename(path)}", write)
  return s
