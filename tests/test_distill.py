"""The main job end to end on the digits: pipeline, reuse, SIGKILL resume, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from infer_jax import distill, export, report, synthetic
from infer_jax.runtime import checkpoint
from infer_jax.runtime.errors import InputError
from tests.test_squeeze import REPO, tiny_config

TEACHERS = "resnet_tiny,convnet_tiny"  # M = 2: with ipc 10 and 10 classes, K = 8


def distill_config(workdir, methods="random,infer", seeds=1, **recover):
  c = tiny_config(workdir, teachers=TEACHERS, epochs=3)
  c.recover.iterations = recover.pop("iterations", 30)
  c.recover.checkpoint_every = recover.pop("checkpoint_every", 10)
  c.recover.log_every = 0
  c.student.epochs = 4
  c.methods = methods
  c.evaluate.seeds = seeds
  return c


@pytest.fixture(scope="module")
def teachers_dir(tmp_path_factory):
  """Teachers trained once for the module; tests copy them into their own workdir."""
  root = tmp_path_factory.mktemp("teachers")
  from infer_jax import squeeze

  squeeze.squeeze(distill_config(root))
  return root / "teachers"


def _workdir(tmp_path, teachers_dir, name="w"):
  work = tmp_path / name
  shutil.copytree(teachers_dir, work / "teachers")
  return work


@pytest.fixture(scope="module")
def made(tmp_path_factory, teachers_dir):
  """(workdir, summary) of one distill of Random and INFER with :func:`distill_config`'s
  settings, made once for the module: tests that start from a finished run copy the workdir
  (:func:`_copy`) instead of recovering the INFER set again."""
  work = _workdir(tmp_path_factory.mktemp("made"), teachers_dir)
  config = distill_config(work)
  config.recover.image_shards = 1
  return work, distill.distill(config)


def _copy(tmp_path, made, name="w"):
  work = tmp_path / name
  shutil.copytree(made[0], work)
  return work


def test_distill_end_to_end_and_reuse(tmp_path, made, capsys):
  work = _copy(tmp_path, made)
  summary = made[1]
  assert summary["K"] == 8 and summary["M"] == 2 and summary["complete"]
  rows = {r["key"]: r for r in summary["rows"]}
  infer, random = rows["infer"], rows["random"]
  assert [r["method"] for r in summary["rows"]] == ["Random", "INFER"]
  assert infer["instances"] == 8 * 3 * 10 and random["instances"] == 10 * 10
  # Same work for both (batch 32): INFER 4 epochs x (240 // 32 = 7) = 28 steps; Random's
  # 100 instances give 3 steps per epoch, so round(28 / 3) = 9 epochs = 27 steps.
  assert (infer["epochs"], infer["steps"]) == (4, 28)
  assert (random["epochs"], random["steps"]) == (9, 27)
  for row in rows.values():
    assert 0.0 <= row["final_top1_mean"] <= 1.0 and row["seeds"] == [0]
    assert row["final_top1_mean"] == row["final_top1"][0] and row["final_top1_std"] == 0.0
    b = row["bytes"]
    assert b["total"] == b["images"] + b["compensators"] + b["labels"] + b["teachers"]
    assert b["compression_ratio"] == pytest.approx(b["total"] / (1438 * 8 * 8 * 3))
    assert row["command"].endswith(f"--config.methods={row['key']}")
  # The default storage: K*M uint8 compensators with a float32 scale and offset each, and
  # float16 labels (K*(M+1)*C*classes).
  assert infer["bytes"]["compensators"] == 8 * 2 * (8 * 8 * 3 + 8)
  assert infer["bytes"]["labels"] == 8 * 3 * 10 * 10 * 2
  assert os.path.exists(work / "summary.json")
  s = synthetic.load(str(work / "synthetic" / "infer.npz"), expected={"dataset": "digits"})
  assert s.compensators.shape == (8, 2, 8, 8, 3) and s.labels.shape == (8, 3, 10, 10)
  assert s.quantized and s.labels.dtype == np.float16
  assert len(np.unique(s.source_indices)) == 80  # K*C distinct real images
  assert {"squeeze", "recover", "relabel", "total (this run)"} <= set(summary["stage_seconds"])
  png = tmp_path / "png"
  assert export.main([str(work / "synthetic" / "infer.npz"), str(png)]) == 0
  assert len(list(png.glob("*/*.png"))) == 8 * 3 * 10
  assert export.main([str(work / "synthetic" / "infer.npz"), str(png)]) == 2  # never overwrites
  capsys.readouterr()
  # The second run reuses teachers, the set and the rows although recover would split its
  # subsets 2 ways with rematerialised teachers (execution settings, not the set's identity).
  # An earlier run's total placed among the stages (as after a run that added a stage): the
  # rerun drops it, keeps the stages and puts its own total last.
  path = work / "summary.json"
  earlier = json.loads(path.read_text())
  stages = earlier["stage_seconds"]
  earlier["stage_seconds"] = {"total (this run)": 1e6, **stages}
  path.write_text(json.dumps(earlier))
  again = distill_config(work)
  again.recover.image_shards, again.recover.remat = 2, "blocks"
  rerun = distill.distill(again)
  out = capsys.readouterr().out
  assert "not retraining" in out and "reusing the synthetic set" in out
  assert out.count("kept from") == 2  # both rows were already in summary.json
  assert list(rerun["stage_seconds"])[-1] == "total (this run)"
  assert rerun["stage_seconds"]["total (this run)"] < 1e6
  assert rerun["stage_seconds"]["recover"] == stages["recover"]
  # ... and so does a set written before these settings were recorded.
  legacy = synthetic.load(str(work / "synthetic" / "infer.npz"))
  for key in ("image_shards", "remat"):
    del legacy.metadata["recover"][key]
  synthetic.save(str(work / "synthetic" / "infer.npz"), legacy)
  distill.distill(again)
  out = capsys.readouterr().out
  assert "reusing the synthetic set" in out and out.count("kept from") == 2


@pytest.mark.slow
def test_the_whole_comparison_resumes_row_by_row(tmp_path, made, capsys):
  # One seed per row: several seeds per set are tested in tests/test_evaluate.py; here a
  # change of the seed count only has to change the rows' fingerprint (at the end).
  work = _copy(tmp_path, made)  # Random and INFER done
  first = made[1]
  every = "random_hard,random,infer_wo_ufc,sre2l,infer,infer_dyn"
  summary = distill.distill(distill_config(work, methods=every))
  out = capsys.readouterr().out
  assert out.count("kept from") == 2  # random and infer: not recomputed
  rows = {r["key"]: r for r in summary["rows"]}
  assert list(rows) == every.split(",")  # table order
  assert rows["infer"]["final_top1"] == first["rows"][1]["final_top1"]
  for row in rows.values():
    assert row["seeds"] == [0] and len(row["final_top1"]) == 1
  # The INFER set's steps for every static/hard row (batch 32): INFER 4 x (240 // 32) = 28;
  # 100 instances (Random, SRe2L-style): round(28 / 3) = 9 epochs x 3 = 27; INFER w/o UFC's
  # 80: round(28 / 2) = 14 epochs x 2 = 28. +Dyn: ceil(4 / (M + 1)) = 2 epochs x 7 = 14.
  expected = {"random_hard": (9, 27), "random": (9, 27), "infer_wo_ufc": (14, 28)}
  expected |= {"sre2l": (9, 27), "infer": (4, 28), "infer_dyn": (2, 14)}
  assert {k: (r["epochs"], r["steps"]) for k, r in rows.items()} == expected
  assert rows["infer_dyn"]["labels"] == "dynamic"
  # Budgets: hard labels store no label bytes, w/o UFC no compensators, +Dyn counts teachers.
  assert rows["random_hard"]["bytes"]["labels"] == 0
  assert rows["infer_wo_ufc"]["bytes"]["compensators"] == 0
  assert rows["infer_wo_ufc"]["instances"] == 8 * 10
  assert rows["infer_dyn"]["bytes"]["teachers"] > 0 == rows["infer"]["bytes"]["teachers"]
  sre2l = synthetic.load(str(work / "synthetic" / "sre2l.npz"))
  assert sre2l.images.shape == (10, 10, 8, 8, 3) and (sre2l.source_indices == -1).all()
  assert sre2l.metadata["recover"]["parameterisation"] == "class_specific"
  # A different seed count changes the rows' fingerprint: they are recomputed.
  capsys.readouterr()
  again = distill.distill(distill_config(work, methods="random", seeds=2))
  assert "kept from" not in capsys.readouterr().out
  assert again["rows"][0]["seeds"] == [0, 1]
  assert again["rows"][0]["final_top1"][0] == rows["random"]["final_top1"][0]  # same seed 0


def test_a_stopped_rerun_keeps_the_finished_rows_it_has_not_reached(
  tmp_path, made, monkeypatch, capsys
):
  # INFER (first in the plan) must be retrained, Random (after it) is kept: a run stopped
  # right after INFER's new row is written still has Random's row in its summary.
  work = _copy(tmp_path, made)
  path = work / "summary.json"
  old = json.loads(path.read_text())
  (infer,) = [r for r in old["rows"] if r["key"] == "infer"]
  infer["fingerprint"]["labels"] = "changed"
  path.write_text(json.dumps(old))
  write = distill._write_summary

  def stop_after_one_write(p, s):
    write(p, s)
    raise KeyboardInterrupt

  monkeypatch.setattr(distill, "_write_summary", stop_after_one_write)
  with pytest.raises(KeyboardInterrupt):
    distill.distill(distill_config(work))
  rows = {r["key"]: r for r in json.loads(path.read_text())["rows"]}
  assert rows["random"]["final_top1"] == made[1]["rows"][0]["final_top1"]
  assert rows["infer"]["fingerprint"]["labels"] == "static"  # the new row
  # The next run keeps both: nothing is retrained.
  monkeypatch.undo()
  capsys.readouterr()
  again = distill.distill(distill_config(work))
  assert capsys.readouterr().out.count("kept from") == 2
  assert [r["final_top1"] for r in again["rows"]] == [r["final_top1"] for r in made[1]["rows"]]


@pytest.mark.slow
def test_sigkill_mid_recover_resumes_to_the_same_synthetic_set(tmp_path, teachers_dir, made):
  # The uninterrupted run is the module's (same teachers, recover settings and seed).
  straight, config = made[0], distill_config(made[0])
  iterations, every = config.recover.iterations, config.recover.checkpoint_every
  assert (iterations, every) == (30, 10)

  killed = _workdir(tmp_path, teachers_dir, "killed")
  args = [
    sys.executable,
    "-m",
    "infer_jax.distill",
    "--config=configs/tiny.py",
    f"--config.workdir={killed}",
    f"--config.teachers={TEACHERS}",
    f"--config.recover.iterations={iterations}",
    f"--config.recover.checkpoint_every={every}",
    "--config.recover.log_every=0",
    "--config.squeeze.epochs=3",
    "--config.student.epochs=1",
    "--config.methods=infer",
  ]
  # Killed (SIGKILL, as a preemption) right after its first recover checkpoint: a fixed
  # point, whatever the machine's load.
  env = {**os.environ, checkpoint.STOP_AFTER_CHECKPOINT_ENV: "recover:1"}
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  first = killed / "recover" / "infer" / "0_resnet_tiny"
  assert sorted(d for d in os.listdir(first) if d.isdigit()) == [str(every)]
  assert not (killed / "synthetic" / "infer.npz").exists()
  resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming at iteration" in resumed.stdout
  a = synthetic.load(str(straight / "synthetic" / "infer.npz"))
  b = synthetic.load(str(killed / "synthetic" / "infer.npz"))
  np.testing.assert_array_equal(a.compensators, b.compensators)  # bit for bit
  np.testing.assert_array_equal(a.labels, b.labels)
  np.testing.assert_array_equal(a.images, b.images)


def test_static_labels_are_the_teachers_mean_on_the_un_augmented_instances(tmp_path):
  """build_infer_set's labels against instances materialised by hand (NumPy) and labelled
  by each teacher through Flax directly: the mean of the teachers' logits on clip(x + u),
  neither augmented nor summed. Untrained teachers: fast, and enough for the wiring."""
  import jax

  from infer_jax import models
  from infer_jax.data import sources

  dataset = sources.load_dataset("digits")
  teachers = []
  for i, arch in enumerate(("resnet_tiny", "convnet_tiny")):
    model = models.create_model(arch, 10, stem="cifar")
    variables = model.init(jax.random.key(i, impl="rbg"), np.zeros((1, 8, 8, 3)), train=False)
    teachers.append(
      checkpoint.Teacher(
        model,
        variables,
        {"architecture": arch, "dataset": dataset.info.name, "test_accuracy": None},
      )
    )
  c = distill_config(tmp_path / "w", iterations=2, checkpoint_every=0)
  # float32 storage: the labels are checked to float rounding against the stored u.
  c.synthetic.compensator_dtype = c.synthetic.label_dtype = "float32"
  s = distill.build_infer_set(c, dataset, teachers, {})
  assert (s.K, s.M, s.C) == (8, 2, 10)
  mean = np.asarray(dataset.info.mean, np.float32)
  std = np.asarray(dataset.info.std, np.float32)
  x = (s.images.astype(np.float32) / 255 - mean) / std  # [K, C, 8, 8, 3]
  u = s.compensators.astype(np.float32)[:, :, None]  # [K, M, 1, 8, 8, 3]
  assert np.abs(u).max() > 0.1  # recover moved the compensators
  compensated = np.clip(x[:, None] + u, -mean / std, (1 - mean) / std)
  instances = np.concatenate([x[:, None], compensated], axis=1).reshape(-1, 8, 8, 3)
  logits = [np.asarray(t.model.apply(t.variables, instances, train=False)) for t in teachers]
  expected = (logits[0] + logits[1]) / 2
  np.testing.assert_allclose(s.labels.reshape(-1, 10), expected, rtol=1e-5, atol=1e-5)


def test_ipc_too_small_is_refused_before_any_work(tmp_path):
  c = distill_config(tmp_path / "w")
  c.ipc = 1
  with pytest.raises(InputError, match="ipc >= 2"):
    distill.distill(c)
  assert not (tmp_path / "w" / "teachers").exists()


def test_teachers_of_another_setting_are_refused(tmp_path, teachers_dir):
  work = _workdir(tmp_path, teachers_dir)
  c = distill_config(work)
  c.data.image_size = 16  # the teachers were trained on 8x8 images
  with pytest.raises(InputError, match="image_shape"):
    distill.distill(c)


def test_corrupted_synthetic_set_is_refused(tmp_path, made):
  work = _copy(tmp_path, made)
  path = work / "synthetic" / "infer.npz"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])  # truncated, e.g. by a full disk
  with pytest.raises(InputError):
    distill.distill(distill_config(work, methods="infer"))


def test_cli_quick_start_command_reports_an_error_cleanly(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "infer_jax.distill",
      "--config=configs/tiny.py:ipc=1",
      f"--config.workdir={tmp_path}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2 and "ipc >= 2" in result.stderr and "Traceback" not in result.stderr


def test_distill_both_protocols_full_data_curves_and_scores(tmp_path, made):
  # K = 8, M = 2, student 4 epochs of batch 32. Set sizes: INFER 8 * 3 * 10 = 240 (7 steps
  # per epoch), Random 100 (3), full data 1,438 (44). Hand-computed epochs x steps:
  # same_steps (reference 4 * 7 = 28 steps): INFER 4 x 7 = 28, Random round(28 / 3) = 9 -> 27,
  #   full data round(28 / 44) = 1 -> 44;
  # same_epochs: INFER 4 -> 28 (the same run as same_steps), Random 4 -> 12, full 4 -> 176.
  work = _copy(tmp_path, made)  # the INFER set is reused
  c = distill_config(
    work, methods="random_hard,random,infer,infer_uint8_hard,infer_uint8,full_data"
  )
  c.evaluate.protocol = "both"
  c.evaluate.curve_every = 10
  c.evaluate.feature_similarity = True
  summary = distill.distill(c)
  got = {(r["key"], r["protocol"]): (r["epochs"], r["steps"]) for r in summary["rows"]}
  assert got == {
    ("full_data", "same_steps"): (1, 44),
    ("full_data", "same_epochs"): (4, 176),
    ("random_hard", "same_steps"): (9, 27),
    ("random_hard", "same_epochs"): (4, 12),
    ("random", "same_steps"): (9, 27),
    ("random", "same_epochs"): (4, 12),
    ("infer", "same_steps"): (4, 28),
    ("infer", "same_epochs"): (4, 28),
    ("infer_uint8", "same_steps"): (4, 28),
    ("infer_uint8", "same_epochs"): (4, 28),
    ("infer_uint8_hard", "same_steps"): (4, 28),
    ("infer_uint8_hard", "same_epochs"): (4, 28),
  }
  rows = {(r["key"], r["protocol"]): r for r in summary["rows"]}
  # INFER's training is the same under both protocols: one run, the same numbers.
  assert rows["infer", "same_steps"]["final_top1"] == rows["infer", "same_epochs"]["final_top1"]
  assert rows["infer", "same_steps"]["fingerprint"] != rows["infer", "same_epochs"]["fingerprint"]
  assert set(rows["infer", "same_epochs"]) == set(rows["infer", "same_steps"])  # a whole row
  assert rows["infer", "same_epochs"]["seeds"] == rows["infer", "same_steps"]["seeds"] == [0]
  # Curves for INFER and Random only (evaluate.curve_methods), every 10 steps and the last.
  assert [s for s, _ in rows["random", "same_steps"]["curve"]] == [10, 20, 27]
  assert [s for s, _ in rows["infer", "same_epochs"]["curve"]] == [10, 20, 28]
  assert rows["full_data", "same_steps"]["curve"] is None
  for r in summary["rows"]:
    ref = rows["random_hard" if r["labels"] == "hard" else "random", r["protocol"]]
    assert r["ior"] == pytest.approx(r["final_top1_mean"] - ref["final_top1_mean"])
    assert {"hlr", "lrs"} <= set(r)
  full = rows["full_data", "same_epochs"]
  assert full["instances"] == 1438 and full["bytes"]["total"] == 1438 * 8 * 8 * 3
  assert full["bytes"]["compression_ratio"] == pytest.approx(1.0)
  assert full["hlr"] == 0.0
  hlr = full["final_top1_mean"] - rows["random_hard", "same_epochs"]["final_top1_mean"]
  assert rows["random", "same_epochs"]["hlr"] == pytest.approx(hlr)
  # The uint8 set's HLR comes from its own hard-label copy, not the float32 INFER set's.
  u8_hard = rows["infer_uint8_hard", "same_steps"]
  u8 = rows["infer_uint8", "same_steps"]
  assert u8_hard["bytes"]["labels"] == 0
  assert u8_hard["bytes"]["compensators"] == u8["bytes"]["compensators"]
  for p in ("same_steps", "same_epochs"):
    ref = rows["full_data", p]["final_top1_mean"] - u8_hard["final_top1_mean"]
    assert rows["infer_uint8", p]["hlr"] == pytest.approx(ref)
  # uint8 compensators: K*M*H*W*3 bytes + 8*K*M for scale and offset; float16 labels.
  b = rows["infer_uint8", "same_steps"]["bytes"]
  assert b["compensators"] == 8 * 2 * 8 * 8 * 3 + 8 * 8 * 2
  assert b["labels"] == 8 * 3 * 10 * 10 * 2
  fs = summary["feature_similarity"]
  assert set(fs) == {"resnet_tiny", "convnet_tiny"}
  assert set(fs["resnet_tiny"]) == {"real", "infer"}  # no SRe2L-style row requested
  assert fs["resnet_tiny"]["infer"]["instances"] == 240
  assert -1.0 <= fs["resnet_tiny"]["real"]["mean"] <= 1.0
  # The report reads the summary as distill wrote it (curves, both protocols, features).
  report.write_report([str(work / "summary.json")], str(tmp_path / "results.md"))
  text = (tmp_path / "results.md").read_text()
  assert "![learning curves]" in text and "![within-class feature similarity]" in text
  # A rerun keeps every row, and gives a shared row written without its seeds (as earlier
  # versions did) its seeds back; a same_steps-only rerun keeps its rows too.
  path = work / "summary.json"
  old = json.loads(path.read_text())
  shared = [r for r in old["rows"] if (r["key"], r["protocol"]) == ("infer_uint8", "same_epochs")]
  del shared[0]["seeds"]
  path.write_text(json.dumps(old))
  again = distill.distill(c)
  assert [r["final_top1"] for r in again["rows"]] == [r["final_top1"] for r in summary["rows"]]
  assert [r["seeds"] for r in again["rows"]] == [[0]] * 12
  c.evaluate.protocol = "same_steps"
  c.evaluate.feature_similarity = False
  only = distill.distill(c)
  assert [r["protocol"] for r in only["rows"]] == ["same_steps"] * 6
  assert only["rows"][0]["final_top1"] == rows["full_data", "same_steps"]["final_top1"]


def test_rows_without_a_protocol_are_kept_as_same_steps(tmp_path, made, capsys):
  work = _copy(tmp_path, made)
  c = distill_config(work, methods="random")
  first = distill.distill(c)  # kept from the module's run
  # Rewrite the summary as older versions wrote it: no protocol, the run as fingerprint.
  path = work / "summary.json"
  old = json.loads(path.read_text())
  for r in old["rows"]:
    del r["protocol"]
    r["fingerprint"] = {k: v for k, v in r["fingerprint"].items() if k != "protocol"}
  path.write_text(json.dumps(old))
  capsys.readouterr()
  again = distill.distill(c)
  assert "kept from" in capsys.readouterr().out
  assert again["rows"][0]["protocol"] == "same_steps"
  assert again["rows"][0]["final_top1"] == first["rows"][0]["final_top1"]


def test_budget_sweep_trains_one_student_per_multiple_equal_to_a_run_of_that_budget(
  tmp_path, made, capsys
):
  # INFER: 4 epochs x 7 steps; x0.5 -> 2 epochs (14 steps), x2 -> 8 (56). Random (same_steps):
  # 9 epochs x 3 steps; x0.5 -> round(4.5) = 4 (12 steps), x2 -> 18 (54).
  work = _copy(tmp_path, made)
  c = distill_config(work)  # random,infer: the module's rows are kept
  c.evaluate.budget_sweep = "2, 0.5"
  summary = distill.distill(c)
  points = [(p["key"], p["multiplier"], p["epochs"], p["steps"]) for p in summary["budget_sweep"]]
  assert points == [
    ("random", 0.5, 4, 12),
    ("random", 1.0, 9, 27),
    ("random", 2.0, 18, 54),
    ("infer", 0.5, 2, 14),
    ("infer", 1.0, 4, 28),
    ("infer", 2.0, 8, 56),
  ]
  rows = {r["key"]: r for r in summary["rows"]}
  sweep = {(p["key"], p["multiplier"]): p for p in summary["budget_sweep"]}
  for key in ("random", "infer"):
    assert sweep[key, 1.0]["final_top1"] == rows[key]["final_top1"][0]
  # A point is the student a run with that budget trains: INFER at 2 epochs, the same seed.
  c2 = distill_config(_copy(tmp_path, made, "half"), methods="infer")
  c2.student.epochs = 2
  half = distill.distill(c2)
  assert half["rows"][0]["final_top1"][0] == sweep["infer", 0.5]["final_top1"]
  # Rerun: every point kept; the report tabulates them.
  capsys.readouterr()
  again = distill.distill(c)
  assert capsys.readouterr().out.count("kept (same set, student, seed)") == 4
  assert again["budget_sweep"] == summary["budget_sweep"]
  from infer_jax import report

  out = tmp_path / "report" / "results.md"
  report.write_report([str(work / "summary.json")], str(out), command="test")
  text = out.read_text()
  assert "| INFER | 14: " in text and "14 → 28: " in text and "28 → 56: " in text
  assert (tmp_path / "report" / "figures").is_dir()


@pytest.mark.parametrize(
  ("sweep", "protocol", "message"),
  [
    ("1", "same_steps", "other than 1"),
    ("half", "same_steps", "positive multiples"),
    ("0.5", "same_epochs", "scales the same_steps rows"),
  ],
)
def test_bad_budget_sweep_is_refused_before_any_work(tmp_path, sweep, protocol, message):
  c = distill_config(tmp_path / "w")
  c.evaluate.budget_sweep = sweep
  c.evaluate.protocol = protocol
  with pytest.raises(InputError, match=message):
    distill.distill(c)
  assert not (tmp_path / "w" / "teachers").exists()
