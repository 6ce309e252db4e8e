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

from infer_jax.runtime import distributed
from infer_jax.runtime.errors import InputError

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
  module_spec.loader.exec_module(module)
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


def run(main: Callable[..., None]) -> None:
  """Runs ``main(config)`` under absl with up-front checks; InputError exits with status 2.

  Args:
    main: the stage function, called with the parsed (locked) config.
  """

  def absl_main(argv):
    del argv
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
      # absl logs at INFO by default, which buries progress lines under backend-probing
      # and Orbax chatter; --verbosity=0 brings it back.
      logging.set_verbosity(logging.WARNING)
    try:
      # Joins a multi-process run (before any other JAX call) and checks it; a no-op
      # for a plain single-process run.
      distributed.setup(CONFIG.value)
      main(CONFIG.value)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  try:
    check_argv(sys.argv[1:])
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(absl_main)
