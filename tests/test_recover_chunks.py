"""Recover in sequential chunks of subsets, the layout plan, and bfloat16 compute.

Chunks are exact by construction: subsets never interact, and a chunk's subsets take the
augmentation draws and initial values they have in a single pass over all K. A chunk vmaps
fewer subsets than the single pass, and XLA:CPU may block a smaller batch differently, so
the comparisons allow float32 rounding (measured: see each test).
"""

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from infer_jax import recover, synthetic
from infer_jax.runtime import checkpoint
from infer_jax.runtime.errors import InputError
from tests.conftest import live_toy_teacher

SHAPE = (8, 8, 3)
C = 4
QUIET = lambda s: None  # noqa: E731


@functools.cache
def _teacher() -> checkpoint.Teacher:
  """The module's teacher, built once: :func:`tests.conftest.live_toy_teacher`."""
  return live_toy_teacher(C, SHAPE)


def _problem(k: int):
  rng = np.random.default_rng(1)
  return rng.normal(size=(k, C, *SHAPE)).astype(np.float32), np.tile(np.arange(C), (k, 1))


def _mesh(d: int) -> Mesh:
  return Mesh(np.asarray(jax.devices()[:d]), ("data",))


def _cfg(**kw) -> recover.RecoverConfig:
  base = dict(iterations=6, lr=0.1, jitter=2, checkpoint_every=0, log_every=0)
  return recover.RecoverConfig(**{**base, **kw})


def _relative(got, want) -> float:
  return float(np.abs(got - want).max() / np.abs(want).max())


@functools.cache
def _single_pass(k: int, parameterisation: str = "compensator", augment: str = "roll"):
  base, labels = _problem(k)
  if parameterisation == "class_specific":
    base = np.zeros_like(base)
  cfg = _cfg(parameterisation=parameterisation, augment=augment)
  out = recover.recover_teacher(
    _teacher(), base, labels, cfg, teacher_index=1, mesh=_mesh(1), log=QUIET
  )
  assert np.abs(out).max() > 0
  return out


@pytest.mark.parametrize(
  "k,chunk,devices,sizes",
  [
    # 5 subsets, chunks of at most 2 on one device: 2 + 2 + 1 (the last padded to 2).
    (5, 2, 1, "3 sequential chunks of at most 2 (each padded to 2)"),
    # On 2 devices a chunk of 3 rounds down to 2 (a multiple of the subset groups): 7
    # subsets in 2 + 2 + 2 + 1, the last padded to 2.
    (7, 3, 2, "4 sequential chunks of at most 2 (each padded to 2)"),
  ],
)
def test_chunks_equal_a_single_pass(k, chunk, devices, sizes):
  """Chunked compensators equal the single pass's: each chunk's subsets get their own draws
  (the 'rrc_flip_roll' augmentation draws crops, flips and rolls per subset, so a wrong
  offset would show) and their own initial values. Measured: 5e-7 to 9e-7 relative."""
  base, labels = _problem(k)
  messages = []
  got = recover.recover_teacher(
    _teacher(),
    base,
    labels,
    _cfg(subset_chunk=chunk, augment="rrc_flip_roll"),
    teacher_index=1,
    mesh=_mesh(devices),
    log=messages.append,
  )
  assert any(sizes in m for m in messages), messages
  want = _single_pass(k, augment="rrc_flip_roll")
  assert got.shape == want.shape == (k, 1, *SHAPE)
  assert _relative(got, want) <= 1e-5
  # The draws matter: subset 0's compensator differs from subset 2's.
  assert _relative(got[2], got[0]) > 1e-2


def test_a_chunk_of_all_subsets_is_the_single_pass():
  """subset_chunk 0 (automatic: no memory limit on XLA:CPU, so all K) runs one pass, also
  when K (3) is not a multiple of the subset groups (2 devices): no chunks, the same
  compensators (measured: identical; a chunk >= K takes the same path)."""
  chunk = 0
  k = 3
  base, labels = _problem(k)
  messages = []
  got = recover.recover_teacher(
    _teacher(),
    base,
    labels,
    _cfg(subset_chunk=chunk),
    teacher_index=1,
    mesh=_mesh(2),
    log=messages.append,
  )
  assert not any("chunks" in m for m in messages), messages
  assert _relative(got, _single_pass(k)) <= 1e-5


def test_class_specific_chunks_start_from_their_rows_of_the_noise():
  """SRe2L-style images (noise initialisation seeded per teacher) in chunks of one subset
  equal the single pass: each chunk starts from its own rows of the single pass's noise
  (measured: 6e-7 relative)."""
  k = 3
  base, labels = _problem(k)
  cfg = _cfg(parameterisation="class_specific", subset_chunk=1)
  got = recover.recover_teacher(
    _teacher(), np.zeros_like(base), labels, cfg, teacher_index=1, mesh=_mesh(1), log=QUIET
  )
  want = _single_pass(k, "class_specific")
  assert got.shape == want.shape == (k, C, *SHAPE)
  assert _relative(got, want) <= 1e-5


