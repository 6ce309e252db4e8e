"""Single-channel (greyscale) data, stage by stage and end to end.

A greyscale dataset stays one channel from the reader to the exported PNGs: sources return
``[H, W, 1]`` with one-value mean/std, the pipeline normalises and crops one channel, every
model family takes a 1-channel stem, the set format round-trips ``[..., 1]`` arrays and
export writes 8-bit 'L' PNGs. Expectations are computed here with NumPy and Pillow.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from infer_jax import export, report, synthetic
from infer_jax.data import pipeline, sources
from infer_jax.data.types import ArraySource, DatasetInfo
from infer_jax.models import registry
from infer_jax.runtime.errors import InputError
from tests.conftest import REPO


def _grey(n, h=8, w=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def _write_npz(path, x, y, xt=None, yt=None):
  xt = x[:4] if xt is None else xt
  yt = y[:4] if yt is None else yt
  np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
  return str(path)


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("with_axis", [False, True], ids=["NHW", "NHW1"])
def test_npz_of_greyscale_images_is_one_channel(tmp_path, with_axis):
  x = _grey(12)
  y = np.arange(12) % 3
  stored = x[..., None] if with_axis else x
  ds = sources.load_dataset("npz", _write_npz(tmp_path / "g.npz", stored, y))
  assert ds.info.image_shape == (8, 8, 1)
  np.testing.assert_array_equal(ds.train.images(np.arange(12)), x[..., None])
  assert ds.train[5]["image"].shape == (8, 8, 1)
  # Statistics of the one channel: population mean/std of the pixels scaled to [0, 1].
  px = x.astype(np.float64) / 255
  np.testing.assert_allclose(ds.info.mean, [px.mean()], rtol=1e-12)
  np.testing.assert_allclose(ds.info.std, [px.std()], rtol=1e-12)
  # Upsampling keeps the channel axis: nearest neighbour by 2.
  up = sources.load_dataset("npz", tmp_path / "g.npz", image_size=16)
  np.testing.assert_array_equal(up.train.images([0])[0, ::2, ::2, 0], x[0])
  assert up.info.image_shape == (16, 16, 1)


def test_greyscale_mean_std_take_one_value_each(tmp_path):
  path = _write_npz(tmp_path / "g.npz", _grey(12), np.arange(12) % 3)
  ds = sources.load_dataset("npz", path, mean=(0.5,), std=(0.25,))
  assert (ds.info.mean, ds.info.std) == ((0.5,), (0.25,))
  with pytest.raises(InputError, match=r"mean must be one finite number .*greyscale.*\(0\.5,\)"):
    sources.load_dataset("npz", path, mean=(0.5, 0.5, 0.5), std=(0.25,))
  # A greyscale copy of a known RGB dataset gets its own statistics, not the RGB constants.
  named = sources.load_dataset("npz", path, name="cifar10")
  np.testing.assert_allclose(named.info.mean, [_grey(12).mean() / 255], rtol=1e-12)
  # DatasetInfo round-trips through its dict form with one channel.
  assert DatasetInfo.from_dict(json.loads(json.dumps(ds.info.to_dict()))) == ds.info


def test_image_folder_of_greyscale_pngs_is_one_channel(tmp_path):
  root = tmp_path / "letters"
  imgs = {}
  for split, n in (("train", 3), ("test", 1)):
    for c, name in enumerate(("ant", "bee")):
      (root / split / name).mkdir(parents=True)
      for i in range(n):
        a = _grey(1, 8, 10, seed=100 * c + 10 * i + len(split))[0]
        Image.fromarray(a, mode="L").save(root / split / name / f"{i}.png")
        imgs[(split, name, i)] = a
  ds = sources.load_dataset("imagefolder", root)
  assert ds.info.image_shape == (8, 10, 1) and len(ds.info.mean) == 1
  np.testing.assert_array_equal(ds.train[4]["image"][..., 0], imgs[("train", "bee", 1)])
  np.testing.assert_array_equal(ds.test[0]["image"][..., 0], imgs[("test", "ant", 0)])
  # Resized: shorter side 8 -> 12 (so 10 -> 15), then the central 12 columns, in 'L' mode.
  big = sources.load_dataset("imagefolder", root, image_size=12)
  assert big.info.image_shape == (12, 12, 1)
  a = imgs[("train", "ant", 0)]
  want = np.asarray(Image.fromarray(a, mode="L").resize((15, 12), Image.BILINEAR))[:, 1:13]
  np.testing.assert_array_equal(big.train[0]["image"][..., 0], want)
  # One colour file makes the dataset RGB; the greyscale files are then replicated.
  rgb = np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(root / "train" / "ant" / "9.png")
  mixed = sources.load_dataset("imagefolder", root)
  assert mixed.info.image_shape == (8, 10, 3)
  np.testing.assert_array_equal(mixed.train[0]["image"], np.repeat(a[..., None], 3, -1))


@pytest.mark.parametrize(
  ("side", "hint"), [(4, "image_size=8"), (7, "image_size=14"), (5, "image_size=10")]
)
def test_images_under_8x8_are_refused_naming_the_minimum(tmp_path, side, hint):
  path = _write_npz(tmp_path / "s.npz", _grey(12, side, side), np.arange(12) % 3)
  with pytest.raises(InputError) as e:
    sources.load_from_config({"source": "npz", "path": path})
  msg = str(e.value)
  assert "\n" not in msg and f"{side}x{side} images" in msg and "smallest size" in msg
  assert "8x8" in msg and hint in msg
  # The suggested size works: a multiple of the side (in-memory upsampling), at least 8.
  size = int(hint.split("=")[1])
  ds = sources.load_from_config({"source": "npz", "path": path, "image_size": size})
  assert ds.info.image_shape == (size, size, 1)
  # 8x8 itself is accepted.
  path = _write_npz(tmp_path / "e.npz", _grey(12), np.arange(12) % 3)
  assert sources.load_from_config({"source": "npz", "path": path}).info.image_shape == (8, 8, 1)


# --------------------------------------------------------------------------- pipeline


def test_normalize_with_one_channel_statistics():
  x = _grey(3)[..., None]
  got = np.asarray(pipeline.normalize(x, (0.25,), (0.5,)))
  want = (x.astype(np.float32) / np.float32(255.0) - np.float32(0.25)) / np.float32(0.5)
  assert got.shape == (3, 8, 8, 1)
  # XLA may divide by 255 as a multiply by its reciprocal: float32 rounding apart.
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # The set format's host-side normalisation is the same expression.
  np.testing.assert_allclose(synthetic.normalize_uint8(x, (0.25,), (0.5,)), want, rtol=1e-6)


def test_augmented_batches_of_greyscale_images():
  x = _grey(16)[..., None]
  src = ArraySource(x, np.arange(16) % 4)
  for augment in ("crop_flip", "rrc_flip"):
    with pipeline.train_iterator(
      src, batch_size=8, seed=0, num_epochs=1, augment=augment, crop_padding=2, prefetch=0
    ) as it:
      batch = next(it)
    assert batch["image"].shape == (8, 8, 8, 1) and batch["image"].dtype == jnp.uint8
  # A random-resized crop of one channel equals Pillow's 'L' resize of the same window.
  got = pipeline.resized_crop(x[0], 1, 2, 5, 6, (8, 8))
  want = np.asarray(
    Image.fromarray(x[0, ..., 0], mode="L").resize((8, 8), Image.BILINEAR, box=(2, 1, 8, 6))
  )
  np.testing.assert_array_equal(got, want[..., None])


# --------------------------------------------------------------------------- models


FAMILIES = [
  "convnet_tiny",
  "resnet_tiny",
  "mobilenetv2_tiny",
  "efficientnet_tiny",
  "shufflenet_g2_tiny",
  "shufflenetv2_tiny",
]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_takes_one_input_channel(name):
  """A 1-channel model equals a 3-channel one fed the replicated image whose stem kernel
  is the 1-channel kernel split evenly over the three input channels."""
  model = registry.create_model(name, 5)
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)

  # Shapes only (no init program to compile); random values, positive BN variances.
  def shapes(x):
    return traverse_util.flatten_dict(
      jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    )

  flat1, flat3 = shapes(x), shapes(x.repeat(3, -1))
  rng = np.random.default_rng(1)
  for k, a in flat1.items():
    draw = rng.uniform(0.5, 1.5, a.shape) if k[-1] == "var" else rng.normal(0, 0.3, a.shape)
    flat1[k] = draw.astype(a.dtype)
  v1 = traverse_util.unflatten_dict(flat1)
  stems = [k for k in flat1 if flat1[k].shape != flat3[k].shape]
  assert stems, "no parameter depends on the input channels"
  for k in stems:  # the stem kernels: [kh, kw, 1, F] against [kh, kw, 3, F]
    assert flat1[k].shape[-2] == 1 and flat3[k].shape[-2] == 3
    flat3[k] = np.repeat(flat1[k] / 3, 3, axis=-2)
  for k in flat1:
    if k not in stems:
      flat3[k] = flat1[k]
  v3 = traverse_util.unflatten_dict(flat3)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  out1 = np.asarray(apply(v1, jnp.asarray(x)))
  out3 = np.asarray(apply(v3, jnp.asarray(np.repeat(x, 3, -1))))
  assert out1.shape == (2, 5) and np.isfinite(out1).all()
  np.testing.assert_allclose(out1, out3, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- set format, export


def _grey_set(k=2, m=2, c=3, h=8, w=9):
  rng = np.random.default_rng(3)
  mean, std = [0.4], [0.2]
  return synthetic.SyntheticSet(
    images=rng.integers(0, 256, (k, c, h, w, 1), dtype=np.uint8),
    source_indices=rng.integers(0, 50, (k, c)).astype(np.int64),
    compensators=rng.normal(0, 0.5, (k, m, h, w, 1)).astype(np.float32),
    labels=rng.normal(size=(k, m + 1, c, c)).astype(np.float32),
    metadata={
      "num_classes": c,
      "image_shape": [h, w, 1],
      "mean": mean,
      "std": std,
      "K": k,
      "M": m,
      "dataset": "grey",
    },
  )


def _expected_instances(s):
  """Every instance by the format's definition, in NumPy."""
  mean, std = np.float32(s.metadata["mean"][0]), np.float32(s.metadata["std"][0])
  lo, hi = (np.float32(0) - mean) / std, (np.float32(1) - mean) / std
  out = []
  for k in range(s.K):
    for m in range(s.M + 1):
      for c in range(s.C):
        x = (s.images[k, c].astype(np.float32) / np.float32(255) - mean) / std
        out.append(x if m == 0 else np.clip(x + s.compensators[k, m - 1], lo, hi))
  return np.stack(out)


