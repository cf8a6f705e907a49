"""Simulated devices against a real Mosquitto: birth (with groups), metrics, signed pushes made
with the repo's own push code, failures, forged pushes, commands.

The helpers here (``sim_cfg``, ``push``, ``latest``, ``wait_states``) serve the other
``test_sim_*`` modules too."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.comms.mqtt import publish_once
from agent.config.broker import MqttConfig
from agent.fleet.publish import PushRequest, PushResult, plan_push, sign_and_publish, start_payload
from agent.fleet.sim import FAIL_MODES, SUCCESS_PATH, SimConfig, SimFleet
from agent.ota.manifest import sign_manifest
from agent.ota.trust import load_private_key
from tests.helpers.broker import Broker, Collector, Message
from tests.helpers.ota_support import new_key

FLEET, GROUP, OTHER = "simf", "cams", "doors"


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    with Collector(broker.url, [f"edge/{FLEET}/#"]) as c:
        yield c


def sim_cfg(broker: Broker, keys: Path, **changes: Any) -> SimConfig:
    fields: dict[str, Any] = {
        "mqtt_url": broker.url,
        "trust_dir": keys,
        "devices": 50,
        "fleet": FLEET,
        "groups": (GROUP,),
        "interval_s": 0.5,
        "step_s": 0.02,
        "seed": 7,
    }
    fields.update(changes)
    return SimConfig(**fields)


def push(broker: Broker, keys: Path, bundle: Path, version: int, **changes: Any) -> PushResult:
    """A real signed push (``edge-agent push`` code) to ``GROUP``, or as ``changes`` say."""
    fields: dict[str, Any] = {
        "bundle_dir": bundle,
        "key_path": keys / "ops.key",
        "version": version,
        "fleet": FLEET,
        "device": None,
        "group": GROUP,
        "source": "url",
        "url": bundle.as_uri(),
        "mqtt_url": broker.url,
    }
    fields.update(changes)
    request = PushRequest(**fields)
    plan = plan_push(request)
    payload, _ = start_payload(request, plan)
    return sign_and_publish(request, plan, payload)


def latest(messages: list[Message], leaf: str) -> dict[str, dict[str, Any]]:
    """The last payload per device on ``edge/<fleet>/<device>/<leaf>``."""
    out: dict[str, dict[str, Any]] = {}
    for m in messages:
        parts = m.topic.split("/")
        if len(parts) == 4 and parts[3] == leaf and m.payload:
            out[parts[2]] = m.json()
    return out


def wait_states(
    collector: Collector, devices: list[str], ok: Any, timeout_s: float = 15.0
) -> dict[str, dict[str, Any]]:
    def done(msgs: list[Message]) -> bool:
        records = latest(msgs, "model")
        return all(d in records and ok(records[d]) for d in devices)

    assert collector.wait_for(done, timeout_s), "devices did not reach the expected record"
    return latest(collector.messages, "model")


def command(broker: Broker, device: str, name: str, request_id: str) -> None:
    request = {"id": request_id, "ts": time.time(), "ttl_s": 30, "args": {}}
    mqtt = MqttConfig(enabled=True, url=broker.url)
    publish_once(mqtt, f"edge/{FLEET}/{device}/cmd/{name}", json.dumps(request).encode())


def responses(collector: Collector, device: str) -> list[dict[str, Any]]:
    return [m.json() for m in collector.on(f"edge/{FLEET}/{device}/cmd/response")]


def test_fifty_devices_birth_with_groups_metrics_and_a_signed_push(
    broker: Broker, keys: Path, bundle: Path, collector: Collector
) -> None:
    cfg = sim_cfg(broker, keys, groups=(GROUP, OTHER))
    with SimFleet(cfg) as fleet:
        ids = fleet.ids
        assert ids[0] == "sim-0000" and ids[49] == "sim-0049"
        assert collector.wait_for(lambda m: len(latest(m, "state")) == 50, 15)
        births = latest(collector.messages, "state")
        assert {b["state"] for b in births.values()} == {"online"}
        assert all(b["schema"] == "edge-agent/state/1" for b in births.values())
        assert births["sim-0000"]["group"] == GROUP and births["sim-0001"]["group"] == OTHER
        assert [b["group"] for b in births.values()].count(GROUP) == 25
        assert collector.wait_for(lambda m: len(latest(m, "metrics")) == 50, 10)
        first = latest(collector.messages, "metrics")[ids[0]]
        assert first["schema"] == "edge-agent/metrics/1" and first["model"]["version"] == 1
        assert first["sources"]["cam0"]["fps"] > 0

        result = push(broker, keys, bundle, version=2)
        assert result.topic == f"edge/{FLEET}/group/{GROUP}/ota"
        cams = ids[0::2]
        models = wait_states(collector, cams, lambda r: r["state"] == "active")
        record = models[ids[0]]
        assert record["schema"] == "edge-agent/model/1" and record["version"] == 2
        assert record["transitions"] == list(SUCCESS_PATH)
        assert record["manifest_sha256"] == result.sha256
        artifact = record["artifact"]
        assert artifact["validated_fps"] == record["validated_fps"] > 0
        assert artifact["gate"]["passed"] is True and 0 <= artifact["gate"]["task_drop"] < 0.05
        assert len(artifact["engine_sha256"]) == 64 and artifact["precision"] == "int8"
        assert not any(d in models for d in ids[1::2])  # the other group got nothing
        events = [m.json() for m in collector.on(f"edge/{FLEET}/{ids[0]}/events")]
        assert [e["data"]["state"] for e in events if e["kind"] == "ota.state"] == list(
            SUCCESS_PATH
        )
        # the new model shows in the metrics of the group's devices only
        assert collector.wait_for(
            lambda m: all(latest(m, "metrics")[d]["model"]["version"] == 2 for d in cams), 5
        )
        assert all(
            latest(collector.messages, "metrics")[d]["model"]["version"] == 1 for d in ids[1::2]
        )
        assert fleet.progress().active == 25

        # ping on one device; unknown names are refused
        dev = ids[4]
        command(broker, dev, "ping", "r-ping")
        command(broker, dev, "reboot", "r-reboot")
        assert collector.wait_for(lambda m: len(responses(collector, dev)) >= 2, 5)
        by_name = {r["command"]: r for r in responses(collector, dev)}
        assert by_name["ping"]["ok"] and by_name["ping"]["result"]["pong"] is True
        assert by_name["reboot"]["error"]["code"] == "unknown_command"

    # clean shutdown: retained offline/shutdown for every device
    assert collector.wait_for(
        lambda m: all(s["state"] == "offline" for s in latest(m, "state").values()), 10
    )
    assert {s["reason"] for s in latest(collector.messages, "state").values()} == {"shutdown"}


def test_fail_rate_one_reports_failures_and_slow_rate_one_serves_slower(
    broker: Broker, keys: Path, bundle: Path, collector: Collector
) -> None:
    with SimFleet(sim_cfg(broker, keys, devices=12, fail_rate=1.0)) as failing:
        ids = failing.ids
        assert failing.wait_connected(10)
        time.sleep(0.3)  # subscriptions made
        push(broker, keys, bundle, version=2)
        models = wait_states(
            collector, ids, lambda r: r["state"] in {"rejected", "failed", "rolled_back"}
        )
        terminal = {(r["state"], r["reason"]) for d, r in models.items() if d in ids}
        assert terminal <= {(m[1], m[2]) for m in FAIL_MODES}
        assert len(terminal) > 1  # several modes drawn
        golden = [r for r in models.values() if r["reason"] == "golden_mismatch"]
        assert all(r["artifact"]["gate"]["passed"] is False for r in golden)
        progress = failing.progress()
        assert progress.active == 0
        assert progress.failed + progress.rejected + progress.rolled_back == 12
    with SimFleet(sim_cfg(broker, keys, devices=5, prefix="slow", slow_rate=1.0)) as slow:
        ids = slow.ids
        assert slow.wait_connected(10)
        time.sleep(0.3)
        push(broker, keys, bundle, version=3)
        models = wait_states(collector, ids, lambda r: r["state"] == "active" and r["version"] == 3)
        for d in ids:
            assert models[d]["validated_fps"] < models[d]["baseline_fps"] * 0.6
        # the metrics report the new version at the slower fps
        assert collector.wait_for(
            lambda m: all(latest(m, "metrics")[d]["model"]["version"] == 3 for d in ids), 5
        )
        metrics = latest(collector.messages, "metrics")
        for d in ids:
            fps = metrics[d]["sources"]["cam0"]["fps"]
            assert fps < models[d]["baseline_fps"] * 0.6


def test_forged_and_unsigned_pushes_are_refused_by_every_device(
    broker: Broker, keys: Path, bundle: Path, collector: Collector, tmp_path: Path
) -> None:
    out = tmp_path / "envelope.json"
    with SimFleet(sim_cfg(broker, keys, devices=20)) as fleet:
        ids = fleet.ids
        assert fleet.wait_connected(10)
        time.sleep(0.3)
        good = push(broker, keys, bundle, version=2, mqtt_url=None, out=out)
        mqtt = MqttConfig(enabled=True, url=broker.url)
        topic = good.topic

        # altered after signing: bad_signature
        forged = json.loads(out.read_text())
        forged["manifest"]["version"] = 99
        publish_once(mqtt, topic, json.dumps(forged).encode())
        models = wait_states(collector, ids, lambda r: r["reason"] == "bad_signature")
        assert {(r["state"], r["reason"]) for r in models.values()} == {
            ("rejected", "bad_signature")
        }

        # signed by a key no device trusts: unknown_key
        stranger = sign_manifest(good.envelope["manifest"], [new_key()])
        publish_once(mqtt, topic, json.dumps(stranger).encode())
        models = wait_states(collector, ids, lambda r: r["reason"] == "unknown_key")
        assert {(r["state"], r["reason"]) for r in models.values()} == {("rejected", "unknown_key")}

        # no signatures at all, then not JSON at all: malformed
        unsigned = {"manifest": good.envelope["manifest"], "signatures": []}
        publish_once(mqtt, topic, json.dumps(unsigned).encode())
        models = wait_states(collector, ids, lambda r: r["reason"] == "malformed")
        assert {r["state"] for r in models.values()} == {"rejected"}
        publish_once(mqtt, topic, b"\xff not json")
        models = wait_states(collector, ids, lambda r: "unreadable" in r["detail"])
        assert {(r["state"], r["reason"]) for r in models.values()} == {("rejected", "malformed")}

        # a push signed for another group: wrong_target (the trusted key, the right topic)
        key = load_private_key(keys / "ops.key")
        other = dict(good.envelope["manifest"])
        other["target"] = {"fleet": FLEET, "device": None, "group": "elsewhere"}
        publish_once(mqtt, topic, json.dumps(sign_manifest(other, [key])).encode())
        models = wait_states(collector, ids, lambda r: r["reason"] == "wrong_target")
        assert {r["reason"] for r in models.values()} == {"wrong_target"}

        # nothing was installed: every device still serves v1
        assert all(
            m.json()["transitions"][1:2] != ["verified"]
            for m in collector.messages
            if m.topic.endswith("/model")
        )
        assert collector.wait_for(
            lambda m: all(v["model"]["version"] == 1 for v in latest(m, "metrics").values()), 5
        )
