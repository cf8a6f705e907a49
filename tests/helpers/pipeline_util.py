"""A sink that keeps every result, for pipeline tests."""

from __future__ import annotations

import threading
import time

from agent.pipeline.frames import Result


class ListSink:
    """Collects results (thread-safe); ``delay_s`` slows each write (a slow consumer)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.results: list[Result] = []
        self.lock = threading.Lock()
        self.delay_s = delay_s
        self.closed = False

    def write(self, result: Result) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            self.results.append(result)

    def close(self) -> None:
        self.closed = True

    def count(self) -> int:
        with self.lock:
            return len(self.results)
