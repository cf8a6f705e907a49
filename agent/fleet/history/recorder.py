"""What the registry ingest reports, kept in the :class:`~.store.HistoryStore`.

:class:`HistoryRecorder` is the ingest's observer (:class:`agent.fleet.registry.ingest.
IngestObserver`): called on the ingest thread after a message was applied. It keeps one metrics
point per device per ``history.resolution_s`` slot (a small in-memory map skips a slot already
taken; the points are written in batches — :data:`BATCH` of them, or what :meth:`flush` finds,
which the controller calls every tick — so ingest stays fast), every event (bounded data), every
OTA report, and deletes points past ``history.retention_h`` once a minute. A store failure is
logged (a few times) and counted, never raised: the registry update it follows is committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.config.fleet import HistoryConfig
from agent.core.logs import log_fields
from agent.fleet.history.records import EventEntry, MetricsPoint, bounded_data, figures
from agent.fleet.history.store import HistoryStore, SlotPoint
from agent.fleet.registry.records import MetricsSnapshot, OtaStatus
from agent.fleet.registry.wire import EventMessage

__all__ = ["HistoryRecorder"]

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0
BATCH = 256
"""Points written in one transaction at most; a full batch is written at once."""
_MAX_TRACKED = 200_000
"""Devices whose last slot is remembered; past it the map starts over (a few extra writes)."""


class HistoryRecorder:
    """Feeds ``store`` for ``fleet`` under the limits of ``cfg``."""

    def __init__(self, store: HistoryStore, fleet: str, cfg: HistoryConfig) -> None:
        self.store = store
        self.fleet = fleet
        self.cfg = cfg
        self._slots: dict[str, int] = {}
        self._pruned_at: float | None = None
        self._pending: list[SlotPoint] = []
        self._lock = threading.Lock()
        self.errors = 0
        self.points = 0

    def metrics(self, device: str, snapshot: MetricsSnapshot, now: float) -> None:
        slot = int(now // self.cfg.resolution_s)
        with self._lock:
            if self._slots.get(device) == slot:
                return
            if len(self._slots) >= _MAX_TRACKED:
                self._slots.clear()
            self._slots[device] = slot
            self._pending.append((device, slot, MetricsPoint.at(round(now, 3), figures(snapshot))))
            full = len(self._pending) >= BATCH
        if full:
            self.flush()
        self._maybe_prune(now)

    def flush(self) -> None:
        """Write the points taken so far (any thread)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if batch and self._guard(lambda: self.store.add_points(self.fleet, batch)):
            with self._lock:
                self.points += len(batch)

    def event(self, device: str, event: EventMessage) -> None:
        entry = EventEntry(event.ts, event.kind, bounded_data(event.data))
        self._guard(lambda: self.store.add_event(self.fleet, device, entry))

    def ota(self, device: str, status: OtaStatus) -> None:
        self._guard(lambda: self.store.put_ota(self.fleet, device, status))

    def _maybe_prune(self, now: float) -> None:
        with self._lock:
            if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S:
                return
            self._pruned_at = now
        before = now - self.cfg.retention_h * 3600.0
        self._guard(lambda: self.store.prune(before))

    def _guard(self, write: Callable[[], object]) -> bool:
        try:
            write()
        except Exception:
            with self._lock:
                self.errors += 1
                errors = self.errors
            if errors <= 5 or errors % 1000 == 0:
                log.exception("history write failed", extra=log_fields(errors=errors))
            return False
        return True
