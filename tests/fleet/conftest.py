"""Fixtures of the fleet tests.

* ``postgres_server`` — one real PostgreSQL cluster per session (:mod:`tests.helpers.postgres`);
  skips, with the reason, where none can run here.
* ``postgres_dsn`` — a fresh, empty database on that cluster per test; its DSN.
* ``keys`` — a folder with a fresh fleet signing key pair (``ops.key`` / ``ops.pub``), which is
  also a trust dir for simulated devices; ``bundle`` — a copy of the shapes classifier bundle.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.fleet.keygen import generate_keypair
from tests.helpers.ota_support import copy_bundle
from tests.helpers.postgres import PostgresServer, PostgresUnavailable, start_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server for the tests: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    generate_keypair(directory, "ops")
    return directory


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return copy_bundle(tmp_path / "bundle")
