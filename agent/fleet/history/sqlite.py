"""The device history in the fleet's SQLite file (its own connection; schema component
``history`` in the shared ``schema_meta`` table, migrated like the others)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from agent.fleet.history.records import (
    EVENTS_PER_DEVICE,
    OTA_PER_DEVICE,
    EventEntry,
    MetricsPoint,
)
from agent.fleet.history.store import HISTORY_SCHEMA_COMPONENT, SlotPoint
from agent.fleet.registry.records import OtaStatus
from agent.fleet.registry.store import migrate_sqlite, open_sqlite

__all__ = ["SqliteHistoryStore"]

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE history_points (
            fleet TEXT NOT NULL,
            device TEXT NOT NULL,
            slot INTEGER NOT NULL,
            ts REAL NOT NULL,
            fps REAL,
            latency_p50_ms REAL,
            power_w REAL,
            temp_max_c REAL,
            memory_used_pct REAL,
            PRIMARY KEY (fleet, device, slot)
        )""",
        "CREATE INDEX history_points_ts ON history_points (ts)",
        """CREATE TABLE history_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            fleet TEXT NOT NULL,
            device TEXT NOT NULL,
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX history_events_device ON history_events (fleet, device, id)",
        """CREATE TABLE history_ota (
            fleet TEXT NOT NULL,
            device TEXT NOT NULL,
            update_id TEXT NOT NULL,
            updated_at INTEGER NOT NULL,
            steps INTEGER NOT NULL,
            status TEXT NOT NULL,
            PRIMARY KEY (fleet, device, update_id)
        )""",
        "CREATE INDEX history_ota_device ON history_ota (fleet, device, updated_at)",
    ),
}
"""Schema steps by the version they lead to; a new version adds an entry, never edits one."""

_TRIM_EVENTS = (
    "DELETE FROM history_events WHERE fleet = ? AND device = ? AND id < (SELECT id FROM "
    "history_events WHERE fleet = ? AND device = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
_PUT_OTA = (
    "INSERT INTO history_ota (fleet, device, update_id, updated_at, steps, status) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (fleet, device, update_id) DO UPDATE SET "
    "updated_at = excluded.updated_at, steps = excluded.steps, status = excluded.status "
    "WHERE excluded.updated_at > history_ota.updated_at OR (excluded.updated_at = "
    "history_ota.updated_at AND excluded.steps >= history_ota.steps)"
)
_TRIM_OTA = (
    "DELETE FROM history_ota WHERE fleet = ? AND device = ? AND update_id NOT IN (SELECT "
    "update_id FROM history_ota WHERE fleet = ? AND device = ? "
    "ORDER BY updated_at DESC, steps DESC, update_id DESC LIMIT ?)"
)


class SqliteHistoryStore:
    """:class:`~agent.fleet.history.store.HistoryStore` in the SQLite file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = open_sqlite(path)
        migrate_sqlite(self._conn, path, HISTORY_SCHEMA_COMPONENT, _MIGRATIONS)

    def add_points(self, fleet: str, points: Sequence[SlotPoint]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO history_points (fleet, device, slot, ts, fps, "
                "latency_p50_ms, power_w, temp_max_c, memory_used_pct) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(fleet, device, slot, p.ts, *p.values()) for device, slot, p in points],
            )

    def add_event(self, fleet: str, device: str, entry: EventEntry) -> None:
        data = json.dumps(entry.data, separators=(",", ":"))
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO history_events (fleet, device, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
                (fleet, device, entry.ts, entry.kind, data),
            )
            conn.execute(_TRIM_EVENTS, (fleet, device, fleet, device, EVENTS_PER_DEVICE - 1))

    def put_ota(self, fleet: str, device: str, status: OtaStatus) -> None:
        text = json.dumps(status.to_json(), separators=(",", ":"))
        with self._transaction() as conn:
            conn.execute(
                _PUT_OTA, (fleet, device, status.id, status.updated_at, status.steps, text)
            )
            conn.execute(_TRIM_OTA, (fleet, device, fleet, device, OTA_PER_DEVICE))

    def points(self, fleet: str, device: str, since: float) -> list[MetricsPoint]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT ts, fps, latency_p50_ms, power_w, temp_max_c, memory_used_pct "
                "FROM history_points WHERE fleet = ? AND device = ? AND ts >= ? ORDER BY ts",
                (fleet, device, since),
            ).fetchall()
        return [MetricsPoint(*row) for row in rows]

    def events(self, fleet: str, device: str, limit: int) -> list[EventEntry]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT ts, kind, data FROM history_events WHERE fleet = ? AND device = ? "
                "ORDER BY id DESC LIMIT ?",
                (fleet, device, limit),
            ).fetchall()
        return [EventEntry(ts, kind, json.loads(data)) for ts, kind, data in rows]

    def ota(self, fleet: str, device: str) -> list[OtaStatus]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT status FROM history_ota WHERE fleet = ? AND device = ? "
                "ORDER BY updated_at DESC, steps DESC, update_id DESC",
                (fleet, device),
            ).fetchall()
        return [OtaStatus.from_json(json.loads(row[0])) for row in rows]

    def prune(self, before: float) -> int:
        with self._lock:
            cursor = self._conn.execute("DELETE FROM history_points WHERE ts < ?", (before,))
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
