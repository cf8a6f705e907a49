"""The shared fleet store: the registry, the rollouts and the device history in one PostgreSQL
database, for several controller instances (each with its own small pool of connections)."""

from __future__ import annotations

import logging

from agent.core.logs import log_fields
from agent.fleet.store.postgres.history import PostgresHistoryStore
from agent.fleet.store.postgres.pool import PgPool
from agent.fleet.store.postgres.registry import PostgresRegistryStore
from agent.fleet.store.postgres.rollouts import PostgresRolloutStore
from agent.fleet.store.postgres.schema import migrate_postgres

__all__ = ["PostgresFleetStore"]

log = logging.getLogger(__name__)


class PostgresFleetStore:
    """:class:`~agent.fleet.store.base.FleetStore` on the PostgreSQL database at ``dsn``.

    Connects and migrates the schema at once, so a wrong DSN, an unreachable server or a database
    of a newer version fails here, as an :class:`~agent.core.errors.EdgeAgentError` that names
    the database with its password hidden."""

    def __init__(self, dsn: str, pool_size: int = 4) -> None:
        self._pool = PgPool(dsn, pool_size)
        try:
            with self._pool.connection() as conn:
                migrate_postgres(conn, self._pool.where)
        except BaseException:
            self._pool.close()
            raise
        self._registry = PostgresRegistryStore(self._pool)
        self._rollouts = PostgresRolloutStore(self._pool)
        self._history = PostgresHistoryStore(self._pool)
        log.info(
            "fleet store on PostgreSQL",
            extra=log_fields(where=self._pool.where, pool_size=pool_size),
        )

    @property
    def registry(self) -> PostgresRegistryStore:
        return self._registry

    @property
    def rollouts(self) -> PostgresRolloutStore:
        return self._rollouts

    @property
    def history(self) -> PostgresHistoryStore:
        return self._history

    @property
    def where(self) -> str:
        return self._pool.where

    def close(self) -> None:
        self._pool.close()
