"""Tests of the synthetic-set format: materialisation, byte accounting, save/load, PNG export."""

import csv
import dataclasses
import itertools
import json
import os
import zipfile

import chex
import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from infer_jax import export, synthetic
from infer_jax.core import subsets
from infer_jax.runtime.errors import InputError

DTYPES = ("float32", "float16", "bfloat16")


def _metadata(k, m, num_classes, h, w, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
  return {
    "method": "infer" if m else "random",
    "dataset": "toy",
    "num_classes": num_classes,
    "image_shape": [h, w, 3],
    "mean": list(mean),
    "std": list(std),
    "ipc": 3,
    "K": k,
    "M": m,
    "teachers": ["a", "b"][:m],
    "teacher_accuracies": [0.5, 0.25][:m],
    "config": {"recover": {"lr": 0.25, "iterations": 10}},
  }


def _random_set(k=2, m=2, num_classes=3, h=4, w=4, labels=True, seed=0):
  rng = np.random.default_rng(seed)
  return synthetic.SyntheticSet(
    images=rng.integers(0, 256, (k, num_classes, h, w, 3), dtype=np.uint8),
    source_indices=rng.integers(-1, 1000, (k, num_classes)).astype(np.int64),
    compensators=rng.normal(0, 2, (k, m, h, w, 3)).astype(np.float32) if m else None,
    labels=(
      rng.normal(0, 3, (k, m + 1, num_classes, num_classes)).astype(np.float32) if labels else None
    ),
    metadata=_metadata(k, m, num_classes, h, w),
  )


def _assert_same_set(a, b):
  for name in synthetic._ARRAYS:
    x, y = getattr(a, name), getattr(b, name)
    if x is None:
      assert y is None, name
      continue
    assert x.dtype == y.dtype, name
    chex.assert_shape(y, x.shape)
    # Bit-exact, including bfloat16 (compared as raw bits).
    np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8), err_msg=name)
  assert a.metadata == b.metadata


# --------------------------------------------------------------------------- materialise


def _tiny_set():
  """K=2, M=2, C=2, 1x2 images; channel bounds: [0, 1], [-1, 1], [-1, 3]."""
  images = np.zeros((2, 2, 1, 2, 3), np.uint8)
  for k, c in itertools.product(range(2), range(2)):
    images[k, c, 0, 0] = 0  # The dark pixel: exactly at the lower bound.
    images[k, c, 0, 1] = 255  # The bright pixel: exactly at the upper bound.
  # Subset 1's class-1 image differs, so the order of (k, c) is visible.
  images[1, 1, 0, 0] = (255, 255, 255)
  compensators = np.zeros((2, 2, 1, 2, 3), np.float32)
  compensators[0, 0] = [[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]]  # Inside the bounds.
  compensators[0, 1] = [[-3.0, -3.0, -3.0], [3.0, 3.0, 3.0]]  # Clipped: below / above.
  compensators[1, 0] = [[9.0, 9.0, 9.0], [-9.0, -9.0, -9.0]]  # Clipped: above / below.
  compensators[1, 1] = [[0.25, 0.25, 0.25], [0.0, 0.0, 0.0]]
  labels = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
  metadata = _metadata(2, 2, 2, 1, 2, mean=(0.0, 0.5, 0.25), std=(1.0, 0.5, 0.25))
  return synthetic.SyntheticSet(images, -np.ones((2, 2), np.int64), compensators, labels, metadata)


