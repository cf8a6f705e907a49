"""Work lanes: a bounded queue (in items and in bytes) with its own worker thread.

The command dispatcher runs three: ``fast`` (cheap read-only commands), ``long`` (commands that
take seconds or change state) and ``ota`` (OTA messages), so a long command never holds the
thread that carries OTA and a flood of cheap commands never starves either. :meth:`Lane.put`
never blocks: a full lane says so at once and the caller answers ``busy`` with
:meth:`Lane.retry_after_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from agent.core.logs import log_fields

log = logging.getLogger(__name__)

T = TypeVar("T")

#: bounds of a ``busy`` response's ``retry_after_s``
MIN_RETRY_S = 0.5
MAX_RETRY_S = 60.0


@dataclass(frozen=True)
class LaneLimits:
    """How much one lane may hold: ``max_items`` queued items, ``max_bytes`` of their payloads."""

    max_items: int
    max_bytes: int


class Lane(Generic[T]):
    """``run(item)`` on one worker thread for each item :meth:`put` accepted, in order."""

    def __init__(self, name: str, limits: LaneLimits, run: Callable[[T], None]) -> None:
        self.name = name
        self.limits = limits
        self._run = run
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._service_s = 0.05  # moving average of one item's run time
        self.accepted = 0
        self.refused = 0
        self.errors = 0

    @property
    def queued(self) -> int:
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(
                target=self._work, name=f"edge-commands-{self.name}", daemon=True
            )
            self._thread.start()

    def put(self, item: T, size: int) -> bool:
        """Queue ``item`` (``size`` payload bytes); False at once when the lane is full. An empty
        lane takes any one item, so the bytes held stay below ``max_bytes`` + one payload."""
        with self._cond:
            full = len(self._items) >= self.limits.max_items or (
                self._items and self._bytes + size > self.limits.max_bytes
            )
            if full or self._stopping:
                self.refused += 1
                return False
            self._items.append((item, size))
            self._bytes += size
            self.accepted += 1
            self._cond.notify()
            return True

    def retry_after_s(self) -> float:
        """A fair wait before retrying: the queue's length times the average run time."""
        with self._cond:
            estimate = (len(self._items) + 1) * self._service_s
        return round(min(MAX_RETRY_S, max(MIN_RETRY_S, estimate)), 1)

    def close(self, timeout_s: float) -> None:
        """Run what is queued (within ``timeout_s``), then stop the thread."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread.join(timeout_s)
        self._thread = None

    def _next(self) -> T | None:
        with self._cond:
            while not self._items and not self._stopping:
                self._cond.wait()
            if not self._items:
                return None
            item, size = self._items.popleft()
            self._bytes -= size
            return item

    def _work(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            started = time.monotonic()
            try:
                self._run(item)
            except Exception:  # a bad handler must never kill the lane
                self.errors += 1
                log.exception("command lane error", extra=log_fields(lane=self.name))
            took = time.monotonic() - started
            with self._cond:
                self._service_s = 0.8 * self._service_s + 0.2 * took
