"""``edge-agent push`` with a broker: it checks the target is known, publishes, and says which
devices it reached — through the real CLI, a real Mosquitto and small fake devices that speak
the device side of the contract (retained birth, OTA record on ``model``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from agent.comms.endpoint import Will
from agent.comms.mqtt import MqttClient, publish_once
from agent.comms.payloads import model_payload, state_payload
from agent.comms.topics import Topics, group_ota_topic
from agent.config.broker import MqttConfig
from agent.fleet.keygen import generate_keypair
from agent.ota.manifest import manifest_sha256
from tests.assets import REPO
from tests.helpers.broker import Broker, Collector
from tests.helpers.ota_support import copy_bundle

FLEET = "reach"


class FakeDevice:
    """A device that announces itself (retained birth, optional group) and answers every OTA
    manifest on its topic with a retained OTA record: ``active`` with the manifest's hash, or
    ``rejected``/``not_newer`` without one (as the real updater does after the signature)."""

    def __init__(
        self, cfg: MqttConfig, device: str, *, group: str | None = None, answer: str | None = None
    ) -> None:
        self.device, self.group, self.answer = device, group, answer
        self.topics = Topics(FLEET, device)
        self.seen: list[str] = []
        subscriptions = [(self.topics.ota, 1)]
        if group is not None:
            subscriptions.append((group_ota_topic(FLEET, group), 1))
        self.client = MqttClient(
            cfg,
            client_id=f"fake-{device}",
            will=Will(self.topics.state, state_payload("offline", device=device, boot=1)),
            subscriptions=subscriptions,
            on_message=self._on_message,
        )

    def start(self) -> FakeDevice:
        self.client.start()
        assert self.client.wait_connected(10), self.client.last_error
        birth = state_payload("online", device=self.device, boot=1, group=self.group)
        assert self.client.publish_wait(self.topics.state, birth, retain=True, timeout_s=10)
        return self

    def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        manifest = json.loads(payload)["manifest"]
        self.seen.append(manifest_sha256(manifest))
        if self.answer is None:
            return
        record: dict[str, Any] = {
            "id": uuid.uuid4().hex[:12],
            "op": "update",
            "model": manifest["name"],
            "version": manifest["version"],
            "state": self.answer,
            "updated_at": int(time.time()),
        }
        if self.answer == "rejected":
            record.update(reason="not_newer", detail="version is not newer than 9")
        else:
            record["manifest_sha256"] = manifest_sha256(manifest)
        data = model_payload(record, device=self.device, ts=time.time())
        self.client.publish(self.topics.model, data, qos=1, retain=True)

    def close(self) -> None:
        self.client.close()


def push_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "agent", "push", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )


def push_args(tmp_path: Path, version: int, *target: str) -> list[str]:
    keys, bundle = tmp_path / "keys", tmp_path / "bundle"
    if not (keys / "ops.key").is_file():
        generate_keypair(keys, "ops")
        copy_bundle(bundle)
    return [
        str(bundle), "--key", str(keys / "ops.key"), "--version", str(version),
        "--url", bundle.as_uri(), "--fleet", FLEET, *target,
    ]  # fmt: skip


def _retained_offline(url: str, device: str, group: str | None = None) -> None:
    payload = state_payload("offline", device=device, boot=3, reason="lost", group=group)
    publish_once(MqttConfig(url=url), Topics(FLEET, device).state, payload, retain=True)


def test_group_push_reports_reached_rejected_silent_and_offline(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = MqttConfig(url=broker.url)
    devices = [
        FakeDevice(cfg, "cam-a", group="lab", answer="active"),
        FakeDevice(cfg, "cam-b", group="lab", answer="rejected"),
        FakeDevice(cfg, "cam-c", group="lab", answer=None),
        FakeDevice(cfg, "cam-z", group="other", answer="active"),
    ]
    _retained_offline(broker.url, "cam-d", group="lab")
    try:
        for dev in devices:
            dev.start()
        res = push_cli(
            *push_args(tmp_path, 4, "--group", "lab"),
            "--mqtt-url", broker.url, "--wait", "4", "--discover-s", "1.5",
        )  # fmt: skip
    finally:
        for dev in devices:
            dev.close()
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["targets"] == ["cam-a", "cam-b", "cam-c", "cam-d"]
    assert out["reached"] == {"cam-a": {"state": "active", "version": 4}}
    assert out["rejected"]["cam-b"]["reason"] == "not_newer"
    assert out["silent"] == ["cam-c"] and out["offline"] == ["cam-d"] and out["unknown"] == []
    assert "cam-z" not in res.stdout, "a device of another group is no target"
    assert "reached   cam-a: active" in res.stderr and "offline   cam-d" in res.stderr


def test_device_push_ends_when_the_device_is_done(tmp_path: Path, broker: Broker) -> None:
    dev = FakeDevice(MqttConfig(url=broker.url), "cam-a", answer="active").start()
    try:
        res = push_cli(
            *push_args(tmp_path, 2, "--device", "cam-a"),
            "--mqtt-url", broker.url, "--wait", "60", "--json",
        )  # fmt: skip
    finally:
        dev.close()
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["reached"] == {"cam-a": {"state": "active", "version": 2}}
    assert out["waited_s"] < 60 and dev.seen == [out["manifest_sha256"]]
    assert "reached" not in res.stderr, "--json: no words"


def test_unknown_device_exits_2_and_publishes_nothing(tmp_path: Path, broker: Broker) -> None:
    topic = Topics(FLEET, "no-such-device").ota
    with Collector(broker.url, [topic]) as col:
        res = push_cli(
            *push_args(tmp_path, 2, "--device", "no-such-device"),
            "--mqtt-url", broker.url, "--discover-s", "0.5",
        )  # fmt: skip
        assert res.returncode == 2, res.stderr
        assert "'no-such-device' is unknown" in res.stderr and "--allow-unknown" in res.stderr
        assert "Traceback" not in res.stderr and res.stdout == ""
        assert not col.wait_for(bool, 0.5)
        allowed = push_cli(
            *push_args(tmp_path, 2, "--device", "no-such-device"),
            "--mqtt-url", broker.url, "--discover-s", "0.2", "--allow-unknown", "--wait", "0.5",
        )  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout)["unknown"] == ["no-such-device"]
        assert col.wait_for(lambda msgs: len(msgs) == 1, 10)
    group = push_cli(
        *push_args(tmp_path, 2, "--group", "nobody"), "--mqtt-url", broker.url,
        "--discover-s", "0.2",
    )  # fmt: skip
    assert group.returncode == 2 and "group 'nobody'" in group.stderr


def test_retained_push_reaches_a_device_that_connects_later(tmp_path: Path, broker: Broker) -> None:
    _retained_offline(broker.url, "cam-late")
    topic = Topics(FLEET, "cam-late").ota
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "push",
         *push_args(tmp_path, 3, "--device", "cam-late"),
         "--mqtt-url", broker.url, "--retain", "--wait", "60"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    dev = FakeDevice(MqttConfig(url=broker.url), "cam-late", answer="active")
    try:
        with Collector(broker.url, [topic]) as col:
            assert col.wait_for(bool, 30), "the push was not published"
        dev.start()  # connects after the push: the broker hands it the retained manifest
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        dev.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["retained"] is True and out["reached"]["cam-late"]["state"] == "active"
    assert dev.seen == [out["manifest_sha256"]]
    assert "mosquitto_pub -r -n -t" in stderr, "how to clear the retained push"
    with Collector(broker.url, [topic]) as later:
        assert later.wait_for(lambda msgs: bool(msgs) and msgs[0].retain, 10)