def test_materialize_exact_values_clipping_and_order():
  s = _tiny_set()
  instances, soft, hard = synthetic.materialize(s)
  chex.assert_shape(instances, (12, 1, 2, 3))
  chex.assert_type(instances, np.float32)
  lo = np.array([0.0, -1.0, -1.0], np.float32)
  hi = np.array([1.0, 1.0, 3.0], np.float32)
  half = np.array([0.5, 0.5, 0.5], np.float32)
  quarter = np.array([0.25, 0.25, 0.25], np.float32)
  dark_bright = np.stack([lo, hi])  # Un-compensated image of classes 0 (and 1 in k=0).
  bright_bright = np.stack([hi, hi])  # Subset 1, class 1.
  expected = np.stack(
    [
      # k = 0: m = 0 (the images), m = 1 (+u_00), m = 2 (+u_01); c = 0, 1 within each.
      dark_bright,
      dark_bright,
      np.stack([lo + half, hi - half]),
      np.stack([lo + half, hi - half]),
      np.stack([lo, hi]),  # -3 below the lower bound, +3 above the upper: both clipped.
      np.stack([lo, hi]),
      # k = 1.
      dark_bright,
      bright_bright,
      np.stack([hi, lo]),  # +9 / -9: clipped to the other bound.
      np.stack([hi, lo]),
      np.stack([lo + quarter, hi]),
      np.stack([hi, hi]),  # The bright pixel plus 0.25 is clipped at the top.
    ]
  )[:, None]
  np.testing.assert_array_equal(instances, expected)
  np.testing.assert_array_equal(hard, np.tile([0, 1], 6))
  chex.assert_type(hard, np.int32)
  np.testing.assert_array_equal(soft, np.arange(24, dtype=np.float32).reshape(12, 2))
  # The coordinates helper and the row path agree with the order.
  k, m, c = synthetic.instance_coordinates(s)
  np.testing.assert_array_equal(k, [0] * 6 + [1] * 6)
  np.testing.assert_array_equal(m, [0, 0, 1, 1, 2, 2] * 2)
  np.testing.assert_array_equal(c, [0, 1] * 6)
  rows = np.array([11, 0, 4, 7])
  r_inst, r_soft, r_hard = synthetic.materialize_rows(s, rows)
  np.testing.assert_array_equal(r_inst, expected[rows])
  np.testing.assert_array_equal(r_soft, soft[rows])
  np.testing.assert_array_equal(r_hard, hard[rows])


@pytest.mark.parametrize("dtype", DTYPES)
def test_materialize_sums_in_float32(dtype):
  s = synthetic.cast(_random_set(), compensator_dtype=dtype, label_dtype=dtype)
  instances, soft, _ = synthetic.materialize(s)
  mean, std = synthetic.normalization(s.metadata)
  lo, hi = synthetic.clip_bounds(s.metadata)
  x = (s.images.astype(np.float32) / 255.0 - mean) / std  # [K, C, H, W, 3]
  u = s.compensators.astype(np.float32)  # [K, M, H, W, 3]
  want = np.concatenate([x[:, None], np.clip(x[:, None] + u[:, :, None], lo, hi)], axis=1)
  np.testing.assert_array_equal(instances, want.reshape(instances.shape))
  chex.assert_type(soft, np.float32)
  np.testing.assert_array_equal(soft, s.labels.astype(np.float32).reshape(-1, 3))


def test_materialize_without_compensators_or_labels():
  s = _random_set(m=0, labels=False)
  instances, soft, hard = synthetic.materialize(s)
  chex.assert_shape(instances, (6, 4, 4, 3))
  assert soft is None
  np.testing.assert_array_equal(hard, [0, 1, 2, 0, 1, 2])
  # Real pixels lie inside the clip bounds bit for bit (0 and 255 map onto them).
  lo, hi = synthetic.clip_bounds(s.metadata)
  assert (instances >= lo).all() and (instances <= hi).all()


def test_materialize_rejects_out_of_range_rows():
  with pytest.raises(InputError, match="rows must lie"):
    synthetic.materialize_rows(_random_set(), [18])


# --------------------------------------------------------------------------- bytes


