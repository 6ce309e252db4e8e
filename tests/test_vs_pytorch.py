"""benchmarks/vs_pytorch.py: the smallest configuration runs in-process and writes its JSON.

Only the wiring is checked (both sides run, every row has the documented fields, the ratio is
the ratio of the medians); timings are not, they mean nothing on a test machine.
"""

from __future__ import annotations

import importlib.util
import json
import statistics

import pytest

from tests.conftest import REPO, TORCH_HOW, require_module

require_module("torch", TORCH_HOW)

ROW_KEYS = {
  "stage",
  "arch",
  "width",
  "classes",
  "batch",
  "unit",
  "ours_per_s",
  "torch_per_s",
  "ours_per_s_min",
  "torch_per_s_min",
  "ratio",
  "ratio_pairs",
  "first_call_s",
  "other_cpu_median",
  "loadavg_1m_max",
  "blocks",
}
BLOCK_KEYS = {"block", "side", "seconds", "per_s", "loadavg_1m", "own_cpu", "other_cpu"}


@pytest.fixture(scope="module")
def vs_pytorch():
  path = REPO / "benchmarks" / "vs_pytorch.py"
  spec = importlib.util.spec_from_file_location("vs_pytorch", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_smoke_run_writes_every_stage_with_the_documented_fields(vs_pytorch, tmp_path):
  out = tmp_path / "vs.json"
  payload = vs_pytorch.main(["--smoke", "--label-modes", "static", "--out", str(out)])
  written = json.loads(out.read_text())
  assert written == json.loads(json.dumps(payload))
  assert {"command", "date_utc", "machine", "loadavg_before", "loadavg_after", "rows"} <= set(
    written
  )
  assert {"torch", "torch_threads", "jax", "git", "cpu_model"} <= set(written["machine"])
  stages = [row["stage"] for row in written["rows"]]
  assert stages == ["recover", "student_static", "train", "relabel"]
  for row in written["rows"]:
    assert set(row) >= ROW_KEYS, row["stage"]
    blocks = row["blocks"]
    assert [b["side"] for b in blocks] == ["ours", "torch"]  # 1 block a side
    assert all(set(b) >= BLOCK_KEYS for b in blocks)
    ours = [b["per_s"] for b in blocks if b["side"] == "ours"]
    theirs = [b["per_s"] for b in blocks if b["side"] == "torch"]
    assert row["ours_per_s"] == pytest.approx(statistics.median(ours), abs=0.01)
    assert row["torch_per_s"] == pytest.approx(statistics.median(theirs), abs=0.01)
    assert row["ratio"] == pytest.approx(row["ours_per_s"] / row["torch_per_s"], rel=1e-2)
    assert all(b["per_s"] > 0 and b["other_cpu"] >= 0 for b in blocks)


def test_blocks_alternate_which_side_runs_first(vs_pytorch):
  calls = []
  args = vs_pytorch.parse_args(["--smoke", "--blocks", "3"])
  row = vs_pytorch.measure(
    lambda: calls.append("ours"), lambda: calls.append("torch"), per_call=1, args=args
  )
  # First calls (warm-up), then ours/torch, torch/ours, ours/torch.
  assert calls == ["ours", "torch", "ours", "torch", "torch", "ours", "ours", "torch"]
  assert len(row["ratio_pairs"]) == 3


def test_bad_stage_is_refused_with_the_choices(vs_pytorch, capsys):
  with pytest.raises(SystemExit):
    vs_pytorch.parse_args(["--stages", "recover,squeeze"])
  assert "choose from recover,student,train,relabel" in capsys.readouterr().err
