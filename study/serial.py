"""A store writer: one thread that runs queued calls in order, so that Ray Tune's event loop (and with it every
trial waiting to report) never waits for a store. The driver has two, one per store: MLflow's
(tracking.RecordWriter) and Optuna's (driver.py). A failed call is kept and surfaced by `failed()` and
`flush()`; the calls after it still run (each store's own checks decide what is safe to write)."""

from __future__ import annotations

import queue
import threading


class SerialWriter:
    def __init__(self, name: str, idle_s: float = 1.0):
        self.name, self.idle_s = name, idle_s
        self._queue: queue.Queue = queue.Queue()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called by the driver (any thread)

    def call(self, fn, *args) -> None:
        """Run fn(*args) on the writer's thread, after everything queued before it."""
        self._queue.put((fn, args))

    def failed(self) -> BaseException | None:
        """The first error of a queued call, if one failed."""
        return self._errors[0] if self._errors else None

    def flush(self) -> None:
        """Wait until everything queued so far has run (and `on_flush`); raise the first error of a call."""
        self._queue.put((self.on_flush, ()))
        self._queue.join()
        if self._errors:
            raise RuntimeError(f"{self.name} failed: {self._errors[0]!r}") from self._errors[0]

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread once what is queued has run (flush() first to know it succeeded)."""
        self._queue.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ for subclasses (the writer's thread)

    def on_idle(self) -> None:
        """After each call, and every `idle_s` seconds while nothing is queued."""

    def on_flush(self) -> None:
        """Queued by flush()."""

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.idle_s)
            except queue.Empty:
                self._guarded(self.on_idle)
                continue
            if item is None:
                self._queue.task_done()
                return
            fn, args = item
            try:
                self._guarded(fn, *args)
                self._guarded(self.on_idle)
            finally:
                self._queue.task_done()

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # surfaced by failed() and flush(): a lost record must stop the study
            self._errors.append(e)
