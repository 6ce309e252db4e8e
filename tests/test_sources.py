"""Tests for infer_jax.data.sources: every source round-trips tiny data made here.

The TFDS test prepares a real array_record dataset in tmp_path with a
``tfds.core.GeneratorBasedBuilder`` (no TensorFlow: the generator yields PNG bytes, which
tfds stores without re-encoding) and reads it back through ``tfds.data_source``.
"""

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import chex
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from infer_jax.data import sources, types
from infer_jax.data.formats import cifar
from infer_jax.data.sources import load_dataset
from infer_jax.data.types import ArraySource, DatasetInfo, ImageSource
from infer_jax.runtime.errors import InputError

# ----------------------------------------------------------------------------- helpers


def _rand_images(n, h=8, w=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _write_npz(path, **overrides):
  """Writes prepare.py's npz layout; ``overrides`` replace (or, if None, drop) keys."""
  arrays = {
    "x_train": _rand_images(12, seed=1),
    "y_train": np.arange(12, dtype=np.int64) % 3,
    "x_test": _rand_images(6, seed=2),
    "y_test": np.arange(6, dtype=np.int64) % 3,
    "label_names": np.array(["ant", "bee", "cat"]),
  }
  arrays.update(overrides)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return arrays


def _save_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _make_imagefolder(root, test_split="test", shape=(8, 8)):
  """root/{train,test_split}/{bee,ant}/*.png; returns {split: (images, labels)} in load order."""
  out = {}
  for split, n in (("train", 3), (test_split, 2)):
    images, labels = [], []
    for c, cls in enumerate(("ant", "bee")):  # Sorted names -> labels 0, 1.
      for i in range(n):
        img = _rand_images(1, *shape, seed=100 * c + 10 * n + i)[0]
        _save_png(os.path.join(root, split, cls, f"{i:03d}.png"), img)
        images.append(img)
        labels.append(c)
    out[split] = (np.stack(images), np.array(labels))
  # Files that are not images must be ignored.
  with open(os.path.join(root, "train", "ant", ".DS_Store"), "w") as f:
    f.write("x")
  with open(os.path.join(root, "train", "bee", "README.txt"), "w") as f:
    f.write("x")
  return out


def _cifar_rows(images):
  """uint8 [N, 32, 32, 3] -> the official [N, 3072] channel-major rows."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _dump(path, obj):
  """Pickles like the official (Python 2) files: protocol 2, bytes keys, numpy arrays
  rebuilt by ``numpy.core.multiarray._reconstruct`` (numpy 1.x's module name)."""
  data = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
  with open(path, "wb") as f:
    f.write(data)


def _make_cifar(root, kind="cifar10", per_batch=2):
  """Writes a fake official archive directory; returns (x_train, y_train, x_test, y_test)."""
  num_classes = 10 if kind == "cifar10" else 100
  d = os.path.join(root, "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
  os.makedirs(d)
  rng = np.random.default_rng(3)
  train_names = [f"data_batch_{i}" for i in range(1, 6)] if kind == "cifar10" else ["train"]
  xs, ys = [], []
  label_key = b"labels" if kind == "cifar10" else b"fine_labels"
  for i, name in enumerate(train_names):
    n = per_batch if kind == "cifar10" else 5 * per_batch
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = [int(v) for v in rng.integers(0, num_classes, n)]
    batch = {b"batch_label": f"training batch {i}".encode(), label_key: y, b"data": _cifar_rows(x)}
    batch[b"filenames"] = [f"img{j}.png".encode() for j in range(n)]
    if kind == "cifar100":
      batch[b"coarse_labels"] = [v // 5 for v in y]
    _dump(os.path.join(d, name), batch)
    xs.append(x)
    ys += y
  x_test = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  y_test = [1, 2, num_classes - 1]
  test = {b"batch_label": b"testing batch", label_key: y_test, b"data": _cifar_rows(x_test)}
  _dump(os.path.join(d, "test_batch" if kind == "cifar10" else "test"), test)
  if kind == "cifar10":
    names = [f"class{c}".encode() for c in range(10)]
    _dump(os.path.join(d, "batches.meta"), {b"label_names": names, b"num_vis": 3072})
  else:
    names = [f"fine{c}".encode() for c in range(100)]
    coarse = [f"coarse{c}".encode() for c in range(20)]
    _dump(os.path.join(d, "meta"), {b"fine_label_names": names, b"coarse_label_names": coarse})
  return d, np.concatenate(xs), np.array(ys), x_test, np.array(y_test)


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- digits


def test_digits_shape_split_and_determinism():
  ds = load_dataset("digits")
  info = ds.info
  assert info.name == "digits" and info.num_classes == 10
  assert info.image_shape == (8, 8, 3)
  assert info.label_names == tuple(str(c) for c in range(10))
  assert (info.num_train, info.num_test) == (1438, 359) == (len(ds.train), len(ds.test))
  chex.assert_shape(ds.train.array, (1438, 8, 8, 3))
  assert ds.train.array.dtype == np.uint8 and ds.train.labels.dtype == np.int64
  assert ds.train.array.max() == 255 and ds.train.array.min() == 0
  # Grayscale replicated to 3 identical channels.
  np.testing.assert_array_equal(ds.train.array[..., 0], ds.train.array[..., 2])
  # Stratified: every class is in both splits with ~20% in test.
  counts = np.bincount(ds.test.labels, minlength=10)
  assert counts.min() >= 34 and counts.max() <= 37
  again = load_dataset("digits")
  np.testing.assert_array_equal(again.train.array, ds.train.array)
  np.testing.assert_array_equal(again.test.labels, ds.test.labels)
  item = ds.train[5]
  chex.assert_shape(item["image"], (8, 8, 3))
  assert isinstance(item["label"], np.int64) and item["label"] == ds.train.labels[5]
  # Computed statistics: population mean/std over all training pixels in [0, 1].
  pixels = ds.train.array.astype(np.float64) / 255
  np.testing.assert_allclose(info.mean, pixels.mean((0, 1, 2)), rtol=1e-9)
  np.testing.assert_allclose(info.std, pixels.std((0, 1, 2)), rtol=1e-9)


def test_digits_upsampling():
  small = load_dataset("digits")
  big = load_dataset("digits", image_size=16)
  assert big.info.image_shape == (16, 16, 3)
  np.testing.assert_array_equal(big.train.array[:, ::2, ::2], small.train.array)
  np.testing.assert_array_equal(big.train.array[:, 1::2, 1::2], small.train.array)
  np.testing.assert_allclose(big.info.mean, small.info.mean, rtol=1e-9)
  with pytest.raises(InputError, match="multiple of 8"):
    load_dataset("digits", image_size=12)


@pytest.mark.parametrize("bad", [0, -8, "32", 8.0, True])
def test_bad_image_size(bad):
  with pytest.raises(InputError, match="image_size"):
    load_dataset("digits", image_size=bad)


def test_unknown_source_lists_valid_ones():
  with pytest.raises(InputError, match="digits, npz, imagefolder, cifar10, cifar100"):
    load_dataset("mnist")


def test_load_from_config():
  cfg = ml_collections.ConfigDict(
    {"source": "digits", "path": "", "image_size": 16, "mean": (0.5, 0.5, 0.5), "batch": 8}
  )
  ds = sources.load_from_config(cfg)
  assert ds.info.image_shape == (16, 16, 3) and ds.info.mean == (0.5, 0.5, 0.5)
  assert sources.load_from_config({}).info.name == "digits"
  # Locked ConfigDicts keep typed fields: image_size 0 means the native size.
  assert sources.load_from_config({"image_size": 0}).info.image_shape == (8, 8, 3)
  with pytest.raises(InputError, match="mapping"):
    sources.load_from_config(["digits"])


# ----------------------------------------------------------------------------- basics


def test_array_source_access_and_grain():
  x = _rand_images(5)
  src = ArraySource(x, np.array([0, 1, 2, 1, 0], np.int32))
  assert len(src) == 5 and src.labels.dtype == np.int64 and src.image_shape == (8, 8, 3)
  np.testing.assert_array_equal(src[np.int64(2)]["image"], x[2])
  np.testing.assert_array_equal(src[-1]["image"], x[4])
  np.testing.assert_array_equal(src.images(np.array([3, 0])), x[[3, 0]])
  chex.assert_shape(src.images(np.array([], np.int64)), (0, 8, 8, 3))
  with pytest.raises(IndexError):
    src[5]
  with pytest.raises(IndexError):
    src.images([7])
  import grain

  ds = grain.MapDataset.source(src)
  assert len(ds) == 5 and ds[3]["label"] == 1
  with pytest.raises(InputError, match="uint8"):
    ArraySource(x.astype(np.float32), np.zeros(5, np.int64))
  with pytest.raises(InputError, match="one label per image"):
    ArraySource(x, np.zeros(4, np.int64))


def test_dataset_info_json_round_trip():
  info = load_dataset("digits").info
  d = json.loads(json.dumps(info.to_dict()))
  assert DatasetInfo.from_dict(d) == info
  with pytest.raises(InputError, match="inconsistent"):
    DatasetInfo.from_dict({**d, "mean": [0.5, 0.5]})
  with pytest.raises(InputError, match="malformed"):
    DatasetInfo.from_dict({**d, "num_classes": "ten"})
  del d["std"]
  with pytest.raises(InputError, match="std"):
    DatasetInfo.from_dict(d)


class _LazyArray(ImageSource):
  """A lazy source (decodes via _load) over an in-memory array; counts loads."""

  def __init__(self, x):
    self.x, self.labels, self.image_shape, self.loads = x, np.zeros(len(x), np.int64), (2, 2, 3), 0

  def _load(self, index):
    self.loads += 1
    return self.x[index]


def test_lazy_stats_use_fixed_sample():
  x = _rand_images(1500, 2, 2, seed=7)
  src = _LazyArray(x)
  mean, std = types.compute_stats(src)
  assert src.loads == 1000  # A sample, not the whole set.
  assert types.compute_stats(_LazyArray(x)) == (mean, std)  # Fixed seed.
  full = x.astype(np.float64) / 255
  np.testing.assert_allclose(mean, full.mean((0, 1, 2)), atol=0.02)
  np.testing.assert_allclose(std, full.std((0, 1, 2)), atol=0.02)
  small = _LazyArray(x[:10])
  np.testing.assert_allclose(types.compute_stats(small)[0], full[:10].mean((0, 1, 2)))


# ----------------------------------------------------------------------------- npz


def test_npz_round_trip_and_stats(tmp_path):
  path = tmp_path / "toy.npz"
  arrays = _write_npz(path)
  ds = load_dataset("npz", path)
  np.testing.assert_array_equal(ds.train.array, arrays["x_train"])
  np.testing.assert_array_equal(ds.test.labels, arrays["y_test"])
  assert ds.info.name == "toy" and ds.info.label_names == ("ant", "bee", "cat")
  assert (ds.info.num_classes, ds.info.num_train, ds.info.num_test) == (3, 12, 6)
  px = arrays["x_train"].astype(np.float64) / 255
  np.testing.assert_allclose(ds.info.mean, px.mean((0, 1, 2)), rtol=1e-9)
  np.testing.assert_allclose(ds.info.std, px.std((0, 1, 2)), rtol=1e-9)
  # Known names get the standard constants; explicit values override either.
  known = load_dataset("npz", str(path), name="cifar10")
  assert known.info.mean == (0.4914, 0.4822, 0.4465)
  assert known.info.std == (0.2470, 0.2435, 0.2616)
  over = load_dataset("npz", path, name="cifar10", std=(0.1, 0.2, 0.3))
  assert over.info.mean == (0.4914, 0.4822, 0.4465) and over.info.std == (0.1, 0.2, 0.3)
  assert load_dataset("npz", path, image_size=16).info.image_shape == (16, 16, 3)
  # uint8 labels (as in the raw shared files) are accepted and widened.
  _write_npz(path, y_train=(np.arange(12) % 3).astype(np.uint8), label_names=None)
  ds = load_dataset("npz", path)
  assert ds.train.labels.dtype == np.int64 and ds.info.label_names == ("0", "1", "2")


@pytest.mark.parametrize(
  ("overrides", "match"),
  [
    ({"y_test": None}, "lacks the arrays \\['y_test'\\]"),
    ({"x_train": _rand_images(12).astype(np.float32)}, "x_train is float32"),
    # Greyscale is accepted, but both splits need the same channel count.
    ({"x_train": _rand_images(12)[..., 0]}, "x_train images are \\(8, 8, 1\\) but x_test"),
    ({"x_test": _rand_images(6)[..., :1]}, "are \\(8, 8, 3\\) but x_test images are \\(8, 8, 1"),
    ({"x_test": _rand_images(6)[..., :2]}, "x_test is uint8 \\(6, 8, 8, 2\\)"),
    ({"y_train": np.zeros(11, np.int64)}, "one label per image"),
    ({"y_train": np.full(12, 3, np.int64)}, "must lie in \\[0, 3\\)"),
    ({"y_test": -np.ones(6, np.int64)}, "must lie in \\[0, 3\\)"),
    ({"y_train": np.zeros(12, np.float32)}, "integer"),
    ({"x_test": _rand_images(6, 16, 16)}, "share one image shape"),
    ({"label_names": np.array(["a", "b", "c"], dtype=object)}, "without pickle"),
    ({"label_names": np.array([1, 2, 3])}, "str array"),
  ],
)
def test_npz_malformed(tmp_path, overrides, match):
  path = tmp_path / "bad.npz"
  _write_npz(path, **overrides)
  with pytest.raises(InputError, match=match):
    load_dataset("npz", path)


def test_npz_bad_paths(tmp_path):
  with pytest.raises(InputError, match="does not exist"):
    load_dataset("npz", tmp_path / "missing.npz")
  with pytest.raises(InputError, match="needs a path"):
    load_dataset("npz")
  with pytest.raises(InputError, match="expects a file"):
    load_dataset("npz", tmp_path)
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(InputError, match="Cannot read"):
    load_dataset("npz", tmp_path / "junk.npz")
  np.save(tmp_path / "single.npy", np.zeros(3))
  with pytest.raises(InputError, match="single array"):
    load_dataset("npz", tmp_path / "single.npy")


# ----------------------------------------------------------------------------- imagefolder


@pytest.mark.parametrize("test_split", ["test", "val"])
def test_imagefolder_round_trip(tmp_path, test_split):
  expected = _make_imagefolder(tmp_path / "toyset", test_split)
  ds = load_dataset("imagefolder", tmp_path / "toyset")
  assert ds.info.name == "toyset" and ds.info.label_names == ("ant", "bee")
  assert ds.info.image_shape == (8, 8, 3)
  assert (len(ds.train), len(ds.test)) == (6, 4)
  for src, split in ((ds.train, "train"), (ds.test, test_split)):
    x, y = expected[split]
    np.testing.assert_array_equal(src.labels, y)
    np.testing.assert_array_equal(src.images(np.arange(len(src))), x)
    np.testing.assert_array_equal(src[1]["image"], x[1])
  # Lazy source with fewer than 1000 images: statistics over all training images.
  px = expected["train"][0].astype(np.float64) / 255
  np.testing.assert_allclose(ds.info.mean, px.mean((0, 1, 2)), rtol=1e-9)


def test_imagefolder_resize_and_mixed_sizes(tmp_path):
  root = tmp_path / "mixed"
  _make_imagefolder(root)
  odd = _rand_images(1, 12, 20, seed=9)[0]  # 12 high, 20 wide.
  _save_png(str(root / "train" / "bee" / "odd.png"), odd)
  with pytest.raises(InputError, match="odd.png.*image_size"):
    load_dataset("imagefolder", root)
  ds = load_dataset("imagefolder", root, image_size=6)
  assert ds.info.image_shape == (6, 6, 3)
  i = list(ds.train.files).index(str(root / "train" / "bee" / "odd.png"))
  # Shorter side 12 -> 6 (so 20 -> 10), then the central 6 columns.
  want = np.asarray(Image.fromarray(odd).resize((10, 6), Image.BILINEAR))[:, 2:8]
  np.testing.assert_array_equal(ds.train[i]["image"], want)
  chex.assert_shape(ds.test.images([0, 1]), (2, 6, 6, 3))


def test_imagefolder_grayscale_is_replicated(tmp_path):
  _make_imagefolder(tmp_path / "g")
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
  Image.fromarray(gray, mode="L").save(tmp_path / "g" / "train" / "ant" / "zz.png")
  ds = load_dataset("imagefolder", tmp_path / "g")
  np.testing.assert_array_equal(ds.train[3]["image"], np.repeat(gray[..., None], 3, -1))


def test_imagefolder_errors(tmp_path):
  root = tmp_path / "set"
  _make_imagefolder(root)
  with pytest.raises(InputError, match="expects a directory"):
    load_dataset("imagefolder", root / "train" / "ant" / "000.png")
  (root / "test" / "cow").mkdir()
  with pytest.raises(InputError, match="only in test: \\['cow'\\]"):
    load_dataset("imagefolder", root)
  (root / "train" / "cow").mkdir()
  (root / "train" / "cow" / "notes.txt").write_text("x")
  with pytest.raises(InputError, match="cow' holds no image files"):
    load_dataset("imagefolder", root)
  (root / "train" / "cow" / "bad.png").write_bytes(b"not a png")
  (root / "test" / "cow" / "ok.png").write_bytes((root / "test" / "ant" / "000.png").read_bytes())
  with pytest.raises(InputError, match="bad.png"):
    load_dataset("imagefolder", root)
  # With image_size there is no header scan: the bad file fails when decoded (here by the
  # statistics pass, or later by a training batch when mean/std are given).
  with pytest.raises(InputError, match="Cannot decode image file .*bad.png"):
    load_dataset("imagefolder", root, image_size=8)
  ds = load_dataset("imagefolder", root, image_size=8, mean=(0.5,) * 3, std=(0.2,) * 3)
  with pytest.raises(InputError, match="Cannot decode image file .*bad.png"):
    ds.train.images(np.arange(len(ds.train)))
  empty = tmp_path / "empty"
  (empty / "train").mkdir(parents=True)
  with pytest.raises(InputError, match="'train' and a 'test'"):
    load_dataset("imagefolder", empty)
  (empty / "test").mkdir()
  with pytest.raises(InputError, match="no class sub-directories"):
    load_dataset("imagefolder", empty)


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_dir_parent_and_archive(tmp_path, kind):
  d, x_train, y_train, x_test, y_test = _make_cifar(tmp_path, kind)
  archive = tmp_path / (
    "cifar-10-python.tar.gz" if kind == "cifar10" else "cifar-100-python.tar.gz"
  )
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(d, arcname=os.path.basename(d))
  for path in (d, tmp_path, archive):
    ds = load_dataset(kind, path)
    np.testing.assert_array_equal(ds.train.array, x_train)  # CHW rows -> NHWC.
    np.testing.assert_array_equal(ds.train.labels, y_train)
    np.testing.assert_array_equal(ds.test.array, x_test)
    np.testing.assert_array_equal(ds.test.labels, y_test)
  info = ds.info
  assert info.name == kind and info.image_shape == (32, 32, 3)
  assert info.num_classes == (10 if kind == "cifar10" else 100)
  assert info.label_names[1] == ("class1" if kind == "cifar10" else "fine1")
  assert info.mean == types.KNOWN_STATS[kind][0] and info.std == types.KNOWN_STATS[kind][1]
  # An archive beside the unpacked data is also found from the parent directory.
  os.rename(d, tmp_path / "moved")
  np.testing.assert_array_equal(load_dataset(kind, tmp_path).test.array, x_test)


def test_cifar_refuses_malicious_pickle(tmp_path):
  d = _make_cifar(tmp_path)[0]
  marker = tmp_path / "pwned"
  with open(os.path.join(d, "data_batch_3"), "wb") as f:
    pickle.dump(_Evil(marker), f, protocol=2)
  with pytest.raises(InputError, match="posix.system is not allowed|os.system is not allowed"):
    load_dataset("cifar10", d)
  assert not marker.exists()
  # The restricted unpickler itself, on a payload that would otherwise run code.
  with pytest.raises(pickle.UnpicklingError):
    cifar._RestrictedUnpickler(io.BytesIO(pickle.dumps(_Evil(marker)))).load()
  assert not marker.exists()


def test_cifar_errors(tmp_path):
  with pytest.raises(InputError, match="does not hold the official cifar10"):
    load_dataset("cifar10", tmp_path)
  (tmp_path / "x.bin").write_bytes(b"123")
  with pytest.raises(InputError, match="neither a directory nor a tar archive"):
    load_dataset("cifar10", tmp_path / "x.bin")
  d = _make_cifar(tmp_path)[0]
  os.remove(os.path.join(d, "data_batch_5"))
  with pytest.raises(InputError, match="data_batch_5' is missing"):
    load_dataset("cifar10", d)
  _dump(os.path.join(d, "data_batch_5"), {b"labels": [10], b"data": np.zeros((1, 3072), np.uint8)})
  with pytest.raises(InputError, match="must lie in \\[0, 10\\)"):
    load_dataset("cifar10", d)
  _dump(os.path.join(d, "data_batch_5"), {b"labels": [1], b"data": np.zeros((1, 1024), np.uint8)})
  with pytest.raises(InputError, match="not 3072"):
    load_dataset("cifar10", d)
  archive = tmp_path / "partial.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(os.path.join(d, "batches.meta"), arcname="cifar-10-batches-py/batches.meta")
  with pytest.raises(InputError, match="lacks .*data_batch_1"):
    load_dataset("cifar10", archive)


# ----------------------------------------------------------------------------- Tiny-ImageNet


def _make_tinyimagenet(root):
  wnids = ["n02", "n01", "n03"]  # wnids.txt order (not sorted) defines the labels.
  (root / "train").mkdir(parents=True)
  (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
  (root / "words.txt").write_text(
    "n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tcat\nn03\tbee, honeybee\n"
  )
  for i, wnid in enumerate(wnids):
    (root / "train" / wnid / "images").mkdir(parents=True)
    (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    for j in range(2):
      img = Image.fromarray(_rand_images(1, 64, 64, seed=10 * i + j)[0])
      if (i, j) == (1, 1):
        img = img.convert("L")  # Tiny-ImageNet has some grayscale JPEGs.
      img.save(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", quality=90)
  (root / "val" / "images").mkdir(parents=True)
  lines = []
  for k, wnid in enumerate(["n03", "n02", "n01"]):
    Image.fromarray(_rand_images(1, 64, 64, seed=50 + k)[0]).save(
      root / "val" / "images" / f"val_{k}.JPEG"
    )
    lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
  (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tinyimagenet_round_trip(tmp_path):
  root = tmp_path / "tiny-imagenet-200"
  _make_tinyimagenet(root)
  for path in (root, tmp_path):  # The dataset directory or its parent.
    ds = load_dataset("tinyimagenet", path)
    assert ds.info.label_names == ("cat", "goldfish", "bee")
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(ds.test.labels, [2, 0, 1])
  assert ds.info.image_shape == (64, 64, 3) and ds.info.name == "tinyimagenet"
  assert ds.info.mean == (0.485, 0.456, 0.406)
  gray = ds.train[3]["image"]
  want = np.asarray(Image.open(root / "train" / "n01" / "images" / "n01_1.JPEG").convert("RGB"))
  np.testing.assert_array_equal(gray, want)
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
  small = load_dataset("tinyimagenet", root, image_size=32)
  chex.assert_shape(small.test.images([0, 2]), (2, 32, 32, 3))
  (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
  with pytest.raises(InputError, match="n99"):
    load_dataset("tinyimagenet", root)
  with pytest.raises(InputError, match="no wnids.txt"):
    load_dataset("tinyimagenet", root / "train")


# ----------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A real TFDS array_record dataset directory, prepared without TensorFlow.

  Two datasets: ``infer_jax_test_rgb`` (fixed 8x8x3, train/test) and
  ``infer_jax_test_gray`` (variable-size grayscale, train/validation).
  Returns (data_dir, {name: {split: (images, labels)}}).
  """
  data_dir = tmp_path_factory.mktemp("tfds")
  rng = np.random.default_rng(11)
  truth = {
    "infer_jax_test_rgb": {
      "train": (rng.integers(0, 256, (10, 8, 8, 3), np.uint8), rng.integers(0, 3, 10)),
      "test": (rng.integers(0, 256, (4, 8, 8, 3), np.uint8), rng.integers(0, 3, 4)),
    },
    "infer_jax_test_gray": {
      "train": (
        [rng.integers(0, 256, (6 + i, 8, 1), np.uint8) for i in range(5)],
        np.arange(5) % 2,
      ),
      "validation": ([rng.integers(0, 256, (8, 9, 1), np.uint8)] * 2, np.array([1, 0])),
    },
  }

  def png(a):
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG")
    return buf.getvalue()

  def make(builder_name, shape, names):
    # skip_registration keeps the test builders out of tfds's global registry; reading
    # back then goes through tfds's ReadOnlyBuilder, exactly as for a copied data_dir.
    class TinyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
      name = builder_name
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        features = tfds.features.FeaturesDict(
          {
            "image": tfds.features.Image(shape=shape),
            "label": tfds.features.ClassLabel(names=names),
          }
        )
        return tfds.core.DatasetInfo(
          builder=self, features=features, supervised_keys=("image", "label")
        )

      def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in truth[builder_name]}

      def _generate_examples(self, split):
        # Already-encoded PNG bytes: tfds stores them as they are, so no TensorFlow image
        # encoder is needed to prepare the dataset.
        x, y = truth[builder_name][split]
        for i in range(len(y)):
          yield i, {"image": png(x[i]), "label": int(y[i])}

    TinyBuilder(data_dir=str(data_dir), file_format="array_record").download_and_prepare()

  make("infer_jax_test_rgb", (8, 8, 3), ["red", "green", "blue"])
  make("infer_jax_test_gray", (None, None, 1), ["even", "odd"])
  return str(data_dir), truth


def test_tfds_round_trip(tfds_dir):
  data_dir, truth = tfds_dir
  ds = load_dataset("tfds", tfds_name="infer_jax_test_rgb", data_dir=data_dir)
  info = ds.info
  assert info.name == "infer_jax_test_rgb" and info.label_names == ("red", "green", "blue")
  assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (
    3,
    (8, 8, 3),
    10,
    4,
  )
  for src, split in ((ds.train, "train"), (ds.test, "test")):
    x, y = truth["infer_jax_test_rgb"][split]
    got = src.images(np.arange(len(src)))
    # Preparation shuffles records: match every image to its original (PNG is lossless).
    order = [next(j for j in range(len(x)) if np.array_equal(g, x[j])) for g in got]
    assert sorted(order) == list(range(len(x)))
    np.testing.assert_array_equal(src.labels, y[order])
    assert src.labels.dtype == np.int64
    item = src[2]
    np.testing.assert_array_equal(item["image"], got[2])
    assert item["label"] == src.labels[2] and isinstance(item["label"], np.int64)
  # Statistics computed from the (lazily decoded) training images.
  px = truth["infer_jax_test_rgb"]["train"][0].astype(np.float64) / 255
  np.testing.assert_allclose(info.mean, px.mean((0, 1, 2)), rtol=1e-9)
  # grain worker processes receive pickled sources; labels travel with them.
  clone = pickle.loads(pickle.dumps(ds.train))
  np.testing.assert_array_equal(clone.labels, ds.train.labels)
  np.testing.assert_array_equal(clone[0]["image"], ds.train[0]["image"])


def test_tfds_variable_size_grayscale_validation_split(tfds_dir):
  data_dir, truth = tfds_dir
  with pytest.raises(InputError, match="variable size.*image_size"):
    load_dataset("tfds", tfds_name="infer_jax_test_gray", data_dir=data_dir)
  ds = load_dataset("tfds", tfds_name="infer_jax_test_gray", data_dir=data_dir, image_size=8)
  # A greyscale image feature stays one channel; 'validation' serves as the test split.
  assert ds.info.image_shape == (8, 8, 1) and len(ds.test) == 2
  img = ds.test[0]["image"]
  assert img.shape == (8, 8, 1)
  x = truth["infer_jax_test_gray"]["validation"][0][0][..., 0]  # 8x9 -> center 8x8.
  np.testing.assert_array_equal(img[..., 0], np.asarray(Image.fromarray(x).crop((0, 0, 8, 8))))
  assert len(ds.info.mean) == 1 and len(ds.info.std) == 1
  assert sorted(ds.train.labels.tolist()) == [0, 0, 0, 1, 1]


def test_tfds_label_cache(tfds_dir):
  data_dir, _ = tfds_dir
  version_dir = os.path.join(data_dir, "infer_jax_test_rgb", "1.0.0")
  cache = os.path.join(version_dir, "infer_jax_labels-train.npy")
  if os.path.exists(cache):
    os.remove(cache)
  first = load_dataset("tfds", tfds_name="infer_jax_test_rgb", data_dir=data_dir)
  labels = first.train.labels.copy()
  np.testing.assert_array_equal(np.load(cache), labels)

  def boom():
    raise AssertionError("labels must come from the cache")

  again = load_dataset("tfds", tfds_name="infer_jax_test_rgb", data_dir=data_dir)
  again.train._label_reader = boom
  np.testing.assert_array_equal(again.train.labels, labels)
  # A cache that does not fit the split (stale or damaged) is ignored and rewritten.
  np.save(cache, np.zeros(3, np.int64))
  stale = load_dataset("tfds", tfds_name="infer_jax_test_rgb", data_dir=data_dir)
  np.testing.assert_array_equal(stale.train.labels, labels)
  np.testing.assert_array_equal(np.load(cache), labels)


def test_tfds_errors(tfds_dir, tmp_path):
  data_dir, _ = tfds_dir
  with pytest.raises(InputError, match="needs tfds_name"):
    load_dataset("tfds", data_dir=data_dir)
  with pytest.raises(InputError, match="does not exist"):
    load_dataset("tfds", tfds_name="infer_jax_test_rgb", data_dir=tmp_path / "nope")
  with pytest.raises(InputError, match="Cannot open TFDS dataset.*array_record"):
    load_dataset("tfds", tfds_name="infer_jax_test_missing", data_dir=data_dir)


# ----------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_shared_cifar10_fixture_npz_and_imagefolder_agree(shared_data, tmp_path):
  script = str(shared_data / "prepare.py")
  for fmt in ("npz", "imagefolder"):
    subprocess.run(
      [sys.executable, script, "cifar10-fixture", str(tmp_path), "--format", fmt],
      check=True,
      capture_output=True,
    )
  a = load_dataset("npz", tmp_path / "cifar10-fixture.npz")
  b = load_dataset("imagefolder", tmp_path / "cifar10-fixture")
  assert a.info.label_names[:2] == ("airplane", "automobile")
  assert b.info.label_names[:2] == ("0000", "0001")  # prepare.py names folders by index.
  for x, y in ((a.train, b.train), (a.test, b.test)):
    assert len(x) == len(y) and (len(a.train), len(a.test)) == (200, 100)
    np.testing.assert_array_equal(np.sort(x.labels), np.sort(y.labels))
    # Image folders list files by class; reorder the npz side the same way (stable).
    order = np.argsort(x.labels, kind="stable")
    np.testing.assert_array_equal(x.labels[order], y.labels)
    np.testing.assert_array_equal(x.array[order], y.images(np.arange(len(y))))
  assert a.info.image_shape == b.info.image_shape == (32, 32, 3)
  np.testing.assert_allclose(a.info.mean, b.info.mean, rtol=1e-12)
  np.testing.assert_allclose(a.info.std, b.info.std, rtol=1e-12)
