"""Device messages from the MQTT network thread to the registry, through a bounded queue.

:meth:`MessageIntake.offer` is the MQTT client's ``on_message``: it runs on paho's thread, so
it only enqueues (rule 14) and counts what a full queue drops. One worker thread drains the
queue into :meth:`RegistryIngest.handle` (which never raises for what a device sent), then tells
``on_applied`` (the live stream's change feed) which device an applied message changed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from agent.core.logs import log_fields
from agent.fleet.registry.ingest import IngestResult
from agent.fleet.registry.merge import Outcome

__all__ = ["MessageIntake"]

log = logging.getLogger(__name__)

_STOP = ("", b"")


class MessageIntake:
    """``offer`` (any thread, never blocks) → one worker → ``handle``."""

    def __init__(
        self,
        handle: Callable[[str, bytes], IngestResult],
        *,
        max_queued: int = 10_000,
        on_applied: Callable[[str], None] | None = None,
    ) -> None:
        self.handle = handle
        self.on_applied = on_applied
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(max_queued)
        self._lock = threading.Lock()
        self._dropped = 0
        self._taken = 0
        self._errors = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-intake", daemon=True)
        self._thread.start()

    def offer(self, topic: str, payload: bytes) -> None:
        try:
            self._queue.put_nowait((topic, payload))
        except queue.Full:
            with self._lock:
                self._dropped += 1
                dropped = self._dropped
            if dropped == 1 or dropped % 1000 == 0:
                log.warning(
                    "registry queue full; device messages dropped",
                    extra=log_fields(dropped=dropped),
                )

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "queued": self._queue.qsize(),
                "taken": self._taken,
                "dropped": self._dropped,
                "errors": self._errors,
            }

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every message offered so far was handled (tests, shutdown)."""
        done = threading.Event()

        def waiter() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, name="fleet-intake-idle", daemon=True).start()
        return done.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("registry queue still full at stop; worker left to exit")
        thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            topic, payload = self._queue.get()
            try:
                if (topic, payload) == _STOP:
                    return
                self._take(topic, payload)
            finally:
                self._queue.task_done()

    def _take(self, topic: str, payload: bytes) -> None:
        try:
            result = self.handle(topic, payload)
            if self.on_applied is not None and result.outcome is Outcome.APPLIED and result.device:
                self.on_applied(result.device)
        except Exception:  # the store failed (disk full, database gone): keep running
            with self._lock:
                self._errors += 1
                errors = self._errors
            if errors <= 5 or errors % 1000 == 0:
                log.exception("registry update failed", extra=log_fields(errors=errors))
            return
        with self._lock:
            self._taken += 1
