"""PostgreSQL store specifics on a real server: several controller instances on one database
(migrating together, sharing rollouts by lease, never losing an update), a lost connection, and
the DSN's password never shown."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from agent.core.errors import EdgeAgentError
from agent.fleet.store.postgres import PostgresFleetStore
from tests.helpers.fleet_messages import FLEET, T0
from tests.helpers.postgres import PostgresServer

IDS = [f"{n:012x}" for n in range(1, 7)]


def _doc(rollout_id: str, **more: Any) -> dict[str, Any]:
    return {"id": rollout_id, "fleet": FLEET, "state": "running", "created_at": T0, **more}


def test_instances_starting_together_migrate_once(postgres_dsn: str) -> None:
    stores: list[PostgresFleetStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(PostgresFleetStore(postgres_dsn, pool_size=2))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == [] and len(stores) == 4
        with psycopg.connect(postgres_dsn) as conn:
            rows = conn.execute("SELECT component, version FROM schema_meta ORDER BY 1").fetchall()
        assert rows == [("history", 1), ("registry", 1), ("rollouts", 1)]
    finally:
        for store in stores:
            store.close()


def test_two_instances_share_the_work(postgres_dsn: str) -> None:
    one = PostgresFleetStore(postgres_dsn, pool_size=2)
    two = PostgresFleetStore(postgres_dsn, pool_size=2)
    try:
        for rollout_id in IDS:
            one.rollouts.create(rollout_id, _doc(rollout_id, counter=0), {"cam-1": rollout_id})
        owners: dict[str, list[str]] = {"ctl-one": [], "ctl-two": []}

        def drive(name: str, store: PostgresFleetStore, order: list[str]) -> None:
            owners[name] = [r for r in order if store.rollouts.claim(r, name, 30.0, now=T0)]

        # both instances race to claim every rollout, from opposite ends: one driver each
        racers = [
            threading.Thread(target=drive, args=("ctl-one", one, IDS)),
            threading.Thread(target=drive, args=("ctl-two", two, IDS[::-1])),
        ]
        for thread in racers:
            thread.start()
        for thread in racers:
            thread.join(timeout=60)
        # every rollout has exactly one owner (which instance wins how many is up to the race)
        assert sorted(owners["ctl-one"] + owners["ctl-two"]) == IDS
        assert not set(owners["ctl-one"]) & set(owners["ctl-two"])
        for rollout_id in owners["ctl-one"]:
            assert not two.rollouts.claim(rollout_id, "ctl-two", 30.0, now=T0 + 1)
        for rollout_id in owners["ctl-two"]:
            assert not one.rollouts.claim(rollout_id, "ctl-one", 30.0, now=T0 + 1)
        # an expired lease passes to the other instance
        taken = IDS[0]
        holder, other, name = (
            (one, two, "ctl-two") if taken in owners["ctl-one"] else (two, one, "ctl-one")
        )
        assert other.rollouts.claim(taken, name, 30.0, now=T0 + 31)
        assert not holder.rollouts.claim(taken, "x", 30.0, now=T0 + 32)
        # what one instance writes, the other reads; a manifest written by one is served by both
        other.rollouts.update(taken, lambda doc: doc and {**doc, "state": "paused"})
        assert holder.rollouts.get(taken) == _doc(taken, counter=0, state="paused")
        assert other.rollouts.manifest(IDS[-1], "cam-1") == IDS[-1]
    finally:
        one.close()
        two.close()


def test_updates_from_two_instances_lose_nothing(postgres_dsn: str) -> None:
    stores = [PostgresFleetStore(postgres_dsn, pool_size=2) for _ in range(2)]
    stores[0].rollouts.create(IDS[0], _doc(IDS[0], counter=0), {})

    def bump(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if doc is None else {**doc, "counter": doc["counter"] + 1}

    def work(store: PostgresFleetStore) -> None:
        for _ in range(25):
            store.rollouts.update(IDS[0], bump)

    threads = [threading.Thread(target=work, args=(stores[n % 2],)) for n in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        doc = stores[1].rollouts.get(IDS[0])
        assert doc is not None and doc["counter"] == 150
    finally:
        for store in stores:
            store.close()


def test_a_lost_connection_is_an_error_then_replaced(postgres_dsn: str) -> None:
    store = PostgresFleetStore(postgres_dsn, pool_size=1)
    try:
        store.rollouts.create(IDS[0], _doc(IDS[0]), {})
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(EdgeAgentError, match="PostgreSQL at postgresql://") as info:
            store.rollouts.get(IDS[0])
        assert info.value.fix
        assert store.rollouts.get(IDS[0]) == _doc(IDS[0])  # a new connection
    finally:
        store.close()
    with pytest.raises(EdgeAgentError, match="closed"):
        store.rollouts.get(IDS[0])


def test_where_hides_the_password(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    dbname = postgres_dsn.rsplit("/", 1)[1]
    # trust authentication: the password is sent and ignored, the connection works
    store = PostgresFleetStore(postgres_server.dsn(dbname, password="hunter2-secret"))
    try:
        assert "hunter2-secret" not in store.where
        assert store.where.endswith(f"@127.0.0.1:{postgres_server.port}/{dbname}")
    finally:
        store.close()
