"""Faults a user can meet: each gets a clear error with the fix, and no saved work changes.

Every test that makes a run fail also checks that the checkpoints, sets and summaries that
existed before the failure are byte-for-byte unchanged afterwards (docs/robustness.md lists
every fault and the test that checks it).
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from infer_jax import baselines, evaluate, squeeze, synthetic
from infer_jax.data import sources
from infer_jax.runtime import checkpoint
from infer_jax.runtime.errors import InputError
from tests.test_squeeze import REPO, tiny_config
from tests.test_study import fake_summary

TEACHERS = "resnet_tiny,convnet_tiny"


def snapshot(root) -> dict[str, tuple[int, str]]:
  """Every file under ``root``: (mtime in ns, sha256 of its bytes)."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = (
          os.stat(path).st_mtime_ns,
          hashlib.sha256(f.read()).hexdigest(),
        )
  return out


def cli(module, *args, timeout=300, env=None):
  return subprocess.run(
    [sys.executable, "-m", f"infer_jax.{module}", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


def config(workdir, teachers=TEACHERS, epochs=1, **overrides):
  c = tiny_config(workdir, teachers=teachers, epochs=epochs, **overrides)
  c.student.epochs = 2
  c.evaluate.seeds = 1
  return c


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  """A workdir whose two teachers trained one epoch, and a set they made and labelled."""
  work = tmp_path_factory.mktemp("made")
  c = config(work)
  dataset = sources.load_from_config(c.data)
  squeeze.squeeze(c, dataset)
  teachers = squeeze.load_teachers(c, dataset)
  s = baselines.build_random_set(c, dataset, teachers)
  path = str(work / "synthetic" / "random.npz")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  synthetic.save(path, s)
  return work, path, dataset


# ------------------------------------------------------------- silently wrong cases


def test_set_records_its_teachers_identity(made):
  work, path, _ = made
  s = synthetic.load(path)
  recorded = s.metadata["teacher_identities"]
  assert [t["architecture"] for t in recorded] == ["resnet_tiny", "convnet_tiny"]
  for rec in recorded:
    t = checkpoint.load_teacher(str(work / "teachers" / rec["architecture"]))
    # The digest is an independent sha256 over the variables, leaves in sorted path order.
    import jax

    leaves = sorted(
      jax.tree_util.tree_flatten_with_path(t.variables)[0],
      key=lambda pl: jax.tree_util.keystr(pl[0]),
    )
    h = hashlib.sha256()
    for p, leaf in leaves:
      import numpy as np

      a = np.asarray(leaf)
      h.update(f"{jax.tree_util.keystr(p)}|{a.dtype.str}|{a.shape};".encode())
      h.update(a.tobytes())
    assert rec == {
      "architecture": t.metadata["architecture"],
      "dataset": "digits",
      "digest": h.hexdigest(),
    }


def test_dynamic_labels_refuse_a_different_teacher_list(made, tmp_path):
  work, path, _ = made
  before = snapshot(work)
  c = config(work, teachers="resnet_tiny")
  c.evaluate.set = path
  c.evaluate.labels = "dynamic"
  c.evaluate.out = str(tmp_path / "out.json")
  with pytest.raises(InputError) as e:
    evaluate.main(c)
  msg = str(e.value)
  assert "resnet_tiny,convnet_tiny" in msg and "this run's teachers are resnet_tiny." in msg
  assert "--config.teachers=resnet_tiny,convnet_tiny" in msg
  assert not os.path.exists(tmp_path / "out.json")
  assert snapshot(work) == before  # in particular no new teacher was trained


def test_dynamic_labels_refuse_other_teachers_of_the_same_architectures(made, tmp_path):
  work, path, _ = made
  other = tmp_path / "other"
  c = config(other)
  c.seed = 7  # other weights, same architectures and dataset
  squeeze.squeeze(c)
  before, before_other = snapshot(work), snapshot(other)
  c.evaluate.set = path
  c.evaluate.labels = "dynamic"
  with pytest.raises(InputError) as e:
    evaluate.main(c)
  msg = str(e.value)
  assert "is not the one that made the set" in msg and "digest" in msg
  assert "resnet_tiny on digits" in msg and "--config.workdir" in msg
  assert snapshot(work) == before and snapshot(other) == before_other


def test_dynamic_labels_refuse_missing_teachers_instead_of_training(made, tmp_path):
  _, path, _ = made
  c = config(tmp_path / "empty")
  c.evaluate.set = path
  c.evaluate.labels = "dynamic"
  with pytest.raises(InputError, match="is not in .*must come from the set's own teachers"):
    evaluate.main(c)
  assert not os.path.exists(tmp_path / "empty" / "teachers")


def test_dynamic_labels_record_which_teachers_labelled(made, tmp_path):
  import json

  work, path, _ = made
  c = config(work)
  c.evaluate.set = path
  c.evaluate.labels = "dynamic"
  c.evaluate.out = str(tmp_path / "dyn.json")
  evaluate.main(c)
  with open(tmp_path / "dyn.json") as f:
    out = json.load(f)
  assert out["labelled_by"] == synthetic.load(path).metadata["teacher_identities"]


def test_a_set_without_recorded_teachers_is_refused_for_dynamic_labels(made, tmp_path):
  work, path, _ = made
  s = synthetic.load(path)
  meta = {k: v for k, v in s.metadata.items() if k != "teacher_identities"}
  old = str(tmp_path / "old.npz")
  synthetic.save(old, dataclasses.replace(s, metadata=meta))
  before = snapshot(tmp_path)
  c = config(work)
  c.evaluate.set = old
  c.evaluate.labels = "dynamic"
  with pytest.raises(InputError) as e:
    evaluate.main(c)
  assert "does not record which teachers made it" in str(e.value)
  assert "--config.evaluate.labels=static" in str(e.value)
  assert snapshot(tmp_path) == before


def test_a_changed_teacher_recipe_is_refused(made):
  work, _, dataset = made
  before = snapshot(work)
  c = config(work, epochs=3)
  with pytest.raises(InputError) as e:
    squeeze.squeeze(c, dataset)
  msg = str(e.value)
  assert "config.squeeze.epochs: teacher has 1, this run asks for 3" in msg
  assert "fresh --config.workdir" in msg and "--config.teachers_dir" in msg
  # Bookkeeping fields (logging, checkpoint cadence) may change freely.
  c = config(work, checkpoint_every_steps=7, log_every_steps=3)
  squeeze.squeeze(c, dataset)
  assert snapshot(work) == before


def test_a_changed_recipe_is_refused_when_resuming_a_training_checkpoint(tmp_path):
  c = config(tmp_path, teachers="resnet_tiny", epochs=2, checkpoint_every_steps=10)
  d = str(tmp_path / "teachers" / "resnet_tiny")
  dataset = sources.load_from_config(c.data)
  identity = squeeze.teacher_identities(c, dataset.info)["resnet_tiny"]
  sq = squeeze.SqueezeConfig.from_config(c.squeeze)
  from infer_jax.runtime import train

  # Leave a training checkpoint behind as a killed run would.
  ckpt = checkpoint.TrainCheckpointer(os.path.join(d, "train"))
  model = checkpoint.build_teacher_model(identity)
  tx = train.sgd_optimizer(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0, total_steps=10)
  import jax

  state = train.create_train_state(
    model, tx, jax.random.key(0, impl="rbg"), dataset.info.image_shape, train.data_mesh()
  )
  ckpt.save(10, state, {"step": 0}, dict(identity, recipe=squeeze.recipe_fingerprint(sq)))
  ckpt.close()
  before = snapshot(tmp_path)
  with pytest.raises(InputError, match="config.squeeze.lr: teacher has 0.1, this run asks for 0.5"):
    squeeze.squeeze(config(tmp_path, teachers="resnet_tiny", epochs=2, lr=0.5), dataset)
  assert snapshot(tmp_path) == before
  shutil.rmtree(d)


# ------------------------------------------------------------------ the workdir lock


def _squeeze_args(work, *extra):
  return [
    "--config=configs/tiny.py",
    f"--config.workdir={work}",
    "--config.teachers=resnet_tiny",
    "--config.squeeze.log_every_steps=1000",
    *extra,
  ]


def _wait_for(path, proc, timeout=240):
  import time

  t = time.time()
  while not os.path.exists(path):
    assert proc.poll() is None, proc.communicate()
    assert time.time() - t < timeout
    time.sleep(0.2)


def test_workdir_lock_with_real_processes(tmp_path):
  import json
  import signal

  from infer_jax.runtime import lock

  work = tmp_path / "w"
  lock_path = work / lock.LOCK_NAME
  args = _squeeze_args(
    work, "--config.squeeze.epochs=200", "--config.squeeze.checkpoint_every_steps=20"
  )
  # A process started in the background of a shell without job control (`pytest ... &`)
  # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the
  # child sets it itself, so the Ctrl-C below reaches it however the tests were started.
  ctrl_c = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'infer_jax.squeeze'; runpy.run_module('infer_jax.squeeze', run_name='__main__')"
  )
  cmd = [sys.executable, "-c", ctrl_c, *args]
  first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(lock_path, first)
    holder = json.loads(lock_path.read_text())
    assert holder["pid"] == first.pid and holder["host"] and holder["started"]
    # A second run on the same workdir is refused, naming who holds it.
    second = cli("squeeze", *args)
    assert second.returncode == 2, second.stderr
    assert f"is in use by process {first.pid} on " in second.stderr
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    # Ctrl-C: one line, exit status 130, lock released.
    _wait_for(work / "teachers" / "resnet_tiny" / "train" / "20", first)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 130, err
  assert "interrupted" in err and "rerun the same command to resume" in err
  assert "Traceback" not in err
  assert not lock_path.exists()

  # A run killed with SIGKILL leaves its lock behind: the next run says so and replaces it.
  third = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(lock_path, third)
  finally:
    third.kill()
    third.communicate()
  assert json.loads(lock_path.read_text())["pid"] == third.pid
  before = snapshot(work / "teachers")
  # An unknown teacher fails fast after the lock is taken: enough to see the stale lock go.
  fourth = cli("squeeze", *_squeeze_args(work, "--config.teachers=no_such_net"))
  assert fourth.returncode == 2
  assert f"was left by process {third.pid}" in fourth.stderr
  assert "replacing that stale lock" in fourth.stderr
  assert not lock_path.exists()
  assert snapshot(work / "teachers") == before


def test_lock_held_on_another_host_is_not_taken(tmp_path):
  import json

  from infer_jax.runtime import lock

  (tmp_path / lock.LOCK_NAME).write_text(
    json.dumps({"pid": 1, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00"})
  )
  with pytest.raises(InputError, match="process 1 on elsewhere.*another host.*delete"):
    lock.WorkdirLock(str(tmp_path)).acquire()


# ------------------------------------------------------- one-line errors with the fix


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "file"
  f.write_text("keep me")
  r = cli("squeeze", *_squeeze_args(f))
  assert r.returncode == 2 and "is a file, not a folder" in r.stderr
  assert "Traceback" not in r.stderr and f.read_text() == "keep me"


def test_workdir_that_is_read_only(tmp_path, monkeypatch):
  from infer_jax.runtime import cli as cli_lib

  real = os.access
  monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path) else real(p, m))
  with pytest.raises(InputError, match="is not writable .* Pass a folder you can write to"):
    cli_lib.check_writable_dir(str(tmp_path / "w"), "--config.workdir")


@pytest.mark.parametrize("err", ["ENOSPC", "EROFS", "EACCES"])
def test_a_refused_write_is_one_line_naming_the_file(made, tmp_path, capsys, monkeypatch, err):
  import errno

  from infer_jax.runtime import atomic
  from infer_jax.runtime.errors import guarded

  work, _, _ = made
  before = snapshot(work)

  def refuse(fd):
    raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)))

  # The data reach the disk at fsync, where a full disk (or a remote file system) reports it.
  monkeypatch.setattr(os, "fsync", refuse)
  status = guarded(lambda: atomic.write_json(str(work / "summary.json"), {"rows": []}))
  monkeypatch.undo()
  out = capsys.readouterr().err.strip()
  assert status == 1 and len(out.splitlines()) == 1
  assert f"could not write {work / 'summary.json'}" in out
  assert "Work finished before this point is intact" in out
  assert snapshot(work) == before and not os.path.exists(work / "summary.json")


