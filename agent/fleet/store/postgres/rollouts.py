"""Rollouts in PostgreSQL: :class:`~agent.fleet.store.base.RolloutStore` shared by several
controller instances.

An update locks the rollout's row (``SELECT ... FOR UPDATE``) for its read-modify-write; the
lease is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` that takes the row only when it is
free, expired or already ours, so two instances never both drive one rollout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.core.errors import EdgeAgentError, InternalError
from agent.fleet.store.base import DocChange
from agent.fleet.store.postgres.pool import PgPool
from agent.fleet.store.rows import RolloutRow, load_doc, rollout_row

__all__ = ["PostgresRolloutStore"]

_INSERT = (
    "INSERT INTO rollouts (id, fleet, state, created_at, updated_at, doc) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
)
_UPDATE = (
    "UPDATE rollouts SET fleet = %s, state = %s, created_at = %s, updated_at = %s, doc = %s "
    "WHERE id = %s"
)
_CLAIM = (
    "INSERT INTO rollout_leases (rollout_id, owner, until) VALUES (%s, %s, %s) "
    "ON CONFLICT (rollout_id) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until "
    "WHERE rollout_leases.until <= %s OR rollout_leases.owner = EXCLUDED.owner "
    "RETURNING owner"
)


class PostgresRolloutStore:
    """Rollout documents, manifests and leases through ``pool`` (shared with the registry;
    :meth:`close` closes the pool)."""

    def __init__(self, pool: PgPool) -> None:
        self._pool = pool

    def create(self, rollout_id: str, doc: dict[str, Any], manifests: Mapping[str, str]) -> None:
        row = rollout_row(doc)
        with self._pool.connection() as conn, conn.transaction():
            if conn.execute(_INSERT, _values(rollout_id, row)).rowcount != 1:
                raise EdgeAgentError(
                    f"rollout {rollout_id} exists already",
                    fix="start the rollout again (it gets a new id)",
                    path=self._pool.where,
                )
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO rollout_manifests (rollout_id, device, envelope) "
                    "VALUES (%s, %s, %s)",
                    [(rollout_id, device, text) for device, text in sorted(manifests.items())],
                )

    def update(self, rollout_id: str, change: DocChange) -> dict[str, Any] | None:
        for _ in range(2):
            with self._pool.connection() as conn, conn.transaction():
                found = conn.execute(
                    "SELECT doc FROM rollouts WHERE id = %s FOR UPDATE", (rollout_id,)
                ).fetchone()
                current = None if found is None else load_doc(found[0])
                new = change(current)
                if new is None or new == current:
                    return current
                row = rollout_row(new)
                if current is not None:
                    conn.execute(
                        _UPDATE,
                        (row.fleet, row.state, row.created_at, row.updated_at, row.doc, rollout_id),
                    )
                    return load_doc(row.doc)
                if conn.execute(_INSERT, _values(rollout_id, row)).rowcount == 1:
                    return load_doc(row.doc)
            # another instance created this rollout between our read and our insert: again
        raise InternalError(f"rollout {rollout_id} was inserted and vanished during an update")

    def get(self, rollout_id: str) -> dict[str, Any] | None:
        with self._pool.connection() as conn:
            found = conn.execute("SELECT doc FROM rollouts WHERE id = %s", (rollout_id,)).fetchone()
        return None if found is None else load_doc(found[0])

    def list(self, fleet: str, *, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        with self._pool.connection() as conn:
            if states:
                rows = conn.execute(
                    "SELECT doc FROM rollouts WHERE fleet = %s AND state = ANY(%s) "
                    "ORDER BY created_at DESC, id DESC",
                    (fleet, list(states)),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT doc FROM rollouts WHERE fleet = %s ORDER BY created_at DESC, id DESC",
                    (fleet,),
                ).fetchall()
        return [load_doc(row[0]) for row in rows]

    def manifest(self, rollout_id: str, device: str) -> str | None:
        with self._pool.connection() as conn:
            found = conn.execute(
                "SELECT envelope FROM rollout_manifests WHERE rollout_id = %s AND device = %s",
                (rollout_id, device),
            ).fetchone()
        return None if found is None else str(found[0])

    def claim(self, rollout_id: str, owner: str, ttl_s: float, now: float) -> bool:
        with self._pool.connection() as conn:
            taken = conn.execute(_CLAIM, (rollout_id, owner, now + ttl_s, now)).fetchone()
        return taken is not None

    def close(self) -> None:
        self._pool.close()


def _values(rollout_id: str, row: RolloutRow) -> tuple[str, str, str, float, float, str]:
    return (rollout_id, row.fleet, row.state, row.created_at, row.updated_at, row.doc)
