"""The device registry in PostgreSQL: :class:`~agent.fleet.registry.store.RegistryStore` for
several controller instances sharing one database.

An update locks the device's row (``SELECT ... FOR UPDATE``) for the read-modify-write. A device
seen for the first time has no row to lock: its record is inserted with ``ON CONFLICT DO
NOTHING``, and when another instance inserted the same device meanwhile the update runs once more
against that row, so neither instance's change is lost.
"""

from __future__ import annotations

import json

from agent.core.errors import InternalError
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.registry.store import RecordChange, record_row
from agent.fleet.store.postgres.pool import PgPool

__all__ = ["PostgresRegistryStore"]

_COLUMNS = "fleet, device, online, last_seen, model, version, ota_state, record"
_INSERT = (
    f"INSERT INTO devices ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (fleet, device) DO NOTHING"
)
_UPDATE = (
    "UPDATE devices SET online = %s, last_seen = %s, model = %s, version = %s, ota_state = %s, "
    "record = %s WHERE fleet = %s AND device = %s"
)


class PostgresRegistryStore:
    """Device records in the ``devices`` table, through ``pool`` (shared with the rollouts;
    :meth:`close` closes the pool)."""

    def __init__(self, pool: PgPool) -> None:
        self._pool = pool

    def update(self, fleet: str, device: str, change: RecordChange) -> DeviceRecord | None:
        for _ in range(2):
            with self._pool.connection() as conn, conn.transaction():
                row = conn.execute(
                    "SELECT record FROM devices WHERE fleet = %s AND device = %s FOR UPDATE",
                    (fleet, device),
                ).fetchone()
                current = None if row is None else _record(row[0])
                new = change(current)
                if new is None or new == current:
                    return current
                values = record_row(new)
                if current is not None:
                    conn.execute(_UPDATE, (*values[2:], fleet, device))
                    return new
                if conn.execute(_INSERT, values).rowcount == 1:
                    return new
            # another instance inserted this device between our read and our insert: again
        raise InternalError(f"device {fleet}/{device} was inserted and vanished during an update")

    def get(self, fleet: str, device: str) -> DeviceRecord | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT record FROM devices WHERE fleet = %s AND device = %s", (fleet, device)
            ).fetchone()
        return None if row is None else _record(row[0])

    def devices(self, fleet: str) -> list[DeviceRecord]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT record FROM devices WHERE fleet = %s ORDER BY device", (fleet,)
            ).fetchall()
        return [_record(row[0]) for row in rows]

    def close(self) -> None:
        self._pool.close()


def _record(text: str) -> DeviceRecord:
    return DeviceRecord.from_json(json.loads(text))
