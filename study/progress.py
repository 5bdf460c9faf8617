"""Progress of a running study, for the person watching it: members and member-epochs done, failed and
diverged members, retried arrays, elapsed time, an ETA, and the best metric so far per arm.

On a terminal (the output stream's isatty()) a progress bar line and below it one row per member array in
flight (its arm and size, its epoch, its time per epoch), redrawn in place at most every `refresh` seconds;
otherwise (`ray job logs`, CI, a file) plain lines, at most one every `interval` seconds, and one whenever a
member array finishes. The best value per arm is that of its best setting averaged over seeds (as the
landscape ranks), or of a single member until one of its settings has all its seeds in, spelled as every
output spells a metric (spec.shown_metric). Imports nothing but the standard library and the spec.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import threading
import time

from .spec import shown_metric

BAR_WIDTH = 20
MAX_ROWS = 8  # array rows drawn under the bar; more arrays in flight are counted in one last row


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return (f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600
            else f"{seconds // 60}:{seconds % 60:02d}")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or a plain object
        return False


class Progress:
    """Counts and timing of one driver's study. The driver reports to it:

        epochs(n, seconds=epoch_time, key=trial_id, epoch=epoch)   an array reported an epoch of n members
        member_done(arm, value, diverged=False)                    a member finished (value None: it failed)
        retry(key)                                                 an array is retried (its worker died)
        message(text)                                              any other line for the same stream
        print() / close()                                          draw now / end the bar's line

    The ETA is only given once a full epoch of some member array was measured: from the epoch's own time
    (`seconds`), or the time between two reports of the same array; never from the time since start,
    which holds Ray's start-up, data loading and compilation. Arrays training at the same time add up."""

    def __init__(self, total: int, done: int, epochs: int, metric: str, interval: float = 10.0, out=None,
                 refresh: float = 0.5):
        self.total, self.done, self.failed, self.retried, self.diverged = total, done, 0, 0, 0
        self.epochs_total, self.epochs_done = total * epochs, done * epochs
        self.metric, self.interval, self.refresh = metric, interval, refresh
        self.out = out or sys.stderr
        self.tty = _isatty(self.out)
        self.best: dict[str, float] = {}  # arm -> best final metric of one member (one seed)
        # arm -> (mean over seeds, lr, weight_decay, seeds) of its best setting whose seeds have all finished: what
        # the landscape ranks (study/settings.py); shown instead of single seeds once an arm has one
        self.best_setting: dict[str, tuple[float, float, float, int]] = {}
        self.started = time.time()
        self._last = 0.0
        self._drawn = False  # a bar is on screen without its newline
        self._closed = False  # close() drew the final bar
        # array key -> [member-epochs per report, seconds per epoch or None, last report time, last epoch]
        self._arrays: dict = {}
        self._labels: dict = {}  # array key -> what its row calls it ("sgd-coupled, 41 members")
        self.epochs_per_member = epochs
        self._first_report: tuple[float, int] | None = None  # (time, epochs_done) of the first unkeyed report
        self._throughput = 0.0  # member-epochs per second when last measured
        self._lock = threading.RLock()   # the ticker and Tune's callbacks draw the same line
        self._ticking = threading.Event()

    # ------------------------------------------------------------------ what the driver reports

    def epochs(self, n: int, seconds: float | None = None, key=None, epoch: int | None = None,
               label: str | None = None) -> None:
        """An array reported one epoch of `n` members. `seconds`: that epoch's measured time (the rows'
        epoch_time); `key`: the array (Ray trial id); `epoch`: its number, so that a retried array that
        reports an epoch again is not counted twice; `label`: the array's row on a terminal."""
        with self._lock:  # the ticker reads the arrays as it draws their rows
            now = time.time()
            if key is not None and label:
                self._labels[key] = label
            if key is not None:
                a = self._arrays.get(key)
                if a is not None and epoch is not None and a[3] is not None and epoch <= a[3]:
                    a[2] = now  # re-reported after a retry: alive, but no new epochs
                    return
                between = now - a[2] if a is not None else None
                if seconds is not None and math.isfinite(seconds) and seconds > 0:
                    per_epoch = max(seconds, between or 0.0)  # between reports also holds evaluation and overhead
                else:
                    per_epoch = between
                self._arrays[key] = [n, per_epoch, now, epoch]
            elif self._first_report is None:
                self._first_report = (now, self.epochs_done + n)
            self.epochs_done = min(self.epochs_done + n, self.epochs_total)
            if now - self._last >= (self.refresh if self.tty else self.interval):
                self.print()

    def member_done(self, arm: str, value: float | None, diverged: bool = False) -> None:
        """A member's end: its final metric, or None when it failed. A diverged member is done (recorded)
        and counted as diverged; it never is an arm's best."""
        if value is None and not diverged:
            self.failed += 1
            return
        self.done += 1
        if diverged:
            self.diverged += 1
        elif math.isfinite(value):
            self.best[arm] = min(self.best.get(arm, math.inf), value)

    def setting_done(self, arm: str, mean: float, lr: float, weight_decay: float, seeds: int) -> None:
        """A setting's last seed finished: its mean over seeds (NaN when every seed diverged: never a best)."""
        with self._lock:  # the ticker thread reads it as it draws
            if math.isfinite(mean) and mean < self.best_setting.get(arm, (math.inf,))[0]:
                self.best_setting = {**self.best_setting, arm: (mean, lr, weight_decay, seeds)}

    def array_done(self, key) -> None:
        """An array ended (finished or failed for good): its row goes."""
        with self._lock:
            self._labels.pop(key, None)
            if key in self._arrays:
                self._arrays[key][2] = -math.inf  # out of the rows; its rate no longer counts in the ETA

    def rows(self, width: int) -> list[str]:
        """One row per array in flight (reported within twice its epoch time, plus 30 s), the most recent first."""
        now = time.time()
        live = sorted(((k, a) for k, a in self._arrays.items() if k in self._labels
                       and now - a[2] <= 2 * (a[1] or 0.0) + 30), key=lambda ka: -ka[1][2])
        out = []
        for k, (n, per_epoch, last, epoch) in live[:MAX_ROWS]:
            pace = f", {per_epoch:.1f} s/epoch" if per_epoch else ""
            out.append(f"  {self._labels[k]}: epoch {epoch}/{self.epochs_per_member}{pace}, "
                       f"last report {now - last:.0f} s ago")
        if len(live) > MAX_ROWS:
            out.append(f"  … and {len(live) - MAX_ROWS} more arrays")
        return [r if len(r) < width else r[:max(width - 2, 10)] + "…" for r in out]

    def retry(self, key=None) -> None:
        """An array is retried (its worker or node died); it continues from its checkpoint."""
        self.retried += 1
        if self.tty:
            self.print()

    # ------------------------------------------------------------------ the estimate

    def eta_seconds(self) -> float | None:
        """Seconds left at the measured rate, or None until a full epoch has been measured."""
        left = self.epochs_total - self.epochs_done
        if left <= 0:
            return 0.0
        now = time.time()
        rate = 0.0
        for n, per_epoch, last, _ in self._arrays.values():
            if per_epoch and now - last <= 2 * per_epoch + 30:  # arrays still training: their rates add up
                rate += n / per_epoch
        if rate > 0:
            self._throughput = rate
        elif not self._arrays and self._first_report is not None:  # reports without keys: the rate since the first
            t0, e0 = self._first_report
            if now - t0 >= 30 and self.epochs_done > e0:
                self._throughput = (self.epochs_done - e0) / (now - t0)
        if self._throughput <= 0:
            return None
        return left / self._throughput

    def eta(self) -> str:
        s = self.eta_seconds()
        return "?" if s is None else fmt_duration(s)

    # ------------------------------------------------------------------ what is shown

    def _best(self) -> str:
        """Per arm its best setting, averaged over seeds, as the study ranks; its best single member until one of
        its settings has all its seeds in."""
        settings, single = dict(self.best_setting), dict(self.best)
        if not settings:
            return f"best single-seed {self.metric}: " + (", ".join(f"{a} {shown_metric(e)}" for a, e in sorted(single.items()))
                                                          or "-")
        if set(single) <= set(settings):
            return f"best {self.metric} (mean over seeds): " + ", ".join(f"{a} {shown_metric(v[0])}"
                                                                         for a, v in sorted(settings.items()))
        return f"best {self.metric}: " + ", ".join(
            f"{a} {shown_metric(settings[a][0])} (mean over seeds)" if a in settings else f"{a} {shown_metric(single[a])} (one seed)"
            for a in sorted(set(single) | set(settings)))

    def _counts(self, retried_word: str) -> str:
        return "".join((f", {self.failed} failed" if self.failed else "",
                        f", {self.diverged} diverged" if self.diverged else "",
                        f", {self.retried} {retried_word.replace('arrays', 'array') if self.retried == 1 else retried_word}"
                        if self.retried else ""))

    def line(self) -> str:
        """The plain progress line."""
        return (f"[study] {self.done}/{self.total} members done{self._counts('arrays retried')} "
                f"({self.epochs_done}/{self.epochs_total} member-epochs) | elapsed {fmt_duration(time.time() - self.started)}"
                f" | ETA {self.eta()} | {self._best()}")

    def bar(self, width: int | None = None) -> str:
        """The terminal's progress bar line, cut to `width` columns."""
        width = width or self._size()[0]
        frac = self.done / self.total if self.total else 1.0
        fill = min(BAR_WIDTH, int(frac * BAR_WIDTH))
        text = (f"[study] [{'#' * fill}{'.' * (BAR_WIDTH - fill)}] {self.done}/{self.total} members"
                f"{self._counts('retried')} | {self.epochs_done}/{self.epochs_total} epochs"
                f" | {fmt_duration(time.time() - self.started)} | ETA {self.eta()} | {self._best()}")
        return text if len(text) < width else text[:max(width - 2, 10)] + "…"

    def _size(self) -> tuple[int, int]:
        """The terminal's (columns, lines); where it cannot say (a pseudo-terminal may say 0), the environment's or
        120 × 24. The rows never take more lines than it has: a short pane would scroll on every drawing."""
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (AttributeError, ValueError, OSError):
            size = os.terminal_size((0, 0))
        fallback = shutil.get_terminal_size((120, 24))
        return size.columns or fallback.columns, size.lines or fallback.lines

    def print(self, rows: bool = True) -> None:
        with self._lock:
            if self._closed:  # a ticker that woke as the bar was closed draws nothing after the final bar
                return
            self._last = time.time()
            if self.tty:
                # the bar, everything below it cleared, the array rows, then the cursor back at the end of the
                # bar's line: a line someone else writes (a retry warning, Ray's) lands after the bar, as it did
                # with the bar alone, and the next drawing starts on the line below it, never over it
                width, height = self._size()
                bar = self.bar(width)
                below = self.rows(width)[:max(0, height - 3)] if rows else []
                back = f"\x1b[{len(below)}A\r\x1b[{len(bar)}C" if below else ""
                self.out.write("\r" + bar + "\x1b[J" + "".join("\n" + r for r in below) + back)
                self.out.flush()
                self._drawn = True
            else:
                print(self.line(), file=self.out, flush=True)

    def tick(self, every: float = 1.0) -> None:
        """On a terminal, redraw the bar every `every` seconds until close(): the elapsed time moves while Ray
        starts and the first epoch trains, so a working study never looks frozen. (Piped output gets its lines
        from the reports, not from a clock.)"""
        if not self.tty or self._ticking.is_set():
            return
        self._ticking.set()

        def loop():
            while self._ticking.is_set():
                time.sleep(every)
                if self._ticking.is_set() and self._drawn:
                    self.print()
        self.ticker = threading.Thread(target=loop, name="study-progress", daemon=True)
        self.ticker.start()

    def message(self, text: str) -> None:
        """A line of its own (a warning, a refine round) on the progress stream; on a terminal the bar is
        cleared first and drawn again below it."""
        with self._lock:
            if self.tty and self._drawn:
                self.out.write("\r\x1b[J")  # the bar and the rows below it
            print(text, file=self.out, flush=True)
            if self.tty and self._drawn:
                self.print()

    def close(self) -> None:
        """End the bar's line (a terminal), so what is printed next starts on a line of its own."""
        self._ticking.clear()
        with self._lock:
            if self.tty and self._drawn:
                self.print(rows=False)  # the final bar alone: no array is in flight any more
                self.out.write("\n")
                self.out.flush()
                self._drawn = False
            self._closed = True