def test_a_chunked_run_resumes_chunk_by_chunk(tmp_path):
  """Each chunk checkpoints in its own directory; a run killed inside its second chunk keeps
  the first chunk's result and resumes the second at its last checkpoint, ending where the
  uninterrupted chunked run does (bit for bit)."""
  k = 4
  base, labels = _problem(k)
  cfg = _cfg(subset_chunk=2, checkpoint_every=3)
  run = functools.partial(
    recover.recover_teacher, _teacher(), base, labels, cfg, teacher_index=0, mesh=_mesh(1)
  )
  straight = run(directory=str(tmp_path / "a"), log=QUIET)
  run(directory=str(tmp_path / "b"), log=QUIET)
  assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["subsets_0-1", "subsets_2-3"]
  shutil.rmtree(tmp_path / "b" / "subsets_2-3" / "6")  # killed between its checkpoints
  messages = []
  resumed = run(directory=str(tmp_path / "b"), log=messages.append)
  resuming = [m for m in messages if "resuming" in m]
  assert resuming == [
    "[recover resnet_tiny] resuming at iteration 6/6",
    ("[recover resnet_tiny] resuming at iteration 3/6"),
  ], messages
  np.testing.assert_array_equal(resumed, straight)


def test_a_chunk_checkpoint_is_not_taken_for_another_chunk(tmp_path):
  """A checkpoint names the chunk it belongs to: one copied under another chunk's directory
  is refused with the usual one-line error."""
  k = 4
  base, labels = _problem(k)
  cfg = _cfg(subset_chunk=2, checkpoint_every=3, iterations=3)
  recover.recover_teacher(
    _teacher(),
    base,
    labels,
    cfg,
    teacher_index=0,
    directory=str(tmp_path),
    mesh=_mesh(1),
    log=QUIET,
  )
  shutil.rmtree(tmp_path / "subsets_2-3")
  shutil.copytree(tmp_path / "subsets_0-1", tmp_path / "subsets_2-3")
  with pytest.raises(InputError, match="belongs to another run"):
    recover.recover_teacher(
      _teacher(),
      base,
      labels,
      cfg,
      teacher_index=0,
      directory=str(tmp_path),
      mesh=_mesh(1),
      log=QUIET,
    )


GIB = 2**30


@pytest.mark.parametrize(
  "args,want",
  [
    # No memory limit (XLA:CPU): one device per subset, all subsets at once.
    (dict(k=49, c=1000, devices=16, per_image=GIB, fixed=0, limit=None), (1, 49)),
    (dict(k=49, c=1000, devices=16, per_image=GIB, fixed=0, limit=None, subset_chunk=7), (1, 7)),
    # Budget: 80% of 16 GiB = 12.8 GiB per device; a pass over ``chunk`` subsets on
    # D / I groups needs fixed + ceil(chunk / (D / I)) * ceil(C / I) * per_image.
    # 4 subsets of 8 images at 1 GiB each on 8 devices: one subset per device, 8 GiB.
    (dict(k=4, c=8, devices=8, per_image=GIB, fixed=0, limit=16 * GIB), (1, 4)),
    # At 2 GiB an image one subset per device needs 16 GiB: split 2 ways (4 groups hold
    # the 4 subsets, 4 images each: 8 GiB).
    (dict(k=4, c=8, devices=8, per_image=2 * GIB, fixed=0, limit=16 * GIB), (2, 4)),
    # 16 subsets need 16 GiB per device however they are split (128 images on 8 devices):
    # no split; chunks of one subset per device (8 GiB), 8 subsets per chunk.
    (dict(k=16, c=8, devices=8, per_image=GIB, fixed=0, limit=16 * GIB), (1, 8)),
    # The teacher's fixed bytes count: with 5 GiB of them one unsplit subset (13 GiB) no
    # longer fits; split 2 ways (5 + 4 = 9 GiB), 4 groups, chunks of 4.
    (dict(k=16, c=8, devices=8, per_image=GIB, fixed=5 * GIB, limit=16 * GIB), (2, 4)),
    # Room for 2 unsplit subsets per device (2 + 2 x 4 = 10 GiB of 12.8): chunks of 16.
    (dict(k=64, c=4, devices=8, per_image=GIB, fixed=2 * GIB, limit=16 * GIB), (1, 16)),
    # Set image shards are kept and the chunk is chosen for them: 4 shards, 2 groups, 2 GiB
    # per subset and device, 6 subsets per device fit: chunks of 12.
    (dict(k=16, c=8, devices=8, per_image=GIB, fixed=0, limit=16 * GIB, image_shards=4), (4, 12)),
    # Image shards that do not divide the devices are passed on for the mesh to refuse.
    (dict(k=4, c=8, devices=8, per_image=GIB, fixed=0, limit=16 * GIB, image_shards=3), (3, 4)),
    # Nothing fits: the largest split, one subset per device.
    (dict(k=4, c=8, devices=8, per_image=64 * GIB, fixed=0, limit=16 * GIB), (8, 1)),
  ],
)
def test_plan_split(args, want):
  assert recover.plan_split(**args) == want


