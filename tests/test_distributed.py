"""Multi-process runs: settings, checks, errors, and real 2-process runs over loopback.

The end-to-end tests start jobs as subprocesses (``launch/local_multiprocess.sh`` or
``python -m``) with CPU devices only; the subprocesses get their own device counts, not
the eight fake devices of this test session.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import types

import chex
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from infer_jax import student, synthetic
from infer_jax.data import pipeline, sources
from infer_jax.runtime import checkpoint, config_lib, distributed, train
from infer_jax.runtime.errors import InputError
from tests.conftest import REPO

LAUNCH = REPO / "launch" / "local_multiprocess.sh"
# The pipeline cut to the bone: one teacher, one squeeze epoch, a cheap student. Recover has
# several checkpoints, so that a run stopped at the first one has work left to resume.
TINY = [
  "--config=configs/tiny.py",
  "--config.teachers=resnet_tiny",
  "--config.squeeze.epochs=1",
  "--config.recover.iterations=12",
  "--config.recover.checkpoint_every=4",
  "--config.recover.log_every=4",
  "--config.student.arch=convnet_tiny",
  "--config.student.epochs=1",
  # Two rows: one chosen from the real images, one recovered. The six-row comparison would
  # add four more student trainings on each side to what the test compares (the INFER set).
  "--config.methods=random,infer",
  # float32 storage: the INFER sets of the runs are compared to float rounding (uint8 codes,
  # the default, would move by a whole step where rounding straddles a code boundary).
  "--config.synthetic.compensator_dtype=float32",
  "--config.synthetic.label_dtype=float32",
]


def _env(**extra) -> dict[str, str]:
  env = dict(os.environ)
  # The subprocesses set their own CPU device counts; drop this session's 8 fake devices.
  env.pop("XLA_FLAGS", None)
  env.update(JAX_PLATFORMS="cpu", PYTHON=sys.executable, PYTHONPATH=str(REPO), **extra)
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _job(args, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", *args],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
    **kwargs,
  )


# --------------------------------------------------------------------------- settings


def test_settings_reject_what_cannot_work():
  with pytest.raises(InputError, match="mode must be one of"):
    distributed.Settings(mode="yes")
  with pytest.raises(InputError, match=r"process_id 2 is not in \[0, 2\)"):
    distributed.Settings(num_processes=2, process_id=2)
  with pytest.raises(InputError, match="needs a port"):
    distributed.Settings(coordinator_address="10.0.0.1")
  s = distributed.Settings.from_config(config_lib.base_config())
  assert s == distributed.Settings() and not s.explicit


def test_launchers_are_detected_from_the_environment():
  detect = distributed.detect_launcher
  assert detect({}) is None
  srun = {"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "3"}
  assert detect(srun) == "slurm"
  # An sbatch script without srun (one task) must not wait for peers that never come.
  assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "SLURM_PROCID": "0"}) is None
  assert detect({"OMPI_COMM_WORLD_SIZE": "4"}) == "openmpi"
  assert detect({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}) == "cloud_tpu"
  assert detect({"TPU_WORKER_HOSTNAMES": "t-0"}) is None  # a single-host slice
  assert detect({"JAX_COORDINATOR_ADDRESS": "h:1234"}) == "jax_env"
  auto = distributed.Settings()
  assert not distributed.wants_initialize(auto, {})
  assert distributed.wants_initialize(auto, srun)
  assert distributed.wants_initialize(distributed.Settings(num_processes=2, process_id=0), {})
  assert not distributed.wants_initialize(distributed.Settings(mode="off"), srun)
  assert distributed.wants_initialize(distributed.Settings(mode="on"), {})


def test_config_fingerprint_sees_every_setting_but_the_distributed_ones():
  a = config_lib.base_config()
  names, hashes = distributed.config_fingerprint(a)
  assert "recover.lr" in names and not any(n.startswith("distributed.") for n in names)
  b = config_lib.base_config()
  b.distributed.process_id = 3  # differs between processes by design
  chex.assert_trees_all_equal(distributed.config_fingerprint(b)[1], hashes)
  b.recover.lr = 0.5
  differ = [names[i] for i in np.flatnonzero(distributed.config_fingerprint(b)[1] != hashes)]
  assert differ == ["recover.lr"]


def test_work_division_names_the_fix():
  config = config_lib.base_config()
  config.squeeze.batch_size, config.student.batch_size = 128, 64
  distributed.check_work_division(config, device_count=8, num_processes=2)
  with pytest.raises(
    InputError, match=r"squeeze.batch_size 128 does not divide over the 6 devices.*2 process"
  ):
    distributed.check_work_division(config, device_count=6, num_processes=2)
  config.squeeze.batch_size = 120
  with pytest.raises(InputError, match=r"student.batch_size=60"):
    distributed.check_work_division(config, device_count=6, num_processes=3)


def test_probe_of_a_closed_port_gives_up_at_its_timeout_with_an_input_error(monkeypatch):
  # A wrong address must not hang start-up: the probe retries a refused connection until
  # its timeout, then raises a one-line InputError. A fake clock makes this exact.
  clock, attempts = [0.0], []

  def connect(address, timeout):
    attempts.append((clock[0], address, timeout))
    raise ConnectionRefusedError(111, "Connection refused")

  fake_time = types.SimpleNamespace(
    monotonic=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s)
  )
  monkeypatch.setattr(distributed, "time", fake_time)
  monkeypatch.setattr(distributed, "socket", types.SimpleNamespace(create_connection=connect))
  message = r"Could not reach the coordinator at 127.0.0.1:9 within 1 s"
  with pytest.raises(InputError, match=message):
    distributed._probe_coordinator("127.0.0.1:9", timeout=1.0)
  # Attempts every 0.25 s until the deadline, each bounded by the timeout.
  assert [a[0] for a in attempts] == [0.0, 0.25, 0.5, 0.75, 1.0]
  assert {a[1:] for a in attempts} == {(("127.0.0.1", 9), 1.0)}


def test_coordinator_port_in_use_is_an_input_error():
  with socket.socket() as busy:
    busy.bind(("", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with pytest.raises(InputError, match=f"cannot open the coordinator port {port}"):
      distributed._check_bindable(f"127.0.0.1:{port}")
  distributed._check_bindable(f"127.0.0.1:{_free_port()}")


def test_single_process_helpers():
  assert distributed.is_primary()
  distributed.barrier("nothing to wait for")
  mesh = train.data_mesh()
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  chex.assert_trees_all_equal(
    distributed.to_host(jax.device_put(x, NamedSharding(mesh, P("data")))), x
  )
  # Devices are ordered by process, then id, whatever order they are given in.
  assert [d.id for d in train.data_mesh(jax.devices()[::-1]).devices] == sorted(
    d.id for d in jax.devices()
  )


# --------------------------------------------------------------------------- student


@pytest.mark.slow
def test_student_on_eight_devices_matches_one_device():
  dataset = sources.load_dataset("digits")
  info = dataset.info
  indices = np.arange(64)
  images = np.asarray(pipeline.normalize(dataset.train.images(indices), info.mean, info.std))
  soft = 5.0 * np.eye(10, dtype=np.float32)[dataset.train.labels[indices]]
  cfg = student.StudentConfig(
    arch="convnet_tiny", epochs=3, batch_size=32, lr=0.01, crop_padding=1, stem="cifar"
  )

  def run(devices):
    return student.train_student(
      cfg, images, soft, None, dataset.test, info, mesh=train.data_mesh(devices), log=print
    )

  one, eight = run(jax.devices()[:1]), run(jax.devices())
  assert eight["batch_size"] == one["batch_size"] == 32 and eight["steps"] == one["steps"] == 6
  # The global batch, its augmentation and MixUp are the same; only the order of the
  # floating-point reductions differs.
  np.testing.assert_allclose(eight["final_loss"], one["final_loss"], rtol=1e-4)
  assert abs(eight["final_top1"] - one["final_top1"]) <= 2 / len(dataset.test)


# --------------------------------------------------------------------------- errors


@pytest.mark.slow
def test_unreachable_coordinator_exits_with_the_fix():
  port = _free_port()
  result = _job(
    [
      "infer_jax.squeeze",
      "--config=configs/tiny.py",
      f"--config.distributed.coordinator_address=127.0.0.1:{port}",
      "--config.distributed.num_processes=2",
      "--config.distributed.process_id=1",
      "--config.distributed.initialization_timeout=1",
    ]
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert f"Could not reach the coordinator at 127.0.0.1:{port} within 1 s" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_mismatched_configs_are_refused_on_every_process(tmp_path):
  port = _free_port()
  common = [
    "infer_jax.squeeze",
    "--config=configs/tiny.py",
    f"--config.workdir={tmp_path}",
    f"--config.distributed.coordinator_address=127.0.0.1:{port}",
    "--config.distributed.num_processes=2",
    "--config.distributed.initialization_timeout=60",
  ]
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", *common, f"--config.distributed.process_id={i}", *extra],
      cwd=REPO,
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i, extra in enumerate([[], ["--config.seed=3"]])
  ]
  outputs = [p.communicate(timeout=120) for p in procs]
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 2, err[-2000:]
    assert "launched with different configs" in err and "process 1: seed" in err
  assert "here, process 1: seed=3" in outputs[1][1]
  assert not (tmp_path / "teachers").exists()


@pytest.mark.slow
def test_device_count_that_does_not_divide_the_batch_is_refused(tmp_path):
  result = subprocess.run(
    ["bash", str(LAUNCH), "2", "configs/tiny.py", f"--config.workdir={tmp_path}"],
    cwd=REPO,
    env=_env(CPU_DEVICES="3"),
    capture_output=True,
    text=True,
    timeout=180,
  )
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
  assert "squeeze.batch_size 64 does not divide over the 6 devices" in result.stderr
  assert "2 process(es) x 3 device(s)" in result.stderr


# --------------------------------------------------------------------------- end to end


def _recover_steps(workdir) -> list[int]:
  root = workdir / "recover" / "infer"
  if not root.is_dir():
    return []
  return sorted(int(p.name) for d in root.iterdir() for p in d.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_two_processes_match_one_and_resume_after_a_kill(tmp_path):
  # Two processes x four CPU devices, from an empty workdir (teacher training included).
  # Recover first splits every subset's images over all 8 devices, so a subset spans both
  # processes; the relaunch after the kill uses the default split (the 7 subsets over the
  # devices, each subset on one device): resuming on another split gives the same set.
  work = tmp_path / "two"
  command = ["bash", str(LAUNCH), "2", "configs/tiny.py", *TINY[1:], f"--config.workdir={work}"]
  spanning = [*command, "--config.recover.image_shards=8"]

  # First attempt: every process kills itself (SIGKILL, as a preemption) right after the
  # first recover checkpoint, a fixed point whatever the machine's load; the launcher then
  # stops and reports the job.
  first = subprocess.Popen(
    spanning,
    cwd=REPO,
    env=_env(CPU_DEVICES="4", **{checkpoint.STOP_AFTER_CHECKPOINT_ENV: "recover:1"}),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
  )
  try:
    first.wait(timeout=300)
  finally:
    if first.poll() is None:
      os.killpg(first.pid, signal.SIGKILL)
  assert first.returncode == 128 + signal.SIGKILL, (work / "logs" / "process_0.log").read_text()
  killed_log = (work / "logs" / "process_0.log").read_text()
  assert _recover_steps(work) == [4], killed_log[-3000:]
  assert "1 subset group(s) x 8 image shards" in killed_log, killed_log[-3000:]
  assert not (work / "synthetic" / "infer.npz").exists()

  # Second attempt, same command: resumes and completes.
  second = subprocess.run(
    command, cwd=REPO, env=_env(CPU_DEVICES="4"), capture_output=True, text=True, timeout=300
  )
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  log0 = (work / "logs" / "process_0.log").read_text()
  assert "process 0 of 2: 4 local / 8 global cpu devices" in log0
  assert "found a finished teacher" in log0 and "resuming at iteration" in log0
  rows = json.loads((work / "summary.json").read_text())["rows"]
  assert [r["key"] for r in rows] == ["random", "infer"]
  assert not list(work.rglob("*.tmp-*"))

  # Reference: one process, one device, the same teacher (so that the comparison is about
  # recover and relabel; the teachers' own training is compared below).
  ref = tmp_path / "ref"
  ref.mkdir()
  shutil.copytree(work / "teachers", ref / "teachers")
  result = _job(
    ["infer_jax.distill", *TINY, f"--config.workdir={ref}", "--config.distributed.cpu_devices=1"]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  expected = synthetic.load(str(ref / "synthetic" / "infer.npz"))
  got = synthetic.load(str(work / "synthetic" / "infer.npz"))
  chex.assert_trees_all_equal(got.images, expected.images)
  chex.assert_trees_all_close(got.compensators, expected.compensators, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(got.labels, expected.labels, atol=1e-4, rtol=1e-4)

  # The teacher trained by two processes is the one a single process trains: the same
  # global batches, augmentation and steps, up to the order of floating-point reductions.
  single = tmp_path / "single"
  result = _job(
    ["infer_jax.squeeze", *TINY, f"--config.workdir={single}", "--config.distributed.cpu_devices=1"]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  a = checkpoint.load_teacher(str(work / "teachers" / "resnet_tiny"))
  b = checkpoint.load_teacher(str(single / "teachers" / "resnet_tiny"))
  chex.assert_trees_all_close(a.variables, b.variables, atol=1e-5, rtol=1e-5)  # 2.4e-7 seen
