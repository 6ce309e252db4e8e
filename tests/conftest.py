"""Test-session set-up shared by every test module.

Eight fake CPU devices are created before JAX initialises, so sharding code is tested
on a "multi-device" machine everywhere (laptops, CI) -- one device is a special case of
eight, not the other way round. The suite runs on the CPU even where an accelerator is
present (``JAX_PLATFORMS=cpu`` unless set otherwise): the fake devices, the tolerances and
the bit-for-bit reproducibility checks are those of XLA:CPU.

A test that needs something optional (``../shared/data``, torch, safetensors) calls
:func:`require` / :func:`require_module`: it is skipped where that is missing, except under
``CI=true``, where it fails naming what is missing and how to provide it -- CI must run
everything.
"""

import atexit
import importlib
import os
import pathlib
import shutil
import tempfile
import types

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# Tests must not grab all host memory or threads of a small CI machine.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The fake devices above are CPU devices: on a machine with a GPU, JAX would otherwise pick it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for the whole test session, in a fresh folder: the many tests (and
# the subprocesses of the end-to-end tests, which inherit these variables) that build the
# same programs -- a teacher's train step, a recover step, a student step -- compile each
# once. A cache entry is the executable XLA built for that exact program and these flags,
# so results are unchanged; a fresh folder per session keeps runs independent of each other.
# JAX's defaults keep only programs that took at least a second to compile: the many single
# operations of un-jitted code are cheaper to rebuild than to write to disk.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="infer-jax-test-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def in_ci() -> bool:
  """True when the environment variable ``CI`` is ``true`` (or ``1``): nothing may skip."""
  return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require(name: str, how: str) -> None:
  """Skips the calling test because ``name`` is missing -- or fails it under ``CI=true``.

  Args:
    name: what is missing (a package, a folder).
    how: how to provide it, e.g. ``"pip install -e '.[torch]'"``.
  """
  message = f"{name} is missing; {how}"
  if in_ci():
    pytest.fail(f"CI=true and {message} (CI runs every test, none may skip)", pytrace=False)
  pytest.skip(message, allow_module_level=True)


def require_module(module: str, how: str) -> types.ModuleType:
  """``import module``, or :func:`require` (skip; fail under ``CI=true``) where it is absent."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    problem = str(e)
  # Outside the except block, so the report is the one line below, not a chained traceback.
  require(f"the Python package {module!r} ({problem})", how)
  raise AssertionError("not reached: require skips or fails")


TORCH_HOW = "install the PyTorch extra: pip install -e '.[torch]'"


@pytest.fixture
def shared_data() -> pathlib.Path:
  """The real-data folder beside the checkout; skips (fails under CI) when it is absent."""
  if not (SHARED_DATA / "prepare.py").exists():
    require(
      f"{SHARED_DATA} (with prepare.py)",
      "real-data integration tests read it: place the shared data folder beside the checkout",
    )
  return SHARED_DATA


def toy_teacher_metadata(arch: str, num_classes: int, image_shape) -> dict:
  """Metadata of an untrained test teacher of ``arch`` on the 'toy' dataset (CIFAR stem,
  full width, normalisation mean 0.5 / std 0.25 per channel)."""
  from infer_jax.runtime import checkpoint

  return checkpoint.teacher_metadata(
    architecture=arch,
    stem="cifar",
    width=1.0,
    num_classes=num_classes,
    image_shape=image_shape,
    dataset="toy",
    mean=(0.5,) * 3,
    std=(0.25,) * 3,
    test_accuracy=None,
    source="test",
  )


def live_toy_teacher(num_classes: int, image_shape):
  """An untrained ``resnet_tiny`` recover teacher with live logits: initialised kernels and
  running statistics drawn around 0 (means) and 1 (variances in [0.5, 1.5]). Means around
  1 would silence every ReLU and leave the logits, and so the cross-entropy's gradient, at
  exactly 0."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from infer_jax import models
  from infer_jax.runtime import checkpoint

  model = models.create_model("resnet_tiny", num_classes)
  v = jax.jit(lambda k: model.init(k, jnp.zeros((1, *image_shape)), train=False))(
    jax.random.key(0, impl="rbg")
  )
  rng = np.random.default_rng(0)

  def draw(path, a):
    if path[-1].key == "mean":
      return jnp.asarray(rng.normal(0, 0.2, a.shape), jnp.float32)
    return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32)

  stats = jax.tree_util.tree_map_with_path(draw, v["batch_stats"])
  meta = toy_teacher_metadata("resnet_tiny", num_classes, image_shape)
  return checkpoint.Teacher(model, {"params": v["params"], "batch_stats": stats}, meta)
