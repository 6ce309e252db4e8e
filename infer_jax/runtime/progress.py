"""Progress of a training loop: the first (compiling) step's time, then throughput and ETA.

Squeeze, recover and the student trainer share it; each formats its own progress line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax


def format_duration(seconds: float) -> str:
  """``H:MM:SS`` for progress lines."""
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """Times a loop of jitted steps.

  The first step includes compilation: :meth:`first_step_done` waits for it, logs
  ``'<tag> compiled and ran the first <unit> in X.Xs'`` and opens the first throughput window,
  so rates describe the steady state. Items (images, image-iterations) are counted with
  :meth:`count`; :meth:`rate` is items per second since the window opened and
  :meth:`reset_window` opens the next one (e.g. after each progress line).

  Args:
    tag: prefix of the logged line, e.g. ``'[resnet18]'``.
    log: where the line goes.
    unit: what a step is called in that line ('step', 'iteration').
  """

  def __init__(self, tag: str, log: Callable[[str], Any], unit: str = "step"):
    self.tag, self.log, self.unit = tag, log, unit
    self.start = time.perf_counter()
    self.first_step_seconds: float | None = None
    self._window_start = self.start
    self.window_items = 0

  def first_step_done(self, tree: Any) -> bool:
    """On the first call only: waits for ``tree`` (the step's output), logs the compile time
    and opens the window; returns whether this call was that first one."""
    if self.first_step_seconds is not None:
      return False
    jax.block_until_ready(tree)
    self.first_step_seconds = time.perf_counter() - self.start
    self.log(f"{self.tag} compiled and ran the first {self.unit} in {self.first_step_seconds:.1f}s")
    self.reset_window()
    return True

  def count(self, items: int) -> None:
    """Adds ``items`` processed by one step to the current window."""
    self.window_items += items

  def rate(self, now: float | None = None) -> float:
    """Items per second in the current window (up to ``now``, default the present)."""
    now = time.perf_counter() if now is None else now
    return self.window_items / max(now - self._window_start, 1e-9)

  def eta(self, remaining_items: float, rate: float) -> str:
    """``H:MM:SS`` left for ``remaining_items`` at ``rate`` items per second."""
    return format_duration(remaining_items / max(rate, 1e-9))

  def reset_window(self) -> None:
    """Opens a new, empty throughput window now."""
    self._window_start = time.perf_counter()
    self.window_items = 0
