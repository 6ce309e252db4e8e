"""PyTorch interop where torch is not installed: clear errors naming the [torch] extra,
and safetensors checkpoints that convert with NumPy alone.

``sys.modules['torch'] = None`` makes ``import torch`` fail as it does without torch, so
these run (and pass) whether or not torch is installed.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from infer_jax import convert, export, synthetic
from infer_jax.runtime import checkpoint
from infer_jax.runtime.errors import InputError
from tests.conftest import TORCH_HOW, require_module
from tests.test_synthetic import _random_set


@pytest.fixture
def no_torch(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)


def test_export_to_pytorch_without_torch_names_the_extra(tmp_path, no_torch, capsys):
  path = tmp_path / "set.npz"
  synthetic.save(str(path), _random_set())
  out = tmp_path / "out"
  assert export.main([str(path), str(out), "--torch"]) == 2
  assert "infer-jax[torch]" in capsys.readouterr().err
  assert not out.exists()  # refused before anything was written
  assert export.main([str(path), str(out)]) == 0  # the PNG folder needs no torch


def test_pth_without_torch_names_the_extra(tmp_path, no_torch):
  path = tmp_path / "model.pth"
  path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
  with pytest.raises(InputError, match=r"infer-jax\[torch\]"):
    convert.load_torch_state(str(path))


# The state_dict of tests/torch_refs' shufflenetv2_tiny (CIFAR stem, 10 classes) as PyTorch
# writes it: names and shapes listed by torch itself (tests/test_convert.py checks that the
# listing matches the live module), so the names are not derived from the converter.
LISTING = pathlib.Path(__file__).parent / "torch_refs" / "shufflenetv2_tiny_cifar_10.json"


def _reference_state(seed=0) -> dict[str, np.ndarray]:
  """A PyTorch state_dict (names, shapes, dtypes) of shufflenetv2_tiny with random values."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in json.loads(LISTING.read_text()).items():
    if name.endswith("num_batches_tracked"):
      state[name] = np.asarray(7, np.int64)
    elif name.endswith("running_var"):
      state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      state[name] = rng.normal(size=shape).astype(np.float32)
  return state


def test_safetensors_convert_with_numpy_alone(tmp_path, no_torch):
  require_module("safetensors", TORCH_HOW)
  from safetensors.numpy import save_file

  state = _reference_state()
  path = tmp_path / "w.safetensors"
  save_file(state, str(path))
  out = tmp_path / "teachers" / "shufflenetv2_tiny"
  meta = convert.convert(
    arch="shufflenetv2_tiny", num_classes=10, torch_path=str(path), out=str(out), dataset="cifar10"
  )
  assert meta["converted_from"]["format"] == "safetensors"
  teacher = checkpoint.load_teacher(str(out))
  # Depthwise conv OIHW [C, 1, 3, 3] -> HWIO [3, 3, 1, C]; linear [out, in] -> [in, out].
  dw = teacher.variables["params"]["stage2_0"]["branch1_0"]["kernel"]
  np.testing.assert_array_equal(dw, state["stage2.0.branch1.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(teacher.variables["params"]["fc"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(
    teacher.variables["batch_stats"]["conv5_1"]["var"], state["conv5.1.running_var"]
  )
  # Every float tensor of the state_dict arrives once: the same number of values and tensors.
  floats = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
  leaves = jax.tree.leaves(teacher.variables)
  assert len(leaves) == len(floats)
  assert sum(leaf.size for leaf in leaves) == sum(v.size for v in floats)
  assert sorted(float(np.sum(leaf)) for leaf in leaves) == pytest.approx(
    sorted(float(np.sum(v)) for v in floats), rel=1e-5
  )
