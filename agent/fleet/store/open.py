"""Open the fleet store that ``fleet.yaml``'s ``store`` section names.

Relative paths (the SQLite file, the DSN file) are taken from the folder of ``fleet.yaml``. The
PostgreSQL connection string comes from a file or an environment variable, never from the config
file itself; every error names the file or variable and how to fix it, with the password hidden.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from agent.config.fleet import PostgresStoreConfig, SqliteStoreConfig
from agent.core.errors import EdgeAgentError
from agent.core.logs import log_fields
from agent.fleet.store.base import FleetStore
from agent.fleet.store.postgres import PostgresFleetStore
from agent.fleet.store.sqlite import SqliteFleetStore

__all__ = ["open_store", "read_dsn"]

log = logging.getLogger(__name__)

MAX_DSN_BYTES = 8192


def open_store(cfg: SqliteStoreConfig | PostgresStoreConfig, *, base_dir: Path) -> FleetStore:
    """The store ``cfg`` describes, open and migrated (``base_dir``: fleet.yaml's folder)."""
    if isinstance(cfg, SqliteStoreConfig):
        return SqliteFleetStore(_resolve(cfg.path, base_dir))
    return PostgresFleetStore(read_dsn(cfg, base_dir=base_dir), pool_size=cfg.pool_size)


def read_dsn(cfg: PostgresStoreConfig, *, base_dir: Path) -> str:
    """The connection string from ``cfg.dsn_file`` (relative to ``base_dir``) or ``cfg.dsn_env``."""
    if cfg.dsn_file is not None:
        return _dsn_from_file(_resolve(cfg.dsn_file, base_dir))
    name = cfg.dsn_env or ""
    value = os.environ.get(name, "").strip()
    if not value:
        raise EdgeAgentError(
            f"environment variable {name} (store.dsn_env) is not set or empty",
            fix=f"export {name}='postgresql://user:password@host:5432/dbname' before starting "
            "the controller, or set store.dsn_file",
        )
    return value


def _dsn_from_file(path: Path) -> str:
    fix = (
        "write the connection string (postgresql://user:password@host:5432/dbname) into it "
        "(chmod 600), or set store.dsn_env instead"
    )
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise EdgeAgentError(
                "the DSN file (store.dsn_file) is not a regular file", fix=fix, path=path
            )
        if info.st_size > MAX_DSN_BYTES:
            raise EdgeAgentError(
                f"the DSN file (store.dsn_file) is over {MAX_DSN_BYTES} bytes", fix=fix, path=path
            )
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise EdgeAgentError(
            "the DSN file (store.dsn_file) does not exist", fix=fix, path=path
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeAgentError(
            f"cannot read the DSN file (store.dsn_file): {exc}", fix=fix, path=path
        ) from exc
    if not text:
        raise EdgeAgentError("the DSN file (store.dsn_file) is empty", fix=fix, path=path)
    if info.st_mode & stat.S_IROTH:
        log.warning(
            "the PostgreSQL DSN file is readable by every user; run chmod 600 on it",
            extra=log_fields(path=str(path)),
        )
    return text


def _resolve(path: Path, base_dir: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base_dir / path