def test_storage_bytes_and_compression_ratio_by_hand():
  # K=2, C=num_classes=5, M=2, 4x4 images; float32 compensators, float16 labels.
  s = synthetic.cast(_random_set(k=2, m=2, num_classes=5), label_dtype="float16")
  assert synthetic.storage_bytes(s) == {
    "images": 480,  # 2 * 5 * 4 * 4 * 3 uint8
    "compensators": 768,  # 2 * 2 * 4 * 4 * 3 * 4 bytes
    "labels": 300,  # 2 * 3 * 5 * 5 * 2 bytes
    "total": 1548,
    "provenance": 80,  # 2 * 5 * 8 bytes, not in the total
  }
  assert subsets.compression_ratio(
    synthetic.storage_bytes(s)["total"], 100, (4, 4, 3)
  ) == pytest.approx(1548 / 4800)  # 100 * 4 * 4 * 3
  bf = synthetic.cast(s, compensator_dtype="bfloat16")
  assert synthetic.storage_bytes(bf)["compensators"] == 384
  hard_only = _random_set(m=0, labels=False, num_classes=5)
  assert synthetic.storage_bytes(hard_only) == {
    "images": 480,
    "compensators": 0,
    "labels": 0,
    "total": 480,
    "provenance": 80,
  }
  with pytest.raises(InputError, match="num_train_images"):
    subsets.compression_ratio(synthetic.storage_bytes(s)["total"], 0, (4, 4, 3))


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize(("comp_dtype", "label_dtype"), list(itertools.product(DTYPES, DTYPES)))
def test_round_trip_every_dtype(tmp_path, comp_dtype, label_dtype):
  s = synthetic.cast(_random_set(), compensator_dtype=comp_dtype, label_dtype=label_dtype)
  path = str(tmp_path / "set.npz")
  synthetic.save(path, s)
  loaded = synthetic.load(path, expected={"dataset": "toy", "image_shape": (4, 4, 3)})
  _assert_same_set(s, loaded)
  assert str(loaded.compensators.dtype) == comp_dtype
  assert str(loaded.labels.dtype) == label_dtype
  with np.load(path) as archive:
    header = json.loads(str(archive["format"][()]))
  # Float sets keep format version 1 (readable by versions that predate uint8 compensators).
  assert header["format_version"] == 1
  assert header["arrays"]["compensators"]["dtype"] == comp_dtype


@pytest.mark.parametrize(("m", "labels"), [(0, True), (2, False), (0, False)])
def test_round_trip_without_compensators_or_labels(tmp_path, m, labels):
  s = _random_set(m=m, labels=labels)
  path = str(tmp_path / "set.npz")
  synthetic.save(path, s)
  _assert_same_set(s, synthetic.load(path))


def test_file_is_readable_with_plain_numpy(tmp_path):
  s = synthetic.cast(_random_set(), compensator_dtype="bfloat16", label_dtype="float16")
  path = str(tmp_path / "set.npz")
  synthetic.save(path, s)
  with np.load(path) as z:  # No infer_jax, no pickle: what docs/synthetic_format.md shows.
    metadata = json.loads(str(z["metadata"]))
    header = json.loads(str(z["format"]))
    u = z["compensators"].view(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(z["images"], s.images)
    np.testing.assert_array_equal(z["labels"], s.labels)
  assert metadata == s.metadata
  assert header["arrays"]["compensators"]["dtype"] == "bfloat16"
  np.testing.assert_array_equal(u.view(np.uint16), s.compensators.view(np.uint16))


def test_metadata_comes_back_as_json(tmp_path):
  s = _random_set()
  s.metadata["image_shape"] = (4, 4, 3)
  s.metadata["acc"] = np.float32(0.5)
  path = str(tmp_path / "set.npz")
  synthetic.save(path, s)
  loaded = synthetic.load(path)
  assert loaded.metadata["image_shape"] == [4, 4, 3]
  assert loaded.metadata == synthetic.normalize_metadata(s.metadata)


def test_save_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / "set.npz"
  old = _random_set(seed=1)
  synthetic.save(str(path), old)
  before = path.read_bytes()

  def crash(src, dst):
    raise OSError("simulated crash before the rename")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="simulated crash"):
    synthetic.save(str(path), _random_set(seed=2))
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["set.npz"]
  monkeypatch.undo()
  _assert_same_set(old, synthetic.load(str(path)))


def test_truncated_file_is_refused(tmp_path):
  path = tmp_path / "set.npz"
  synthetic.save(str(path), _random_set())
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(InputError, match="truncated, corrupted.*regenerate"):
    synthetic.load(str(path))


