"""One thread running timed jobs for every simulated device (a heap of deadlines).

The MQTT network threads only enqueue here (house rule 14), so a fleet of hundreds of devices
costs one thread per broker session (paho's) plus this one, and no device job ever runs on a
network thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

Job = Callable[[], None]


class Scheduler:
    """Timed jobs on one thread; ``at``/``soon`` are thread-safe. A job that raises is logged
    and the others keep running (a bug in one device must not stop the fleet)."""

    def __init__(self, name: str = "fleet-sim") -> None:
        self._heap: list[tuple[float, int, Job]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def at(self, when: float, job: Job) -> None:
        """Run ``job`` at monotonic time ``when`` (or as soon after as the thread is free)."""
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._count), job))
            self._cond.notify()

    def soon(self, job: Job, delay_s: float = 0.0) -> None:
        self.at(time.monotonic() + delay_s, job)

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _next(self) -> Job | None:
        """The next due job (waiting for it), or None once stopped."""
        with self._cond:
            while not self._stop and (not self._heap or self._heap[0][0] > time.monotonic()):
                wait = None if not self._heap else self._heap[0][0] - time.monotonic()
                self._cond.wait(wait)
            if self._stop:
                return None
            return heapq.heappop(self._heap)[2]

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                job()
            except Exception:
                log.exception("simulated device job failed")

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
