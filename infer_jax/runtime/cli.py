"""What every entry point shares: the ``--config`` flag, up-front checks, error printing.

Entry points are ``python -m infer_jax.<stage> --config=configs/x.py[:arg]
[--config.key=value ...]``. ml_collections reports an unknown override key or a missing
config file with a bare traceback; these are the most common user mistakes, so they are
checked here first and reported with the fix.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence

from absl import app, logging
from ml_collections import config_flags

from infer_jax.runtime import config_lib, distributed
from infer_jax.runtime import lock as lock_lib
from infer_jax.runtime.errors import InputError, guarded

CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file (configs/*.py), optionally with ':arg'.", lock_config=True
)


def _config_keys(config, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    full = f"{prefix}{key}"
    keys.append(full)
    if hasattr(value, "items"):
      keys.extend(_config_keys(value, full + "."))
  return keys


def _load_config_file(spec: str):
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise InputError(
      f"Config file {path!r} does not exist. Pass one of the files in configs/, "
      "e.g. --config=configs/tiny.py."
    )
  module_spec = importlib.util.spec_from_file_location("_infer_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise InputError(
      f"Config file {path!r} has a syntax error at line {e.lineno}: {e.msg} "
      f"({(e.text or '').strip()!r}). Fix that line (compare with configs/tiny.py)."
    ) from e
  if not hasattr(module, "get_config"):
    raise InputError(f"Config file {path!r} defines no get_config().")
  return module.get_config(arg) if arg else module.get_config()


def check_argv(argv: Sequence[str]) -> None:
  """Validates ``--config`` and ``--config.key=value`` flags before absl parses them.

  Raises:
    InputError: no or missing config file, or an override of a key the config lacks.
  """
  specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  if not specs:
    raise InputError("No --config given. Example: --config=configs/tiny.py")
  config = _load_config_file(specs[-1])
  keys = _config_keys(config)
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config.") :].split("=", 1)[0]
      if key not in keys:
        close = difflib.get_close_matches(key, keys, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InputError(
          f"Unknown config key {key!r} in {arg!r}.{hint} Valid keys: {', '.join(keys)}."
        )


def check_writable_dir(path: str, what: str) -> None:
  """InputError unless ``path`` is (or can be made) a folder this process can write.

  Args:
    path: the folder.
    what: how the user names it, e.g. '--config.workdir'.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise InputError(f"{what} {path!r} is a file, not a folder. Pass a folder path.")
  probe = path
  while not os.path.exists(probe):  # the nearest existing ancestor decides
    probe = os.path.dirname(os.path.abspath(probe))
  if not os.path.isdir(probe):
    raise InputError(f"{what} {path!r} is inside {probe!r}, which is a file. Pass a folder path.")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise InputError(
      f"{what} {path!r} is not writable ({probe!r} is read-only for this user). "
      "Pass a folder you can write to."
    )


def run(main: Callable[..., None], lock_workdir: bool = False) -> None:
  """Runs ``main(config)`` under absl with up-front checks and one-line errors.

  InputError exits with status 2, a refused write (disk full, read-only, ...) with 1, Ctrl-C
  with 130; each prints one line that says what to do.

  Args:
    main: the stage function, called with the parsed (locked) config.
    lock_workdir: take the workdir lock (:mod:`infer_jax.runtime.lock`) for the run; for
      the stages that write checkpoints (squeeze, distill).
  """

  def absl_main(argv):
    del argv
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
      # absl logs at INFO by default, which buries progress lines under backend-probing
      # and Orbax chatter; --verbosity=0 brings it back.
      logging.set_verbosity(logging.WARNING)

    def job():
      # Joins a multi-process run (before any other JAX call) and checks it; a no-op
      # for a plain single-process run.
      distributed.setup(CONFIG.value)
      if not lock_workdir:
        main(CONFIG.value)
        return
      workdir = config_lib.workdir(CONFIG.value)
      check_writable_dir(workdir, "--config.workdir")
      # Only process 0 locks: the processes of one run share the workdir and cooperate.
      # (A shared config.teachers_dir is not locked: runs of several workdirs may read it
      # at once.)
      if not distributed.is_primary():
        main(CONFIG.value)
        return
      with lock_lib.WorkdirLock(workdir):
        main(CONFIG.value)

    sys.exit(guarded(job))

  try:
    check_argv(sys.argv[1:])
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(absl_main)
