"""Closed sessions give their descriptors back at once, not at the next garbage collection.

paho waits with ``select()``, which cannot watch a descriptor numbered 1024 or more; a process
that opens and closes many sessions (a simulated fleet, a controller restarted in one process)
must not pile up the closed ones' sockets until the cyclic collector happens to run."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from agent.comms.mqtt import MqttClient
from agent.comms.mqtt.oneshot import publish_once
from agent.config.broker import MqttConfig
from tests.helpers.broker import Broker

SESSIONS = 40


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_gc")
def test_closed_sessions_hold_no_descriptors(broker: Broker) -> None:
    cfg = MqttConfig(enabled=True, url=broker.url)
    before = _open_fds()
    for i in range(SESSIONS):
        client = MqttClient(cfg, client_id=f"release-{i}")
        client.start()
        assert client.wait_connected(10), f"session {i} did not connect"
        client.close()
        del client
    # without the release every closed session keeps its socket pair (2 descriptors) until a
    # full collection; allow a few for the logging and the broker's own bookkeeping
    assert _open_fds() - before < 6, "closed MQTT sessions still hold descriptors"


@pytest.mark.usefixtures("no_gc")
def test_one_shot_publishes_hold_no_descriptors(broker: Broker) -> None:
    cfg = MqttConfig(enabled=True, url=broker.url)
    before = _open_fds()
    for i in range(SESSIONS):
        publish_once(cfg, f"edge-agent/test/{i}", b"{}", qos=1, retain=False)
    assert _open_fds() - before < 6, "one-shot publishes leave descriptors behind"
