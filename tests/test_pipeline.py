"""Tests of the grain input pipelines (infer_jax.data.pipeline)."""

import dataclasses
import json

import chex
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infer_jax.data import pipeline
from infer_jax.runtime.errors import InputError


@dataclasses.dataclass
class _Source:
  """In-memory source with the ImageSource protocol (kept local: tests need no sources.py)."""

  images: np.ndarray  # uint8 [N, H, W, 3]
  labels: np.ndarray  # int64 [N]

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": np.int64(self.labels[i])}


def _random_source(n=40, size=8, seed=0):
  """n random images [size, size, 3]; label i identifies example i."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  return _Source(images, np.arange(n, dtype=np.int64))


def _host(batch):
  """jax batch -> dict of numpy arrays."""
  return {k: np.asarray(v) for k, v in batch.items()}


def _take(it, k):
  return [_host(next(it)) for _ in range(k)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


# --- normalize --------------------------------------------------------------------------------


def test_normalize_exact_values():
  images = np.array([[[[0, 255, 51]]]], np.uint8)  # [1, 1, 1, 3]
  mean, std = (0.5, 0.25, 0.2), (0.5, 0.25, 0.1)
  out = jax.jit(pipeline.normalize)(images, mean, std)
  chex.assert_shape(out, (1, 1, 1, 3))
  chex.assert_type(out, np.float32)
  # (0/255 - .5)/.5 = -1, (1 - .25)/.25 = 3, (.2 - .2)/.1 = 0
  np.testing.assert_allclose(np.asarray(out).ravel(), [-1.0, 3.0, 0.0], atol=1e-6)


# --- augmentation primitives -------------------------------------------------------------------


def test_pad_crop_is_a_window_of_the_zero_padded_image():
  image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3) + 1  # no zero pixels
  padded = np.pad(image[0], ((2, 2), (2, 2), (0, 0)))
  for top in range(5):
    for left in range(5):
      out = pipeline.pad_crop(image, np.array([top]), np.array([left]), padding=2)
      np.testing.assert_array_equal(out[0], padded[top : top + 4, left : left + 4])
  # The centre window is the image itself.
  np.testing.assert_array_equal(pipeline.pad_crop(image, np.array([2]), np.array([2]), 2), image)


def test_flip_lr_mirrors_only_selected_images():
  images = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
  out = pipeline.flip_lr(images.copy(), np.array([True, False]))
  np.testing.assert_array_equal(out[0], images[0, :, ::-1])
  np.testing.assert_array_equal(out[1], images[1])


def test_rrc_params_windows_fit_and_fallback_is_centred():
  rng = np.random.default_rng(0)
  heights = rng.integers(5, 40, 200)
  widths = rng.integers(5, 40, 200)
  top, left, h, w = pipeline.rrc_params(rng, heights, widths, (0.08, 1.0), (3 / 4, 4 / 3))
  assert np.all((h > 0) & (w > 0) & (top >= 0) & (left >= 0))
  assert np.all((top + h <= heights) & (left + w <= widths))
  # An aspect ratio no window of full area can have: every try fails -> centred fallback
  # with the ratio clamped to 2 (torchvision: w = W, h = round(W / 2)).
  top, left, h, w = pipeline.rrc_params(rng, np.array([10]), np.array([10]), (1, 1), (2, 2))
  assert (top[0], left[0], h[0], w[0]) == (2, 0, 5, 10)


def test_resized_crop_resizes_window_with_pillow():
  image = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
  out = pipeline.resized_crop(image, 2, 3, 6, 8, (4, 4))
  chex.assert_shape(out, (4, 4, 3))
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(pipeline.resized_crop(image, 2, 3, 6, 8, (6, 8)), image[2:8, 3:11])


# --- training iterator: augmentation through the pipeline ---------------------------------------


def _tiny_source(n=6, size=5):
  """Images whose every pixel is unique and non-zero, so a crop identifies its window."""
  base = np.arange(1, size * size * 3 + 1).reshape(size, size, 3)
  images = np.stack([base + 30 * k for k in range(n)])  # distinct examples, all <= 255
  assert images.max() <= 255
  return _Source(images.astype(np.uint8), np.arange(n, dtype=np.int64))


def test_crop_flip_outputs_are_windows_of_the_padded_image():
  src = _tiny_source()
  p, size = 2, 5
  it = pipeline.train_iterator(
    src, batch_size=3, seed=1, num_epochs=6, augment="crop_flip", crop_padding=p
  )
  seen_windows, seen_flips = set(), set()
  for batch in it:
    b = _host(batch)
    chex.assert_shape(b["image"], (3, size, size, 3))
    assert b["image"].dtype == np.uint8 and b["label"].dtype == np.int32
    for img, label in zip(b["image"], b["label"], strict=True):
      padded = np.pad(src.images[label], ((p, p), (p, p), (0, 0)))
      matches = [
        (t, lft, f)
        for t in range(2 * p + 1)
        for lft in range(2 * p + 1)
        for f in (False, True)
        if np.array_equal(img, (lambda x: x[:, ::-1] if f else x)(padded[t : t + 5, lft : lft + 5]))
      ]
      assert matches, f"output for example {label} is not a window of its padded image"
      seen_windows.add(matches[0][:2])
      seen_flips.add(matches[0][2])
  assert len(seen_windows) > 3 and seen_flips == {False, True}  # really random


def test_flip_only_mirrors():
  src = _random_source(n=16, size=4)
  it = pipeline.train_iterator(src, batch_size=8, seed=0, num_epochs=2, augment="flip")
  flips = []
  for batch in it:
    b = _host(batch)
    for img, label in zip(b["image"], b["label"], strict=True):
      orig = src.images[label]
      assert np.array_equal(img, orig) or np.array_equal(img, orig[:, ::-1])
      flips.append(not np.array_equal(img, orig))
  assert 0 < sum(flips) < len(flips)


def test_rrc_output_shape_and_identity_window():
  src = _random_source(n=16, size=8)
  it = pipeline.train_iterator(
    src, batch_size=8, seed=0, num_epochs=1, augment="rrc_flip", output_size=6
  )
  b = _host(next(it))
  chex.assert_shape(b["image"], (8, 6, 6, 3))
  assert b["image"].dtype == np.uint8
  # Full area at aspect 1 on a square image: the crop is the image (possibly mirrored).
  it = pipeline.train_iterator(
    src, batch_size=8, seed=0, num_epochs=1, augment="rrc_flip", rrc_scale=(1, 1), rrc_ratio=(1, 1)
  )
  for batch in it:
    b = _host(batch)
    for img, label in zip(b["image"], b["label"], strict=True):
      orig = src.images[label]
      assert np.array_equal(img, orig) or np.array_equal(img, orig[:, ::-1])


# --- training iterator: order, determinism, resume ----------------------------------------------


def test_every_example_once_per_epoch():
  src = _random_source(n=53)
  it = pipeline.train_iterator(src, batch_size=10, seed=3, num_epochs=3, augment="none")
  assert it.steps_per_epoch == 5 and it.num_steps == 15
  batches = [_host(b) for b in it]
  assert len(batches) == 15
  for e in range(3):
    labels = np.concatenate([b["label"] for b in batches[5 * e : 5 * e + 5]])
    assert len(set(labels.tolist())) == 50  # 3 dropped per epoch, no repeats
    for b in batches[5 * e : 5 * e + 5]:  # images belong to their labels
      np.testing.assert_array_equal(b["image"], src.images[b["label"]])
  # Without drop_remainder the partial batch is yielded and the epoch covers everything.
  it = pipeline.train_iterator(
    src, batch_size=10, seed=3, num_epochs=1, augment="none", drop_remainder=False
  )
  labels = np.concatenate([_host(b)["label"] for b in it])
  assert sorted(labels.tolist()) == list(range(53))


def test_same_seed_same_batches_different_seed_different_order():
  src = _random_source(n=40)
  make = lambda seed, prefetch=2: pipeline.train_iterator(
    src, batch_size=8, seed=seed, num_epochs=2, prefetch=prefetch
  )
  a = [_host(b) for b in make(0)]
  _assert_same(a, [_host(b) for b in make(0, prefetch=0)])  # prefetching changes nothing
  c = [_host(b) for b in make(1)]
  assert not np.array_equal(
    np.concatenate([x["label"] for x in a]), np.concatenate([x["label"] for x in c])
  )


def test_epochs_differ_in_order():
  src = _random_source(n=40)
  it = pipeline.train_iterator(src, batch_size=40, seed=0, num_epochs=3, augment="none")
  orders = [_host(b)["label"] for b in it]
  assert all(sorted(o.tolist()) == list(range(40)) for o in orders)
  assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


@pytest.mark.parametrize("stop_at", [3, 5, 7])  # mid-epoch, epoch boundary, second epoch
def test_resume_continues_exactly(stop_at):
  src = _random_source(n=40)
  make = lambda: pipeline.train_iterator(src, batch_size=8, seed=7, num_epochs=3)
  full = _take(make(), 15)

  it = make()
  head = _take(it, stop_at)
  state = json.loads(json.dumps(it.get_state()))  # as stored in a checkpoint
  assert state["step"] == stop_at
  it.close()

  resumed = make()
  resumed.set_state(state)
  assert resumed.step == stop_at and resumed.epoch == stop_at // 5
  tail = [_host(b) for b in resumed]  # runs to the end of the 3 epochs
  _assert_same(head + tail, full)


def test_resume_in_place_and_forever():
  src = _random_source(n=40)
  it = pipeline.train_iterator(src, batch_size=8, seed=7, num_epochs=None)
  assert it.num_steps is None
  first = _take(it, 4)
  state = it.get_state()
  more = _take(it, 8)
  it.set_state(state)  # rewinding a live (prefetching) iterator
  _assert_same(_take(it, 8), more)
  it.set_state({**state, "step": 0})
  _assert_same(_take(it, 4), first)


def test_set_state_rejects_other_configuration():
  src = _random_source(n=40)
  state = pipeline.train_iterator(src, batch_size=8, seed=7, num_epochs=1).get_state()
  other = pipeline.train_iterator(src, batch_size=8, seed=8, num_epochs=1)
  with pytest.raises(InputError, match="seed"):
    other.set_state(state)
  with pytest.raises(InputError):
    other.set_state({"foo": 1})


# --- sharding and batch-size checks -------------------------------------------------------------


def _data_sharding():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  return NamedSharding(mesh, PartitionSpec("data"))


def test_batches_are_sharded_over_all_devices():
  n_dev = len(jax.devices())
  src = _random_source(n=64)
  batch_size = 2 * n_dev
  sharded = pipeline.train_iterator(
    src, batch_size=batch_size, seed=0, num_epochs=1, sharding=_data_sharding()
  )
  single = pipeline.train_iterator(src, batch_size=batch_size, seed=0, num_epochs=1)
  b, ref = next(sharded), next(single)
  _assert_same([_host(b)], [_host(ref)])  # placement does not change the data
  for k in ("image", "label"):
    assert len(b[k].sharding.device_set) == n_dev
    shapes = {s.data.shape[0] for s in b[k].addressable_shards}
    assert shapes == {2}, shapes
  if n_dev == 1:
    pytest.skip("multi-device assertions need XLA_FLAGS=--xla_force_host_platform_device_count")
  assert b["image"].sharding.spec == PartitionSpec("data")


def test_batch_size_errors():
  src = _random_source(n=40)
  with pytest.raises(InputError, match="larger than the dataset"):
    pipeline.train_iterator(src, batch_size=41, seed=0, num_epochs=1)
  with pytest.raises(InputError, match="augment"):
    pipeline.train_iterator(src, batch_size=8, seed=0, num_epochs=1, augment="bogus")
  n_dev = len(jax.devices())
  if n_dev == 1:
    pytest.skip("divisibility by devices needs several devices")
  with pytest.raises(InputError, match=f"multiple of {n_dev}"):
    pipeline.train_iterator(
      src, batch_size=n_dev + 1, seed=0, num_epochs=1, sharding=_data_sharding()
    )
  with pytest.raises(InputError, match="drop_remainder"):  # last batch of 1 cannot be split
    pipeline.train_iterator(
      _random_source(n=3 * n_dev + 1),
      batch_size=n_dev,
      seed=0,
      num_epochs=1,
      sharding=_data_sharding(),
      drop_remainder=False,
    )
  with pytest.raises(InputError, match=f"multiple of {n_dev}"):
    pipeline.eval_batches(src, batch_size=n_dev + 1, sharding=_data_sharding())


# --- evaluation batches -------------------------------------------------------------------------


def test_eval_batches_cover_every_example_once_with_mask():
  src = _random_source(n=45)
  n_dev = len(jax.devices())
  batch_size = 2 * n_dev
  batches = [
    _host(b) for b in pipeline.eval_batches(src, batch_size=batch_size, sharding=_data_sharding())
  ]
  assert len(batches) == -(-45 // batch_size)
  for b in batches:
    chex.assert_shape(b["image"], (batch_size, 8, 8, 3))
    assert b["image"].dtype == np.uint8 and b["label"].dtype == np.int32
    assert b["mask"].dtype == bool
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])
  assert mask.sum() == 45 and mask[:45].all()
  np.testing.assert_array_equal(labels[mask], np.arange(45))  # in order
  np.testing.assert_array_equal(images[mask], src.images)  # unaugmented
  assert not images[~mask].any()  # padding is zeros
