"""Evaluation protocol: seeds, mean ± std, dynamic labels, budgets, the CLI and the report."""

import json
import os

import chex
import jax
import ml_collections
import numpy as np
import pytest

from infer_jax import evaluate, models, relabel, report, student, synthetic
from infer_jax.data import sources
from infer_jax.runtime import checkpoint, provenance
from infer_jax.runtime.errors import InputError
from tests.test_squeeze import tiny_config


@pytest.fixture(scope="module")
def digits():
  return sources.load_dataset("digits")


@pytest.fixture(scope="module")
def teachers(digits):
  """Two untrained (randomly initialised) tiny teachers: enough to exercise the plumbing."""
  out = []
  for i, arch in enumerate(("convnet_tiny", "resnet_tiny")):
    model = models.create_model(arch, 10, stem="cifar")
    variables = model.init(jax.random.key(i, impl="rbg"), np.zeros((1, 8, 8, 3)), train=False)
    out.append(checkpoint.Teacher(model, variables, {"architecture": arch}))
  return out


@pytest.fixture(scope="module")
def small_set(digits, teachers):
  """K=2 subsets x C=10 classes, M=2 compensators, static labels from the two teachers."""
  info = digits.info
  rng = np.random.default_rng(0)
  indices = np.stack(
    [rng.permutation(np.flatnonzero(digits.train.labels == c))[:2] for c in range(10)], 1
  )
  images = digits.train.images(indices.reshape(-1)).reshape(2, 10, 8, 8, 3)
  s = synthetic.SyntheticSet(
    images=images,
    source_indices=indices,
    compensators=rng.normal(0, 0.2, (2, 2, 8, 8, 3)).astype(np.float32),
    labels=None,
    metadata={
      "num_classes": 10,
      "image_shape": [8, 8, 3],
      "mean": list(info.mean),
      "std": list(info.std),
      "K": 2,
      "M": 2,
      "dataset": "digits",
      "method": "infer",
      "teachers": ["convnet_tiny", "resnet_tiny"],
    },
  )
  instances, _, _ = synthetic.materialize(s)
  soft = relabel.static_labels(teachers, instances)
  s.labels = soft.reshape(2, 3, 10, 10)
  return s


def scfg(**kw):
  base = dict(arch="convnet_tiny", epochs=3, batch_size=16, lr=0.01, crop_padding=1)
  return student.StudentConfig(**{**base, **kw})


def test_seeds_come_from_the_config_and_are_validated():
  c = ml_collections.ConfigDict({"evaluate": {"seeds": 3, "first_seed": 5}})
  assert evaluate.seeds(c) == [5, 6, 7]
  c.evaluate.seeds = 0
  with pytest.raises(InputError, match="seeds must be >= 1"):
    evaluate.seeds(c)


def test_mean_and_sample_std():
  mean, std = evaluate.mean_std([0.5, 0.6, 0.7])
  # By hand: deviations -0.1, 0, 0.1; sample variance (0.01 + 0 + 0.01) / (3 - 1) = 0.01.
  assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)  # ddof=1
  mean, std = evaluate.mean_std([0.2, 0.8])
  assert mean == pytest.approx(0.5) and std == pytest.approx(0.3 * 2**0.5)  # not 0.3 (ddof=0)
  assert evaluate.mean_std([0.4]) == (0.4, 0.0)


def test_epochs_for_steps_gives_every_set_the_same_work():
  assert evaluate.epochs_for_steps(300, 350, 64) == 60  # 5 steps per epoch
  assert evaluate.epochs_for_steps(300, 100, 64) == 300  # 1 step per epoch
  assert evaluate.epochs_for_steps(300, 20, 64) == 300  # smaller than a batch: 1 step


def test_ensemble_label_fn_is_the_mean_of_the_teachers_logits(teachers, small_set):
  instances, _, _ = synthetic.materialize(small_set)
  labeller = evaluate.ensemble_label_fn(teachers)
  got = np.asarray(jax.jit(labeller.fn)(labeller.variables, instances))
  # Each teacher applied by Flax directly, in inference mode, and averaged here.
  a, b = (np.asarray(t.model.apply(t.variables, instances, train=False)) for t in teachers)
  chex.assert_trees_all_close(got, (a + b) / 2, atol=1e-5, rtol=1e-5)


def _final_losses(lines):
  """The training loss of each student's last progress line (``... loss 1.2345 ...``)."""
  losses = [line.split(" loss ")[1].split()[0] for line in lines if " loss " in line]
  return [float(x) for x in losses]


