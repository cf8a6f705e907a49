"""The controller's ``/metrics`` against a real controller, Mosquitto and simulated devices:
the fleet series parse (prometheus_client's parser; ``promtool check metrics`` where installed),
absent readings have no sample, and the per-device series are capped."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agent.comms.mqtt import MqttClient
from agent.comms.payloads import metrics_payload, state_payload
from agent.comms.topics import Topics
from agent.config.broker import MqttConfig
from agent.fleet.keygen import generate_keypair
from agent.fleet.sim import SimConfig, SimFleet
from tests.helpers.broker import Broker
from tests.helpers.fleet_controller import fleet_config, request, running, wait_for
from tests.helpers.fleet_messages import metrics_body

FLEET = "promf"
PROMTOOL = "/usr/bin/promtool"


@pytest.fixture
def sims(broker: Broker, tmp_path: Path) -> Iterator[SimFleet]:
    generate_keypair(tmp_path / "keys", "ops")
    cfg = SimConfig(
        mqtt_url=broker.url, trust_dir=tmp_path / "keys", devices=3, fleet=FLEET, prefix="cam",
        interval_s=0.2, step_s=0.02, seed=4,
    )  # fmt: skip
    with SimFleet(cfg) as fleet:
        assert fleet.wait_connected(15)
        yield fleet


def _scrape(url: str) -> tuple[str, str]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode(), response.headers["Content-Type"]
    finally:
        conn.close()


def _samples(text: str) -> dict[str, list[Sample]]:
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def _bare_device(broker: Broker) -> None:
    """``cam-bare``: a device whose metrics carry no power, temperature or memory reading."""
    client = MqttClient(MqttConfig(enabled=True, url=broker.url), client_id="cam-bare")
    client.start()
    try:
        assert client.wait_connected(10)
        topics, now = Topics(FLEET, "cam-bare"), time.time()
        birth = state_payload("online", device="cam-bare", boot=1, ts=now, version="0.1.0")
        assert client.publish_wait(topics.state, birth, retain=True, timeout_s=10)
        body = metrics_body()
        for key in ("power_w", "temperatures_c", "memory", "fps_per_w"):
            del body[key]
        payload = metrics_payload(body, device="cam-bare", boot=1, seq=1, ts=now)
        assert client.publish_wait(topics.metrics, payload, timeout_s=10)
    finally:
        client.close()


def test_fleet_series(broker: Broker, sims: SimFleet, tmp_path: Path) -> None:
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=None)
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        _bare_device(broker)
        wait_for(
            lambda: sum(d["fps"] is not None for d in request(url, "GET", "/api/devices")[1][
                "devices"]) == 4, 15, "four devices with metrics",
        )  # fmt: skip
        text, content_type = _scrape(url)
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    s = _samples(text)
    counts = {x.labels["status"]: x.value for x in s["edge_agent_fleet_devices"]}
    assert counts == {"online": 4.0, "offline": 0.0, "degraded": 0.0}
    up = {x.labels["device"]: x for x in s["edge_agent_fleet_device_up"]}
    assert set(up) == {"cam-0000", "cam-0001", "cam-0002", "cam-bare"}
    assert all(x.value == 1.0 and x.labels["group"] == "" for x in up.values())
    assert len(s["edge_agent_fleet_device_fps"]) == 4
    assert all(x.value > 0 for x in s["edge_agent_fleet_device_fps"])
    quantiles = sorted(x.labels["quantile"] for x in s["edge_agent_fleet_device_latency_seconds"])
    assert quantiles == ["0.5"] * 4 + ["0.99"] * 4
    assert all(0 < x.value < 10 for x in s["edge_agent_fleet_device_latency_seconds"])
    # cam-bare reports no power, temperature or memory: no sample for it at all (never 0)
    for name in ("power_watts", "temperature_celsius", "memory_used_ratio"):
        devices = sorted(x.labels["device"] for x in s[f"edge_agent_fleet_device_{name}"])
        assert devices == ["cam-0000", "cam-0001", "cam-0002"], name
    assert all(0 < x.value < 1 for x in s["edge_agent_fleet_device_memory_used_ratio"])
    info = s["edge_agent_fleet_device_model_info"][0]
    assert info.value == 1.0 and info.labels["model"] == "shapes-cls"
    assert (info.labels["version"], info.labels["precision"]) == ("1", "int8")
    seen = s["edge_agent_fleet_device_last_seen_timestamp_seconds"][0]
    assert seen.value > 1_700_000_000
    applied = {x.labels["outcome"]: x.value for x in s["edge_agent_fleet_ingest_messages_total"]}
    assert applied["applied"] > 0 and applied["rejected"] == 0
    assert s["edge_agent_fleet_ingest_dropped_total"][0].value == 0
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["edge_agent_fleet_ingest_messages"] == "counter"
    assert types["edge_agent_fleet_device_up"] == "gauge"
    if not Path(PROMTOOL).exists() or shutil.which(PROMTOOL) is None:
        pytest.skip("promtool is not installed")
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        check=False,
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_per_device_series_are_capped(broker: Broker, sims: SimFleet, tmp_path: Path) -> None:
    cfg = fleet_config(
        tmp_path, broker.url, fleet=FLEET, token_file=None, metrics={"max_devices": 2}
    )
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        wait_for(lambda: len(request(url, "GET", "/api/devices")[1]["devices"]) == 3, 15, "sims")
        s = _samples(_scrape(url)[0])
    counts = {x.labels["status"]: x.value for x in s["edge_agent_fleet_devices"]}
    assert sum(counts.values()) == 3  # fleet-wide counts cover every device
    assert sorted(x.labels["device"] for x in s["edge_agent_fleet_device_up"]) == [
        "cam-0000",
        "cam-0001",
    ]
