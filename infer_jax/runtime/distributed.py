"""Multi-process (multi-host) runs on JAX's own runtime: start-up, checks, who writes what.

Every job (squeeze, distill, evaluate) goes through :func:`setup` (called by
``infer_jax.runtime.cli.run`` before the job touches JAX). It decides from ``config.distributed``
and the environment whether this is one process of several, and if so:

1. applies the per-process CPU device count (``cpu_devices``; local multi-process runs) and
   the CPU collectives (gloo), which must be set before JAX starts its backends;
2. calls ``jax.distributed.initialize()`` -- with the explicit coordinator address,
   process count and id of the config when given, otherwise letting JAX read them from
   SLURM (``srun``), Open MPI or the Cloud TPU metadata;
3. checks that every process runs the same config (a hash per setting, gathered over
   processes) and that the device count divides the batch sizes (the work).

Afterwards all processes run the same program on global arrays (SPMD): the subset axis of
recover and the batches of teacher and student training are sharded over all devices of
all hosts. Orbax checkpoints are saved and restored by every process (Orbax coordinates
them: each process writes its own shards, process 0 the metadata). Our own plain files
(JSON, npz) are written by process 0 alone, followed by a barrier so that no process
reads them early (:func:`on_primary`).

Failures a cluster user can act on are :class:`InputError`: a coordinator that cannot be
reached (probed over TCP before JAX would abort the process), batch sizes that the device
count does not divide, and hosts launched with different configs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from infer_jax.runtime.errors import InputError

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
  """How this process joins a multi-process run (``config.distributed``).

  Attributes:
    mode: 'auto' (initialise when explicit settings or a multi-process launcher are
      found), 'on' (always; JAX auto-detects what is not given), 'off' (never).
    coordinator_address: ``host:port`` of process 0's coordinator; '' = auto-detect.
    num_processes: process count; 0 = auto-detect.
    process_id: this process's id in ``[0, num_processes)``; -1 = auto-detect.
    initialization_timeout: seconds to wait for the coordinator and every process.
    cpu_devices: CPU devices per process (local runs without accelerators); 0 = JAX's
      default.
  """

  mode: str = "auto"
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1
  initialization_timeout: int = 300
  cpu_devices: int = 0

  def __post_init__(self):
    if self.mode not in MODES:
      raise InputError(f"config.distributed.mode must be one of {MODES}, got {self.mode!r}.")
    if self.num_processes < 0 or self.initialization_timeout < 1 or self.cpu_devices < 0:
      raise InputError(
        "config.distributed needs num_processes >= 0 (0 = auto), initialization_timeout "
        f">= 1 and cpu_devices >= 0; got {self.num_processes}, "
        f"{self.initialization_timeout}, {self.cpu_devices}."
      )
    if self.num_processes and not -1 <= self.process_id < self.num_processes:
      raise InputError(
        f"config.distributed.process_id {self.process_id} is not in [0, {self.num_processes}) "
        f"(num_processes {self.num_processes}): give each process its own id 0..."
        f"{self.num_processes - 1}."
      )
    if self.coordinator_address and ":" not in self.coordinator_address:
      raise InputError(
        f"config.distributed.coordinator_address {self.coordinator_address!r} needs a port: "
        "use host:port, e.g. 10.0.0.1:12355 (the address of process 0)."
      )

  @classmethod
  def from_config(cls, config: Any) -> Settings:
    """From ``config.distributed`` (missing block or fields: the defaults)."""
    block = config.get("distributed") if hasattr(config, "get") else None
    if block is None:
      return cls()
    items = block.to_dict() if hasattr(block, "to_dict") else dict(block)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in items.items() if k in names})

  @property
  def explicit(self) -> bool:
    """Whether the config itself names a multi-process run."""
    return bool(self.coordinator_address) or self.num_processes > 1


def detect_launcher(environ: dict[str, str] | None = None) -> str | None:
  """The multi-process launcher this process was started by, if any.

  Returns:
    'slurm' (an ``srun`` step of more than one task), 'openmpi' (``mpirun`` with more
    than one process), 'cloud_tpu' (a TPU VM of a multi-host slice), 'jax_env'
    (``JAX_COORDINATOR_ADDRESS`` set) or None. A plain ``sbatch`` script (no ``srun``)
    is not a multi-process launch: its one process would wait for tasks that never come.
  """
  env = os.environ if environ is None else environ
  if int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "openmpi"
  hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
  if len([h for h in hosts.split(",") if h.strip()]) > 1:
    return "cloud_tpu"
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "jax_env"
  return None


def wants_initialize(settings: Settings, environ: dict[str, str] | None = None) -> bool:
  """Whether :func:`setup` calls ``jax.distributed.initialize()`` for these settings."""
  if settings.mode == "off":
    return False
  if settings.mode == "on":
    return True
  return settings.explicit or detect_launcher(environ) is not None


def _probe_coordinator(address: str, timeout: float) -> None:
  """Waits until ``address`` accepts TCP connections, or raises InputError after ``timeout``.

  JAX aborts the whole process (no Python exception) when it cannot reach the
  coordinator, so a non-coordinator process checks the address itself first.
  """
  host, _, port = address.rpartition(":")
  host = host.strip("[]")
  deadline = time.monotonic() + timeout
  last = None
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=min(5.0, timeout)):
        return
    except (OSError, ValueError) as e:
      last = e
    if time.monotonic() >= deadline:
      break
    time.sleep(0.25)
  raise InputError(
    f"Could not reach the coordinator at {address} within {timeout:g} s ({last}). Check that "
    "process 0 is running and started first, that this host can reach that address and port "
    "(same network, no firewall in between; a cluster's compute nodes often need the "
    "internal hostname, not 'localhost'), and that every process was given the same "
    "--config.distributed.coordinator_address. Raise --config.distributed."
    "initialization_timeout if process 0 starts late."
  )


def _check_bindable(address: str) -> None:
  """InputError if process 0 cannot open the coordinator port (e.g. it is in use)."""
  _, _, port = address.rpartition(":")
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("", int(port)))
    except OSError as e:
      raise InputError(
        f"Process 0 cannot open the coordinator port {port} ({e}): another program (or an "
        "earlier run still shutting down) holds it. Pick a free port in "
        "--config.distributed.coordinator_address."
      ) from e


def initialize(settings: Settings) -> bool:
  """Joins the multi-process run the settings and environment describe (once per process).

  Must run before any other JAX call. Single-process runs only get their CPU device count.

  Returns:
    Whether ``jax.distributed.initialize()`` was called.

  Raises:
    InputError: unreachable coordinator, unusable port, or inconsistent settings.
  """
  if settings.cpu_devices:
    jax.config.update("jax_num_cpu_devices", settings.cpu_devices)
  if not wants_initialize(settings):
    return False
  if jax.distributed.is_initialized():
    return True
  # Cross-process collectives of XLA:CPU (local runs, tests) go through gloo.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs: dict[str, Any] = {"initialization_timeout": settings.initialization_timeout}
  if settings.coordinator_address:
    kwargs["coordinator_address"] = settings.coordinator_address
  if settings.num_processes:
    kwargs["num_processes"] = settings.num_processes
  if settings.process_id >= 0:
    kwargs["process_id"] = settings.process_id
  if settings.coordinator_address and settings.process_id >= 0:
    if settings.process_id == 0:
      _check_bindable(settings.coordinator_address)
    else:
      _probe_coordinator(settings.coordinator_address, settings.initialization_timeout)
  print(
    f"[distributed] joining: coordinator {settings.coordinator_address or '(auto)'}, "
    f"process {settings.process_id if settings.process_id >= 0 else '(auto)'} of "
    f"{settings.num_processes or '(auto)'}, launcher {detect_launcher() or 'explicit'}, "
    f"timeout {settings.initialization_timeout} s",
    flush=True,
  )
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, TypeError) as e:
    raise InputError(
      f"jax.distributed.initialize() could not start this process ({e}). Outside SLURM, "
      "Open MPI and Cloud TPU give all three of --config.distributed.coordinator_address, "
      ".num_processes and .process_id."
    ) from e
  print(
    f"[distributed] process {jax.process_index()} of {jax.process_count()}: "
    f"{jax.local_device_count()} local / {jax.device_count()} global "
    f"{jax.devices()[0].platform} devices",
    flush=True,
  )
  return True


# --------------------------------------------------------------------------- helpers


def is_primary() -> bool:
  """True on process 0, the one that writes shared plain files (JSON, npz)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op with one process).

  Call it with no sharded step in flight (see ``train.one_step_in_flight``): on XLA:CPU
  it is a small program over every device.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def on_primary(name: str, write: Callable[[], Any]) -> None:
  """Runs ``write()`` on process 0 only, then waits for every process at barrier ``name``.

  For shared plain files (JSON, npz, deletions): every process holds the same content, one
  writes it, and none goes on before it is complete.
  """
  if is_primary():
    write()
  barrier(name)


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-host sharded) array as numpy, on every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _flat_config(config: Any) -> dict[str, Any]:
  """``{'section.key': value}`` of a ConfigDict (or plain dict)."""
  return _flatten(config.to_dict() if hasattr(config, "to_dict") else dict(config))


