"""Where the registry's records live: the :class:`RegistryStore` port and its SQLite home.

The port is one atomic read-modify-write (:meth:`RegistryStore.update`) plus reads, so several
writers (ingest threads now, several controller instances on PostgreSQL later) never lose an
update. :class:`SqliteRegistryStore` keeps one row per device (a few indexed columns for
queries, the whole :class:`DeviceRecord` as JSON) in a WAL-mode database that survives restarts;
its schema version is recorded in a ``schema_meta`` table shared with the other fleet tables,
and a database written by a newer version is refused rather than misread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agent.core.errors import EdgeAgentError
from agent.fleet.registry.records import DeviceRecord

__all__ = [
    "SCHEMA_VERSION",
    "RecordChange",
    "RegistryStore",
    "SqliteRegistryStore",
    "migrate_sqlite",
    "open_sqlite",
    "record_row",
]

log = logging.getLogger(__name__)

SCHEMA_COMPONENT = "registry"
SCHEMA_VERSION = 1

RecordChange = Callable[[DeviceRecord | None], DeviceRecord | None]
"""Given the stored record (None: unknown device), the record to store (None: no change)."""


class RegistryStore(Protocol):
    """Device records by (fleet, device)."""

    def update(self, fleet: str, device: str, change: RecordChange) -> DeviceRecord | None:
        """Apply ``change`` atomically to the stored record; return what is stored after it."""
        ...

    def get(self, fleet: str, device: str) -> DeviceRecord | None: ...

    def devices(self, fleet: str) -> list[DeviceRecord]:
        """Every record of ``fleet``, ordered by device id."""
        ...

    def close(self) -> None: ...


_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE devices (
            fleet TEXT NOT NULL,
            device TEXT NOT NULL,
            online INTEGER NOT NULL,
            last_seen REAL NOT NULL,
            model TEXT,
            version INTEGER,
            ota_state TEXT,
            record TEXT NOT NULL,
            PRIMARY KEY (fleet, device)
        )""",
        "CREATE INDEX devices_last_seen ON devices (fleet, last_seen)",
    ),
}
"""Schema steps by the version they lead to; a new version adds an entry, never edits one."""


def open_sqlite(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout, for any fleet table in ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_meta (component TEXT PRIMARY KEY, version INTEGER)"
    )
    return conn


def migrate_sqlite(
    conn: sqlite3.Connection,
    path: Path,
    component: str,
    migrations: dict[int, tuple[str, ...]],
) -> None:
    """Bring ``component``'s tables in ``path`` up to the newest version in ``migrations`` (in
    one ``IMMEDIATE`` transaction); refuse a database a newer Edge Agent wrote."""
    latest = max(migrations)
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT version FROM schema_meta WHERE component = ?", (component,)
        ).fetchone()
        have = 0 if row is None else int(row[0])
        if have > latest:
            raise EdgeAgentError(
                f"the fleet database has {component} schema {have}; this version knows up to "
                f"{latest}",
                fix="upgrade edge-agent on this controller, or point it at another database",
                path=path,
            )
        for version in range(have + 1, latest + 1):
            for statement in migrations[version]:
                conn.execute(statement)
            log.info("fleet %s schema at version %d (%s)", component, version, path)
        conn.execute(
            "INSERT OR REPLACE INTO schema_meta (component, version) VALUES (?, ?)",
            (component, latest),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteRegistryStore:
    """:class:`RegistryStore` in one SQLite file (WAL). Writes are serialised by a lock and an
    ``IMMEDIATE`` transaction, so another process on the same file cannot interleave either."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = open_sqlite(path)
        migrate_sqlite(self._conn, path, SCHEMA_COMPONENT, _MIGRATIONS)

    def update(self, fleet: str, device: str, change: RecordChange) -> DeviceRecord | None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                current = self._read(fleet, device)
                new = change(current)
                if new is not None and new != current:
                    self._write(new)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return current if new is None else new

    def get(self, fleet: str, device: str) -> DeviceRecord | None:
        with self._lock:
            return self._read(fleet, device)

    def devices(self, fleet: str) -> list[DeviceRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT record FROM devices WHERE fleet = ? ORDER BY device", (fleet,)
            ).fetchall()
        return [DeviceRecord.from_json(json.loads(row[0])) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _read(self, fleet: str, device: str) -> DeviceRecord | None:
        row = self._conn.execute(
            "SELECT record FROM devices WHERE fleet = ? AND device = ?", (fleet, device)
        ).fetchone()
        return None if row is None else DeviceRecord.from_json(json.loads(row[0]))

    def _write(self, record: DeviceRecord) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO devices "
            "(fleet, device, online, last_seen, model, version, ota_state, record) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            record_row(record),
        )


DeviceRow = tuple[str, str, bool, float, str | None, int | None, str | None, str]


def record_row(record: DeviceRecord) -> DeviceRow:
    """The ``devices`` row of ``record``: (fleet, device, online, last_seen, model, version,
    ota_state, record JSON), the same in every store."""
    ota = record.ota
    return (
        record.fleet,
        record.device,
        record.online,
        record.last_seen,
        None if record.model is None else record.model.name,
        None if record.model is None else record.model.version,
        None if ota is None else ota.state,
        json.dumps(record.to_json(), separators=(",", ":")),
    )
