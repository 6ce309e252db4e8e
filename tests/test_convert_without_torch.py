"""PyTorch interop where torch is not installed: clear errors naming the [torch] extra,
and safetensors checkpoints that convert with NumPy alone.

``sys.modules['torch'] = None`` makes ``import torch`` fail as it does without torch, so
these run (and pass) whether or not torch is installed.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from flax import traverse_util

from infer_jax import convert, export, models, synthetic
from infer_jax.runtime import checkpoint
from infer_jax.runtime.errors import InputError
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


def _reference_state(model, image_shape, seed=0) -> dict[str, np.ndarray]:
  """A state_dict in PyTorch layout (names and shapes) for ``model``, random values."""
  rng = np.random.default_rng(seed)
  abstract = checkpoint.abstract_variables(model, image_shape)
  state = {}
  for key, leaf in traverse_util.flatten_dict(abstract).items():
    shape = convert._torch_shape(key, tuple(leaf.shape))
    value = rng.uniform(0.5, 1.5, shape) if key[-1] == "var" else rng.normal(size=shape)
    state[convert._torch_name(key)] = value.astype(np.float32)
  return state


def test_safetensors_convert_with_numpy_alone(tmp_path, no_torch):
  pytest.importorskip("safetensors")
  from safetensors.numpy import save_file

  model = models.create_model("shufflenetv2_tiny", 10, stem="cifar")
  state = _reference_state(model, (32, 32, 3))
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
