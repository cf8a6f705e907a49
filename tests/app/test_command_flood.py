"""Issue #14 item 5 against a real Mosquitto: the daemon's CommsService and command dispatcher
(wired as ``agent.app.service`` wires them: a Control, OTA messages to ``on_ota_message``).

1,000 valid pings at 500/s get 1,000 responses (ok or busy, each id exactly once); one client's
flood is rate-limited while another client's pings are answered; a long command in flight
neither delays a ping nor the OTA messages; deep, huge and malformed requests are answered
``invalid`` or dropped and counted, never a traceback. No tight timing asserts: orderings and
generous bounds only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.comms.service import CommsService
from agent.config.broker import MqttConfig
from tests.helpers.broker import Broker, Collector

FLEET, DEV = "flood", "dev-flood"
BASE = f"edge/{FLEET}/{DEV}"
RESPONSE = f"{BASE}/cmd/response"

pytestmark = pytest.mark.timeout(60)


class GatedControl:
    """A Control whose ``reload`` and ``collect_calib`` wait for ``gate`` (a long command)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls: list[str] = []

    def config_json(self) -> dict[str, Any]:
        return {"device_id": DEV}

    def reload(self) -> str:
        self.calls.append("reload")
        self.started.set()
        self.gate.wait(20)
        return "reloaded"

    def set_profile(self, name: str) -> str:
        return name

    def latest_frame(self, source: str | None) -> Any:
        return None

    def collect_calib(self, model: str, count: int, source: str | None) -> dict[str, Any]:
        self.started.set()
        self.gate.wait(20)
        return {"saved": 0}

    def rollback_model(self, model: str | None) -> dict[str, Any]:
        return {"model": model}


