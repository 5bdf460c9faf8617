"""Progress of a running study, for the person watching it: members and member-epochs done, failures,
elapsed time, an ETA, and the best metric so far per arm.

Plain lines on stderr (what `ray job logs` and CI show), at most one every `interval` seconds, and
one whenever a member array finishes. Imports nothing but the standard library.
"""

from __future__ import annotations

import math
import sys
import time


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return (f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600
            else f"{seconds // 60}:{seconds % 60:02d}")


class Progress:
    def __init__(self, total: int, done: int, epochs: int, metric: str, interval: float = 10.0, out=None):
        self.total, self.done, self.failed, self.retried = total, done, 0, 0
        self.epochs_total, self.epochs_done = total * epochs, done * epochs
        self.epochs_at_start = self.epochs_done
        self.metric, self.interval, self.out = metric, interval, out or sys.stderr
        self.best: dict[str, float] = {}  # arm -> best final metric of one member (one seed)
        self.started = time.time()
        self._last = 0.0

    def epochs(self, n: int) -> None:
        self.epochs_done += n
        if time.time() - self._last >= self.interval:
            self.print()

    def member_done(self, arm: str, value: float | None) -> None:
        if value is None:
            self.failed += 1
            return
        self.done += 1
        if math.isfinite(value):
            self.best[arm] = min(self.best.get(arm, math.inf), value)

    def eta(self) -> str:
        """From the member-epochs trained by this driver; '?' until there is at least one minute of them to go on."""
        new = self.epochs_done - self.epochs_at_start
        left = self.epochs_total - self.epochs_done
        elapsed = time.time() - self.started
        if left <= 0:
            return "0:00"
        if new <= 0 or elapsed < 30:
            return "?"
        return fmt_duration(elapsed / new * left)

    def line(self) -> str:
        best = ", ".join(f"{a} {e:.4g}" for a, e in sorted(self.best.items())) or "-"
        failed = f", {self.failed} failed" if self.failed else ""
        retried = f", {self.retried} arrays retried" if self.retried else ""
        return (f"[study] {self.done}/{self.total} members done{failed}{retried} "
                f"({self.epochs_done}/{self.epochs_total} member-epochs) | elapsed {fmt_duration(time.time() - self.started)}"
                f" | ETA {self.eta()} | best single-seed {self.metric}: {best}")

    def print(self) -> None:
        self._last = time.time()
        print(self.line(), file=self.out, flush=True)
