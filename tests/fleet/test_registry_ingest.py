"""Registry ingest: real device payloads (built by the daemon's builders) → device records;
duplicates, stale retained messages and hostile payloads are counted, never raised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.comms.payloads import SCHEMA_STATE
from agent.fleet.registry.ingest import RegistryIngest, registry_subscriptions
from agent.fleet.registry.merge import Outcome
from agent.fleet.registry.store import SqliteRegistryStore
from agent.ota.states import UpdateState
from tests.helpers.fleet_messages import FLEET, T0, Device, ota_record

NOW = T0 + 100


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteRegistryStore(tmp_path / "fleet.db")
    yield s
    s.close()


@pytest.fixture
def ingest(store: SqliteRegistryStore) -> RegistryIngest:
    return RegistryIngest(store, FLEET, clock=lambda: NOW)


def test_subscriptions_cover_the_four_leaves() -> None:
    assert registry_subscriptions("prod") == [
        ("edge/prod/+/state", 1),
        ("edge/prod/+/metrics", 1),
        ("edge/prod/+/events", 1),
        ("edge/prod/+/model", 1),
    ]
    shared = registry_subscriptions("prod", share_group="ctl")
    assert shared[0] == ("$share/ctl/edge/prod/+/state", 1)


def test_birth_metrics_model_build_one_record(
    ingest: RegistryIngest, store: SqliteRegistryStore
) -> None:
    cam = Device("cam-07")
    assert ingest.handle(*cam.birth()).outcome is Outcome.APPLIED
    assert ingest.handle(*cam.metrics(fps=14.9)).outcome is Outcome.APPLIED
    record_json = ota_record(UpdateState.PROBATION)
    assert ingest.handle(*cam.model(record_json)).outcome is Outcome.APPLIED

    rec = store.get(FLEET, "cam-07")
    assert rec is not None
    assert rec.online and rec.boot == 42 and rec.agent_version == "0.1.0"
    assert rec.first_seen == T0  # the retained birth's own ts (capped at now)
    assert rec.last_seen == NOW  # metrics are live: the controller's clock
    assert rec.model is not None and (rec.model.name, rec.model.version) == ("det", 3)
    assert rec.engine_hash == "9f2c" * 16
    assert set(rec.models) == {"det"}
    assert rec.metrics is not None and rec.metrics.fps == pytest.approx(14.9)
    assert rec.metrics.sources["cam0"].latency_p99_ms == pytest.approx(40.2)
    assert rec.metrics.temperatures_c == {"cpu": 51.2, "gpu": 49.8}
    assert rec.metrics.memory_used_pct == pytest.approx(40.9)
    assert rec.metrics.governor_state == "normal"
    assert rec.ota is not None
    assert (rec.ota.state, rec.ota.version, rec.ota.previous_version) == ("probation", 4, 3)
    assert rec.ota.validated_fps == pytest.approx(212.4)
    assert rec.ota.baseline_fps == pytest.approx(208.9)
    assert rec.ota.engine_sha256 == "ab" * 32
    assert rec.ota.steps == len(record_json["transitions"])
    assert ingest.counts() == {"applied": 3}


def test_last_will_then_rebirth(ingest: RegistryIngest, store: SqliteRegistryStore) -> None:
    cam = Device("cam-1")
    ingest.handle(*cam.birth())
    ingest.handle(*cam.will())
    rec = store.get(FLEET, "cam-1")
    assert rec is not None and not rec.online and rec.offline_reason == "lost"
    restarted = Device("cam-1", boot=43)
    ingest.handle(*restarted.birth(ts=T0 + 50))
    rec = store.get(FLEET, "cam-1")
    assert rec is not None and rec.online and rec.boot == 43 and rec.offline_reason is None
    # an older boot's retained state (a slow replay) does not win
    assert ingest.handle(*cam.will()).outcome is Outcome.STALE
    rec = store.get(FLEET, "cam-1")
    assert rec is not None and rec.online


def test_duplicate_metrics_and_events_are_counted_not_applied(
    ingest: RegistryIngest, store: SqliteRegistryStore
) -> None:
    cam = Device("cam-2")
    first = cam.metrics(fps=10.0)
    second = cam.metrics(fps=20.0)
    assert ingest.handle(*first).outcome is Outcome.APPLIED
    assert ingest.handle(*second).outcome is Outcome.APPLIED
    assert ingest.handle(*first).outcome is Outcome.DUPLICATE  # spool re-send
    rec = store.get(FLEET, "cam-2")
    assert rec is not None and rec.metrics is not None and rec.metrics.fps == 20.0
    event = cam.event("source.state", {"source": "cam0", "new": "stalled"})
    assert ingest.handle(*event).outcome is Outcome.APPLIED
    assert ingest.handle(*event).outcome is Outcome.DUPLICATE
    assert ingest.counts() == {"applied": 3, "duplicate": 2}


def test_ota_events_and_retained_record_keep_the_newest(
    ingest: RegistryIngest, store: SqliteRegistryStore
) -> None:
    cam = Device("cam-3")
    active = ota_record(UpdateState.ACTIVE, updated_at=1_760_000_030)
    ingest.handle(*cam.event("ota.state", active))
    rec = store.get(FLEET, "cam-3")
    assert rec is not None and rec.ota is not None and rec.ota.state == "active"
    assert rec.last_event_kind == "ota.state"
    # the retained record of an earlier moment (same update) arrives late: ignored
    probation = ota_record(UpdateState.PROBATION, updated_at=1_760_000_030)
    assert ingest.handle(*cam.model(probation)).outcome is Outcome.STALE
    older = ota_record(UpdateState.PROBATION, updated_at=1_760_000_020)
    assert ingest.handle(*cam.event("ota.state", older)).outcome is Outcome.APPLIED  # new seq
    rec = store.get(FLEET, "cam-3")
    assert rec is not None and rec.ota is not None and rec.ota.state == "active"
    rolled = ota_record(UpdateState.ROLLED_BACK, updated_at=1_760_000_040, record_id="aaaaaaaaaaaa")
    ingest.handle(*cam.model(rolled))
    rec = store.get(FLEET, "cam-3")
    assert rec is not None and rec.ota is not None
    assert (rec.ota.state, rec.ota.reason, rec.ota.id) == (
        "rolled_back",
        "probation_slow",
        "aaaaaaaaaaaa",
    )


def _state_doc(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "schema": SCHEMA_STATE,
        "state": "online",
        "device": "cam-9",
        "boot": 1,
        "ts": T0,
    }
    doc.update(changes)
    return json.dumps(doc).encode()


BAD = [
    ("edge/prod/cam-9/state", b"not json", "rejected.not_json"),
    ("edge/prod/cam-9/state", b"\xff\xfe", "rejected.not_utf8"),
    ("edge/prod/cam-9/state", b"[" * 100 + b"]" * 100, "rejected.too_deep"),
    ("edge/prod/cam-9/state", b'"x' + b"a" * 300_000 + b'"', "rejected.too_large"),
    ("edge/prod/cam-9/state", b'{"s":"\\ud800"}', "rejected.bad_unicode"),
    ("edge/prod/cam-9/state", b"[1,2]", "rejected.not_object"),
    ("edge/prod/cam-9/state", _state_doc(schema="edge-agent/state/2"), "rejected.unknown_schema"),
    ("edge/prod/cam-9/state", _state_doc(device="cam-8"), "rejected.device_mismatch"),
    ("edge/prod/cam-9/state", _state_doc(state="maybe"), "rejected.bad_fields"),
    ("edge/prod/cam-9/state", _state_doc(boot="1"), "rejected.bad_fields"),
    ("edge/prod/cam-9/state", _state_doc(ts=float("nan")), "rejected.bad_fields"),
    ("edge/other/cam-9/state", _state_doc(), "rejected.wrong_fleet"),
    ("edge/prod/cam-9/detections", _state_doc(), "rejected.bad_topic"),
    ("edge/prod/group/state", _state_doc(), "rejected.bad_device_id"),
    ("edge/prod/Cam 9/state", _state_doc(), "rejected.bad_device_id"),
    ("edge/prod/model/state", _state_doc(device="model"), "rejected.bad_device_id"),
]


@pytest.mark.parametrize(("topic", "payload", "label"), BAD)
def test_bad_payloads_are_counted(
    ingest: RegistryIngest, store: SqliteRegistryStore, topic: str, payload: bytes, label: str
) -> None:
    result = ingest.handle(topic, payload)
    assert result.outcome is Outcome.REJECTED
    assert ingest.counts() == {"rejected": 1, label: 1}
    assert store.devices(FLEET) == []


def test_mistyped_optional_fields_are_dropped_not_fatal(
    ingest: RegistryIngest, store: SqliteRegistryStore
) -> None:
    cam = Device("cam-4")
    topic, payload = cam.metrics()
    doc = json.loads(payload)
    doc["power_w"] = "lots"
    doc["sources"]["cam0"]["fps"] = None
    doc["sources"]["bogus"] = 5
    doc["temperatures_c"] = {f"z{i}": 1.0 for i in range(500)}
    doc["future_field"] = {"x": 1}
    assert ingest.handle(topic, json.dumps(doc).encode()).outcome is Outcome.APPLIED
    rec = store.get(FLEET, "cam-4")
    assert rec is not None and rec.metrics is not None
    assert rec.metrics.power_w is None and rec.metrics.fps is None
    assert set(rec.metrics.sources) == {"cam0"}
    assert len(rec.metrics.temperatures_c) == 64


def test_bad_ota_event_is_rejected_whole(
    ingest: RegistryIngest, store: SqliteRegistryStore
) -> None:
    cam = Device("cam-5")
    assert ingest.handle(*cam.event("ota.state", {"state": "active"})).outcome is Outcome.REJECTED
    assert ingest.counts()["rejected.bad_fields"] == 1
    assert store.get(FLEET, "cam-5") is None