def test_export_and_report_into_a_read_only_place(made, tmp_path, capsys, monkeypatch):
  import errno

  from infer_jax import export, report

  work, path, _ = made
  real_makedirs = os.makedirs

  def read_only(p, *a, **k):
    if str(p).startswith(str(tmp_path / "ro")):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(p))
    return real_makedirs(p, *a, **k)

  monkeypatch.setattr(os, "makedirs", read_only)
  assert export.main([path, str(tmp_path / "ro" / "png")]) == 1
  err = capsys.readouterr().err
  assert "the file system is read-only" in err and str(tmp_path / "ro") in err
  assert "Traceback" not in err
  summary = str(fake_summary(tmp_path / "summary.json"))
  assert report.main([summary, "--out", str(tmp_path / "ro" / "r.md")]) == 1
  err = capsys.readouterr().err
  assert "the file system is read-only" in err and "Traceback" not in err


def test_config_file_with_a_syntax_error(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n  pass\n")
  r = cli("squeeze", f"--config={bad}")
  assert r.returncode == 2 and "has a syntax error at line 1" in r.stderr
  assert "Traceback" not in r.stderr


def test_teacher_checkpoint_with_files_missing(made, tmp_path):
  work, _, dataset = made
  copy = tmp_path / "w"
  shutil.copytree(work / "teachers", copy / "teachers")
  data = copy / "teachers" / "resnet_tiny" / "final" / "0" / "variables"
  victim = sorted(p for p in data.rglob("*") if p.is_file() and p.parent.name == "d")[0]
  victim.unlink()
  before = snapshot(copy)
  with pytest.raises(InputError) as e:
    squeeze.load_teachers(config(copy), dataset)
  msg = str(e.value)
  assert "'resnet_tiny'" in msg and "incomplete or damaged" in msg
  assert "Delete that folder to retrain the teacher" in msg
  assert snapshot(copy) == before


def _npz(path, x_train, y_train, names=("a", "b", "c")):
  import numpy as np

  x_test = x_train[:3]
  np.savez(
    path,
    x_train=x_train,
    y_train=y_train,
    x_test=x_test,
    y_test=y_train[:3],
    label_names=np.array(names, dtype=str),
  )
  return str(path)


def _images(n=12, shape=(8, 8, 3)):
  import numpy as np

  return np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_damaged_dataset_npz(tmp_path):
  import numpy as np

  path = _npz(tmp_path / "d.npz", _images(), np.arange(12) % 3)
  with open(path, "rb") as f:
    raw = bytearray(f.read())
  raw[200] ^= 0xFF  # inside x_train's stored bytes: the member's CRC-32 no longer matches
  with open(path, "wb") as f:
    f.write(raw)
  before = snapshot(tmp_path)
  with pytest.raises(InputError, match="is damaged .*BadZipFile.*Copy or download the file again"):
    sources.load_dataset("npz", path)
  assert snapshot(tmp_path) == before
  del np


def test_a_class_without_training_images_is_refused_at_load(tmp_path):
  import numpy as np

  y = np.array([0, 1] * 6)  # class 2 ('c') has no training image
  path = _npz(tmp_path / "d.npz", _images(), y)
  with pytest.raises(InputError, match=r"1 of 3 classes have no training image: 2 \('c'\)"):
    sources.load_from_config({"source": "npz", "path": path})


def test_float_images_in_unit_range_get_a_hint_that_works(tmp_path):
  import numpy as np

  x = _images().astype(np.float32) / 255
  path = _npz(tmp_path / "f.npz", x, np.arange(12) % 3)
  with pytest.raises(InputError) as e:
    sources.load_dataset("npz", path)
  assert "x = (x * 255).round().astype(np.uint8)" in str(e.value)
  assert str(e.value).count("astype(np.uint8)") == 1  # no bare x.astype(np.uint8) that zeroes
  fixed = (x * 255).round().astype(np.uint8)  # the hint, applied: the original pixels
  np.testing.assert_array_equal(fixed, _images())


def test_single_channel_npz_loads_as_one_channel_without_a_conversion_hint(tmp_path):
  import numpy as np

  for shape in [(8, 8, 1), (8, 8)]:
    x = _images(shape=shape)
    ds = sources.load_dataset("npz", _npz(tmp_path / "g.npz", x, np.arange(12) % 3))
    assert ds.info.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(ds.train.images(range(12)), x.reshape(12, 8, 8, 1))
  # Greyscale floats still get the scaling hint, and no hint to replicate channels.
  with pytest.raises(InputError) as e:
    sources.load_dataset("npz", _npz(tmp_path / "f.npz", x / 255.0, np.arange(12) % 3))
  assert "(x * 255).round().astype(np.uint8)" in str(e.value)
  assert "np.repeat" not in str(e.value) and "[N, H, W] (greyscale)" in str(e.value)


def test_safetensors_hint_names_the_package_not_the_torch_extra(monkeypatch):
  from infer_jax import convert

  monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails as if not installed
  monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
  with pytest.raises(InputError) as e:
    convert._load_safetensors("model.safetensors")
  assert "pip install safetensors" in str(e.value) and "[torch]" not in str(e.value)


def test_results_json_with_a_malformed_row(tmp_path, capsys):
  import json

  from infer_jax import report

  bad = fake_summary(tmp_path / "bad.json")
  summary = json.loads(bad.read_text())
  del summary["rows"][2]["final_top1_mean"]
  summary["rows"][2]["command"] = "python -m infer_jax.distill --config.methods=random"
  bad.write_text(json.dumps(summary))
  out = tmp_path / "report.md"
  out.write_text("previous report")
  before = snapshot(tmp_path)
  assert report.main([str(bad), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "row 2 (Random) lacks or has malformed final_top1_mean" in err
  assert "--config.methods=random`" in err and "Traceback" not in err
  assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ one seed, n = 1


def test_one_seed_prints_the_value_with_n_1_not_a_zero_std():
  from infer_jax import report

  one = {"final_top1": [0.4567], "final_top1_mean": 0.4567, "final_top1_std": 0.0}
  three = {"final_top1": [0.4, 0.5, 0.6], "final_top1_mean": 0.5, "final_top1_std": 0.1}
  assert evaluate.format_top1(one) == "45.67 (n = 1)"
  assert evaluate.format_top1(three) == "50.00 ± 10.00"
  assert report._top1(one) == "45.67 (n = 1)"
  assert report._top1(three) == "50.00 ± 10.00"


def test_a_full_disk_under_orbax_is_one_line_naming_the_file(capsys):
  """Orbax writes through TensorStore, which reports a full disk as a ValueError (text as
  measured on a full tmpfs), possibly wrapped; guarded turns it into the one line."""
  from infer_jax.runtime.errors import guarded

  path = "/w/teachers/resnet_tiny/final/0.orbax-checkpoint-tmp/variables/_sharding"
  text = (
    f'RESOURCE_EXHAUSTED: Error writing local file "{path}": Failed writing: "{path}.__lock": '
    "Failed to write 7345 bytes to file 12: No space left on device [os_error_code='28']"
  )

  def job():
    try:
      raise ValueError(text)
    except ValueError as e:
      raise RuntimeError("checkpoint save failed") from e

  assert guarded(job) == 1
  out = capsys.readouterr().err.strip()
  assert out == (
    f"error: could not write {path}: no space left on the device. Work finished before this "
    "point is intact (every file is written atomically and checkpoints resume): free some "
    "space, then rerun the same command."
  )

  # Any other ValueError is a bug and keeps its traceback.
  def bug():
    raise ValueError("RESOURCE_EXHAUSTED: out of memory [os_error_code='12']")

  with pytest.raises(ValueError, match="out of memory"):
    guarded(bug)


def test_orbax_writer_thread_tracebacks_are_not_printed_under_guarded(capsys):
  """Orbax logs a traceback per writer thread before re-raising the failure in the main
  thread (about 140 lines for one full disk, measured on a full tmpfs); under guarded they
  are dropped and the one line remains. Other error logs still print."""
  import logging

  from infer_jax.runtime.errors import guarded

  handler = logging.StreamHandler(sys.stderr)
  logger = logging.getLogger("absl")
  logger.addHandler(handler)

  def record(pathname: str, message: str) -> logging.LogRecord:
    return logging.LogRecord("absl", logging.ERROR, pathname, 387, message, None, None)

  orbax_file = "/venv/lib/python3.11/site-packages/orbax/checkpoint/future.py"
  try:

    def job():
      logger.handle(record(orbax_file, "_SignalingThread.run() raised an exception: X"))
      logger.handle(record("/src/infer_jax/squeeze.py", "a real error, raised an exception"))
      logger.handle(record(orbax_file, "another Orbax error"))

    assert guarded(job) == 0
  finally:
    logger.removeHandler(handler)
  err = capsys.readouterr().err
  assert "_SignalingThread" not in err
  assert "a real error, raised an exception" in err and "another Orbax error" in err