def _crc(text: str) -> int:
  return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


def config_fingerprint(config: Any) -> tuple[list[str], np.ndarray]:
  """Setting names and one hash per setting, ``config.distributed`` excluded (it differs).

  Returns:
    ``(names, hashes)``: sorted dotted names and int32 ``[len(names)]``.
  """
  flat = _flat_config(config)
  names = sorted(k for k in flat if not k.startswith("distributed."))
  hashes = np.array([_crc(json.dumps(flat[k], sort_keys=True)) for k in names], np.int32)
  return names, hashes


def check_same_config(config: Any) -> None:
  """InputError unless every process runs the same config (hosts launched inconsistently).

  Raises:
    InputError: names the settings that differ from process 0's, per process.
  """
  if jax.process_count() <= 1:
    return
  from jax.experimental import multihost_utils

  names, hashes = config_fingerprint(config)
  schema = np.array([len(names), _crc(",".join(names))], np.int32)
  schemas = np.asarray(multihost_utils.process_allgather(schema)).reshape(-1, 2)
  if np.any(schemas != schemas[0]):
    differ = np.flatnonzero(np.any(schemas != schemas[0], axis=1)).tolist()
    raise InputError(
      f"Processes {differ} run a config with other settings (keys) than process 0: they run "
      "another version of the code or config file. Install the same code on every host."
    )
  gathered = np.asarray(multihost_utils.process_allgather(hashes)).reshape(len(schemas), -1)
  problems = []
  for p in range(1, len(gathered)):
    keys = [names[i] for i in np.flatnonzero(gathered[p] != gathered[0])]
    if keys:
      problems.append(f"process {p}: {', '.join(keys)}")
  if problems:
    mine = _flat_config(config)
    diff_keys = sorted({k for line in problems for k in line.split(": ", 1)[1].split(", ")})
    raise InputError(
      "The processes of this run were launched with different configs (settings that differ "
      f"from process 0's: {'; '.join(problems)}; here, process {jax.process_index()}: "
      + ", ".join(f"{k}={mine[k]!r}" for k in diff_keys)
      + "). Launch every process with the same --config file and overrides (only "
      "config.distributed.* may differ)."
    )