@dataclass
class Rig:
    svc: CommsService
    control: GatedControl
    ota: list[tuple[float, bytes]]
    col: Collector
    pub: paho.Client

    def request(self, rid: str, *, client: str | None = None, **extra: Any) -> bytes:
        doc: dict[str, Any] = {"id": rid, "expires": time.time() + 60, "args": {}, **extra}
        if client is not None:
            doc["client"] = client
        return json.dumps(doc).encode()

    def send(self, name: str, payload: bytes) -> paho.MQTTMessageInfo:
        return self.pub.publish(f"{BASE}/cmd/{name}", payload, qos=1)

    def responses(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.col.on(RESPONSE)]

    def by_id(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for doc in self.responses():
            out.setdefault(doc["id"], []).append(doc)
        return out

    def wait_ids(self, ids: set[str], timeout_s: float) -> dict[str, list[dict[str, Any]]]:
        def done(_msgs: Any) -> bool:
            seen = {json.loads(m.payload).get("id") for m in _msgs if m.topic == RESPONSE}
            return ids <= seen

        assert self.col.wait_for(done, timeout_s), (
            f"{len(ids - set(self.by_id()))} of {len(ids)} requests got no response; "
            f"status {self.svc.status()}"
        )
        return self.by_id()


@pytest.fixture
def rig(broker: Broker, tmp_path: Path) -> Iterator[Rig]:
    control = GatedControl()
    ota: list[tuple[float, bytes]] = []
    cfg = MqttConfig(enabled=True, url=broker.url, keepalive_s=5, max_payload_kib=8)
    svc = CommsService(
        cfg,
        fleet=FLEET,
        device_id=DEV,
        state_dir=tmp_path / "state",
        control=control,
        on_ota_message=lambda topic, payload: ota.append((time.monotonic(), payload)),
    )
    svc.start()
    assert svc.client is not None and svc.client.wait_connected(10)
    col = Collector(broker.url, [RESPONSE])
    host, port = broker.url.split("://")[1].rsplit(":", 1)
    pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.max_inflight_messages_set(1000)
    pub.connect(host, int(port))
    pub.loop_start()
    time.sleep(0.3)  # the service's subscriptions acknowledged
    try:
        yield Rig(svc, control, ota, col, pub)
    finally:
        control.gate.set()
        pub.disconnect()
        pub.loop_stop()
        col.close()
        svc.close(timeout_s=2)


def _paced(rig: Rig, payloads: list[tuple[str, bytes]], rate_per_s: float) -> None:
    """Publish ``payloads`` at ``rate_per_s`` (QoS 1), then wait for every PUBACK."""
    infos = []
    t0 = time.monotonic()
    for i, (name, payload) in enumerate(payloads):
        ahead = t0 + i / rate_per_s - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        infos.append(rig.send(name, payload))
    for info in infos:
        info.wait_for_publish(10)


def test_thousand_pings_at_500_per_s_all_answered_once(rig: Rig) -> None:
    ids = [f"p{i:04d}" for i in range(1000)]
    # 50 senders, 10 requests/s each: within the per-client limit, so the lanes decide
    reqs = [("ping", rig.request(rid, client=f"ops-{i % 50}")) for i, rid in enumerate(ids)]
    _paced(rig, reqs, 500.0)
    got = rig.wait_ids(set(ids), 30)
    assert set(got) == set(ids)
    assert all(len(docs) == 1 for docs in got.values()), "a request answered twice"
    codes = Counter("ok" if d[0]["ok"] else d[0]["error"]["code"] for d in got.values())
    assert set(codes) <= {"ok", "busy"}, codes
    assert codes["ok"] > 0
    busy = [d[0] for d in got.values() if not d[0]["ok"]]
    assert all(d["retry_after_s"] > 0 for d in busy)
    status = rig.svc.status()
    assert status.commands_busy == codes["busy"] and status.commands_dropped == 0
    print(f"1000 pings at 500/s: {dict(codes)}")


def test_flooding_client_is_rate_limited_other_client_answered(rig: Rig) -> None:
    flood = [("ping", rig.request(f"f{i}", client="flooder")) for i in range(300)]
    good = [f"g{i}" for i in range(10)]
    sender = threading.Thread(target=_paced, args=(rig, flood, 400.0))
    sender.start()
    for rid in good:  # 10/s from another client, during the flood
        rig.send("ping", rig.request(rid, client="operator"))
        time.sleep(0.1)
    sender.join()
    got = rig.wait_ids({f"f{i}" for i in range(300)} | set(good), 20)
    assert all(got[rid][0]["ok"] for rid in good), [got[r] for r in good]
    flood_codes = Counter(
        "ok" if got[f"f{i}"][0]["ok"] else got[f"f{i}"][0]["error"]["code"] for i in range(300)
    )
    assert flood_codes["rate_limited"] > 0, flood_codes
    assert set(flood_codes) <= {"ok", "busy", "rate_limited"}
    limited = [d[0] for d in got.values() if not d[0]["ok"]]
    assert all(0 < d["retry_after_s"] <= 60 for d in limited)
    assert rig.svc.status().commands_rate_limited == flood_codes["rate_limited"]


def test_long_command_holds_neither_ping_nor_ota(rig: Rig) -> None:
    rig.send("calib-collect", rig.request("long-1", args={"model": "det"}))
    assert rig.control.started.wait(10)  # the long command runs (and waits on the gate)
    t0 = time.monotonic()
    rig.send("ping", rig.request("ping-during"))
    rig.pub.publish(f"{BASE}/ota", b'{"not": "a real push"}', qos=1)
    got = rig.wait_ids({"ping-during"}, 10)
    assert got["ping-during"][0]["ok"] and "long-1" not in got  # the long one still runs
    assert time.monotonic() - t0 < 10
    deadline = time.monotonic() + 10
    while not rig.ota and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rig.ota, "the OTA message waited behind the long command"
    # the long lane holds 8 more; past that, busy at once (while the first still runs)
    more = [f"r{i}" for i in range(12)]
    for rid in more:
        rig.send("reload", rig.request(rid))
    got = rig.wait_ids({f"r{i}" for i in range(8, 12)}, 10)
    assert all(got[f"r{i}"][0]["error"]["code"] == "busy" for i in range(9, 12)), got
    rig.control.gate.set()
    got = rig.wait_ids({"long-1", *more}, 20)
    assert got["long-1"][0]["ok"]
    assert all(len(got[rid]) == 1 for rid in more)


def test_hostile_requests_invalid_or_dropped_never_a_traceback(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    deep = b'{"id":"deep","expires":1e12,"args":' + b"[" * 3000 + b"]" * 3000 + b"}"
    huge = b'{"id":"huge","expires":1e12,"args":{"x":"' + b"a" * 20_000 + b'"}}'
    surrogate = b'{"id":"sur\\ud800","expires":1e12,"args":{}}'
    with caplog.at_level(logging.WARNING):
        for payload in (deep, huge, surrogate, b"\xff\xfe", b"[]", b'{"id": 7}'):
            rig.send("ping", payload)
        rig.send("ping", rig.request("bad-field", ttl_s="soon"))
        # a name no one could print (control characters would make Mosquitto drop the sender)
        rig.send("ping\u2028\u200b" + "x" * 200, rig.request("odd-name"))
        rig.send("ping", rig.request("after"))
        got = rig.wait_ids({"bad-field", "odd-name", "after"}, 10)
    assert got["bad-field"][0]["error"]["code"] == "bad_request"
    assert got["odd-name"][0]["error"]["code"] == "unknown_command"
    odd = got["odd-name"][0]
    assert odd["command"].isprintable() and len(odd["command"]) <= 64
    assert odd["error"]["message"].isprintable()
    assert got["after"][0]["ok"]
    assert not {"deep", "huge", "sur\ud800"} & set(got)
    disp = rig.svc.dispatcher
    assert disp is not None
    assert disp.dropped["too_deep"] == 1 and disp.dropped["too_large"] == 1, disp.dropped
    assert disp.dropped["bad_unicode"] == 1 and disp.dropped["not_utf8"] == 1, disp.dropped
    assert disp.dropped["no_id"] == 2, disp.dropped
    assert rig.svc.status().commands_dropped == 6
    assert disp.worker_errors == 0
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
