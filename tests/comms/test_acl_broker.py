"""The shipped broker ACL against a real Mosquitto on loopback (docs/broker-acl.md).

Users: ``dev1`` (group ``g1``), ``dev2`` (group ``g2``), ``group`` (a broker user the config
would refuse as a device id: the ACL alone must still keep it off group topics) and ``op``
(the operator). Every client speaks MQTT 5 so that a refused publish shows as PUBACK
"Not authorized"; a second subscriber (the operator, on ``edge/#``) checks that nothing of
it arrives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.comms.service import CommsService
from agent.comms.topics import Topics, device_ota_topic, group_ota_topic
from agent.config.broker import MqttConfig
from agent.fleet.acl import AclSpec, mosquitto_acl
from tests.helpers.broker import Broker, mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto binary not installed (scripts/test.sh adds it)"
)

FLEET = "f"
PASSWORD = "pw-acl-test"
NOT_AUTHORIZED = 135
USERS = ("dev1", "dev2", "group", "op")


class User:
    """One MQTT 5 client logged in as ``name``: records messages, PUBACK and SUBACK codes."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self._cond = threading.Condition()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"acl-{name}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(name, PASSWORD)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_ack
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.got.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _on_ack(self, c: paho.Client, u: Any, mid: int, rc: Any, p: Any) -> None:
        first = rc[0] if isinstance(rc, list) else rc
        with self._cond:
            self.acks[mid] = int(first.value)
            self._cond.notify_all()

    def _wait(self, pred: Any, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def subscribe(self, *filters: str) -> None:
        for f in filters:
            _, mid = self.client.subscribe(f, qos=1)
            assert self._wait(lambda mid=mid: mid in self.acks), f"no SUBACK for {f}"

    def publish(self, topic: str, payload: bytes) -> int:
        """The PUBACK reason code (0 = accepted, 135 = not authorized)."""
        info = self.client.publish(topic, payload, qos=1)
        assert self._wait(lambda: info.mid in self.acks), f"no PUBACK for {topic}"
        return self.acks[info.mid]

    def wait_payload(self, payload: bytes, timeout_s: float = 5.0) -> bool:
        return self._wait(lambda: any(p == payload for _, p in self.got), timeout_s)

    def payloads(self) -> set[bytes]:
        with self._cond:
            return {p for _, p in self.got}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    acl = mosquitto_acl(AclSpec(FLEET, operators=("op",)))
    with Broker(tmp_path / "broker", acl=acl, passwords=dict.fromkeys(USERS, PASSWORD)) as b:
        yield b


@pytest.fixture
def users(acl_broker: Broker) -> Iterator[dict[str, User]]:
    made = {name: User(acl_broker, name) for name in USERS}
    made["op"].subscribe(f"edge/{FLEET}/#")
    try:
        yield made
    finally:
        for user in made.values():
            user.close()


@pytest.mark.timeout(60)
def test_device_reads_its_group_push_and_own_commands_not_another_devices(
    users: dict[str, User],
) -> None:
    dev1, op = users["dev1"], users["op"]
    me, other = Topics(FLEET, "dev1", "g1"), Topics(FLEET, "dev2", "g2")
    assert me.group_ota is not None
    dev1.subscribe(me.ota, me.cmd_filter, me.group_ota, other.cmd_filter, other.ota)
    sent = {
        me.group_ota: b"push-g1",
        me.ota: b"push-dev1",
        me.cmd("ping"): b"cmd-dev1",
        other.cmd("ping"): b"cmd-dev2",
        other.ota: b"push-dev2",
    }
    for topic, payload in sent.items():
        assert op.publish(topic, payload) == 0, topic  # the operator writes pushes and commands
    for payload in (b"push-g1", b"push-dev1", b"cmd-dev1"):
        assert dev1.wait_payload(payload), payload
    assert op.wait_payload(b"push-dev2")  # everything went through the broker by now
    time.sleep(0.3)
    assert dev1.payloads() == {b"push-g1", b"push-dev1", b"cmd-dev1"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["dev1", "group"])
def test_device_cannot_write_groups_other_devices_or_its_own_inbox(
    users: dict[str, User], name: str
) -> None:
    """``group`` is a broker user here, though the config refuses it as a device id: the ACL
    alone keeps it off group topics (no device write rule ends in ``ota``)."""
    dev, op = users[name], users["op"]
    me, other = Topics(FLEET, name), Topics(FLEET, "dev2")
    forbidden = [
        group_ota_topic(FLEET, "g1"),
        group_ota_topic(FLEET, "g2"),
        me.ota,
        me.cmd("ping"),
        other.ota,
        other.cmd("ping"),
        other.state,
        other.model,
        other.cmd_response,
        device_ota_topic("other-fleet", name),
    ]
    for i, topic in enumerate(forbidden):
        assert dev.publish(topic, b"forged-%d" % i) == NOT_AUTHORIZED, topic
    assert dev.publish(me.state, b"own-state") == 0
    assert op.wait_payload(b"own-state")  # published after the forged ones, on one connection
    time.sleep(0.3)
    assert not {p for p in op.payloads() if p.startswith(b"forged")}


@pytest.mark.timeout(60)
def test_the_daemon_comms_fit_the_acl(acl_broker: Broker, tmp_path: Path) -> None:
    """CommsService as ``dev1``: birth, telemetry, model record and a command response all
    pass the ACL (none refused), and the group push reaches the OTA handler."""
    pushes: list[str] = []
    cfg = MqttConfig(
        enabled=True, url=acl_broker.url, username="dev1", password=PASSWORD, group="g1"
    )
    svc = CommsService(
        cfg,
        fleet=FLEET,
        device_id="dev1",
        state_dir=tmp_path / "s",
        on_ota_message=lambda topic, payload: pushes.append(topic),
    )
    op = User(acl_broker, "op")
    try:
        op.subscribe(f"edge/{FLEET}/#")
        svc.start()
        assert svc.client is not None and svc.client.wait_connected(10)
        me = Topics(FLEET, "dev1", "g1")
        assert me.group_ota is not None
        svc.publish_event("test.tick", {"i": 1})
        svc.set_model_state({"op": "update", "model": "m", "version": 1, "state": "active"})
        deadline = time.monotonic() + 10
        while not pushes and time.monotonic() < deadline:  # subscriptions race the connect
            op.publish(me.group_ota, b'{"not":"signed"}')
            time.sleep(0.3)
        assert pushes and pushes[0] == me.group_ota
        assert op.publish(me.cmd("ping"), b'{"id":"p1"}') == 0
        topics = {me.state, me.events, me.model, me.cmd_response}
        assert op._wait(lambda: topics <= {t for t, _ in op.got}, 10), op.got
        assert svc.status().rejected == 0
    finally:
        svc.close(timeout_s=2)
        op.close()


@pytest.mark.timeout(60)
def test_strict_mode_only_members_read_a_group(tmp_path: Path) -> None:
    acl = mosquitto_acl(AclSpec(FLEET, ("op",), {"dev1": ("g1",), "dev2": ("g2",)}))
    with Broker(tmp_path / "b", acl=acl, passwords=dict.fromkeys(USERS, PASSWORD)) as broker:
        made = {name: User(broker, name) for name in ("dev1", "dev2", "op")}
        try:
            g1, g2 = group_ota_topic(FLEET, "g1"), group_ota_topic(FLEET, "g2")
            for name in ("dev1", "dev2"):
                made[name].subscribe(g1, g2)
            assert made["op"].publish(g1, b"push-g1") == 0
            assert made["op"].publish(g2, b"push-g2") == 0
            assert made["dev1"].wait_payload(b"push-g1")
            assert made["dev2"].wait_payload(b"push-g2")
            time.sleep(0.3)
            assert made["dev1"].payloads() == {b"push-g1"}
            assert made["dev2"].payloads() == {b"push-g2"}
        finally:
            for user in made.values():
                user.close()