def test_seeds_are_reproducible_and_distinct(small_set, digits):
  cfg = scfg(temperature=1.0)  # at T=30 the printed losses (4 decimals) are all 0.0000
  lines_a, lines_b = [], []
  a = evaluate.evaluate_set(cfg, small_set, digits, seeds=[0, 1], log=lines_a.append)
  b = evaluate.evaluate_set(cfg, small_set, digits, seeds=[0], log=lines_b.append)
  assert a["seeds"] == [0, 1] and len(a["final_top1"]) == 2
  assert a["final_top1"][0] == b["final_top1"][0]  # same seed, same result
  # Distinct seeds train distinct students: their final losses differ (seed 0 repeats).
  (loss_a0, loss_a1), (loss_b0,) = _final_losses(lines_a), _final_losses(lines_b)
  assert loss_a0 == loss_b0 and loss_a0 != loss_a1
  finals = np.asarray(a["final_top1"], np.float64)
  assert a["final_top1_mean"] == pytest.approx((finals[0] + finals[1]) / 2)
  # Sample std of two values: |x0 - x1| / sqrt(2).
  assert a["final_top1_std"] == pytest.approx(abs(finals[0] - finals[1]) / np.sqrt(2))
  assert a["best_top1"] is None  # not tracked unless eval_every_epochs > 0
  assert a["steps"] == 3 * (60 // 16)


def test_seeds_of_one_method_share_one_compilation(small_set, digits):
  # An empty cache whatever ran before: the first seed compiles, the second reuses it.
  student._compiled_parts.cache_clear()
  evaluate.evaluate_set(scfg(epochs=2), small_set, digits, seeds=[3, 4], log=lambda _: None)
  info = student._compiled_parts.cache_info()
  assert (info.misses, info.hits) == (1, 1)


def test_dynamic_labels_train_from_the_teachers_online(small_set, digits, teachers):
  lines = []
  dyn = evaluate.evaluate_set(
    scfg(), small_set, digits, seeds=[0], labels="dynamic", teachers=teachers, log=lines.append
  )
  assert any("instances, dynamic labels" in line for line in lines)  # the student's own line
  assert dyn["labels"] == "dynamic" and 0.0 <= dyn["final_top1"][0] <= 1.0
  # The epochs as given (the caller divides them by M + 1): 3 x (60 // 16) steps, as static.
  assert dyn["epochs"] == 3 and dyn["steps"] == 3 * (60 // 16)
  with pytest.raises(InputError, match="need the teachers"):
    evaluate.evaluate_set(scfg(), small_set, digits, seeds=[0], labels="dynamic")


def test_hard_labels_and_a_set_without_soft_labels(small_set, digits):
  import dataclasses

  hard_only = dataclasses.replace(small_set, labels=None)
  r = evaluate.evaluate_set(scfg(), hard_only, digits, seeds=[0], labels="hard", log=print)
  assert r["labels"] == "hard"
  with pytest.raises(InputError, match="no soft labels"):
    evaluate.evaluate_set(scfg(), hard_only, digits, seeds=[0], labels="static")


def test_budget_counts_teachers_only_for_dynamic_labels(small_set, digits, teachers):
  plain = evaluate.budget(small_set, digits.info)
  dyn = evaluate.budget(small_set, digits.info, teachers)
  # Counted by hand (10 classes, 8x8x3 inputs), parameters + BatchNorm running mean and var:
  # convnet_tiny: conv 3*3*3*8+8, BN 2*8, conv 3*3*8*8+8, BN 2*8, fc (2*2*8)*10+10 = 1170
  #   params, 2 BN x 2 x 8 = 32 statistics;
  # resnet_tiny: stem conv 3*3*3*8, BN 2*8; block 1: 2 x (3*3*8*8 + BN 2*8); block 2:
  #   3*3*8*16 + 2*16 + 3*3*16*16 + 2*16 + shortcut 8*16 + 2*16; fc 16*10+10 = 5266 params,
  #   (8 + 2*8 + 3*16) * 2 = 144 statistics. float32: 4 bytes each.
  weights = 4 * (1170 + 32 + 5266 + 144)
  assert plain["teachers"] == 0 and dyn["teachers"] == weights
  assert dyn["total"] == plain["total"] + weights
  # K=2, M=2, C=10, 8x8x3: uint8 images, float32 compensators and [K, M+1, C, 10] labels.
  assert plain["images"] == 2 * 10 * 8 * 8 * 3
  assert plain["compensators"] == 2 * 2 * 8 * 8 * 3 * 4
  assert plain["labels"] == 2 * 3 * 10 * 10 * 4
  assert plain["total"] == plain["images"] + plain["compensators"] + plain["labels"]
  assert plain["compression_ratio"] == pytest.approx(plain["total"] / (1438 * 8 * 8 * 3))


def test_command_line_replaces_overridden_flags():
  cmd = provenance.command_line(
    "infer_jax.distill", ["--config=configs/tiny.py", "--config.methods=infer"], methods="random"
  )
  assert cmd == "python -m infer_jax.distill --config=configs/tiny.py --config.methods=random"


def test_hardware_names_the_cpu_model(tmp_path):
  """The record names the CPU model (two machines' timings are compared by it), read from
  /proc/cpuinfo where there is one, else the platform's processor or architecture."""
  hw = provenance.hardware()
  assert isinstance(hw["processor"], str) and hw["processor"]
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU 9000\n")
  assert provenance.cpu_model(str(cpuinfo)) == "Example CPU 9000"
  cpuinfo.write_text("processor\t: 0\n")  # no model line (some ARM kernels): the fallback
  fallback = provenance.platform.processor() or provenance.platform.machine()
  assert provenance.cpu_model(str(cpuinfo)) == fallback
  assert provenance.cpu_model(str(tmp_path / "none")) == fallback  # no /proc (macOS)


def test_evaluate_cli_writes_its_json(tmp_path, small_set):
  path = tmp_path / "set.npz"
  synthetic.save(str(path), small_set)
  c = tiny_config(tmp_path / "w")
  c.student.arch, c.student.epochs, c.student.batch_size = "convnet_tiny", 2, 16
  c.evaluate.set = str(path)
  c.evaluate.seeds = 2
  evaluate.main(c)
  out = json.loads((tmp_path / "w" / "evaluate" / "set-static.json").read_text())
  assert out["result"]["seeds"] == [0, 1] and len(out["result"]["final_top1"]) == 2
  assert out["bytes"]["teachers"] == 0 and out["method"] == "infer"
  assert out["command"].startswith("python -m infer_jax.evaluate")
  c.evaluate.set = ""
  with pytest.raises(InputError, match="evaluate.set"):
    evaluate.main(c)


# ----------------------------------------------------------------------------- the report


def _row(key, method, labels, finals, total):
  mean, std = evaluate.mean_std(finals)
  return {
    "key": key,
    "method": method,
    "labels": labels,
    "instances": 100,
    "bytes": {
      "images": total,
      "compensators": 0,
      "labels": 0,
      "teachers": 0,
      "total": total,
      "compression_ratio": total / 1e6,
    },
    "final_top1": finals,
    "final_top1_mean": mean,
    "final_top1_std": std,
    "best_top1_mean": None,
    "steps": 300,
    "seconds": [12.0] * len(finals),
    "command": f"python -m infer_jax.distill --config=configs/x.py --config.methods={key}",
  }


def _summary(workdir, ipc, rows):
  return {
    "dataset": {
      "name": "toy",
      "num_classes": 10,
      "num_train": 1000,
      "num_test": 100,
      "image_shape": [8, 8, 3],
    },
    "ipc": ipc,
    "K": 7,
    "M": 4,
    "teachers": [{"architecture": "resnet18", "width": 0.25, "epochs": 2, "test_top1": 0.6}],
    "student": {"arch": "resnet18", "width": 0.25},
    "seeds": [0, 1, 2],
    "rows": rows,
    "stage_seconds": {"squeeze": 100.0, "recover": 30.0},
    "hardware": {"platform": "cpu", "cpu_count": 2},
    "config": {
      "name": "toy",
      "workdir": str(workdir),
      "recover": {"iterations": 200, "lr": 0.25, "augment": "roll"},
      "student": {
        "arch": "resnet18",
        "width": 0.25,
        "epochs": 60,
        "batch_size": 64,
        "optimizer": "adamw",
        "lr": 0.001,
      },
      "data": {"source": "npz", "path": "data/toy.npz", "name": "toy"},
    },
    "command": "python -m infer_jax.distill --config=configs/x.py",
    "complete": True,
  }


def test_report_is_generated_from_results_files(tmp_path, small_set):
  rows = [
    _row("random", "Random", "static", [0.50, 0.52, 0.51], 3000),
    _row("infer", "INFER", "static", [0.60, 0.61, 0.62], 5000),
    _row("sre2l", "SRe2L-style", "static", [0.70, 0.71, 0.69], 3000),
    _row("infer_wo_ufc", "INFER w/o UFC", "static", [0.605, 0.615, 0.61], 2000),
  ]
  work = tmp_path / "work"
  synthetic.save(str(work / "synthetic" / "infer.npz"), small_set)  # for the compensator grid
  paths = []
  for ipc in (10, 50):
    p = tmp_path / f"toy_ipc{ipc}.json"
    summary = _summary(work, ipc, rows)
    # A resumed run's order: an earlier run's total among the stages, a new stage after it.
    summary["stage_seconds"] = {"squeeze": 100.0, "total (this run)": 50.0, "recover": 30.0}
    p.write_text(json.dumps(summary))
    paths.append(str(p))
  out = tmp_path / "docs" / "results.md"
  info = report.write_report(paths, str(out), command="python -m infer_jax.report X")
  text = out.read_text()
  assert "## toy, ipc 10" in text and "## toy, ipc 50" in text
  assert "| INFER | static | 61.00 ± 1.00 |" in text  # mean ± sample std, percent
  assert "INFER beats Random" in text
  assert "INFER **loses to** SRe2L-style" in text
  assert "INFER within noise of INFER w/o UFC" in text
  assert "--config.methods=sre2l" in text and "python -m infer_jax.report X" in text
  assert "(test-selected)" in text  # the best-epoch column is labelled
  assert "Stage wall time: squeeze 1.7 min, recover 30 s, total (this run) 50 s." in text
  assert len(info["figures"]) == 3  # accuracy vs ratio + one grid per setting
  for png in info["figures"]:
    assert os.path.getsize(png) > 1000
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "figures/accuracy_vs_compression.png" in text


def test_report_does_not_rank_rows_near_chance(tmp_path):
  """With 10 classes chance is 10%: rows below 20% are near chance and never ranked."""
  rows = [
    _row("random", "Random", "static", [0.10, 0.11, 0.12], 3000),
    _row("infer", "INFER", "static", [0.15, 0.16, 0.17], 5000),
  ]
  lines = report.comparisons(_summary(tmp_path, 10, rows))
  assert lines[0].startswith("**Every method is near chance here** (chance is 10.00%)")
  assert lines[1].startswith("INFER and Random are both near chance (not ranked): 16.00 ± 1.00")
  rows[1] = _row("infer", "INFER", "static", [0.30, 0.31, 0.32], 5000)
  lines = report.comparisons(_summary(tmp_path, 10, rows))
  assert lines == [lines[0]] and lines[0].startswith("INFER beats Random: 31.00 ± 1.00")


def test_report_states_uint8_storage_against_float32_infer_and_random(tmp_path):
  """The row that decides the storage default is stated against float32 INFER, and against
  Random with the same labels (the byte-matched comparison); no other baseline."""
  infer = _row("infer", "INFER", "static", [0.60, 0.61, 0.62], 5000)
  small = _row("infer_uint8", "INFER (uint8 u, float16 labels)", "static", [0.60, 0.60, 0.61], 3000)
  random = _row("random", "Random", "static", [0.50, 0.52, 0.51], 3000)
  random_hard = _row("random_hard", "Random (hard labels)", "hard", [0.40, 0.40, 0.40], 2900)
  lines = report.comparisons(_summary(tmp_path, 10, [random_hard, random, infer, small]))
  about = [x for x in lines if x.startswith("INFER (uint8")]
  assert about == [
    "INFER (uint8 u, float16 labels) within noise of INFER: 60.33 ± 0.58 vs 61.00 ± 1.00 "
    "(-0.67 points; stored bytes 3,000 vs 5,000).",
    "INFER (uint8 u, float16 labels) beats Random: 60.33 ± 0.58 vs 51.00 ± 1.00 "
    "(+9.33 points; stored bytes 3,000 vs 3,000).",
  ]
  # Its hard-label row is stated against the hard-label rows only.
  small_hard = _row(
    "infer_uint8_hard", "INFER (uint8 u, hard labels)", "hard", [0.31, 0.31, 0.32], 2800
  )
  infer_hard = _row("infer_hard", "INFER (hard labels)", "hard", [0.31, 0.32, 0.33], 4800)
  rows = [random_hard, random, infer_hard, small_hard]
  about = [x for x in report.comparisons(_summary(tmp_path, 10, rows)) if "uint8 u, hard" in x]
  assert [x.split(":")[0] for x in about] == [
    "INFER (uint8 u, hard labels) within noise of INFER (hard labels)",
    "INFER (uint8 u, hard labels) **loses to** Random (hard labels)",
  ]
  small = _row("infer_uint8", "INFER (uint8 u, float16 labels)", "static", [0.55, 0.56, 0.57], 3000)
  lines = report.comparisons(_summary(tmp_path, 10, [infer, small]))
  assert lines == [
    "INFER (uint8 u, float16 labels) **loses to** INFER: 56.00 ± 1.00 vs 61.00 ± 1.00 "
    "(-5.00 points; stored bytes 3,000 vs 5,000)."
  ]


def test_report_refuses_files_that_are_not_summaries(tmp_path):
  bad = tmp_path / "x.json"
  bad.write_text(json.dumps({"rows": []}))
  assert report.main([str(bad), "--out", str(tmp_path / "r.md")]) == 2
  assert not (tmp_path / "r.md").exists()
