"""The run's terminal display: one updating progress line, or a line per evaluation."""

import time
from typing import Callable


def fmt_time(seconds: float) -> str:
  """H:MM:SS of a duration in seconds (0 for negative ones)."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """One updating line on a terminal; one plain line per evaluation otherwise.

  Rates and the ETA count only steady-state rounds: those after the first
  round and after the first evaluation, which both compile (they would
  make the ETA far too long at the start).
  """

  def __init__(self, first: int, total: int, stream, clock: Callable[[], float] = time.time):
    self.first, self.total, self.stream, self.clock = first, total, stream, clock
    self.tty = hasattr(stream, "isatty") and stream.isatty()
    self.start = clock()
    self.warm = None  # (round, time) at the end of the last compiling round or evaluation
    self.accuracy, self.evaluated = None, False

  def warmed_up(self, r: int) -> None:
    """Marks the end of a compiling round or evaluation: rates start from here."""
    self.warm = (r, self.clock())

  def rate(self, r: int, now: float | None = None) -> float:
    """Steady-state rounds per second up to `now` (all rounds, until one past warm-up)."""
    first, start = self.warm if self.warm and r > self.warm[0] else (self.first, self.start)
    elapsed = (now or self.clock()) - start
    return (r - first) / elapsed if elapsed > 0 else 0.0

  def line(self, r: int, now: float | None = None) -> str:
    """The progress line of round r: accuracy, steady-state rate, ETA."""
    rate = self.rate(r, now)
    eta = (self.total - r) / rate if rate > 0 else 0.0
    acc = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
    return f"round {r}/{self.total} | test acc {acc} | {rate:.2f} rounds/s | ETA {fmt_time(eta)}"

  def update(self, r: int, evaluated: bool = False, now: float | None = None):
    """Shows round r: redraws the terminal line, or prints one line per evaluation.

    `now`: when round r's training ended, so the rate leaves out the
    evaluation that follows it (the first one compiles).
    """
    if self.tty:
      self.stream.write("\r\033[K" + self.line(r, now) + ("\n" if evaluated else ""))
      self.stream.flush()
    elif evaluated:
      print(self.line(r, now), file=self.stream, flush=True)
    if evaluated and not self.evaluated:
      self.evaluated = True
      self.warmed_up(r)
