"""The default fleet store: the registry, the rollouts and the device history in one SQLite file
(WAL).

One controller instance per file. Every write is an ``IMMEDIATE`` transaction under a lock, so the
controller's threads (MQTT ingest, tick, HTTP API) and another process on the same file never
interleave a read-modify-write. The ``rollouts`` tables carry their own schema version in the
``schema_meta`` table the registry shares, migrated the same way.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.core.errors import EdgeAgentError
from agent.fleet.history.sqlite import SqliteHistoryStore
from agent.fleet.registry.store import SqliteRegistryStore, migrate_sqlite, open_sqlite
from agent.fleet.store.base import DocChange
from agent.fleet.store.rows import ROLLOUT_SCHEMA_COMPONENT, load_doc, rollout_row

__all__ = ["SqliteFleetStore", "SqliteRolloutStore"]

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE rollouts (
            id TEXT PRIMARY KEY,
            fleet TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            doc TEXT NOT NULL
        )""",
        "CREATE INDEX rollouts_fleet_created ON rollouts (fleet, created_at)",
        """CREATE TABLE rollout_manifests (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
            device TEXT NOT NULL,
            envelope TEXT NOT NULL,
            PRIMARY KEY (rollout_id, device)
        )""",
        """CREATE TABLE rollout_leases (
            rollout_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            until REAL NOT NULL
        )""",
    ),
}
"""Schema steps by the version they lead to; a new version adds an entry, never edits one."""

_UPSERT = (
    # Not INSERT OR REPLACE: REPLACE deletes the row first, and the cascade would take the
    # rollout's manifests with it.
    "INSERT INTO rollouts (id, fleet, state, created_at, updated_at, doc) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET fleet = excluded.fleet, "
    "state = excluded.state, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at, doc = excluded.doc"
)


class SqliteRolloutStore:
    """:class:`~agent.fleet.store.base.RolloutStore` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = open_sqlite(path)
        migrate_sqlite(self._conn, path, ROLLOUT_SCHEMA_COMPONENT, _MIGRATIONS)

    def create(self, rollout_id: str, doc: dict[str, Any], manifests: Mapping[str, str]) -> None:
        row = rollout_row(doc)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM rollouts WHERE id = ?", (rollout_id,)).fetchone():
                raise EdgeAgentError(
                    f"rollout {rollout_id} exists already",
                    fix="start the rollout again (it gets a new id)",
                    path=self.path,
                )
            conn.execute(
                _UPSERT,
                (rollout_id, row.fleet, row.state, row.created_at, row.updated_at, row.doc),
            )
            conn.executemany(
                "INSERT INTO rollout_manifests (rollout_id, device, envelope) VALUES (?, ?, ?)",
                [(rollout_id, device, text) for device, text in sorted(manifests.items())],
            )

    def update(self, rollout_id: str, change: DocChange) -> dict[str, Any] | None:
        with self._transaction() as conn:
            current = self._read(rollout_id)
            new = change(current)
            if new is None or new == current:
                return current
            row = rollout_row(new)
            conn.execute(
                _UPSERT,
                (rollout_id, row.fleet, row.state, row.created_at, row.updated_at, row.doc),
            )
            return load_doc(row.doc)

    def get(self, rollout_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._read(rollout_id)

    def list(self, fleet: str, *, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        query = "SELECT doc FROM rollouts WHERE fleet = ?"
        args: list[str] = [fleet]
        if states:
            query += f" AND state IN ({', '.join('?' for _ in states)})"
            args.extend(states)
        query += " ORDER BY created_at DESC, id DESC"
        with self._lock:
            rows = self._conn.execute(query, args).fetchall()
        return [load_doc(row[0]) for row in rows]

    def manifest(self, rollout_id: str, device: str) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT envelope FROM rollout_manifests WHERE rollout_id = ? AND device = ?",
                (rollout_id, device),
            ).fetchone()
        return None if row is None else str(row[0])

    def claim(self, rollout_id: str, owner: str, ttl_s: float, now: float) -> bool:
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO rollout_leases (rollout_id, owner, until) VALUES (?, ?, ?) "
                "ON CONFLICT (rollout_id) DO UPDATE SET owner = excluded.owner, "
                "until = excluded.until "
                "WHERE rollout_leases.until <= ? OR rollout_leases.owner = excluded.owner",
                (rollout_id, owner, now + ttl_s, now),
            )
            return cursor.rowcount == 1

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

    def _read(self, rollout_id: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT doc FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return None if row is None else load_doc(row[0])


class SqliteFleetStore:
    """:class:`~agent.fleet.store.base.FleetStore` in one SQLite file: the registry and the
    rollouts, each on its own connection to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        opened: list[SqliteRegistryStore | SqliteRolloutStore | SqliteHistoryStore] = []
        try:
            self._registry = SqliteRegistryStore(path)
            opened.append(self._registry)
            self._rollouts = SqliteRolloutStore(path)
            opened.append(self._rollouts)
            self._history = SqliteHistoryStore(path)
        except BaseException as exc:
            for store in opened:
                store.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise _open_error(path, exc) from exc
            raise

    @property
    def registry(self) -> SqliteRegistryStore:
        return self._registry

    @property
    def rollouts(self) -> SqliteRolloutStore:
        return self._rollouts

    @property
    def history(self) -> SqliteHistoryStore:
        return self._history

    @property
    def where(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._history.close()
        self._rollouts.close()
        self._registry.close()


def _open_error(path: Path, exc: sqlite3.Error | OSError) -> EdgeAgentError:
    return EdgeAgentError(
        f"cannot open the fleet database: {exc}",
        fix="check store.path in fleet.yaml: its folder must be writable and the file a SQLite "
        "database (or absent)",
        path=path,
    )
