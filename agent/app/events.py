"""The daemon's event bus: ``emit(kind, data)`` to every subscriber, ``emit_throttled`` for
progress. Events: ``source.state``, ``governor.action``, ``build.progress``, ``ota.state``,
``pool.event``, ``model.swapped``, ``config.reload``, ``config.restart_needed``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.core.logs import log_fields

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]
"""``listener(kind, data)``: called from any thread; it must only validate and enqueue."""


class EventBus:
    """Fans daemon events out to its subscribers; a failing subscriber is logged, never
    propagated."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._listeners: list[Listener] = []
        self._throttle: dict[str, float] = {}

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Every subscriber gets ``(kind, data)``."""
        for listener in list(self._listeners):
            try:
                listener(kind, data)
            except Exception:
                log.exception("event listener failed", extra=log_fields(event="hook"))

    def emit_throttled(self, kind: str, data: dict[str, Any], every_s: float = 1.0) -> None:
        """:meth:`emit` at most once per ``every_s`` per kind (progress), and always at 100 %."""
        now = self.clock()
        if data.get("fraction") != 1.0 and now - self._throttle.get(kind, -1e9) < every_s:
            return
        self._throttle[kind] = now
        self.emit(kind, data)