def test_flipped_byte_is_refused(tmp_path):
  s = _random_set()
  path = tmp_path / "set.npz"
  synthetic.save(str(path), s)
  data = bytearray(path.read_bytes())
  at = bytes(data).find(s.images.tobytes()) + s.images.size // 2
  data[at] ^= 0xFF
  path.write_bytes(bytes(data))
  # zip's own CRC-32 catches it while the entry is read.
  with pytest.raises(InputError, match="corrupted"):
    synthetic.load(str(path))


def test_checksum_mismatch_is_refused(tmp_path):
  # A well-formed archive whose array no longer matches the header: only sha256 sees it.
  s = _random_set()
  path = tmp_path / "set.npz"
  synthetic.save(str(path), s)
  with np.load(path) as z:
    members = {name: z[name] for name in z.files}
  members["labels"] = members["labels"].copy()
  members["labels"][0, 0, 0, 0] += 1.0
  np.savez(path, **members)
  with pytest.raises(InputError, match="sha256 checksum of 'labels'"):
    synthetic.load(str(path))


def test_missing_and_foreign_files_are_refused(tmp_path):
  with pytest.raises(InputError, match="No synthetic set"):
    synthetic.load(str(tmp_path / "absent.npz"))
  foreign = tmp_path / "foreign.npz"
  np.savez(foreign, x=np.zeros(3))
  with pytest.raises(InputError, match="no 'format' entry"):
    synthetic.load(str(foreign))
  text = tmp_path / "text.npz"
  text.write_text("not an archive")
  with pytest.raises(InputError, match="not a valid .npz"):
    synthetic.load(str(text))


def test_newer_format_version_is_refused(tmp_path):
  path = tmp_path / "set.npz"
  synthetic.save(str(path), _random_set())
  with np.load(path) as z:
    members = {name: z[name] for name in z.files}
  header = json.loads(str(members["format"]))
  header["format_version"] = synthetic.FORMAT_VERSION + 1
  members["format"] = np.array(json.dumps(header))
  np.savez(path, **members)
  with pytest.raises(InputError, match="Upgrade infer_jax"):
    synthetic.load(str(path))


def test_wrong_expected_metadata_is_refused(tmp_path):
  path = str(tmp_path / "set.npz")
  synthetic.save(path, _random_set())
  with pytest.raises(InputError, match="dataset: file has 'toy', expected 'cifar10'"):
    synthetic.load(path, expected={"dataset": "cifar10", "num_classes": 3})
  with pytest.raises(InputError, match="image_shape"):
    synthetic.load(path, expected={"image_shape": (32, 32, 3)})
  with pytest.raises(InputError, match="seed: file has '<missing>'"):
    synthetic.load(path, expected={"seed": 0})


def test_recover_execution_settings_are_recorded_but_not_compared(tmp_path):
  """A set recovered on one device (written before image_shards / remat existed) matches a
  run that splits subsets 2 ways with remat; a different learning rate does not."""
  path = str(tmp_path / "set.npz")
  s = _random_set()
  s.metadata["recover"] = {"iterations": 20, "lr": 0.25, "checkpoint_every": 10}
  synthetic.save(path, s)
  run = {"iterations": 20, "lr": 0.25, "checkpoint_every": 5, "image_shards": 2}
  loaded = synthetic.load(path, expected={"recover": {**run, "remat": "blocks"}})
  assert loaded.metadata["recover"]["checkpoint_every"] == 10  # the file's own provenance
  with pytest.raises(InputError, match=r"recover: file has \{'iterations': 20, 'lr': 0.25\}"):
    synthetic.load(path, expected={"recover": {**run, "lr": 0.1}})


