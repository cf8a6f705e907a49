"""The dashboard's reads against a real controller, a real Mosquitto and simulated devices:
``/api/summary`` (degraded included), the flat device fields, downsampled metrics history, and
the events and OTA history a rollout leaves behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.comms.mqtt import MqttClient
from agent.comms.payloads import metrics_payload, state_payload
from agent.comms.topics import Topics
from agent.config.broker import MqttConfig
from agent.fleet.sim import SimConfig, SimFleet
from tests.helpers.broker import Broker
from tests.helpers.fleet_controller import fleet_config, request, running, wait_for, write_token
from tests.helpers.fleet_messages import metrics_body
from tests.helpers.ota_support import copy_bundle

FLEET = "histf"
SIMS = 4


@pytest.fixture
def sims(broker: Broker, keys: Path) -> Iterator[SimFleet]:
    cfg = SimConfig(
        mqtt_url=broker.url, trust_dir=keys, devices=SIMS, fleet=FLEET, prefix="cam",
        interval_s=0.1, step_s=0.02, seed=5,
    )  # fmt: skip
    with SimFleet(cfg) as fleet:
        assert fleet.wait_connected(15)
        yield fleet


def _devices(url: str) -> dict[str, dict[str, Any]]:
    return {d["device"]: d for d in request(url, "GET", "/api/devices")[1]["devices"]}


def _throttled_device(broker: Broker) -> MqttClient:
    """A device of the fleet whose governor throttles (so it counts as degraded)."""
    topics = Topics(FLEET, "cam-hot")
    client = MqttClient(MqttConfig(enabled=True, url=broker.url), client_id="cam-hot")
    client.start()
    assert client.wait_connected(10)
    now = time.time()
    birth = state_payload("online", device="cam-hot", boot=1, ts=now, version="0.1.0")
    assert client.publish_wait(topics.state, birth, retain=True, timeout_s=10)
    body = metrics_body()
    body["governor"]["state"] = "throttled"
    payload = metrics_payload(body, device="cam-hot", boot=1, seq=1, ts=now)
    assert client.publish_wait(topics.metrics, payload, timeout_s=10)
    return client


def test_summary_fields_and_history(broker: Broker, sims: SimFleet, tmp_path: Path) -> None:
    cfg = fleet_config(
        tmp_path, broker.url, fleet=FLEET, token_file=None,
        history={"resolution_s": 0.2, "retention_h": 1},
    )  # fmt: skip
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        hot = _throttled_device(broker)
        try:
            wait_for(lambda: len(_devices(url)) == SIMS + 1, 15, "every device in the registry")
            summary = wait_for(
                lambda: (s := request(url, "GET", "/api/summary")[1])["devices"]["online"] == SIMS
                and s, 10, "the sims online",
            )  # fmt: skip
            assert summary["fleet"] == FLEET and summary["rollouts"] == []
            assert summary["devices"] == {"total": 5, "online": 4, "offline": 0, "degraded": 1}
            assert {"name": "shapes-cls", "version": 1, "precision": "int8", "devices": 4} in (
                summary["models"]
            )
            hot_doc = _devices(url)["cam-hot"]
            assert hot_doc["status"] == "degraded" and hot_doc["governor_state"] == "throttled"
            assert hot_doc["power_w"] == 7.3 and hot_doc["temp_max_c"] == 51.2
            sims.take_offline(["cam-0003"], clean=True)
            wait_for(
                lambda: request(url, "GET", "/api/summary")[1]["devices"]["offline"] == 1,
                10, "one device offline",
            )  # fmt: skip
        finally:
            hot.close()
        doc = _devices(url)["cam-0000"]
        assert doc["status"] == "online" and doc["online"] is True
        for key in ("fps", "latency_p50_ms", "seen_ago_s", "last_seen"):
            assert isinstance(doc[key], float), key
        for key in ("power_w", "temp_max_c", "memory_used_pct"):
            assert doc[key] is None or isinstance(doc[key], float), key
        assert (doc["model_name"], doc["model_version"], doc["model_precision"]) == (
            "shapes-cls", 1, "int8",
        )  # fmt: skip
        assert doc["profile"] is None or isinstance(doc["profile"], str)
        history = wait_for(
            lambda: len((h := request(url, "GET", "/api/devices/cam-0000/history?seconds=60")[1])[
                "points"]) >= 5 and h, 15, "history points",
        )  # fmt: skip
        assert history["device"] == "cam-0000" and history["seconds"] == 60
        points = history["points"]
        assert set(points[0]) == {
            "ts", "fps", "latency_p50_ms", "power_w", "temp_max_c", "memory_used_pct",
        }  # fmt: skip
        stamps = [p["ts"] for p in points]
        assert stamps == sorted(stamps)
        # downsampled at the source: one point per 0.2 s slot though metrics come every 0.1 s
        assert len(stamps) <= (stamps[-1] - stamps[0]) / 0.2 + 2
        assert all(p["fps"] for p in points)
        assert request(url, "GET", "/api/devices/cam-0000/history?seconds=0")[0] == 400
        assert request(url, "GET", "/api/devices/cam-0000/history?seconds=x")[0] == 400
        assert request(url, "GET", "/api/devices/nosuch/history")[0] == 404
        assert request(url, "GET", "/api/devices/nosuch/events")[0] == 404


def test_events_and_ota_history_after_a_rollout(
    broker: Broker, sims: SimFleet, keys: Path, tmp_path: Path
) -> None:
    token_file, token = write_token(tmp_path / "secrets")
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=token_file)
    spec = {
        "bundle": str(copy_bundle(tmp_path / "bundle")), "version": 2, "canary": "1",
        "waves": ["100%"], "rate_per_min": 600, "soak_s": 0,
    }  # fmt: skip
    body = json.dumps({"spec": spec, "key_path": str(keys / "ops.key")}).encode()
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        wait_for(lambda: len(_devices(url)) == SIMS, 15, "the sims in the registry")
        status, started, _ = request(url, "POST", "/api/rollouts", body=body, token=token)
        assert status == 201, started
        wait_for(
            lambda: request(url, "GET", f"/api/rollouts/{started['id']}")[1]["state"]
            == "completed", 45, "the rollout to complete",
        )  # fmt: skip
        ota = wait_for(
            lambda: (o := request(url, "GET", "/api/devices/cam-0001/ota")[1])["updates"]
            and o["updates"][0]["state"] == "active" and o, 10, "the OTA history",
        )  # fmt: skip
        assert ota["device"] == "cam-0001"
        assert len(ota["updates"]) == 1 and ota["updates"][0]["version"] == 2
        status, events, _ = request(url, "GET", "/api/devices/cam-0001/events?limit=200")
        assert status == 200 and events["device"] == "cam-0001"
        kinds = [e["kind"] for e in events["events"]]
        assert "ota.state" in kinds
        stamps = [e["ts"] for e in events["events"]]
        assert stamps == sorted(stamps, reverse=True)  # newest first
        assert all(isinstance(e["data"], dict) for e in events["events"])
        limited = request(url, "GET", "/api/devices/cam-0001/events?limit=1")[1]["events"]
        assert limited == events["events"][:1]
        assert request(url, "GET", "/api/devices/cam-0001/events?limit=201")[0] == 400
