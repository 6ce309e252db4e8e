"""benchmarks/conv_layers.py: it times the student's own convolutions, the same work both sides.

Timings are not checked (they mean nothing on a test machine); what is: the layer list is
the CIFAR ResNet-18's convolutions with their counts, both sides of every pair compute the
same forward pass and gradients, and the summary is the step minus the weighted sum.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import sys

import jax
import numpy as np
import pytest

from infer_jax import models
from tests.conftest import REPO, TORCH_HOW, require_module

torch = require_module("torch", TORCH_HOW)


@pytest.fixture(scope="module")
def conv_layers():
  sys.path.insert(0, str(REPO / "benchmarks"))
  spec = importlib.util.spec_from_file_location(
    "conv_layers", REPO / "benchmarks" / "conv_layers.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_layers_are_the_resnet18_convolutions_with_their_counts(conv_layers, width):
  model = models.create_model("resnet18", 10, stem="cifar", width=width)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  )
  kernels = collections.Counter(
    leaf.shape
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"])
    if path[-1].key == "kernel" and len(leaf.shape) == 4
  )
  listed = collections.Counter()
  for row in conv_layers.resnet18_convs(width):
    listed[(row["k"], row["k"], row["cin"], row["cout"])] += row["count"]
  assert listed == kernels
  assert sum(listed.values()) == 20  # stem, 16 in the blocks, 3 shortcuts


@pytest.mark.parametrize("name", ["stem 3x3", "layer2 3x3 s2", "layer3 1x1 s2"])
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
def test_both_sides_of_a_pair_compute_the_same(conv_layers, name, pass_):
  (spec,) = [r for r in conv_layers.resnet18_convs(0.125) if r["name"] == name]
  ours, theirs = conv_layers.conv_pair(torch, spec, 2, pass_)
  got = jax.tree.leaves(ours())
  want = [t for t in (theirs() if pass_ == "bwd" else [theirs()]) if t is not None]
  assert len(got) == len(want) == (1 if pass_ == "fwd" else 1 + spec["dx"])
  # Outputs and input gradients are NCHW in PyTorch, NHWC here; weight gradients OIHW / HWIO.
  layouts = [(0, 3, 1, 2)] if pass_ == "fwd" else [(0, 3, 1, 2)] * spec["dx"] + [(3, 2, 0, 1)]
  for g, w, axes in zip(got, want, layouts, strict=True):
    np.testing.assert_allclose(np.asarray(g).transpose(axes), w.numpy(), rtol=1e-4, atol=1e-4)


def test_main_writes_rows_and_a_summary_of_step_minus_convolutions(
  conv_layers, tmp_path, monkeypatch
):
  rows = [r for r in conv_layers.resnet18_convs(0.125) if r["name"] in ("stem 3x3", "layer1 3x3")]
  monkeypatch.setattr(conv_layers, "resnet18_convs", lambda width: rows)
  out = tmp_path / "cl.json"
  payload = conv_layers.main(["--smoke", "--out", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
  assert [(r["name"], r["pass"]) for r in payload["rows"]] == [
    ("stem 3x3", "fwd"),
    ("stem 3x3", "bwd"),
    ("layer1 3x3", "fwd"),
    ("layer1 3x3", "bwd"),
  ]
  for side in ("ours", "torch"):
    convs = sum(r["count"] * r[f"{side}_ms"] for r in payload["rows"])
    s = payload["summary"][side]
    assert s["convs_ms"] == pytest.approx(convs, abs=0.1)
    assert s["step_ms"] == payload["step"][f"{side}_ms"]
    assert s["rest_ms"] == pytest.approx(s["step_ms"] - convs, abs=0.2)