def test_set_format_round_trips_one_channel(tmp_path):
  s = _grey_set()
  path = str(tmp_path / "g.npz")
  synthetic.save(path, s)
  back = synthetic.load(path, expected={"dataset": "grey"})
  np.testing.assert_array_equal(back.images, s.images)
  np.testing.assert_array_equal(back.compensators, s.compensators)
  assert back.metadata["image_shape"] == [8, 9, 1]
  assert (back.metadata["mean"], back.metadata["std"]) == ([0.4], [0.2])
  instances, _, _ = synthetic.materialize(back)
  np.testing.assert_allclose(instances, _expected_instances(s), rtol=1e-6, atol=1e-6)
  assert synthetic.storage_bytes(s)["images"] == 2 * 3 * 8 * 9
  # Normalisation of the wrong length for the channel count is refused, naming both.
  bad = _grey_set()
  bad.metadata["mean"] = [0.4, 0.4, 0.4]
  with pytest.raises(InputError, match=r"must be 1 finite float.*one per channel"):
    bad.validate()


def test_png_export_of_a_greyscale_set_is_mode_L(tmp_path):
  s = _grey_set()
  out = tmp_path / "png"
  export.export_png(s, str(out))
  rows = list(csv_row.split(",") for csv_row in (out / "files.csv").read_text().splitlines()[1:])
  expected = _expected_instances(s)
  mean, std = np.float32(0.4), np.float32(0.2)
  assert len(rows) == s.num_instances
  for file, _, instance, k, m, c in rows:
    with Image.open(out / file) as img:
      assert img.mode == "L" and img.size == (9, 8)
      pixels = np.asarray(img)
    want = np.clip(np.rint((expected[int(instance)][..., 0] * std + mean) * 255), 0, 255)
    np.testing.assert_array_equal(pixels, want.astype(np.uint8))
    if m == "0":  # the stored image comes back exactly
      np.testing.assert_array_equal(pixels, s.images[int(k), int(c), ..., 0])


