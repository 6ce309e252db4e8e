"""The squeeze stage end to end on the digits: train, reuse, resume after SIGKILL, errors."""

import importlib.util
import os
import re
import signal
import subprocess
import sys

import chex
import pytest

from infer_jax import squeeze
from infer_jax.runtime import checkpoint, config_lib
from infer_jax.runtime.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(workdir, teachers="resnet_tiny", epochs=3, **squeeze_overrides):
  spec = importlib.util.spec_from_file_location("tiny", os.path.join(REPO, "configs", "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.workdir = str(workdir)
  c.teachers = teachers
  c.squeeze.epochs = epochs
  c.squeeze.log_every_steps = 1000
  for k, v in squeeze_overrides.items():
    c.squeeze[k] = v
  return c


def run_cli(*args, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "infer_jax.squeeze", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_squeeze_trains_then_reuses(tmp_path, capsys):
  c = tiny_config(tmp_path, epochs=4)
  results = squeeze.squeeze(c)
  meta = results["resnet_tiny"]
  assert meta["test_accuracy"] > 0.5, meta  # chance is 0.1
  teacher_dir = config_lib.teacher_dir(tiny_config(tmp_path), "resnet_tiny")
  assert not os.path.exists(os.path.join(teacher_dir, "train"))  # removed once final
  teacher = checkpoint.load_teacher(teacher_dir)
  for key in (
    "architecture",
    "dataset",
    "num_classes",
    "image_shape",
    "mean",
    "std",
    "test_accuracy",
    "source",
  ):
    assert key in teacher.metadata
  assert teacher.metadata["dataset"] == "digits" and teacher.metadata["num_classes"] == 10
  capsys.readouterr()
  again = squeeze.squeeze(c)
  assert "not retraining" in capsys.readouterr().out
  assert again["resnet_tiny"]["test_accuracy"] == meta["test_accuracy"]


def test_a_teacher_of_another_setting_is_refused_and_kept(tmp_path):
  squeeze.squeeze(tiny_config(tmp_path, epochs=1))
  before = checkpoint.load_teacher(config_lib.teacher_dir(tiny_config(tmp_path), "resnet_tiny"))
  other = tiny_config(tmp_path, epochs=1)
  other.data.image_size = 16  # another image shape, same workdir
  with pytest.raises(InputError, match="image_shape"):
    squeeze.squeeze(other)
  after = checkpoint.load_teacher(config_lib.teacher_dir(tiny_config(tmp_path), "resnet_tiny"))
  chex.assert_trees_all_equal(before.variables, after.variables)


def _final_params(workdir):
  return checkpoint.load_teacher(
    config_lib.teacher_dir(tiny_config(workdir), "resnet_tiny")
  ).variables


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_uninterrupted_result(tmp_path):
  epochs, every = 3, 20  # 66 steps: checkpoints at 20, 40 and 60
  overrides = [
    f"--config.squeeze.epochs={epochs}",
    f"--config.squeeze.checkpoint_every_steps={every}",
    "--config.teachers=resnet_tiny",
    "--config.squeeze.log_every_steps=1000",
  ]
  killed = tmp_path / "killed"
  train_dir = killed / "teachers" / "resnet_tiny" / "train"
  # Killed (SIGKILL, as a preemption) right after its first checkpoint: a fixed point,
  # whatever the machine's load.
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "infer_jax.squeeze",
      "--config=configs/tiny.py",
      f"--config.workdir={killed}",
      *overrides,
    ],
    cwd=REPO,
    env={**os.environ, checkpoint.STOP_AFTER_CHECKPOINT_ENV: "teachers:1"},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert sorted(d for d in os.listdir(train_dir) if d.isdigit()) == [str(every)]
  final = killed / "teachers" / "resnet_tiny" / "final"
  assert not final.exists(), "killed after the teacher was finished: nothing to resume"

  resumed = run_cli("--config=configs/tiny.py", f"--config.workdir={killed}", *overrides)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from step" in resumed.stdout

  c = tiny_config(tmp_path / "straight", epochs=epochs, checkpoint_every_steps=every)
  squeeze.squeeze(c)
  # Same machine, same seed: bit-for-bit the uninterrupted teacher.
  chex.assert_trees_all_equal(_final_params(killed), _final_params(tmp_path / "straight"))


@pytest.mark.parametrize(
  "args,message",
  [
    (["--config.squeeze.epochz=3"], "Unknown config key 'squeeze.epochz'.*squeeze.epochs"),
    (["--config.teachers=resnet19"], "Unknown teacher architecture.*resnet18"),
    (["--config.data.source=npz", "--config.data.path=/nonexistent/x.npz"], "/nonexistent/x.npz"),
    (["--config.data.source=imagenett"], "imagenett"),
  ],
)
def test_cli_errors_are_clear(tmp_path, args, message):
  result = run_cli("--config=configs/tiny.py", f"--config.workdir={tmp_path}", *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "\nerror: " in "\n" + result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert re.search(message, result.stderr), result.stderr


def test_cli_missing_config_file(tmp_path):
  result = run_cli("--config=configs/nope.py")
  assert result.returncode == 2 and "configs/nope.py" in result.stderr and "exist" in result.stderr


@pytest.mark.shared_data
def test_squeeze_on_real_cifar10_images(shared_data, tmp_path):
  """The real-data path: prepare.py's npz of real CIFAR-10 images, 32x32, CIFAR stems."""
  subprocess.run(
    [sys.executable, str(shared_data / "prepare.py"), "cifar10-fixture", str(tmp_path / "data")],
    check=True,
    capture_output=True,
  )
  c = tiny_config(tmp_path / "work", epochs=2)
  c.data.source = "npz"
  c.data.path = str(tmp_path / "data" / "cifar10-fixture.npz")
  c.squeeze.crop_padding = 4
  meta = squeeze.squeeze(c)["resnet_tiny"]
  assert meta["image_shape"] == [32, 32, 3] and meta["num_classes"] == 10
  assert meta["dataset"] == "cifar10-fixture" and meta["stem"] == "cifar"
  assert 0.0 <= meta["test_accuracy"] <= 1.0  # 200 training images: no accuracy claim
  teacher = checkpoint.load_teacher(
    config_lib.teacher_dir(tiny_config(tmp_path / "work"), "resnet_tiny"),
    expected={"image_shape": (32, 32, 3)},
  )
  assert teacher.metadata["label_names"][0] == "airplane"


def test_teachers_dir_puts_teachers_outside_the_workdir(tmp_path):
  c = tiny_config(tmp_path / "run", epochs=1)
  c.teachers_dir = str(tmp_path / "shared_teachers")
  squeeze.main(c)  # the workdir does not exist yet: created for teachers.json
  assert checkpoint.teacher_exists(str(tmp_path / "shared_teachers" / "resnet_tiny"))
  assert (tmp_path / "run" / "teachers.json").exists()
  assert not (tmp_path / "run" / "teachers").exists()
