"""The fleet tables in PostgreSQL: the same tables, columns and ``schema_meta`` versions as the
SQLite store (documents as TEXT, so a document reads back exactly as written), migrated in one
transaction under an advisory lock so that controller instances starting together neither race
nor half-apply a step; a database written by a newer version is refused."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.core.errors import EdgeAgentError
from agent.fleet.history.store import HISTORY_SCHEMA_COMPONENT
from agent.fleet.registry.store import SCHEMA_COMPONENT as REGISTRY_COMPONENT
from agent.fleet.store.rows import ROLLOUT_SCHEMA_COMPONENT

if TYPE_CHECKING:
    import psycopg
    from typing_extensions import LiteralString

    Steps = dict[int, tuple[LiteralString, ...]]

__all__ = ["migrate_postgres"]

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x45_64_67_65_46_6C_74
"""``pg_advisory_xact_lock`` key held while the fleet schema is checked and migrated."""

_REGISTRY: Steps = {
    1: (
        """CREATE TABLE devices (
            fleet TEXT NOT NULL,
            device TEXT NOT NULL,
            online BOOLEAN NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            model TEXT,
            version BIGINT,
            ota_state TEXT,
            record TEXT NOT NULL,
            PRIMARY KEY (fleet, device)
        )""",
        "CREATE INDEX devices_last_seen ON devices (fleet, last_seen)",
    ),
}
"""The registry's steps, version for version those of :mod:`agent.fleet.registry.store`."""

_ROLLOUTS: Steps = {
    1: (
        """CREATE TABLE rollouts (
            id TEXT PRIMARY KEY,
            fleet TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
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
            until DOUBLE PRECISION NOT NULL
        )""",
    ),
}
"""The rollouts' steps, version for version those of :mod:`agent.fleet.store.sqlite`."""

_HISTORY: Steps = {
    1: (
        """CREATE TABLE history_points (
            fleet TEXT NOT NULL,
            device TEXT NOT NULL,
            slot BIGINT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            fps DOUBLE PRECISION,
            latency_p50_ms DOUBLE PRECISION,
            power_w DOUBLE PRECISION,
            temp_max_c DOUBLE PRECISION,
            memory_used_pct DOUBLE PRECISION,
            PRIMARY KEY (fleet, device, slot)
        )""",
        "CREATE INDEX history_points_ts ON history_points (ts)",
        """CREATE TABLE history_events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            fleet TEXT NOT NULL,
            device TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX history_events_device ON history_events (fleet, device, id)",
        """CREATE TABLE history_ota (
            fleet TEXT NOT NULL,
            device TEXT NOT NULL,
            update_id TEXT NOT NULL,
            updated_at BIGINT NOT NULL,
            steps INTEGER NOT NULL,
            status TEXT NOT NULL,
            PRIMARY KEY (fleet, device, update_id)
        )""",
        "CREATE INDEX history_ota_device ON history_ota (fleet, device, updated_at)",
    ),
}
"""The history's steps, version for version those of :mod:`agent.fleet.history.sqlite`."""

COMPONENTS: tuple[tuple[str, Steps], ...] = (
    (REGISTRY_COMPONENT, _REGISTRY),
    (ROLLOUT_SCHEMA_COMPONENT, _ROLLOUTS),
    (HISTORY_SCHEMA_COMPONENT, _HISTORY),
)


def migrate_postgres(conn: psycopg.Connection[tuple[Any, ...]], where: str) -> None:
    """Bring every fleet component to its newest version, in one transaction."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_meta "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        for component, steps in COMPONENTS:
            _migrate_component(conn, where, component, steps)


def _migrate_component(
    conn: psycopg.Connection[tuple[Any, ...]],
    where: str,
    component: str,
    steps: Steps,
) -> None:
    latest = max(steps)
    row = conn.execute(
        "SELECT version FROM schema_meta WHERE component = %s", (component,)
    ).fetchone()
    have = 0 if row is None else int(row[0])
    if have > latest:
        raise EdgeAgentError(
            f"the fleet database has {component} schema {have}; this version knows up to {latest}",
            fix="upgrade edge-agent on this controller, or point it at another database",
            path=where,
        )
    for version in range(have + 1, latest + 1):
        for statement in steps[version]:
            conn.execute(statement)
        log.info("fleet %s schema at version %d (%s)", component, version, where)
    conn.execute(
        "INSERT INTO schema_meta (component, version) VALUES (%s, %s) "
        "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
        (component, latest),
    )