# --------------------------------------------------------------------------- end to end


def test_distill_export_report_on_a_greyscale_npz(tmp_path):
  """A 10-class 16x16 (N, H, W) npz through distill (its command line), export and report."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 60, (10, 6, 16, 16), dtype=np.uint8)
  for c in range(10):  # a bright block whose place is the class
    r, q = divmod(c, 4)
    x[c, :, 5 * r : 5 * r + 5, 4 * q : 4 * q + 4] = 200
  x = x.reshape(60, 16, 16)
  y = np.repeat(np.arange(10), 6)
  data = _write_npz(tmp_path / "grey.npz", x, y, x[::3], y[::3])
  workdir = tmp_path / "work"
  env = dict(os.environ, JAX_PLATFORMS="cpu")

  def run(*args):
    r = subprocess.run(
      [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r

  run(
    "infer_jax.distill",
    "--config=configs/tiny.py",
    f"--config.workdir={workdir}",
    "--config.data.source=npz",
    f"--config.data.path={data}",
    "--config.teachers=resnet_tiny",
    "--config.methods=infer",
    "--config.ipc=2",
    "--config.squeeze.epochs=1",
    "--config.squeeze.batch_size=16",
    "--config.recover.iterations=2",
    "--config.student.epochs=1",
    "--config.student.batch_size=8",
  )
  px = x.astype(np.float64) / 255
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["dataset"]["image_shape"] == [16, 16, 1]
  np.testing.assert_allclose(summary["dataset"]["mean"], [px.mean()], rtol=1e-12)
  np.testing.assert_allclose(summary["dataset"]["std"], [px.std()], rtol=1e-12)
  assert [row["key"] for row in summary["rows"]] == ["infer"]
  s = synthetic.load(str(workdir / "synthetic" / "infer.npz"))
  assert s.images.shape[2:] == (16, 16, 1) and s.compensators.shape[-1] == 1
  assert s.metadata["image_shape"] == [16, 16, 1]
  np.testing.assert_allclose(s.metadata["mean"], [px.mean()], rtol=1e-12)
  np.testing.assert_allclose(s.metadata["std"], [px.std()], rtol=1e-12)
  # The set's real images are training images, one channel.
  k, c = np.nonzero(s.source_indices >= 0)
  np.testing.assert_array_equal(s.images[k, c, ..., 0], x[s.source_indices[k, c]])

  # Export and report in this process: their command lines are these main()s' arguments.
  assert export.main([str(workdir / "synthetic" / "infer.npz"), str(tmp_path / "png")]) == 0
  pngs = sorted((tmp_path / "png").rglob("*.png"))
  assert len(pngs) == s.num_instances
  for p in pngs:
    with Image.open(p) as img:
      assert img.mode == "L" and img.size == (16, 16)

  assert report.main([str(workdir / "summary.json"), "--out", str(tmp_path / "r" / "res.md")]) == 0
  markdown = (tmp_path / "r" / "res.md").read_text()
  assert "16x16x1" in markdown
  assert (tmp_path / "r" / "figures" / "accuracy_vs_compression.png").is_file()
