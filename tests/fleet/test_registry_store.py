"""SQLite registry store: WAL, versioned schema, survives reopen, atomic concurrent updates."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from agent.core.errors import EdgeAgentError
from agent.fleet.registry.ingest import RegistryIngest
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.registry.store import SCHEMA_VERSION, SqliteRegistryStore
from agent.ota.states import UpdateState
from tests.helpers.fleet_messages import FLEET, T0, Device, ota_record


def test_records_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db" / "fleet.db"
    store = SqliteRegistryStore(path)
    ingest = RegistryIngest(store, FLEET, clock=lambda: T0 + 100)
    cam = Device("cam-1")
    for message in (cam.birth(), cam.metrics(), cam.model(ota_record(UpdateState.ACTIVE))):
        ingest.handle(*message)
    before = store.get(FLEET, "cam-1")
    store.close()

    reopened = SqliteRegistryStore(path)
    try:
        after = reopened.get(FLEET, "cam-1")
        assert after == before and after is not None
        assert after.ota is not None and after.ota.state == "active"
        assert [r.device for r in reopened.devices(FLEET)] == ["cam-1"]
        assert reopened.devices("other") == []
        # dedupe state survives too: the re-sent metrics of before the restart are duplicates
        again = RegistryIngest(reopened, FLEET, clock=lambda: T0 + 200)
        cam.seq -= 1
        assert again.handle(*cam.metrics()).outcome.value == "duplicate"
    finally:
        reopened.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = conn.execute("SELECT version FROM schema_meta WHERE component='registry'").fetchone()
        assert row[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    SqliteRegistryStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_meta SET version = 99 WHERE component='registry'")
    with pytest.raises(EdgeAgentError, match="schema 99") as info:
        SqliteRegistryStore(path)
    assert info.value.fix


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    store = SqliteRegistryStore(tmp_path / "fleet.db")
    seed = DeviceRecord(fleet=FLEET, device="cam-1", first_seen=T0, last_seen=T0, events_seq=0)

    def bump(current: DeviceRecord | None) -> DeviceRecord:
        rec = current or seed
        return dataclasses.replace(rec, events_seq=(rec.events_seq or 0) + 1)

    def worker() -> None:
        for _ in range(100):
            store.update(FLEET, "cam-1", bump)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec = store.get(FLEET, "cam-1")
    assert rec is not None and rec.events_seq == 800
    store.close()


def test_a_failing_change_rolls_back(tmp_path: Path) -> None:
    store = SqliteRegistryStore(tmp_path / "fleet.db")

    def boom(current: DeviceRecord | None) -> DeviceRecord:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        store.update(FLEET, "cam-1", boom)
    assert store.update(FLEET, "cam-1", lambda cur: None) is None
    assert store.devices(FLEET) == []
    store.close()
