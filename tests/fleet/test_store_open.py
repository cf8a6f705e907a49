"""``open_store``: paths relative to fleet.yaml, the DSN from a file or a variable, and errors
that name what to fix without ever showing the password."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from agent.config.fleet import PostgresStoreConfig, SqliteStoreConfig
from agent.core.errors import EdgeAgentError
from agent.fleet.store.open import open_store
from agent.fleet.store.sqlite import SqliteFleetStore
from tests.helpers.broker import free_port
from tests.helpers.fleet_messages import FLEET, T0

SECRET = "s3cret-Passw0rd"


def _pg(**fields: object) -> PostgresStoreConfig:
    return PostgresStoreConfig.model_validate({"kind": "postgres", **fields})


def test_sqlite_path_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    store = open_store(SqliteStoreConfig(path=Path("state/fleet.db")), base_dir=tmp_path)
    try:
        assert isinstance(store, SqliteFleetStore)
        assert store.where == str(tmp_path / "state" / "fleet.db")
        assert (tmp_path / "state" / "fleet.db").is_file()
    finally:
        store.close()


def test_sqlite_path_that_is_a_folder_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "fleet.db").mkdir()
    with pytest.raises(EdgeAgentError, match="cannot open the fleet database") as info:
        open_store(SqliteStoreConfig(path=Path("fleet.db")), base_dir=tmp_path)
    assert info.value.path == str(tmp_path / "fleet.db") and info.value.fix


def test_missing_dsn_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(EdgeAgentError, match="does not exist") as info:
        open_store(_pg(dsn_file="secrets/pg.dsn"), base_dir=tmp_path)
    assert info.value.path == str(tmp_path / "secrets" / "pg.dsn")
    assert info.value.fix and "dsn_env" in info.value.fix


def test_empty_dsn_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pg.dsn").write_text("\n  \n")
    with pytest.raises(EdgeAgentError, match="is empty"):
        open_store(_pg(dsn_file="pg.dsn"), base_dir=tmp_path)


def test_unset_variable_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGE_TEST_FLEET_DSN", raising=False)
    with pytest.raises(EdgeAgentError, match="EDGE_TEST_FLEET_DSN") as info:
        open_store(_pg(dsn_env="EDGE_TEST_FLEET_DSN"), base_dir=tmp_path)
    assert info.value.fix and "export EDGE_TEST_FLEET_DSN=" in info.value.fix


def test_unreachable_server_error_hides_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    dsn = f"postgresql://fleet:{SECRET}@127.0.0.1:{port}/fleet?connect_timeout=5"
    monkeypatch.setenv("EDGE_TEST_FLEET_DSN", dsn)
    with pytest.raises(EdgeAgentError, match="cannot connect to PostgreSQL") as info:
        open_store(_pg(dsn_env="EDGE_TEST_FLEET_DSN"), base_dir=tmp_path)
    assert SECRET not in str(info.value)
    assert f"127.0.0.1:{port}/fleet" in str(info.value)
    assert info.value.fix and "dsn_file" in info.value.fix
    # key=value syntax: the password is hidden too
    monkeypatch.setenv(
        "EDGE_TEST_FLEET_DSN", f"host=127.0.0.1 port={port} password={SECRET} connect_timeout=5"
    )
    with pytest.raises(EdgeAgentError, match="cannot connect") as info:
        open_store(_pg(dsn_env="EDGE_TEST_FLEET_DSN"), base_dir=tmp_path)
    assert SECRET not in str(info.value)


def test_malformed_dsn_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "pg.dsn").write_text(f"host=db password={SECRET} bogus_option=1\n")
    with pytest.raises(EdgeAgentError, match="connection string is invalid") as info:
        open_store(_pg(dsn_file="pg.dsn"), base_dir=tmp_path)
    assert SECRET not in str(info.value)


def test_missing_psycopg_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg → ImportError
    monkeypatch.setenv("EDGE_TEST_FLEET_DSN", "postgresql://fleet@127.0.0.1/fleet")
    with pytest.raises(EdgeAgentError, match="psycopg") as info:
        open_store(_pg(dsn_env="EDGE_TEST_FLEET_DSN"), base_dir=tmp_path)
    assert info.value.fix == "pip install 'edge-agent[fleet]'"


def test_dsn_file_opens_the_postgres_store(
    postgres_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn_file = tmp_path / "pg.dsn"
    dsn_file.write_text(postgres_dsn + "\n")
    dsn_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="agent.fleet.store.open"):
        store = open_store(_pg(dsn_file="pg.dsn", pool_size=2), base_dir=tmp_path)
    try:
        assert any("chmod 600" in r.getMessage() for r in caplog.records)
        store.rollouts.create(
            "0123456789ab", {"fleet": FLEET, "state": "planned", "created_at": T0}, {}
        )
        assert [d["state"] for d in store.rollouts.list(FLEET)] == ["planned"]
    finally:
        store.close()
    dsn_file.chmod(0o600)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.fleet.store.open"):
        open_store(_pg(dsn_file="pg.dsn"), base_dir=tmp_path).close()
    assert not caplog.records
