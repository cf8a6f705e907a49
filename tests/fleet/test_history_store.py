"""The device history's store contract, on SQLite and on a real PostgreSQL: one point per slot,
retention pruning, the newest 200 events (bounded data), one OTA row per update id (newest 50),
query downsampling, and a versioned schema."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.core.errors import EdgeAgentError
from agent.fleet.history.buckets import MAX_POINTS, downsample
from agent.fleet.history.records import (
    EVENTS_PER_DEVICE,
    MAX_EVENT_BYTES,
    OTA_PER_DEVICE,
    EventEntry,
    MetricsPoint,
    bounded_data,
)
from agent.fleet.registry.records import OtaStatus
from agent.fleet.store.base import FleetStore
from agent.fleet.store.postgres import PostgresFleetStore
from agent.fleet.store.sqlite import SqliteFleetStore
from tests.helpers.fleet_messages import FLEET, T0

Opener = Callable[[], FleetStore]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        return lambda: SqliteFleetStore(tmp_path / "fleet.db")
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresFleetStore(dsn, pool_size=2)


@pytest.fixture
def store(opener: Opener) -> Iterator[FleetStore]:
    opened = opener()
    yield opened
    opened.close()


def _point(ts: float, fps: float | None = 10.0) -> MetricsPoint:
    return MetricsPoint(ts=ts, fps=fps, latency_p50_ms=20.0, power_w=None, temp_max_c=50.0)


def _ota(update_id: str, updated_at: int, state: str = "active", steps: int = 1) -> OtaStatus:
    return OtaStatus(id=update_id, op="update", state=state, updated_at=updated_at, steps=steps)


def test_one_point_per_slot_and_pruning(store: FleetStore) -> None:
    history = store.history
    history.add_points(FLEET, [("cam-1", 100, _point(T0)), ("cam-1", 101, _point(T0 + 10))])
    history.add_points(FLEET, [("cam-1", 100, _point(T0 + 1, fps=99.0))])  # slot taken: ignored
    history.add_points(FLEET, [("cam-2", 100, _point(T0 + 2))])
    got = history.points(FLEET, "cam-1", since=T0 - 1)
    assert got == [_point(T0), _point(T0 + 10)]  # oldest first; None stays None
    assert history.points(FLEET, "cam-1", since=T0 + 5) == [_point(T0 + 10)]
    assert history.points("other", "cam-1", since=0) == []
    assert history.prune(before=T0 + 5) == 2
    assert history.points(FLEET, "cam-1", since=0) == [_point(T0 + 10)]
    assert history.points(FLEET, "cam-2", since=0) == []


def test_events_keep_the_newest_and_bounded_data(store: FleetStore) -> None:
    history = store.history
    for i in range(EVENTS_PER_DEVICE + 30):
        history.add_event(FLEET, "cam-1", EventEntry(T0 + i, "source.state", {"i": i}))
    history.add_event(FLEET, "cam-2", EventEntry(T0, "boot", {}))
    events = history.events(FLEET, "cam-1", limit=500)
    assert len(events) == EVENTS_PER_DEVICE
    assert events[0].data == {"i": EVENTS_PER_DEVICE + 29}  # newest first
    assert events[-1].data == {"i": 30}
    assert [e.data["i"] for e in history.events(FLEET, "cam-1", limit=3)] == [229, 228, 227]
    assert history.events(FLEET, "cam-2", limit=10) == [EventEntry(T0, "boot", {})]


def test_event_data_is_bounded_and_sanitized() -> None:
    hostile = {"msg": "a\x00b\u202e" + "x" * 5000, "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}}}
    kept = bounded_data(hostile)
    assert len(json.dumps(kept)) <= MAX_EVENT_BYTES
    assert "\x00" not in kept["msg"] and len(kept["msg"]) <= 256
    assert kept["deep"]["a"]["b"]["c"] == "…"  # depth cut
    huge = {f"k{i}": "v" * 200 for i in range(30)}
    summary = bounded_data(huge)
    assert summary["truncated"] is True and summary["bytes"] > MAX_EVENT_BYTES
    assert bounded_data({"nan": float("nan"), "n": [1, 2]}) == {"nan": None, "n": [1, 2]}


def test_ota_one_row_per_update_newest_kept(store: FleetStore) -> None:
    history = store.history
    history.put_ota(FLEET, "cam-1", _ota("u1", 100, "received", steps=1))
    history.put_ota(FLEET, "cam-1", _ota("u1", 120, "active", steps=7))
    history.put_ota(FLEET, "cam-1", _ota("u1", 110, "building", steps=4))  # older: ignored
    history.put_ota(FLEET, "cam-1", _ota("u2", 200, "failed", steps=5))
    assert [(u.id, u.state) for u in history.ota(FLEET, "cam-1")] == [
        ("u2", "failed"),
        ("u1", "active"),
    ]
    for i in range(OTA_PER_DEVICE + 5):
        history.put_ota(FLEET, "cam-3", _ota(f"x{i:03d}", 1000 + i))
    kept = history.ota(FLEET, "cam-3")
    assert len(kept) == OTA_PER_DEVICE and kept[0].id == f"x{OTA_PER_DEVICE + 4:03d}"
    assert kept[-1].id == "x005"


def test_history_survives_a_restart_and_newer_schema_is_refused(
    opener: Opener, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    first = opener()
    first.history.add_points(FLEET, [("cam-1", 1, _point(T0))])
    first.close()
    again = opener()
    try:
        assert again.history.points(FLEET, "cam-1", since=0) == [_point(T0)]
    finally:
        again.close()
    if isinstance(request.node.callspec.params.get("opener"), str) and (
        request.node.callspec.params["opener"] == "sqlite"
    ):
        with sqlite3.connect(tmp_path / "fleet.db") as conn:
            conn.execute("UPDATE schema_meta SET version = 99 WHERE component = 'history'")
        with pytest.raises(EdgeAgentError, match="history schema 99"):
            opener()


def test_downsample_keeps_at_most_max_points() -> None:
    points = [_point(T0 + i, fps=float(i % 2)) for i in range(3600)]
    kept = downsample(points, T0, T0 + 3600)
    assert 300 <= len(kept) <= MAX_POINTS
    assert [p.ts for p in kept] == sorted(p.ts for p in kept)
    assert all(p.fps == 0.5 and p.power_w is None for p in kept)
    few = points[:10]
    assert downsample(few, T0, T0 + 3600) == few
    assert dataclasses.asdict(kept[0]).keys() == dataclasses.asdict(few[0]).keys()
