"""Connections to the shared PostgreSQL database: the one home of ``psycopg`` (imported lazily,
so only the operator extra ``edge-agent[fleet]`` needs it).

:class:`PgPool` keeps up to ``size`` autocommit connections; a caller borrows one for a whole
transaction (:meth:`PgPool.connection`), so the controller's threads (MQTT ingest, tick, HTTP API)
never share one. A connection that broke is dropped and replaced on the next borrow; a lost
server surfaces as an :class:`EdgeAgentError` naming the database with its password hidden.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from agent.core.errors import EdgeAgentError
from agent.core.redact import redact_text

if TYPE_CHECKING:
    import psycopg

__all__ = ["PgPool", "load_psycopg", "redact_dsn"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
"""libpq's ``connect_timeout`` unless the DSN sets its own."""

INSTALL_FIX = "pip install 'edge-agent[fleet]'"
CONNECT_FIX = (
    "check the connection string (store.dsn_file or store.dsn_env in fleet.yaml), that the "
    "PostgreSQL server runs and that it accepts this host, user and password"
)


def load_psycopg() -> ModuleType:
    """The ``psycopg`` module; :class:`EdgeAgentError` with the install command when missing."""
    try:
        import psycopg
    except ImportError as exc:
        raise EdgeAgentError(
            f"the PostgreSQL fleet store needs the psycopg package ({exc})", fix=INSTALL_FIX
        ) from exc
    return psycopg


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its credentials hidden, for logs and errors."""
    return redact_text(dsn)


class PgPool:
    """Up to ``size`` connections to ``dsn``, each borrowed by one thread at a time."""

    def __init__(self, dsn: str, size: int, *, wait_s: float = 30.0) -> None:
        self.where = redact_dsn(dsn)
        self._psycopg = load_psycopg()
        self._dsn = dsn
        self._size = size
        self._wait_s = wait_s
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[tuple[Any, ...]]] = []
        self._closed = False
        self._options = self._connect_options()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """Borrow a connection (autocommit: open ``conn.transaction()`` for several statements);
        a failure of the server or the network becomes an :class:`EdgeAgentError`."""
        if not self._slots.acquire(timeout=self._wait_s):
            raise EdgeAgentError(
                f"all {self._size} connections to {self.where} stayed busy for {self._wait_s:g} s",
                fix="raise store.pool_size in fleet.yaml, or look for slow queries on the server",
            )
        try:
            conn = self._take()
            try:
                yield conn
            except self._psycopg.OperationalError as exc:
                raise EdgeAgentError(
                    f"PostgreSQL at {self.where} failed: {_reason(exc)}", fix=CONNECT_FIX
                ) from exc
            finally:
                self._give(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections now and the borrowed ones when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self) -> psycopg.Connection[tuple[Any, ...]]:
        with self._lock:
            if self._closed:
                raise EdgeAgentError(
                    f"the fleet store at {self.where} is closed",
                    fix="open the store again (restart the controller)",
                )
            if self._idle:
                return self._idle.pop()
        try:
            conn = self._psycopg.connect(self._dsn, autocommit=True, **self._options)
        except self._psycopg.OperationalError as exc:
            raise EdgeAgentError(
                f"cannot connect to PostgreSQL at {self.where}: {_reason(exc)}",
                fix=CONNECT_FIX,
            ) from exc
        log.debug("opened a connection to %s", self.where)
        return conn

    def _give(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        idle = self._psycopg.pq.TransactionStatus.IDLE
        reusable = not conn.closed and not conn.broken and conn.info.transaction_status == idle
        with self._lock:
            if reusable and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _connect_options(self) -> dict[str, Any]:
        try:
            params = self._psycopg.conninfo.conninfo_to_dict(self._dsn)
        except self._psycopg.ProgrammingError as exc:
            raise EdgeAgentError(
                f"the PostgreSQL connection string is invalid: {_reason(exc)}",
                fix="write it as postgresql://user:password@host:5432/dbname or as "
                "'host=... dbname=... user=...' (libpq syntax)",
            ) from exc
        return {} if "connect_timeout" in params else {"connect_timeout": CONNECT_TIMEOUT_S}


def _reason(exc: Exception) -> str:
    """libpq's message on one line, credentials hidden."""
    return " ".join(redact_text(str(exc)).split())
