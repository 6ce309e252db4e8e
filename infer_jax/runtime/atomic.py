"""The one way infer-jax writes a file that a reader (or a resumed run) may open: atomically.

A file is written to a temporary file in the same directory, flushed and fsynced, then renamed
over its destination (``os.replace``, atomic on POSIX), so the destination holds either its
previous content or the complete new one, never part of it; on any failure the temporary file
is removed. Used for summaries, result JSON, synthetic sets, reports, figures and caches.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def fsync_dir(directory: str) -> None:
  """Makes a rename inside ``directory`` durable; a no-op where a directory cannot be opened."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write(path: str, fill: Callable[[IO[Any]], Any], *, binary: bool = True) -> None:
  """Calls ``fill(f)`` on a temporary file beside ``path`` and renames it over ``path``.

  Args:
    path: the destination; its directory must exist.
    fill: writes the whole content to the open file object ``f``.
    binary: open the temporary file in binary (``'wb'``) or text (``'w'``) mode.
  """
  path = os.path.abspath(path)
  directory = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=directory)
  try:
    with os.fdopen(fd, "wb" if binary else "w") as f:
      fill(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    # Whatever failed (disk full, a kill signal turned into an exception), leave no tmp.
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_dir(directory)


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON with :func:`write`."""
  write(path, lambda f: json.dump(obj, f, indent=2), binary=False)


def write_text(path: str, text: str) -> None:
  """Writes ``text`` with :func:`write`."""
  write(path, lambda f: f.write(text), binary=False)