@pytest.mark.parametrize(
  ("change", "message"),
  [
    (lambda s: setattr(s, "images", s.images[:, :2]), "images is uint8"),
    (lambda s: setattr(s, "images", s.images.astype(np.float32)), "images is float32"),
    (lambda s: setattr(s, "source_indices", s.source_indices.astype(np.int32)), "int64"),
    (lambda s: setattr(s, "compensators", s.compensators[:, :1]), "compensators has shape"),
    (lambda s: setattr(s, "compensators", None), "compensators is None"),
    (lambda s: setattr(s, "labels", s.labels[:, :2]), "labels has shape"),
    (lambda s: setattr(s, "labels", s.labels.astype(np.float64)), "dtype float64"),
    (lambda s: s.labels.__setitem__((0, 0, 0, 0), np.nan), "NaN"),
    (lambda s: s.metadata.pop("mean"), "lacks the keys"),
    (lambda s: s.metadata.__setitem__("M", 0), "metadata M is 0"),
    (lambda s: s.metadata.__setitem__("image_shape", [4, 4]), "image_shape"),
    (lambda s: s.metadata.__setitem__("std", [0.2, 0.0, 0.2]), "std > 0"),
    (lambda s: s.metadata.__setitem__("blob", object()), "cannot be stored as JSON"),
  ],
)
def test_inconsistent_set_is_refused_on_save(tmp_path, change, message):
  s = _random_set()
  change(s)
  path = tmp_path / "set.npz"
  with pytest.raises(InputError, match=message):
    synthetic.save(str(path), s)
  assert not os.listdir(tmp_path)


def test_cast_rejects_unknown_dtype():
  with pytest.raises(InputError, match="float64"):
    synthetic.cast(_random_set(), label_dtype="float64")
  assert synthetic.dtype_from_name(np.dtype(ml_dtypes.bfloat16)) == np.dtype(ml_dtypes.bfloat16)


def test_jax_arrays_are_accepted():
  import jax.numpy as jnp

  s = _random_set()
  t = synthetic.SyntheticSet(
    images=jnp.asarray(s.images),
    source_indices=s.source_indices,
    compensators=jnp.asarray(s.compensators, jnp.bfloat16),
    labels=jnp.asarray(s.labels),
    metadata=s.metadata,
  )
  assert t.compensators.dtype == np.dtype(ml_dtypes.bfloat16)
  t.validate()


# --------------------------------------------------------------------------- PNG export


def test_export_png_round_trip(tmp_path):
  s = synthetic.cast(_random_set(k=2, m=2, num_classes=3), compensator_dtype="bfloat16")
  directory = tmp_path / "png"
  export.export_png(s, str(directory))
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
  instances, soft, hard = synthetic.materialize(s)
  mean, std = synthetic.normalization(s.metadata)
  want = np.clip(np.rint((instances * std + mean) * 255.0), 0, 255).astype(np.uint8)
  # Real images (m = 0) come back exactly as stored.
  np.testing.assert_array_equal(want.reshape(2, 3, 3, 4, 4, 3)[:, 0], s.images)

  files = sorted(
    os.path.join(c, f)
    for c in os.listdir(directory)
    if c.isdigit()
    for f in os.listdir(directory / c)
  )
  assert len(files) == 18
  labels = np.load(directory / "labels.npy")
  hard_labels = np.load(directory / "hard_labels.npy")
  chex.assert_shape(labels, (18, 3))
  with open(directory / "files.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["file"] for r in table] == files
  for row, (name, record) in enumerate(zip(files, table, strict=True)):
    n = int(record["instance"])
    assert int(record["row"]) == row
    assert name == f"{hard[n]:04d}/{int(record['k']):04d}_{int(record['m']):02d}.png"
    assert hard_labels[row] == hard[n] == int(name[:4])
    np.testing.assert_array_equal(labels[row], soft[n])
    with Image.open(directory / name) as image:
      assert image.mode == "RGB"
      np.testing.assert_array_equal(np.asarray(image), want[n])
  meta = json.loads((directory / "metadata.json").read_text())
  assert meta["synthetic_set"] == s.metadata
  assert meta["export"]["num_files"] == 18


def test_export_png_refuses_to_overwrite(tmp_path):
  s = _random_set(m=0, labels=False)
  directory = tmp_path / "png"
  directory.mkdir()
  (directory / "keep.txt").write_text("mine")
  with pytest.raises(InputError, match="refusing to overwrite"):
    export.export_png(s, str(directory))
  assert os.listdir(directory) == ["keep.txt"]
  # An empty directory is filled; a hard-label set has no labels.npy.
  empty = tmp_path / "empty"
  empty.mkdir()
  export.export_png(s, str(empty))
  assert not (empty / "labels.npy").exists()
  assert len(np.load(empty / "hard_labels.npy")) == 6
  assert sorted(os.listdir(tmp_path)) == ["empty", "png"]


def test_zip_members_are_uncompressed(tmp_path):
  # Uncompressed members are what gives other readers random access (and mmap-able offsets).
  path = tmp_path / "set.npz"
  synthetic.save(str(path), _random_set())
  with zipfile.ZipFile(path) as z:
    assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}


