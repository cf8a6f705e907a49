"""CommsService against a real Mosquitto: broker killed mid-stream, agent restarts and SIGKILL,
birth/last will, boot sequence, model state, OTA subscriptions, protocol fallback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.comms.service import CommsService
from agent.config.broker import MqttConfig
from tests.assets import REPO
from tests.helpers.broker import Broker, Collector, Message, free_port, mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto binary not installed (scripts/test.sh adds it)"
)

DRIVER = REPO / "tests" / "helpers" / "comms_driver.py"
FLEET, DEV = "fleet1", "dev1"
EVENTS = f"edge/{FLEET}/{DEV}/events"
STATE = f"edge/{FLEET}/{DEV}/state"


def _cfg(url: str, **kw: object) -> MqttConfig:
    base: dict[str, object] = {
        "enabled": True,
        "url": url,
        "keepalive_s": 5,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
    }
    base.update(kw)
    return MqttConfig.model_validate(base)


def _seqs(msgs: list[Message]) -> list[int]:
    return [m.json()["seq"] for m in msgs]


def _first_seen(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


@pytest.mark.timeout(90)
def test_broker_sigkill_mid_stream_loses_no_event(broker: Broker, tmp_path: Path) -> None:
    col = Collector(broker.url, [EVENTS], client_id="collector-kill")
    time.sleep(1.5)  # the broker autosaves the collector's persistent session
    svc = CommsService(_cfg(broker.url), fleet=FLEET, device_id=DEV, state_dir=tmp_path / "s")
    svc.start()
    try:
        assert svc.client is not None and svc.client.wait_connected(10)
        total = 300
        stamps: dict[int, tuple[float, float]] = {}
        for i in range(total):
            if i == 100:
                broker.kill()
            if i == 200:
                assert svc.status().spooled > 0  # held while the broker was down
                broker.start()
            before = time.time()
            seq = svc.publish_event("test.tick", {"i": i})
            stamps[seq] = (before, time.time())
            time.sleep(0.01)
        assert svc.wait_drained(30), svc.status()
        assert col.wait_for(lambda m: len({x.json()["seq"] for x in m}) >= total, 30)
        msgs = col.on(EVENTS)
        order = _first_seen(_seqs(msgs))
        assert sorted(order) == sorted(stamps), "an event was lost"
        assert order == sorted(order), "replay out of order"
        for m in msgs:  # original timestamps kept (set at publish_event, not at replay)
            doc = m.json()
            lo, hi = stamps[doc["seq"]]
            assert lo - 0.001 <= doc["ts"] <= hi + 0.001
        st = svc.status()
        assert st.dropped == 0 and st.spooled == 0 and st.connects >= 2
    finally:
        svc.close()
        col.close()


def _driver(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, str(DRIVER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_until(proc: subprocess.Popen[str], prefix: str, timeout_s: float) -> str:
    assert proc.stdout is not None
    result: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(prefix):
                result.append(line)
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout_s)
    if not result:
        proc.kill()
        raise AssertionError(f"driver did not print {prefix} within {timeout_s} s")
    return result[0]


@pytest.mark.timeout(90)
def test_spool_survives_agent_restart(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    url = f"mqtt://127.0.0.1:{port}"
    # 1) broker down: the agent spools 80 events and is SIGKILLed
    first = _driver("--url", url, "--state-dir", str(state), "--events", "80", "--then", "wait")
    try:
        _read_until(first, "PUBLISHED", 30)
    finally:
        first.kill()
        first.wait(10)
    assert list((state / "comms" / "spool").glob("seg-*.log"))
    # 2) broker up, a new agent process replays the spool in order
    broker = Broker(tmp_path / "broker", port=port).start()
    try:
        with Collector(broker.url, [EVENTS]) as col:
            second = _driver("--url", url, "--state-dir", str(state), "--then", "drain")
            done = _read_until(second, "DONE", 45)
            second.wait(15)
            status = json.loads(done.split(" ", 1)[1])
            assert status["spooled"] == 0 and status["sent"] == 80
            assert col.wait_for(lambda m: len(m) >= 80, 10)
            events = [m.json() for m in col.on(EVENTS)]
            assert [e["data"]["i"] for e in events] == list(range(80))
            assert _seqs(col.on(EVENTS)) == sorted(_seqs(col.on(EVENTS)))
            assert {e["boot"] for e in events} == {1}  # written by the first process
    finally:
        broker.stop()


@pytest.mark.timeout(60)
def test_agent_sigkill_leaves_retained_offline_within_keepalive(
    broker: Broker, tmp_path: Path
) -> None:
    keepalive = 5
    with Collector(broker.url, [STATE]) as col:
        proc = _driver(
            "--url", broker.url, "--state-dir", str(tmp_path / "s"),
            "--keepalive", str(keepalive), "--then", "wait",
        )  # fmt: skip
        try:
            _read_until(proc, "READY", 30)
            assert col.wait_for(
                lambda m: any(x.json()["state"] == "online" for x in m if x.topic == STATE), 10
            )
        finally:
            proc.kill()
            killed_at = time.monotonic()
            proc.wait(10)
        assert col.wait_for(lambda m: m[-1].json()["state"] == "offline", 1.5 * keepalive), (
            "no offline state within 1.5x keepalive"
        )
        assert time.monotonic() - killed_at < 1.5 * keepalive
        last = col.on(STATE)[-1].json()
        assert last["reason"] == "lost" and last["boot"] == 1
    # a late subscriber sees the retained offline state
    with Collector(broker.url, [STATE]) as late:
        assert late.wait_for(lambda m: len(m) >= 1, 5)
        assert late.messages[0].retain and late.messages[0].json()["state"] == "offline"


@pytest.mark.timeout(60)
def test_birth_boot_sequence_and_retained_states(broker: Broker, tmp_path: Path) -> None:
    state = tmp_path / "s"
    boots = []
    for _ in range(3):
        svc = CommsService(_cfg(broker.url), fleet=FLEET, device_id=DEV, state_dir=state)
        svc.start()
        assert svc.client is not None and svc.client.wait_connected(10)
        with Collector(broker.url, [STATE]) as col:
            assert col.wait_for(lambda m: any(x.json()["state"] == "online" for x in m), 5)
            online = [x for x in col.messages if x.json()["state"] == "online"][-1]
            boots.append(online.json()["boot"])
        with Collector(broker.url, [STATE]) as late:  # the birth is now the retained state
            assert late.wait_for(lambda m: len(m) >= 1, 5)
            assert late.messages[0].retain and late.messages[0].json()["state"] == "online"
            assert late.messages[0].json()["boot"] == boots[-1]
        svc.close()
        with Collector(broker.url, [STATE]) as col:
            assert col.wait_for(lambda m: len(m) >= 1, 5)
            doc = col.messages[0].json()
            assert col.messages[0].retain
            assert doc["state"] == "offline" and doc["reason"] == "shutdown"
    assert boots == [1, 2, 3]


@pytest.mark.timeout(60)
def test_model_state_retained_and_ota_topics_delivered(broker: Broker, tmp_path: Path) -> None:
    got: list[tuple[str, bytes, str]] = []
    svc = CommsService(
        _cfg(broker.url),
        fleet=FLEET,
        device_id=DEV,
        state_dir=tmp_path / "s",
        group="cams",
        on_ota_message=lambda t, p: got.append((t, p, threading.current_thread().name)),
    )
    svc.start()
    try:
        assert svc.client is not None and svc.client.wait_connected(10)
        svc.set_model_state({"model": "det", "version": 3, "state": "serving"})
        with Collector(broker.url, [f"edge/{FLEET}/{DEV}/model"]) as first:
            assert first.wait_for(lambda m: len(m) >= 1, 5)  # stored on the broker by now
        with Collector(broker.url, [f"edge/{FLEET}/{DEV}/model"]) as col:
            assert col.wait_for(lambda m: len(m) >= 1, 5)
            doc = col.messages[0].json()
            assert col.messages[0].retain and doc["schema"] == "edge-agent/model/1"
            assert doc["version"] == 3 and doc["state"] == "serving"
        from agent.comms.mqtt import publish_once

        publish_once(_cfg(broker.url), f"edge/{FLEET}/{DEV}/ota", b'{"m":1}')
        publish_once(_cfg(broker.url), f"edge/{FLEET}/group/cams/ota", b'{"m":2}')
        publish_once(_cfg(broker.url), f"edge/{FLEET}/group/other/ota", b'{"m":3}')
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert sorted(p for _, p, _ in got) == [b'{"m":1}', b'{"m":2}']
        assert all(name == "edge-commands-ota" for _, _, name in got)  # the OTA lane, not paho's
    finally:
        svc.close()


def _v311_only_proxy(target_port: int) -> tuple[int, threading.Event]:
    """A TCP proxy in front of mosquitto that answers an MQTT 5 CONNECT like a 3.1.1-only
    broker (CONNACK rc=1, unacceptable protocol version) and pipes 3.1.1 sessions through."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(5)
            head = conn.recv(65536)  # the CONNECT packet (small, one segment on loopback)
            # fixed header (1 byte + varint length), then "\x00\x04MQTT", then the level byte
            i = 1
            while head[i] & 0x80:
                i += 1
            level = head[i + 1 + 6]
            if level == 5:
                conn.sendall(b"\x20\x02\x00\x01")
                conn.close()
                continue
            conn.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", target_port))
            upstream.sendall(head)
            threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1]), stop


