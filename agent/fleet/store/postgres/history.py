"""The device history in PostgreSQL: :class:`~agent.fleet.history.store.HistoryStore` for
controller instances sharing one database (same tables and bounds as the SQLite home)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from agent.fleet.history.records import (
    EVENTS_PER_DEVICE,
    OTA_PER_DEVICE,
    EventEntry,
    MetricsPoint,
)
from agent.fleet.history.store import SlotPoint
from agent.fleet.registry.records import OtaStatus
from agent.fleet.store.postgres.pool import PgPool

__all__ = ["PostgresHistoryStore"]

_ADD_POINT = (
    "INSERT INTO history_points (fleet, device, slot, ts, fps, latency_p50_ms, power_w, "
    "temp_max_c, memory_used_pct) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (fleet, device, slot) DO NOTHING"
)
_TRIM_EVENTS = (
    "DELETE FROM history_events WHERE fleet = %s AND device = %s AND id < (SELECT id FROM "
    "history_events WHERE fleet = %s AND device = %s ORDER BY id DESC LIMIT 1 OFFSET %s)"
)
_PUT_OTA = (
    "INSERT INTO history_ota (fleet, device, update_id, updated_at, steps, status) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (fleet, device, update_id) DO UPDATE SET "
    "updated_at = EXCLUDED.updated_at, steps = EXCLUDED.steps, status = EXCLUDED.status "
    "WHERE EXCLUDED.updated_at > history_ota.updated_at OR (EXCLUDED.updated_at = "
    "history_ota.updated_at AND EXCLUDED.steps >= history_ota.steps)"
)
_TRIM_OTA = (
    "DELETE FROM history_ota WHERE fleet = %s AND device = %s AND update_id NOT IN (SELECT "
    "update_id FROM history_ota WHERE fleet = %s AND device = %s "
    "ORDER BY updated_at DESC, steps DESC, update_id DESC LIMIT %s)"
)


class PostgresHistoryStore:
    """History rows through ``pool`` (shared with the registry and the rollouts)."""

    def __init__(self, pool: PgPool) -> None:
        self._pool = pool

    def add_points(self, fleet: str, points: Sequence[SlotPoint]) -> None:
        rows = [(fleet, device, slot, p.ts, *p.values()) for device, slot, p in points]
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(_ADD_POINT, rows)

    def add_event(self, fleet: str, device: str, entry: EventEntry) -> None:
        data = json.dumps(entry.data, separators=(",", ":"))
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO history_events (fleet, device, ts, kind, data) "
                "VALUES (%s, %s, %s, %s, %s)",
                (fleet, device, entry.ts, entry.kind, data),
            )
            conn.execute(_TRIM_EVENTS, (fleet, device, fleet, device, EVENTS_PER_DEVICE - 1))

    def put_ota(self, fleet: str, device: str, status: OtaStatus) -> None:
        text = json.dumps(status.to_json(), separators=(",", ":"))
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                _PUT_OTA, (fleet, device, status.id, status.updated_at, status.steps, text)
            )
            conn.execute(_TRIM_OTA, (fleet, device, fleet, device, OTA_PER_DEVICE))

    def points(self, fleet: str, device: str, since: float) -> list[MetricsPoint]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT ts, fps, latency_p50_ms, power_w, temp_max_c, memory_used_pct "
                "FROM history_points WHERE fleet = %s AND device = %s AND ts >= %s ORDER BY ts",
                (fleet, device, since),
            ).fetchall()
        return [MetricsPoint(*row) for row in rows]

    def events(self, fleet: str, device: str, limit: int) -> list[EventEntry]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT ts, kind, data FROM history_events WHERE fleet = %s AND device = %s "
                "ORDER BY id DESC LIMIT %s",
                (fleet, device, limit),
            ).fetchall()
        return [EventEntry(ts, kind, json.loads(data)) for ts, kind, data in rows]

    def ota(self, fleet: str, device: str) -> list[OtaStatus]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT status FROM history_ota WHERE fleet = %s AND device = %s "
                "ORDER BY updated_at DESC, steps DESC, update_id DESC",
                (fleet, device),
            ).fetchall()
        return [OtaStatus.from_json(json.loads(row[0])) for row in rows]

    def prune(self, before: float) -> int:
        with self._pool.connection() as conn:
            return conn.execute("DELETE FROM history_points WHERE ts < %s", (before,)).rowcount

    def close(self) -> None:
        self._pool.close()
