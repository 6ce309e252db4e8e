"""One run at a time per workdir: a lock file naming the process that holds it.

Two runs writing one workdir would race on its checkpoints (one crashes inside Orbax, or
both do all the work twice). ``squeeze`` and ``distill`` therefore take
``<workdir>/.infer_jax.lock`` before any work, and remove it when they end, however they end.

The lock file is JSON: ``{"pid", "host", "started", "command"}``. It is created atomically
(written beside, then hard-linked into place, which fails if the lock exists), so a reader
never sees half a lock. A lock whose process is gone -- same host, pid no longer running,
e.g. after a kill -9 or a power cut -- is stale: it is reported and replaced. A lock held by
a live process, or by another host (whose processes cannot be checked from here), refuses
the run, naming who holds it.

In a multi-process run (``runtime/distributed.py``) only process 0 takes the lock: all
processes of one run share the workdir and cooperate, and process 0 is the one that writes
the shared files.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from typing import Any

from infer_jax.runtime.errors import InputError

LOCK_NAME = ".infer_jax.lock"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def _read(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _describe(holder: dict[str, Any] | None) -> str:
  if not holder:
    return "an unreadable lock"
  return f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" + (
    f" ({holder['command']})" if holder.get("command") else ""
  )


class WorkdirLock:
  """Holds ``<directory>/.infer_jax.lock`` from :meth:`acquire` to :meth:`release`.

  Args:
    directory: the directory to lock (created if missing).
    log: where the note about a replaced stale lock goes.
  """

  def __init__(self, directory: str, log=None):
    self.directory = os.path.abspath(directory)
    self.path = os.path.join(self.directory, LOCK_NAME)
    self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    self.record = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "command": " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "",
    }
    self.held = False

  def _try_create(self) -> bool:
    tmp = f"{self.path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(self.record, f)
    try:
      os.link(tmp, self.path)  # atomic; fails if a lock exists
      return True
    except FileExistsError:
      return False
    finally:
      os.remove(tmp)

  def acquire(self) -> WorkdirLock:
    """Takes the lock, replacing a stale one.

    Raises:
      InputError: another live run (or a run on another host) holds it.
    """
    os.makedirs(self.directory, exist_ok=True)
    for _ in range(3):
      if self._try_create():
        self.held = True
        return self
      holder = _read(self.path)
      same_host = holder is not None and holder.get("host") == self.record["host"]
      if holder is not None and same_host and not _alive(int(holder.get("pid", -1))):
        self.log(
          f"note: {self.path} was left by {_describe(holder)}, which is no longer running "
          "(killed, or the machine restarted); replacing that stale lock."
        )
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
        continue
      if holder is None and not os.path.exists(self.path):
        continue  # released between our two looks
      where = "" if same_host else " (on another host: it cannot be checked from here)"
      raise InputError(
        f"{self.directory} is in use by {_describe(holder)}{where}. Wait for that run to "
        f"finish, or use another --config.workdir; if you are sure it is no longer running, "
        f"delete {self.path}."
      )
    raise InputError(f"Could not take the lock {self.path}; try again.")

  def release(self) -> None:
    """Removes the lock if this process still holds it."""
    if self.held:
      holder = _read(self.path)
      if holder is not None and holder.get("pid") == self.record["pid"]:
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
      self.held = False

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