# --------------------------------------------------------------------------- uint8 compensators


def _numpy_quantize(u):
  """Independent affine uint8 quantisation per compensator (loops, float64)."""
  k, m = u.shape[:2]
  codes = np.zeros(u.shape, np.uint8)
  scale = np.zeros((k, m))
  offset = np.zeros((k, m))
  for i in range(k):
    for j in range(m):
      x = u[i, j].astype(np.float64)
      offset[i, j], scale[i, j] = x.min(), (x.max() - x.min()) / 255
      if scale[i, j] > 0:
        codes[i, j] = np.clip(np.round((x - x.min()) / scale[i, j]), 0, 255)
  return codes, scale, offset


def test_uint8_compensators_round_trip_and_error_bound(tmp_path):
  s = _random_set(k=3, m=2, num_classes=4, h=5, w=6)
  u = s.compensators
  u[1, 1] = 0.75  # a constant compensator: scale 0, restored exactly
  q = synthetic.cast(s, compensator_dtype="uint8", label_dtype="float16")
  assert q.quantized and q.compensators.dtype == np.uint8 and q.labels.dtype == np.float16
  codes, scale, offset = _numpy_quantize(u)
  np.testing.assert_allclose(q.compensator_scale, scale, rtol=1e-6)
  np.testing.assert_allclose(q.compensator_offset, offset, rtol=1e-6)
  # Codes agree with the float64 reference except where float32 rounding lands on a .5 tie.
  assert np.mean(q.compensators == codes) > 0.999
  assert np.abs(q.compensators.astype(int) - codes).max() <= 1
  restored = synthetic.dequantize_compensators(
    q.compensators, q.compensator_scale, q.compensator_offset
  )
  bound = scale[..., None, None, None] / 2 * (1 + 1e-5) + 1e-6
  assert (np.abs(restored - u) <= bound).all()
  np.testing.assert_array_equal(restored[1, 1], np.float32(0.75))
  # Materialised instances use the dequantised compensators.
  instances, soft, _ = synthetic.materialize(q)
  lo, hi = synthetic.clip_bounds(s.metadata)
  x = synthetic.normalize_uint8(s.images[2, 3], *synthetic.normalization(s.metadata))
  n = (2 * 3 + 2) * 4 + 3  # k = 2, m = 2 (u_{2, 1}), c = 3
  np.testing.assert_allclose(instances[n], np.clip(x + restored[2, 1], lo, hi), atol=1e-6)
  np.testing.assert_array_equal(soft, q.labels.reshape(-1, 4).astype(np.float32))
  # Save / load: bit-exact codes, scale and offset; version 2 header.
  path = str(tmp_path / "q.npz")
  synthetic.save(path, q)
  loaded = synthetic.load(path)
  _assert_same_set(q, loaded)
  with np.load(path) as z:
    header = json.loads(str(z["format"][()]))
  assert header["format_version"] == 2
  assert header["arrays"]["compensators"]["dtype"] == "uint8"
  assert header["arrays"]["compensator_scale"]["dtype"] == "float32"
  # Back to float32: the dequantised values.
  back = synthetic.cast(loaded, compensator_dtype="float32")
  assert not back.quantized and back.compensator_scale is None
  np.testing.assert_array_equal(back.compensators, restored)


