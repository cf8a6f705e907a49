"""The controller's limits under load and crashes: its HTTP servers serve a bounded number of
connections (the rest get 503 at once), and an instance that takes over a rollout publishes
again the manifests a crashed instance marked published but never sent."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from agent.comms.mqtt import MqttClient
from agent.config.broker import MqttConfig
from agent.fleet.controller.driver import RolloutDriver
from agent.fleet.controller.executor import ActionExecutor
from agent.fleet.controller.httpcap import CappedHTTPServer
from agent.fleet.keygen import generate_keypair
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout import parse_spec, prepare_rollout
from agent.fleet.rollout.engine import tick
from agent.fleet.store.sqlite import SqliteFleetStore
from tests.helpers.broker import Broker, Collector
from tests.helpers.fleet_controller import wait_for
from tests.helpers.ota_support import copy_bundle

FLEET = "res"


class _Held(BaseHTTPRequestHandler):
    """Answers once the test releases it."""

    release = threading.Event()

    def do_GET(self) -> None:
        self.release.wait(10)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def capped() -> Iterator[CappedHTTPServer]:
    _Held.release.clear()
    server = CappedHTTPServer(("127.0.0.1", 0), _Held, max_connections=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        _Held.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _get(port: int, results: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        results.append(conn.getresponse().status)
    finally:
        conn.close()


def test_connections_beyond_the_cap_get_503_at_once(capped: CappedHTTPServer) -> None:
    port = capped.server_address[1]
    held: list[int] = []
    threads = [threading.Thread(target=_get, args=(port, held)) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # both are now inside the handler, waiting
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/")
    answer = conn.getresponse()
    assert answer.status == 503 and answer.getheader("Retry-After") == "1"
    assert b"too many connections" in answer.read()
    conn.close()
    assert capped.refused == 1
    _Held.release.set()
    for t in threads:
        t.join(10)
    assert held == [200, 200]
    after: list[int] = []
    _get(port, after)  # the slots were given back
    assert after == [200]


def test_a_new_lease_holder_publishes_unanswered_manifests_again(
    broker: Broker, tmp_path: Path
) -> None:
    pair = generate_keypair(tmp_path / "keys", "ops")
    spec = parse_spec({"bundle": str(copy_bundle(tmp_path / "b")), "version": 2, "soak_s": 0})
    now = time.time()
    online = [
        DeviceRecord(fleet=FLEET, device=f"cam-{i}", first_seen=now, last_seen=now, online=True)
        for i in range(2)
    ]
    prepared = prepare_rollout(
        spec, fleet=FLEET, key_path=pair.private_key, devices=online,
        rollout_dir=tmp_path / "r", base_url="http://127.0.0.1:9/r", now=now,
    )  # fmt: skip
    # the crashed instance: its tick marked the canary published, and it died before sending
    first = tick(prepared.rollout, {d.device: d for d in online}, now)
    assert [type(a).__name__ for a in first.actions] == ["PublishManifest"]
    store = SqliteFleetStore(tmp_path / "fleet.db")
    client = MqttClient(MqttConfig(enabled=True, url=broker.url), client_id="ctl-2")
    try:
        store.rollouts.create(prepared.rollout.id, first.rollout.to_json(), prepared.manifests)
        for record in online:
            store.registry.update(FLEET, record.device, lambda _, r=record: r)
        client.start()
        assert client.wait_connected(10)
        executor = ActionExecutor(client, FLEET, "ctl-2", store.rollouts.manifest)
        driver = RolloutDriver(store, FLEET, "ctl-2", executor, lease_s=10, tick_s=1.0)
        with Collector(broker.url, [f"edge/{FLEET}/+/ota"]) as seen:
            driver.tick_all()
            wait_for(lambda: seen.messages, 10, "the manifest published again")
            assert [m.topic for m in seen.messages] == [f"edge/{FLEET}/cam-0/ota"]
            assert seen.messages[0].payload.decode() == prepared.manifests["cam-0"]
            assert driver.republished == 1
            driver.tick_all()  # the lease is held now: nothing is sent twice
            time.sleep(0.5)
            assert len(seen.messages) == 1 and driver.republished == 1
    finally:
        client.close()
        store.close()
