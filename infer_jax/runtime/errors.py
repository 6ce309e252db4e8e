"""Errors caused by user input.

Entry points catch :class:`InputError` and print its message (which says what is
wrong and how to fix it) without a traceback; anything else is a bug and keeps its
traceback.
"""


class InputError(ValueError):
  """Bad user input: a path, a dataset, a config value or a checkpoint that cannot be used.

  The message names the problem and the fix.
  """
