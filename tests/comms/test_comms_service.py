"""CommsService details: detections rate limit, payload validation, spool cap, publish_once."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from agent.comms.mqtt import publish_once
from agent.comms.service import CommsService
from agent.comms.topics import Topics
from agent.config.agent import AgentConfig
from agent.config.broker import MqttConfig
from agent.core.errors import CommsError
from agent.core.redact import redact_text
from tests.helpers.broker import Broker, Collector, free_port, mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto binary not installed (scripts/test.sh adds it)"
)


@pytest.mark.timeout(60)
def test_detections_are_rate_limited_qos0(broker: Broker, tmp_path: Path) -> None:
    cfg = MqttConfig(
        enabled=True, url=broker.url, detections_enabled=True, detections_max_per_s=5.0
    )
    svc = CommsService(cfg, fleet="f", device_id="d", state_dir=tmp_path / "s")
    svc.start()
    try:
        assert svc.client is not None and svc.client.wait_connected(10)
        with Collector(broker.url, ["edge/f/d/detections"]) as col:
            t0 = time.monotonic()
            sent = 0
            while time.monotonic() - t0 < 1.0:
                det = [{"label": "car", "score": 0.9, "box": [1, 2, 3, 4]}]
                sent += svc.publish_detections("cam0", det, frame_ts=time.time())
                time.sleep(0.005)
            assert 5 <= sent <= 11  # burst of 5, then 5/s
            assert col.wait_for(lambda m: len(m) >= sent, 5)
            doc = col.messages[0].json()
            assert doc["schema"] == "edge-agent/detections/1" and doc["source"] == "cam0"
            assert doc["detections"][0]["label"] == "car"
            assert svc.status().detections_dropped > 50
    finally:
        svc.close()


def test_metrics_with_unknown_fields_are_refused(tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    svc = CommsService(MqttConfig(url=url), fleet="f", device_id="d", state_dir=tmp_path)
    svc.start()
    try:
        with pytest.raises(CommsError, match=r"sources\.cam0\.fsp"):
            svc.publish_metrics({"sources": {"cam0": {"state": "running", "fsp": 3}}})
        with pytest.raises(CommsError, match="power_w"):
            svc.publish_metrics({"power_w": -1})
        seq = svc.publish_metrics({"sources": {"cam0": {"state": "running", "fps": 3}}})
        assert seq == 1 and svc.status().spooled == 1
    finally:
        svc.close(timeout_s=1)


@pytest.mark.timeout(60)
def test_full_spool_drops_oldest_and_counts(broker: Broker, tmp_path: Path) -> None:
    port = broker.port
    broker.stop()
    cfg = MqttConfig(
        enabled=True, url=f"mqtt://127.0.0.1:{port}", spool_max_mib=1, reconnect_min_s=0.2,
        reconnect_max_s=1.0,
    )  # fmt: skip
    svc = CommsService(cfg, fleet="f", device_id="d", state_dir=tmp_path / "s")
    svc.start()
    try:
        blob = "x" * 900
        n = 3000  # ~3 MiB into a 1 MiB spool
        for i in range(n):
            svc.publish_event("test.big", {"i": i, "blob": blob})
        st = svc.status()
        assert st.spool_bytes <= 1 << 20
        assert st.dropped > 0 and st.dropped + st.spooled == n
        broker.start()
        with Collector(broker.url, ["edge/f/d/events"]) as col:
            assert svc.wait_drained(30)
            assert col.wait_for(lambda m: len(m) >= st.spooled, 20)
            got = [m.json()["data"]["i"] for m in col.messages]
            assert got == list(range(n - st.spooled, n))  # the newest, in order
    finally:
        svc.close()


@pytest.mark.timeout(30)
def test_publish_once(broker: Broker) -> None:
    cfg = MqttConfig(url=broker.url)
    with Collector(broker.url, ["edge/f/d/ota"]) as col:
        publish_once(cfg, "edge/f/d/ota", b'{"v":1}', qos=1, retain=True, client_id="pusher")
        assert col.wait_for(lambda m: len(m) == 1, 5)
    with Collector(broker.url, ["edge/f/d/ota"]) as late:  # retained
        assert late.wait_for(lambda m: len(m) == 1 and m[0].retain, 5)
    t0 = time.monotonic()
    with pytest.raises(CommsError, match="cannot connect") as err:
        publish_once(MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}"), "t", b"x", timeout_s=2)
    assert err.value.fix and time.monotonic() - t0 < 5
    with pytest.raises(CommsError, match="qos"):
        publish_once(cfg, "t", b"x", qos=3)


def test_topics_and_config() -> None:
    t = Topics("fl", "dev", "grp")
    assert t.state == "edge/fl/dev/state" and t.group_ota == "edge/fl/group/grp/ota"
    assert t.command_name("edge/fl/dev/cmd/ping") == "ping"
    assert t.command_name("edge/fl/dev/cmd/response") is None
    assert t.command_name("edge/fl/other/cmd/ping") is None
    assert t.is_ota("edge/fl/dev/ota") and not t.is_ota("edge/fl/group/x/ota")
    assert redact_text("mqtt://user:pw@host:1883") == "mqtt://***@host:1883"
    with pytest.raises(ValueError, match="reconnect_min_s"):
        MqttConfig(reconnect_min_s=10, reconnect_max_s=5)
    cfg = AgentConfig.model_validate(
        {
            "device_id": "d",
            "fleet": "f",
            "models": [{"name": "m", "bundle": "b"}],
            "mqtt": {"protocol": "3.1.1", "group": "cams", "max_payload_kib": 64},
            "metrics": {"enabled": True, "port": 9200},
        }
    )
    assert cfg.mqtt.protocol == "3.1.1" and cfg.metrics.port == 9200
    for field in MqttConfig.model_fields.values():
        assert field.title and field.description
    json.dumps(MqttConfig.model_json_schema())


@pytest.mark.timeout(30)
def test_reconnect_backs_off_exponentially(tmp_path: Path) -> None:
    """A listener that drops every connection: every failed attempt doubles the full-jitter
    bound (capped at max) and paho waits the delay drawn from it."""
    import socket
    import threading

    attempts: list[float] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            attempts.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"mqtt://127.0.0.1:{listener.getsockname()[1]}"
    cfg = MqttConfig(url=url, reconnect_min_s=0.2, reconnect_max_s=1.0)
    svc = CommsService(cfg, fleet="f", device_id="d", state_dir=tmp_path)
    svc.start()
    try:
        time.sleep(3.0)
        assert not svc.status().connected
        assert svc.client is not None
        draws = list(svc.client.backoff.history)
        seen = list(attempts)
    finally:
        svc.close(timeout_s=1)
        stop.set()
        thread.join(2)
        listener.close()
    assert len(seen) >= 2 and draws, seen
    assert [d.failures for d in draws] == list(range(1, len(draws) + 1))  # no session: all fail
    for draw in draws:
        assert draw.bound_s == pytest.approx(min(1.0, 0.2 * 2**draw.failures))
        assert 0.0 <= draw.delay_s <= draw.bound_s
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    for gap, draw in zip(gaps, draws, strict=False):
        assert gap >= draw.delay_s - 0.02, (gaps, draws)


def test_broker_port_out_of_range_is_a_config_error() -> None:
    """A port outside 1..65535 is refused with the field named, not retried forever."""
    from pydantic import ValidationError

    from agent.comms.endpoint import parse_url

    for url in ("mqtt://127.0.0.1:70000", "mqtts://broker:0"):
        with pytest.raises(ValidationError, match=r"url[\s\S]*not in 1\.\.65535"):
            MqttConfig(url=url)
        with pytest.raises(CommsError, match=r"not in 1\.\.65535") as err:
            parse_url(url)
        assert err.value.fix
    assert parse_url("mqtt://127.0.0.1:65535") == ("127.0.0.1", 65535, False)


@pytest.mark.timeout(30)
def test_publish_once_waits_at_most_publish_timeout_s() -> None:
    """A broker that accepts TCP and never answers: publish_once gives up after
    mqtt.publish_timeout_s (its default timeout) and names the setting."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        cfg = MqttConfig(
            url=f"mqtt://127.0.0.1:{listener.getsockname()[1]}",
            protocol="3.1.1",
            publish_timeout_s=0.6,
        )
        t0 = time.monotonic()
        with pytest.raises(CommsError, match=r"no CONNACK .* within 0\.6 s") as err:
            publish_once(cfg, "edge/f/d/ota", b"x", qos=1)
        assert time.monotonic() - t0 < 3.0
        assert "mqtt.publish_timeout_s" in (err.value.fix or "")
    finally:
        listener.close()


@pytest.mark.timeout(30)
def test_unreadable_boot_counter_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    (tmp_path / "comms").mkdir()
    (tmp_path / "comms" / "boot.json").write_text('{"boot": "x"')
    cfg = MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}")
    for expected in (1, 2):
        svc = CommsService(cfg, fleet="f", device_id="d", state_dir=tmp_path)
        with caplog.at_level(logging.WARNING, logger="agent.comms.boot"):
            svc.start()
        svc.close(timeout_s=1)
        assert svc.boot == expected
    warned = [r for r in caplog.records if "boot counter" in r.getMessage()]
    assert len(warned) == 1, caplog.records  # only the unreadable file, not the good one
