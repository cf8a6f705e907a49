"""Spooled telemetry lifetime (``mqtt.telemetry_expiry_s``): replayed records carry the MQTT 5
message expiry interval = the rest of their lifetime, expired ones are dropped (counted), and the
birth carries the device's group. Real Mosquitto, real spool."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.comms.forwarder import SpoolForwarder
from agent.comms.payloads import event_payload, payload_ts, state_payload
from agent.comms.service import CommsService
from agent.comms.spool import Spool
from agent.config.broker import MqttConfig
from tests.helpers.broker import Broker, Collector, free_port, mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto binary not installed (scripts/test.sh adds it)"
)


class V5Subscriber:
    """An MQTT 5 subscriber that keeps each message's expiry interval property (None: absent)."""

    def __init__(self, url: str, topic: str) -> None:
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.got: list[tuple[dict[str, Any], int | None]] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )

        def on_connect(c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe(topic, qos=1)

        def on_subscribe(c: paho.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
            subscribed.set()

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            expiry = getattr(msg.properties, "MessageExpiryInterval", None)
            with self.cond:
                self.got.append((json.loads(msg.payload), expiry))
                self.cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(10)

    def wait(self, count: int, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.got) >= count, timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_forwarder_lifetime_left_from_payload_ts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    now = [1_000_000.0]
    fwd = SpoolForwarder(spool, window=8, lifetime_s=100, clock=lambda: now[0])
    for ts in (now[0] - 10.5, now[0] - 100.0, now[0] - 250.0):
        spool.append(
            "t", lambda seq, ts=ts: event_payload("k", {}, device="d", boot=1, seq=seq, ts=ts)
        )
    first, edge, old = spool.read(0, 10)
    assert payload_ts(first.payload) == now[0] - 10.5
    assert fwd.expiry_s(first) == 90  # 89.5 s left, rounded up
    assert fwd.expiry_s(edge) == 0 and fwd.expiry_s(old) == 0  # expired
    assert SpoolForwarder(spool, window=8, lifetime_s=0).expiry_s(old) is None  # never expires
    assert payload_ts(b"not json") is None and payload_ts(b"[1]") is None
    spool.close()


@pytest.mark.timeout(60)
def test_replayed_telemetry_carries_expiry_and_expired_is_dropped(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = MqttConfig(enabled=True, url=broker.url, protocol="5", telemetry_expiry_s=600)
    offline = cfg.model_copy(update={"url": f"mqtt://127.0.0.1:{free_port()}"})
    clock = [time.time() - 3600.0]
    first = CommsService(offline, fleet="f", device_id="d", state_dir=tmp_path / "s",
                         clock=lambda: clock[0])  # fmt: skip
    first.start()
    old = first.publish_event("old.thing", {"n": 1})  # an hour old at replay: expired
    clock[0] = time.time() - 100.0
    recent = first.publish_event("recent.thing", {"n": 2})  # 100 s old: 500 s left
    first.close(timeout_s=1.0)  # never connected: both stay in the spool
    sub = V5Subscriber(broker.url, "edge/f/d/events")
    svc = CommsService(cfg, fleet="f", device_id="d", state_dir=tmp_path / "s")
    svc.start()  # the agent restarts and replays its spool
    try:
        assert svc.client is not None and svc.client.wait_connected(15)
        assert svc.wait_drained(10)
        fresh = svc.publish_event("fresh.thing", {"n": 3})
        assert sub.wait(2, 10)
        time.sleep(0.3)  # anything else (the expired one) would have arrived by now
        seqs = [doc["seq"] for doc, _ in sub.got]
        assert seqs == [recent, fresh] and old not in seqs
        expiries = {doc["seq"]: exp for doc, exp in sub.got}
        left_recent, left_fresh = expiries[recent], expiries[fresh]
        assert left_recent is not None and 490 <= left_recent <= 501
        assert left_fresh is not None and 590 <= left_fresh <= 600
        status = svc.status()
        assert status.expired == 1 and status.spooled == 0 and status.sent == 2
    finally:
        svc.close()
        sub.close()


@pytest.mark.timeout(60)
def test_mqtt311_sends_no_expiry_and_birth_carries_group(broker: Broker, tmp_path: Path) -> None:
    cfg = MqttConfig(enabled=True, url=broker.url, protocol="3.1.1", group="line-2")
    with Collector(broker.url, ["edge/f/d/state"]) as states:
        sub = V5Subscriber(broker.url, "edge/f/d/metrics")
        svc = CommsService(cfg, fleet="f", device_id="d", state_dir=tmp_path / "s")
        svc.start()
        try:
            assert svc.client is not None and svc.client.wait_connected(10)
            seq = svc.publish_metrics({"uptime_s": 1.0})
            assert sub.wait(1, 10)
            doc, expiry = sub.got[0]
            assert doc["seq"] == seq and expiry is None  # 3.1.1 has no properties
            assert states.wait_for(lambda m: any(x.json()["state"] == "online" for x in m), 10)
            birth = next(x.json() for x in states.messages if x.json()["state"] == "online")
            assert birth["group"] == "line-2" and birth["device"] == "d"
        finally:
            svc.close()
            sub.close()


def test_state_payload_group_is_optional() -> None:
    without = json.loads(state_payload("online", device="d", boot=1, ts=1.0))
    assert "group" not in without
    will = json.loads(state_payload("offline", device="d", boot=1, ts=1.0, reason="lost",
                                    group="g"))  # fmt: skip
    assert will["group"] == "g" and will["reason"] == "lost"
