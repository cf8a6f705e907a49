"""The fleet store in PostgreSQL, for several controller instances sharing one database.

:mod:`.pool` is the one home of ``psycopg`` (the operator extra ``edge-agent[fleet]``, imported
lazily); :mod:`.schema` the tables and migrations; :mod:`.registry` and :mod:`.rollouts` the two
stores; :mod:`.fleet` puts them together.
"""

from agent.fleet.store.postgres.fleet import PostgresFleetStore
from agent.fleet.store.postgres.pool import redact_dsn
from agent.fleet.store.postgres.registry import PostgresRegistryStore
from agent.fleet.store.postgres.rollouts import PostgresRolloutStore

__all__ = ["PostgresFleetStore", "PostgresRegistryStore", "PostgresRolloutStore", "redact_dsn"]