def check_work_division(config: Any, device_count: int, num_processes: int) -> None:
  """InputError unless the global device count divides every batch the run shards.

  Teacher (squeeze) and student batches are split evenly over all devices of all
  processes; a process count whose devices do not divide them cannot run the config.
  """
  devices_per_process = device_count // max(num_processes, 1)
  for key in ("squeeze.batch_size", "student.batch_size"):
    section, field = key.split(".")
    block = config.get(section) if hasattr(config, "get") else None
    if block is None or field not in block:
      continue
    size = int(block[field])
    if size % device_count:
      lower = size // device_count * device_count
      options = f"{lower} or {lower + device_count}" if lower else f"{device_count}"
      raise InputError(
        f"config.{key} {size} does not divide over the {device_count} devices of this run "
        f"({num_processes} process(es) x {devices_per_process} device(s)). Use a multiple "
        f"of {device_count} (e.g. --config.{key}={options.split()[0]}), or launch a process "
        f"count whose total device count divides {size}."
      )


def setup(config: Any) -> None:
  """Everything a job does before its own work: join the run, check configs and sizes.

  Raises:
    InputError: see :func:`initialize`, :func:`check_same_config`,
      :func:`check_work_division`.
  """
  settings = Settings.from_config(config)
  if not initialize(settings):
    return
  check_same_config(config)
  check_work_division(config, jax.device_count(), jax.process_count())
