"""Errors caused by user input.

Entry points catch :class:`InputError` and print its message (which says what is
wrong and how to fix it) without a traceback; anything else is a bug and keeps its
traceback.
"""

import errno
import logging
import os
import re
import sys
from collections.abc import Callable


class InputError(ValueError):
  """Bad user input: a path, a dataset, a config value or a checkpoint that cannot be used.

  The message names the problem and the fix.
  """


# What a failed write means for the user, and what to do, by errno.
_WRITE_FAULTS = {
  errno.ENOSPC: ("no space left on the device", "free some space"),
  errno.EDQUOT: ("the disk quota is used up", "free some space"),
  errno.EROFS: ("the file system is read-only", "choose a writable location"),
  errno.EACCES: ("permission denied", "choose a location you can write to"),
  errno.EPERM: ("operation not permitted", "choose a location you can write to"),
  errno.ENOTDIR: ("part of the path is a file, not a folder", "choose another path"),
}

INTERRUPTED = (
  "interrupted. Work finished so far is saved (every file is written atomically and "
  "checkpoints resume): rerun the same command to resume."
)


def write_fault_message(e: OSError) -> str | None:
  """A one-line message for a write the machine refused (disk full, read-only, ...).

  None for any other OSError (which stays a traceback: it is not the user's to fix).
  """
  if e.errno not in _WRITE_FAULTS:
    return None
  what, fix = _WRITE_FAULTS[e.errno]
  target = f" {e.filename}" if e.filename else ""
  return (
    f"could not write{target}: {what}. Work finished before this point is intact (every "
    f"file is written atomically and checkpoints resume): {fix}, then rerun the same command."
  )


# How TensorStore (Orbax's writer) reports an OS error: it raises a ValueError such as
# 'RESOURCE_EXHAUSTED: Error writing local file "PATH": ... No space left on device
# [os_error_code='28']' instead of an OSError.
_TENSORSTORE_ERRNO = re.compile(r"\[os_error_code='(\d+)'\]")
_TENSORSTORE_FILE = re.compile(r'(?:Error writing local file|Failed writing:?) "([^"]+)"')


def checkpoint_write_fault(e: BaseException) -> OSError | None:
  """The refused write behind an exception a checkpoint library raised, as an OSError.

  Looks through ``e`` and its causes for an OSError, or TensorStore's text form of one,
  whose errno is a write fault (disk full, read-only, ...); None when there is none.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _WRITE_FAULTS:
      return e
    code = _TENSORSTORE_ERRNO.search(str(e))
    if code and int(code.group(1)) in _WRITE_FAULTS:
      name = _TENSORSTORE_FILE.search(str(e))
      n = int(code.group(1))
      return OSError(n, os.strerror(n), name.group(1) if name else None)
    e = e.__cause__ or e.__context__
  return None


class _OrbaxThreadErrors(logging.Filter):
  """Drops Orbax's per-thread "raised an exception" logs (a traceback for each of its writer
  threads: about 140 lines for one full disk). The same exception is re-raised in the main
  thread, where :func:`guarded` reports it: in one line when the user can fix it, with its
  traceback when it is a bug; nothing is lost by the filter."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (
      "orbax" in record.pathname.replace(os.sep, "/").split("/site-packages/")[-1]
      and record.levelno >= logging.ERROR
      and "raised an exception" in record.getMessage()
    )


_ORBAX_FILTER = _OrbaxThreadErrors()


def guarded(job: Callable[[], None]) -> int:
  """Runs ``job()``; returns the exit status, printing one line for the failures a user fixes.

  0: done. 2: InputError (its message says what to fix). 1: a write the machine refused
  (disk full, read-only, permission; the file is named). 130: Ctrl-C. Anything else is a
  bug and keeps its traceback.
  """
  # Orbax logs through absl's logger, whose handler prints to stderr.
  for name in ("absl", ""):
    if _ORBAX_FILTER not in logging.getLogger(name).filters:
      logging.getLogger(name).addFilter(_ORBAX_FILTER)
  try:
    job()
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"\n{INTERRUPTED}", file=sys.stderr)
    return 130
  except Exception as e:
    # An OSError, or a checkpoint library's wrapping of one (Orbax raises TensorStore's
    # ValueError for a full disk).
    fault = checkpoint_write_fault(e)
    message = None if fault is None else write_fault_message(fault)
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    return 1
  return 0