def test_uint8_compensator_bytes_by_hand():
  # K=2, M=2, C=5, 4x4x3: codes 2*2*48 = 192 B, scale + offset 2*2*(4+4) = 32 B;
  # float16 labels 2*3*5*5*2 = 300 B; images 2*5*48 = 480 B.
  q = synthetic.cast(
    _random_set(k=2, m=2, num_classes=5), compensator_dtype="uint8", label_dtype="float16"
  )
  assert synthetic.storage_bytes(q) == {
    "images": 480,
    "compensators": 224,
    "labels": 300,
    "total": 1004,
    "provenance": 80,
  }


def test_uint8_compensators_need_scale_and_offset():
  q = synthetic.cast(_random_set(), compensator_dtype="uint8")
  with pytest.raises(InputError, match="compensator_scale"):
    dataclasses.replace(q, compensator_scale=None).validate()
  with pytest.raises(InputError, match="compensator_offset"):
    dataclasses.replace(q, compensator_offset=q.compensator_offset.astype(np.float64)).validate()
  with pytest.raises(InputError, match="not uint8"):
    dataclasses.replace(_random_set(), compensator_scale=q.compensator_scale).validate()
  with pytest.raises(InputError, match="uint8"):
    synthetic.cast(_random_set(), compensator_dtype="int8")


def test_a_set_is_reused_only_by_a_run_of_its_own_storage(tmp_path):
  """uint8 / float16 is the default; a float32 set (recorded, or written before storage was
  recorded) is refused by it with the flags that read it, and a uint8 set by a float32 run;
  a float32 set with and without the key is the same set (same fingerprint)."""
  import ml_collections

  from infer_jax.runtime import config_lib

  c = config_lib.base_config()
  small = synthetic.storage_metadata(c)
  assert small == {"compensators": "uint8", "labels": "float16"}
  c32 = ml_collections.ConfigDict({"synthetic": {"compensator_dtype": "float32"}})
  c32.synthetic.label_dtype = "float32"
  f32 = synthetic.storage_metadata(c32)
  assert f32 == synthetic.FLOAT32_STORAGE
  s = _random_set()
  legacy, recorded = str(tmp_path / "legacy.npz"), str(tmp_path / "f32.npz")
  synthetic.save(legacy, s)  # no storage key, as sets were written before it existed
  synthetic.save(recorded, dataclasses.replace(s, metadata={**s.metadata, "storage": f32}))
  quantized = str(tmp_path / "u8.npz")
  synthetic.save(
    quantized,
    dataclasses.replace(
      synthetic.cast(s, compensator_dtype="uint8", label_dtype="float16"),
      metadata={**s.metadata, "storage": small},
    ),
  )
  for path in (legacy, recorded):
    assert synthetic.load(path, expected={**s.metadata, "storage": f32}).metadata["K"] == 2
    with pytest.raises(InputError) as e:
      synthetic.load(path, expected={**s.metadata, "storage": small})
    assert str(e.value).endswith(
      "--config.synthetic.compensator_dtype=float32 --config.synthetic.label_dtype=float32."
    )
  with pytest.raises(InputError, match="storage: file has .*uint8.* expected .*float32"):
    synthetic.load(quantized, expected={**s.metadata, "storage": f32})
  assert synthetic.load(quantized, expected={**s.metadata, "storage": small}).quantized
  # A partial expectation without storage does not compare it.
  assert synthetic.load(quantized, expected={"K": 2}).quantized
  assert synthetic.comparable_metadata(
    {**s.metadata, "storage": f32}
  ) == synthetic.comparable_metadata(s.metadata)
  # A set without compensators records its labels' dtype only: a change of
  # compensator_dtype keeps it; a change of label_dtype names that flag alone.
  plain = _random_set(m=0)
  path = str(tmp_path / "random.npz")
  synthetic.save(path, dataclasses.replace(plain, metadata={**plain.metadata, "storage": f32}))
  assert synthetic.comparable_metadata(
    {**plain.metadata, "storage": {"labels": "float32"}}
  ) == synthetic.comparable_metadata(plain.metadata)
  assert synthetic.load(path, expected={**plain.metadata, "storage": {"labels": "float32"}})
  with pytest.raises(InputError) as e:
    synthetic.load(path, expected={**plain.metadata, "storage": {"labels": "float16"}})
  assert str(e.value).endswith("run with --config.synthetic.label_dtype=float32.")
