"""One contract for every fleet store (SQLite file; real PostgreSQL): atomic read-modify-writes
under threads, rollouts with their manifests and leases, versioned schema, survives a restart."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.core.errors import EdgeAgentError
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.store.base import FleetStore
from agent.fleet.store.postgres import PostgresFleetStore
from agent.fleet.store.sqlite import SqliteFleetStore
from tests.helpers.fleet_messages import FLEET, T0

THREADS = 8
ROUNDS = 40


@dataclass(frozen=True)
class Backend:
    """How to open one store again and reach its database behind its back."""

    name: str
    open: Callable[[], FleetStore]
    sql: Callable[[str], None]


def _sqlite_backend(path: Path) -> Backend:
    def sql(statement: str) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(statement)

    return Backend("sqlite", lambda: SqliteFleetStore(path), sql)


def _postgres_backend(dsn: str) -> Backend:
    import psycopg
    from psycopg import sql as pgsql

    def sql(statement: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL(statement))  # pyright: ignore[reportArgumentType]

    return Backend("postgres", lambda: PostgresFleetStore(dsn, pool_size=4), sql)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path / "state" / "fleet.db")
    return _postgres_backend(request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def fleet_store(backend: Backend) -> Iterator[FleetStore]:
    store = backend.open()
    yield store
    store.close()


def _record(device: str, **changes: Any) -> DeviceRecord:
    base = DeviceRecord(fleet=FLEET, device=device, first_seen=T0, last_seen=T0, online=True)
    return dataclasses.replace(base, **changes)


def _doc(
    rollout_id: str, *, created_at: float = T0, state: str = "planned", **more: Any
) -> dict[str, Any]:
    return {"id": rollout_id, "fleet": FLEET, "state": state, "created_at": created_at, **more}


def _in_threads(work: Callable[[], object]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(ROUNDS):
                work()
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


# --------------------------------------------------------------------------- registry


def test_registry_update_get_devices(fleet_store: FleetStore) -> None:
    registry = fleet_store.registry
    assert registry.get(FLEET, "cam-2") is None
    assert registry.update(FLEET, "cam-2", lambda cur: None) is None
    stored = registry.update(FLEET, "cam-2", lambda cur: _record("cam-2", group="north"))
    registry.update(FLEET, "cam-1", lambda cur: _record("cam-1"))
    assert stored is not None and registry.get(FLEET, "cam-2") == stored
    assert [r.device for r in registry.devices(FLEET)] == ["cam-1", "cam-2"]
    assert registry.devices("other") == []
    # a change that returns None leaves the record and answers what is stored
    assert registry.update(FLEET, "cam-2", lambda cur: None) == stored
    later = registry.update(
        FLEET, "cam-2", lambda cur: cur and dataclasses.replace(cur, online=False)
    )
    assert later is not None and registry.get(FLEET, "cam-2") == later and not later.online


def test_registry_concurrent_updates_lose_nothing(fleet_store: FleetStore) -> None:
    registry = fleet_store.registry

    def bump(current: DeviceRecord | None) -> DeviceRecord:
        record = current or _record("cam-1", events_seq=0)
        return dataclasses.replace(record, events_seq=(record.events_seq or 0) + 1)

    # every thread starts on a device nobody has inserted yet: the first-insert race included
    _in_threads(lambda: registry.update(FLEET, "cam-1", bump))
    record = registry.get(FLEET, "cam-1")
    assert record is not None and record.events_seq == THREADS * ROUNDS


def test_registry_failing_change_writes_nothing(fleet_store: FleetStore) -> None:
    def boom(current: DeviceRecord | None) -> DeviceRecord:
        raise RuntimeError("bug in a change")

    with pytest.raises(RuntimeError):
        fleet_store.registry.update(FLEET, "cam-1", boom)
    assert fleet_store.registry.devices(FLEET) == []
    # and the store still works afterwards (the connection went back clean)
    assert fleet_store.registry.update(FLEET, "cam-1", lambda cur: _record("cam-1")) is not None


# --------------------------------------------------------------------------- rollouts


def test_create_get_and_duplicate_refused(fleet_store: FleetStore) -> None:
    rollouts = fleet_store.rollouts
    doc = _doc("a1b2c3d4e5f6", spec={"waves": ["25%", "100%"]}, ratio=0.8)
    rollouts.create("a1b2c3d4e5f6", doc, {"cam-1": '{"m":1}', "cam-2": '{"m":2}'})
    assert rollouts.get("a1b2c3d4e5f6") == doc
    assert rollouts.get("000000000000") is None
    with pytest.raises(EdgeAgentError, match="a1b2c3d4e5f6 exists already") as info:
        rollouts.create("a1b2c3d4e5f6", _doc("a1b2c3d4e5f6", state="running"), {"cam-3": "{}"})
    assert info.value.fix
    # the refused create changed nothing, manifests included
    assert rollouts.get("a1b2c3d4e5f6") == doc
    assert rollouts.manifest("a1b2c3d4e5f6", "cam-3") is None


def test_manifest_fetch(fleet_store: FleetStore) -> None:
    envelope = '{"signed":{"target":{"device":"cam-1"}},"signatures":[]}'
    fleet_store.rollouts.create("0123456789ab", _doc("0123456789ab"), {"cam-1": envelope})
    assert fleet_store.rollouts.manifest("0123456789ab", "cam-1") == envelope
    assert fleet_store.rollouts.manifest("0123456789ab", "cam-9") is None
    assert fleet_store.rollouts.manifest("ffffffffffff", "cam-1") is None
    # updating the document (every tick does) keeps the manifests
    fleet_store.rollouts.update("0123456789ab", lambda doc: {**(doc or {}), "state": "running"})
    assert fleet_store.rollouts.manifest("0123456789ab", "cam-1") == envelope


def test_update_is_atomic_under_threads(fleet_store: FleetStore) -> None:
    rollouts = fleet_store.rollouts
    rollouts.create("0123456789ab", _doc("0123456789ab", counter=0), {})

    def bump(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        assert doc is not None
        return {**doc, "counter": doc["counter"] + 1, "updated_at": T0 + doc["counter"]}

    _in_threads(lambda: rollouts.update("0123456789ab", bump))
    stored = rollouts.get("0123456789ab")
    assert stored is not None and stored["counter"] == THREADS * ROUNDS
    # None: no change; the answer is what is stored
    assert rollouts.update("0123456789ab", lambda doc: None) == stored
    assert rollouts.update("ffffffffffff", lambda doc: None) is None
    # a change given no document may write one (a rollout without manifests)
    made = rollouts.update("eeeeeeeeeeee", lambda doc: doc or _doc("eeeeeeeeeeee"))
    assert made == _doc("eeeeeeeeeeee") == rollouts.get("eeeeeeeeeeee")
    assert rollouts.manifest("eeeeeeeeeeee", "cam-1") is None


def test_list_by_state_newest_first(fleet_store: FleetStore) -> None:
    rollouts = fleet_store.rollouts
    rollouts.create("aaaaaaaaaaaa", _doc("aaaaaaaaaaaa", created_at=T0 + 1, state="completed"), {})
    rollouts.create("bbbbbbbbbbbb", _doc("bbbbbbbbbbbb", created_at=T0 + 3, state="running"), {})
    rollouts.create("cccccccccccc", _doc("cccccccccccc", created_at=T0 + 2, state="paused"), {})
    rollouts.create("dddddddddddd", {**_doc("dddddddddddd", created_at=T0 + 9), "fleet": "lab"}, {})

    def ids(docs: list[dict[str, Any]]) -> list[str]:
        return [doc["id"] for doc in docs]

    assert ids(rollouts.list(FLEET)) == ["bbbbbbbbbbbb", "cccccccccccc", "aaaaaaaaaaaa"]
    assert ids(rollouts.list(FLEET, states=("running", "paused"))) == [
        "bbbbbbbbbbbb",
        "cccccccccccc",
    ]
    assert ids(rollouts.list("lab")) == ["dddddddddddd"]
    # the state column follows updates
    rollouts.update("bbbbbbbbbbbb", lambda doc: doc and {**doc, "state": "aborted"})
    assert ids(rollouts.list(FLEET, states=("running", "paused"))) == ["cccccccccccc"]
    assert rollouts.list(FLEET, states=("planned",)) == []


def test_claim_lease_semantics(fleet_store: FleetStore) -> None:
    rollouts = fleet_store.rollouts
    rollouts.create("0123456789ab", _doc("0123456789ab"), {})
    assert rollouts.claim("0123456789ab", "ctl-a", 10.0, now=T0)
    assert not rollouts.claim("0123456789ab", "ctl-b", 10.0, now=T0 + 5)
    assert rollouts.claim("0123456789ab", "ctl-a", 10.0, now=T0 + 8)  # renew: until T0+18
    assert not rollouts.claim("0123456789ab", "ctl-b", 10.0, now=T0 + 15)
    assert rollouts.claim("0123456789ab", "ctl-b", 10.0, now=T0 + 18)  # expired: taken over
    assert not rollouts.claim("0123456789ab", "ctl-a", 10.0, now=T0 + 20)
    # leases are per rollout
    rollouts.create("ba9876543210", _doc("ba9876543210"), {})
    assert rollouts.claim("ba9876543210", "ctl-a", 10.0, now=T0 + 20)


# --------------------------------------------------------------------------- schema, restart


@pytest.mark.parametrize("component", ["registry", "rollouts"])
def test_newer_schema_is_refused(backend: Backend, component: str) -> None:
    backend.open().close()
    backend.sql(f"UPDATE schema_meta SET version = 99 WHERE component = '{component}'")
    with pytest.raises(EdgeAgentError, match=f"{component} schema 99") as info:
        backend.open()
    assert info.value.fix and "upgrade edge-agent" in info.value.fix


def test_reopen_survives_restart(backend: Backend) -> None:
    store = backend.open()
    store.registry.update(FLEET, "cam-1", lambda cur: _record("cam-1", group="north"))
    store.rollouts.create("0123456789ab", _doc("0123456789ab", state="running"), {"cam-1": "{}"})
    assert store.rollouts.claim("0123456789ab", "ctl-a", 60.0, now=T0)
    before = store.registry.get(FLEET, "cam-1")
    store.close()

    again = backend.open()
    try:
        assert again.registry.get(FLEET, "cam-1") == before
        assert again.rollouts.get("0123456789ab") == _doc("0123456789ab", state="running")
        assert again.rollouts.manifest("0123456789ab", "cam-1") == "{}"
        assert not again.rollouts.claim("0123456789ab", "ctl-b", 60.0, now=T0 + 1)
        assert again.rollouts.list(FLEET, states=("running",))[0]["id"] == "0123456789ab"
    finally:
        again.close()


def test_where_names_the_database(backend: Backend, fleet_store: FleetStore) -> None:
    if backend.name == "sqlite":
        assert fleet_store.where.endswith("fleet.db")
    else:
        assert fleet_store.where.startswith("postgresql://") and "fleet_" in fleet_store.where