@pytest.mark.timeout(60)
def test_auto_protocol_falls_back_to_311(broker: Broker, tmp_path: Path) -> None:
    port, stop = _v311_only_proxy(broker.port)
    try:
        url = f"mqtt://127.0.0.1:{port}"
        svc = CommsService(_cfg(url), fleet=FLEET, device_id=DEV, state_dir=tmp_path / "s")
        with Collector(broker.url, [EVENTS]) as col:
            svc.start()
            try:
                assert svc.client is not None and svc.client.wait_connected(15)
                assert svc.status().protocol == "3.1.1"
                svc.publish_event("test.after_fallback", {})
                assert col.wait_for(lambda m: len(m) == 1, 10)
            finally:
                svc.close()
        strict = CommsService(
            _cfg(url, protocol="5"), fleet=FLEET, device_id="dev2", state_dir=tmp_path / "s2"
        )
        strict.start()
        try:
            assert strict.client is not None
            assert not strict.client.wait_connected(2)  # refused, never marked connected
            assert "Unsupported protocol version" in (strict.status().last_error or "")
        finally:
            strict.close(timeout_s=1)
    finally:
        stop.set()


@pytest.mark.timeout(30)
def test_unreachable_broker_never_blocks_publishers(tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    svc = CommsService(_cfg(url), fleet=FLEET, device_id=DEV, state_dir=tmp_path / "s")
    svc.start()
    try:
        t0 = time.monotonic()
        for i in range(500):
            svc.publish_event("test.offline", {"i": i})
            svc.publish_metrics({"sources": {"cam0": {"state": "running", "fps": 10.0}}})
        assert not svc.publish_detections("cam0", [])
        assert time.monotonic() - t0 < 5
        st = svc.status()
        assert not st.connected and st.spooled == 1000
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not svc.status().last_error:
            time.sleep(0.05)
        assert "cannot reach the broker" in (svc.status().last_error or "")
    finally:
        t0 = time.monotonic()
        svc.close(timeout_s=2)
        assert time.monotonic() - t0 < 4


@pytest.mark.timeout(90)
def test_agent_sigkill_mid_stream_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    """Messages in flight (sent, no PUBACK yet) when the agent dies are sent by the next run."""
    state = tmp_path / "state"
    n = 3000
    with Collector(broker.url, [EVENTS]) as col:
        first = _driver("--url", broker.url, "--state-dir", str(state), "--events", str(n))
        try:
            _read_until(first, "PUBLISHED", 30)
        finally:
            first.kill()  # SIGKILL while the forwarder is still sending
            first.wait(10)
        second = _driver("--url", broker.url, "--state-dir", str(state), "--then", "drain")
        done = json.loads(_read_until(second, "DONE", 45).split(" ", 1)[1])
        second.wait(15)
        assert done["spooled"] == 0 and done["boot"] == 2
        assert col.wait_for(lambda m: len({x.json()["seq"] for x in m}) >= n, 20)
        seqs = _seqs(col.on(EVENTS))
        assert set(seqs) == set(range(1, n + 1))
        assert _first_seen(seqs) == list(range(1, n + 1))
