"""The study's machinery: protocols, learning curves, DD-Ranking's scores, feature similarity,
and how the report shows them."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from infer_jax import distill, evaluate, report, student
from infer_jax.core import metrics, subsets
from infer_jax.data import sources
from infer_jax.runtime.errors import InputError
from tests.test_squeeze import tiny_config


def test_protocols_from_the_config():
  c = tiny_config("/tmp/unused")
  assert evaluate.protocols(c) == ["same_steps"]  # the default
  for text, want in [
    ("same_epochs", ["same_epochs"]),
    ("both", ["same_steps", "same_epochs"]),
    ("same_epochs,same_steps", ["same_steps", "same_epochs"]),
  ]:
    c.evaluate.protocol = text
    assert evaluate.protocols(c) == want
  c.evaluate.protocol = "same_time"
  with pytest.raises(InputError, match="same_steps, same_epochs, both"):
    evaluate.protocols(c)


def test_epochs_and_steps_of_every_row_on_the_digits_tiny_setting():
  # configs/tiny.py: digits (1,438 training images, 10 classes), ipc 10, M = 4 teachers, so
  # K = 100 // 14 = 7; student 100 epochs of batch 32. Set sizes: INFER 7 * 5 * 10 = 350
  # (350 // 32 = 10 steps per epoch), Random / SRe2L-style 100 (3), w/o UFC 70 (2), full
  # data 1,438 (44).
  c = tiny_config("/tmp/unused", teachers="a,b,c,d")
  info = sources.load_dataset("digits").info
  m = 4
  k = subsets.num_subsets(c.ipc, info.num_classes, m)
  assert k == 7
  sizes = {
    "infer": 350,
    "infer_dyn": 350,
    "random": 100,
    "random_hard": 100,
    "sre2l": 100,
    "infer_wo_ufc": 70,
    "full_data": 1438,
  }
  labels = {"infer_dyn": "dynamic", "random_hard": "hard", "full_data": "hard"}
  # Hand-computed. same_steps: the reference is INFER's 100 * 10 = 1,000 steps; a set of n
  # trains round(1000 / (n // 32)) epochs; +Dyn ceil(100 / 5) = 20 epochs of the INFER set.
  # same_epochs: 100 epochs over every set; +Dyn still 20.
  want = {
    "same_steps": {
      "infer": (100, 1000),
      "infer_dyn": (20, 200),
      "random": (333, 999),
      "random_hard": (333, 999),
      "sre2l": (333, 999),
      "infer_wo_ufc": (500, 1000),
      "full_data": (23, 1012),  # round(1000 / 44) = 23 epochs
    },
    "same_epochs": {
      "infer": (100, 1000),
      "infer_dyn": (20, 200),
      "random": (100, 300),
      "random_hard": (100, 300),
      "sre2l": (100, 300),
      "infer_wo_ufc": (100, 200),
      "full_data": (100, 4400),
    },
  }
  for protocol, rows in want.items():
    for key, (epochs, steps) in rows.items():
      got = evaluate.row_epochs(
        protocol,
        labels.get(key, "static"),
        sizes[key],
        sizes["infer"],
        c.student.epochs,
        c.student.batch_size,
        m,
      )
      assert (got, got * student.steps_per_epoch(sizes[key], 32)) == (epochs, steps), key
  # evaluate.full_data_epochs fixes the full-data row's epochs under both protocols.
  for protocol in evaluate.PROTOCOLS:
    assert evaluate.row_epochs(protocol, "hard", 1438, 350, 100, 32, 4, fixed_epochs=7) == 7
  with pytest.raises(InputError, match="protocol"):
    evaluate.row_epochs("same_time", "static", 100, 350, 100, 32, 4)


def test_lrs_matches_hand_computed_values():
  # a = 0.5 * 0.1 - 0.5 * 0.3 = -0.1: (e^-0.1 - e^-1) / (e - e^-1) = 0.536958 / 2.350402
  assert metrics.lrs(0.1, 0.3) == pytest.approx(0.228454, abs=1e-6)
  assert metrics.lrs(1.0, -1.0) == pytest.approx(1.0)  # a = 1
  assert metrics.lrs(-1.0, 1.0) == pytest.approx(0.0, abs=1e-12)  # a = -1
  assert metrics.lrs(0.0, 0.0) == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))


def _row(key, set_name, labels, top1, protocol="same_steps"):
  r = {"key": key, "set": set_name, "labels": labels, "final_top1_mean": top1}
  if protocol is not None:
    r["protocol"] = protocol
  return r


def _expected_lrs(ior, hlr):
  a = 0.5 * ior - 0.5 * hlr
  return (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def test_dd_ranking_on_a_fake_summary():
  rows = [
    _row("full_data", "full_data", "hard", 0.90),
    _row("random_hard", "random_hard", "hard", 0.30),
    _row("random", "random", "static", 0.40),
    _row("infer_wo_ufc", "infer_wo_ufc", "static", 0.39, protocol=None),  # older summary
    _row("sre2l", "sre2l", "static", 0.42),
    _row("infer_hard", "infer_hard", "hard", 0.35),
    _row("infer", "infer", "static", 0.50),
    _row("infer_dyn", "infer", "dynamic", 0.55),
    _row("random", "random", "static", 0.38, "same_epochs"),
    _row("infer", "infer", "static", 0.60, "same_epochs"),
  ]
  metrics.dd_ranking(rows)
  got = {(r["key"], r.get("protocol", "legacy")): (r["ior"], r["hlr"], r["lrs"]) for r in rows}
  # (ior, hlr) by hand; HLR's reference is full data 0.90 minus the set's hard-label top-1.
  want = {
    ("full_data", "same_steps"): (0.60, 0.0),  # vs Random (hard) 0.30
    ("random_hard", "same_steps"): (0.0, 0.60),
    ("random", "same_steps"): (0.0, 0.60),  # its hard-label row is Random (hard) 0.30
    ("infer_wo_ufc", "legacy"): (-0.01, None),  # counted as same_steps; no hard-label row
    ("sre2l", "same_steps"): (0.02, None),
    ("infer_hard", "same_steps"): (0.05, 0.55),
    ("infer", "same_steps"): (0.10, 0.55),
    ("infer_dyn", "same_steps"): (0.15, 0.55),
    ("random", "same_epochs"): (0.0, None),  # no full-data row under same_epochs
    ("infer", "same_epochs"): (0.22, None),
  }
  assert set(got) == set(want)
  for key, (ior, hlr) in want.items():
    g_ior, g_hlr, g_lrs = got[key]
    assert g_ior == pytest.approx(ior, abs=1e-12), key
    if hlr is None:
      assert g_hlr is None and g_lrs is None, key
    else:
      assert g_hlr == pytest.approx(hlr, abs=1e-12), key
      assert g_lrs == pytest.approx(_expected_lrs(ior, hlr), abs=1e-12), key
  rows = [_row("infer", "infer", "static", 0.5)]  # no Random row: nothing to compare with
  metrics.dd_ranking(rows)
  assert rows[0]["ior"] is None and rows[0]["hlr"] is None and rows[0]["lrs"] is None


def test_within_class_cosine_matches_numpy_pairs():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(23, 7))
  features[3] = 0.0  # a zero vector: similarity 0 with everything
  labels = rng.integers(0, 4, 23)
  labels[labels == 3] = 2  # class 3 empty
  labels[0] = 3  # ... except for one row: fewer than two, NaN
  got = metrics.within_class_cosine(features, labels, 5)
  for c in range(5):
    idx = np.flatnonzero(labels == c)
    if len(idx) < 2:
      assert np.isnan(got[c])
      continue
    sims = []
    for a in range(len(idx)):
      for b in range(a + 1, len(idx)):
        x, y = features[idx[a]], features[idx[b]]
        denom = np.linalg.norm(x) * np.linalg.norm(y)
        sims.append(0.0 if denom == 0 else float(x @ y / denom))
    assert got[c] == pytest.approx(np.mean(sims), abs=1e-12), c
  # Identical features within a class: similarity 1.
  same = metrics.within_class_cosine(np.ones((4, 3)), np.array([0, 0, 1, 1]), 2)
  np.testing.assert_allclose(same, [1.0, 1.0])


def test_quantized_infer_set_records_its_storage():
  from tests.test_synthetic import _random_set

  q = distill.quantized_infer_set(_random_set(k=2, m=2, num_classes=3))
  assert q.quantized and q.labels.dtype == np.float16
  assert q.metadata["method"] == "infer_uint8"
  assert q.metadata["storage"] == {"compensators": "uint8", "labels": "float16"}


def test_student_records_a_learning_curve():
  digits = sources.load_dataset("digits")
  info = digits.info
  rng = np.random.default_rng(0)
  idx = rng.choice(info.num_train, 40, replace=False)
  x = (digits.train.images(idx).astype(np.float32) / 255 - np.float32(info.mean)) / np.float32(
    info.std
  )
  cfg = student.StudentConfig(arch="convnet_tiny", epochs=2, batch_size=8, crop_padding=1)
  r = student.train_student(
    cfg, x, None, digits.train.labels[idx], digits.test, info, curve_every=4, log=lambda _: None
  )
  # 40 // 8 = 5 steps per epoch, 10 steps: tested after steps 4 and 8, and at the end.
  assert [s for s, _ in r["curve"]] == [4, 8, 10]
  assert r["curve"][-1][1] == r["final_top1"]
  assert all(0.0 <= t <= 1.0 for _, t in r["curve"])
  off = student.train_student(
    cfg, x, None, digits.train.labels[idx], digits.test, info, log=lambda _: None
  )
  assert off["curve"] is None
  assert off["final_top1"] == r["final_top1"]  # testing along the way changes nothing


def fake_summary(path, *, protocols=("same_steps", "same_epochs"), curves=True, features=True):
  """Writes a complete summary.json of four rows per protocol to `path` and returns `path`."""

  def row(key, method, set_name, labels, top1, protocol, steps):
    r = {
      "key": key,
      "method": method,
      "set": set_name,
      "labels": labels,
      "instances": 100,
      "final_top1": [top1 - 0.01, top1, top1 + 0.01],
      "final_top1_mean": top1,
      "final_top1_std": 0.01,
      "seeds": [0, 1, 2],
      "bytes": {
        "images": 10,
        "compensators": 0,
        "labels": 0,
        "teachers": 0,
        "total": 10,
        "compression_ratio": 0.01,
      },
      "epochs": steps // 10,
      "steps": steps,
      "seconds": [1.0, 1.0, 1.0],
      "command": "python -m infer_jax.distill",
      "curve": [[steps // 2, top1 - 0.1], [steps, top1]]
      if curves and key in ("infer", "random")
      else None,
    }
    if protocol is not None:
      r["protocol"] = protocol
    return r

  rows = []
  for p in protocols:
    scale = 3 if p == "same_epochs" else 1
    rows += [
      row("full_data", "Full data (hard labels)", "full_data", "hard", 0.9, p, 1000 * scale),
      row("random_hard", "Random (hard labels)", "random_hard", "hard", 0.3, p, 300),
      row("random", "Random", "random", "static", 0.4, p, 300),
      row("infer", "INFER", "infer", "static", 0.5 + 0.05 * (scale > 1), p, 300 * scale),
    ]
  summary = {
    "dataset": {
      "name": "toy",
      "num_classes": 10,
      "num_train": 1000,
      "num_test": 100,
      "image_shape": [8, 8, 3],
    },
    "ipc": 10,
    "K": 7,
    "M": 4,
    "teachers": [{"architecture": "resnet_tiny", "width": 1.0, "test_top1": 0.9}],
    "student": {"arch": "resnet_tiny"},
    "seeds": [0, 1, 2],
    "rows": rows,
    "stage_seconds": {"recover": 1.0},
    "hardware": {"platform": "cpu"},
    "config": tiny_config(str(path.parent / "nowhere")).to_dict(),
    "command": "python -m infer_jax.distill --config=configs/tiny.py",
    "complete": True,
  }
  if features:
    summary["feature_similarity"] = {
      "resnet_tiny": {
        k: {"per_class": [v] * 10, "mean": v, "instances": 100}
        for k, v in (("real", 0.3), ("infer", 0.2), ("sre2l", 0.6))
      }
    }
  path.write_text(json.dumps(summary))
  return path


def test_report_writes_epoch_and_step_counts_with_thousands_separators(tmp_path):
  src = fake_summary(tmp_path / "long.json")
  summary = json.loads(src.read_text())
  for r in summary["rows"]:
    if r["key"] == "infer" and r["protocol"] == "same_steps":
      r["epochs"], r["steps"] = 2000, 4000
  src.write_text(json.dumps(summary))
  out = tmp_path / "results.md"
  report.write_report([str(src)], str(out), command="python -m infer_jax.report x")
  assert "| INFER | static | 50.00 ± 1.00 | 2,000 × 4,000 |" in out.read_text()


def test_report_shows_both_protocols_curves_and_feature_similarity(tmp_path):
  src = fake_summary(tmp_path / "both.json")
  out = tmp_path / "docs" / "results.md"
  info = report.write_report([str(src)], str(out), command="python -m infer_jax.report x")
  text = out.read_text()
  assert "Both protocols side by side" in text
  assert "Protocol **same_steps" in text and "Protocol **same_epochs" in text
  # INFER: 50.00 at 30 x 300 steps (same_steps), 55.00 at 90 x 900 (same_epochs).
  assert "| INFER | static | 50.00 ± 1.00 | 30 × 300 | 55.00 ± 1.00 | 90 × 900 |" in text
  # IOR +10.00 (INFER 0.5 - Random 0.4); HLR: no INFER hard-label row, '–'.
  assert "| INFER | static | 50.00 ± 1.00 | – | +10.00 | – | – |" in text
  # Full data: IOR 0.9 - 0.3, HLR 0, LRS of a = 0.3 as points.
  lrs = 100 * _expected_lrs(0.6, 0.0)
  assert (
    f"| Full data (hard labels) | hard | 90.00 ± 1.00 | – | +60.00 | +0.00 | {lrs:.2f} |" in text
  )
  names = {os.path.basename(f) for f in info["figures"]}
  assert {"curves_toy__ipc_10.png", "feature_similarity_toy__ipc_10.png"} <= names
  assert "figures/curves_toy__ipc_10.png" in text
  assert "figures/feature_similarity_toy__ipc_10.png" in text
  # Accuracy against compression: one panel per protocol, twice the one-protocol width.
  accuracy = out.parent / "figures" / "accuracy_vs_compression.png"
  one = report.write_report(
    [str(fake_summary(tmp_path / "one.json", protocols=("same_steps",)))],
    str(tmp_path / "one" / "results.md"),
    command="x",
  )
  (one_png,) = [f for f in one["figures"] if f.endswith("accuracy_vs_compression.png")]
  with Image.open(accuracy) as both, Image.open(one_png) as single:
    assert both.format == single.format == "PNG"
    assert both.width == pytest.approx(2 * single.width, rel=0.05)


def test_report_reads_a_summary_without_protocols(tmp_path):
  # Rows written before protocols were recorded: one same_steps table, scores computed.
  src = fake_summary(tmp_path / "old.json", protocols=(None,), curves=False, features=False)
  loaded = report.load_results([str(src)])[0]
  assert {r["protocol"] for r in loaded["rows"]} == {"same_steps"}
  assert [r["ior"] for r in loaded["rows"]] == pytest.approx([0.6, 0.0, 0.0, 0.1])
  out = tmp_path / "results.md"
  info = report.write_report([str(src)], str(out), command="python -m infer_jax.report x")
  text = out.read_text()
  assert "Protocol **same_steps" in text and "same_epochs (the paper" not in text
  assert "side by side" not in text
  assert len(info["figures"]) == 1  # accuracy against compression only


def test_study_state_is_saved_with_the_newest_checkpoints_and_restored(tmp_path):
  """`bash benchmarks/study.sh save` keeps a study's unfinished work for the next machine:
  every workdir/cifar10_study_* tree with only the newest step of each Orbax checkpoint
  directory (older steps, saves in flight and run locks dropped, finished files kept); a
  later run on a checkout without them starts from that copy. With nothing to save, the
  saved copy is left as it is."""
  import shutil
  import subprocess

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  root = tmp_path / "checkout"
  (root / "benchmarks").mkdir(parents=True)
  shutil.copy(os.path.join(repo, "benchmarks", "study.sh"), root / "benchmarks" / "study.sh")
  (root / "data").mkdir()
  (root / "data" / "cifar10.npz").write_bytes(b"")  # as if prepared
  train = root / "workdir" / "cifar10_study_teachers" / "resnet18" / "train"
  for step in ("500", "1000", "1500.orbax-checkpoint-tmp-3"):
    (train / step / "state").mkdir(parents=True)
    (train / step / "_CHECKPOINT_METADATA").write_text(step)
  finished = root / "workdir" / "cifar10_study_teachers" / "mobilenetv2"
  finished.mkdir()
  (finished / "teacher.json").write_text("{}")
  setting = root / "workdir" / "cifar10_study_ipc10"
  setting.mkdir()
  (setting / "summary.json").write_text('{"rows": []}')
  (setting / ".infer_jax.lock").write_text("{}")  # names a process of this machine only
  (root / "workdir" / "other_run").mkdir()  # not the study's: not saved
  run = lambda *args: subprocess.run(  # noqa: E731
    ["bash", "benchmarks/study.sh", *args],
    cwd=root,
    env={**os.environ, "PYTHON": "true"},  # no distill: only the state handling runs
    capture_output=True,
    text=True,
  )
  out = run("save")
  assert out.returncode == 0, out.stderr
  state = root / "benchmarks" / "study_state"
  saved = state / "cifar10_study_teachers" / "resnet18" / "train"
  assert sorted(p.name for p in saved.iterdir()) == ["1000"]
  assert (state / "cifar10_study_teachers" / "mobilenetv2" / "teacher.json").exists()
  assert (state / "cifar10_study_ipc10" / "summary.json").read_text() == '{"rows": []}'
  assert not (state / "other_run").exists()
  assert not (state / "cifar10_study_ipc10" / ".infer_jax.lock").exists()
  assert (train / "500").exists()  # the workdir itself is untouched
  shutil.rmtree(root / "workdir")
  (root / "workdir").mkdir()
  out = run("save")  # nothing here to save: the copy stays
  assert out.returncode == 1 and "left as it is" in out.stderr, out.stderr
  assert (state / "cifar10_study_teachers" / "resnet18" / "train" / "1000").exists()
  out = run("ipc=10")  # PYTHON=true: the distill is a no-op, then the summary is copied
  assert "restoring workdir/cifar10_study_teachers" in out.stdout, out.stdout + out.stderr
  restored = root / "workdir" / "cifar10_study_teachers" / "resnet18" / "train"
  assert sorted(p.name for p in restored.iterdir()) == ["1000"]
  assert (root / "docs" / "results" / "cifar10_study_ipc10.json").read_text() == '{"rows": []}'
