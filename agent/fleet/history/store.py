"""The :class:`HistoryStore` port: where the device history lives (SQLite: :mod:`.sqlite`;
PostgreSQL: :mod:`agent.fleet.store.postgres.history`).

Every write is bounded: a metrics point per (fleet, device, slot), written in batches — a
second one for the same slot is ignored; events trimmed to the newest
:data:`~.records.EVENTS_PER_DEVICE` per device on every insert; OTA updates one row per update
id (a report older than the stored one is ignored), trimmed to the newest
:data:`~.records.OTA_PER_DEVICE`; points older than the retention deleted by
:meth:`HistoryStore.prune`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agent.fleet.history.records import EventEntry, MetricsPoint
from agent.fleet.registry.records import OtaStatus

__all__ = ["HISTORY_SCHEMA_COMPONENT", "HistoryStore", "SlotPoint"]

HISTORY_SCHEMA_COMPONENT = "history"

SlotPoint = tuple[str, int, MetricsPoint]
"""(device, slot, point): ``slot`` is ``int(ts // resolution_s)``."""


class HistoryStore(Protocol):
    def add_points(self, fleet: str, points: Sequence[SlotPoint]) -> None:
        """Keep each ``(device, slot, point)`` unless that device's slot has one already (one
        transaction)."""
        ...

    def add_event(self, fleet: str, device: str, entry: EventEntry) -> None: ...

    def put_ota(self, fleet: str, device: str, status: OtaStatus) -> None:
        """Insert or update the row of ``status.id`` (only with a newer report)."""
        ...

    def points(self, fleet: str, device: str, since: float) -> list[MetricsPoint]:
        """The points of ``device`` at or after ``since``, oldest first."""
        ...

    def events(self, fleet: str, device: str, limit: int) -> list[EventEntry]:
        """The newest ``limit`` events, newest first."""
        ...

    def ota(self, fleet: str, device: str) -> list[OtaStatus]:
        """The kept OTA updates, newest first."""
        ...

    def prune(self, before: float) -> int:
        """Delete the points older than ``before``; how many went."""
        ...

    def close(self) -> None: ...
