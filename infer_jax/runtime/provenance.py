"""Where and how a result was measured: the hardware record and the command that reruns it."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import jax


def command_line(module: str, argv: Sequence[str] | None = None, **overrides: Any) -> str:
  """The shell command that reruns this process, with ``--config.KEY=VALUE`` overrides.

  Overrides replace any same-key flag already on the command line.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  keys = {f"--config.{k}" for k in overrides}
  kept = [a for a in argv if a.split("=", 1)[0] not in keys]
  kept += [f"--config.{k}={v}" for k, v in overrides.items()]
  return shlex.join(["python", "-m", module, *kept])


def hardware() -> dict[str, Any]:
  """Where the figures were measured: JAX platform, device kind and count, host CPUs."""
  device = jax.devices()[0]
  return {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "process_count": jax.process_count(),
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "processor": cpu_model(),
  }


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host CPU's model name, e.g. ``AMD EPYC 7B13``: on Linux ``platform.processor()``
  says only ``x86_64``, too little to compare two machines' timings, so /proc/cpuinfo's
  ``model name`` is read there; elsewhere the platform's answer, or the architecture."""
  try:
    with open(cpuinfo, encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
          return value.strip()
  except OSError:
    pass  # not Linux, or /proc not mounted: fall back to what the platform module knows
  return platform.processor() or platform.machine()