def test_bfloat16_recover_is_close_to_float32_and_is_another_set():
  """recover.dtype='bfloat16': the teacher computes in bfloat16 (the compensators, Adam and
  the loss stay float32). Adam's normalised step turns bfloat16's rounding of gradient
  elements near zero into whole steps, so the compensators are compared as vectors: after
  6 iterations (measured) cosine 0.995 and relative L2 distance 0.098 to float32's; the
  final loss 3e-4 apart. The set's metadata compares unequal to float32's."""
  k = 2
  base, labels = _problem(k)
  assert recover.compute_model(_teacher(), _cfg(dtype="bfloat16")).dtype == jnp.bfloat16
  out, losses = {}, {}
  for dtype in ("float32", "bfloat16"):
    messages = []
    out[dtype] = recover.recover_teacher(
      _teacher(),
      base,
      labels,
      _cfg(dtype=dtype, log_every=6),
      teacher_index=1,
      mesh=_mesh(1),
      log=messages.append,
    )
    losses[dtype] = float(next(m for m in messages if " loss " in m).split(" loss ")[1].split()[0])
  assert out["bfloat16"].dtype == np.float32
  a, b = out["float32"].ravel(), out["bfloat16"].ravel()
  assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.98
  assert 0 < np.linalg.norm(a - b) / np.linalg.norm(a) <= 0.2
  assert abs(losses["bfloat16"] - losses["float32"]) <= 2e-3 * losses["float32"]
  f32 = {"recover": {"lr": 0.1, "dtype": "float32", "subset_chunk": 0}}
  older = {"recover": {"lr": 0.1}}  # written before the setting existed
  bf16 = {"recover": {"lr": 0.1, "dtype": "bfloat16"}}
  chunked = {"recover": {"lr": 0.1, "dtype": "float32", "subset_chunk": 3}}
  same = synthetic.comparable_metadata
  assert same(f32) == same(older) == same(chunked) != same(bf16)


def test_remat_and_bfloat16_shrink_what_the_backward_pass_keeps():
  """The residuals of one subset's differentiated loss (traced): remat='blocks' keeps only
  the blocks' inputs, bfloat16 halves the activations; both scale with the images."""
  teacher = _teacher()

  def mib(remat, dtype, images=8):
    cfg = _cfg(remat=remat, dtype=dtype)
    model = recover.compute_model(teacher, cfg)
    return recover.residual_bytes(model, teacher.variables, cfg, images, SHAPE) / 2**20

  full = mib("none", "float32")
  assert mib("blocks", "float32") < 0.7 * full  # measured 0.41
  assert mib("none", "bfloat16") < 0.8 * full  # measured 0.69
  assert mib("blocks", "bfloat16") < mib("blocks", "float32")
  assert 1.8 * full <= mib("none", "float32", images=16) <= 2.1 * full  # measured 1.91


def test_settings_are_checked():
  with pytest.raises(InputError, match="subset_chunk must be >= 0"):
    recover.RecoverConfig(subset_chunk=-1)
  with pytest.raises(InputError, match=r"recover dtype must be one of \['float32', 'bfloat16'\]"):
    recover.RecoverConfig(dtype="float16")


def test_the_plans_script_follows_recovers_own_layout_rule():
  """benchmarks/scaling_plans.py lays out measured peaks with the rule of recover.plan_split:
  on peaks that are exactly linear in the images per device, both choose the same image
  shards and chunk for every K and memory size."""
  import importlib.util
  import os

  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "scaling_plans.py")
  spec = importlib.util.spec_from_file_location("scaling_plans", path)
  plans = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(plans)
  c, devices, per_image_mib = 1000, 16, 40.0
  rows = {
    ("t", i, "none", "float32"): {"peak_mib": -(-c // i) * per_image_mib, "images_per_device": 0}
    for i in (1, 2, 4, 8, 16)
  }
  for k in (1, 9, 49):
    for gib in (4, 16, 32, 80):
      got = plans.plan(rows, "t", "none", "float32", k, devices, gib)
      want = recover.plan_split(k, c, devices, per_image_mib * 2**20, 0, gib * 2**30)
      n = -(-k // want[1])
      assert (got["shards"], got["chunks"]) == (want[0], n), (k, gib, got, want)
