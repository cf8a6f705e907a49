"""The fleet side of a push without the CLI: plan, payload, sign, write, serve."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.config.broker import MqttConfig
from agent.core.errors import OtaError
from agent.fleet.keygen import generate_keypair
from agent.fleet.publish import (
    PushRequest,
    ServeRequest,
    plan_push,
    sign_and_publish,
    start_payload,
)
from agent.fleet.push import PushUsageError, ota_topic, parse_duration
from agent.fleet.server import BundleServer
from agent.ota.store import VersionStore
from agent.ota.trust import TrustStore
from agent.ota.verify import DeviceFacts, Verifier
from tests.helpers.ota_support import DEVICE, FLEET, copy_bundle


def _request(tmp_path: Path, **changes: object) -> PushRequest:
    keys = tmp_path / "keys"
    if not (keys / "ops.key").is_file():
        generate_keypair(keys, "ops")
    bundle = tmp_path / "bundle"
    if not bundle.is_dir():
        copy_bundle(bundle)
    fields: dict[str, object] = {
        "bundle_dir": bundle,
        "key_path": keys / "ops.key",
        "version": 5,
        "fleet": FLEET,
        "device": DEVICE,
        "group": None,
        "source": "url",
        "url": bundle.as_uri(),
    }
    fields.update(changes)
    return PushRequest(**fields)  # type: ignore[arg-type]


def test_topic_and_duration() -> None:
    assert ota_topic("f", device="d") == "edge/f/d/ota"
    assert ota_topic("f", group="g") == "edge/f/group/g/ota"
    assert parse_duration("90s") == 90 and parse_duration("2h") == 7200
    with pytest.raises(OtaError):
        ota_topic("f", device="d", group="g")
    with pytest.raises(OtaError):
        parse_duration("0m")


def test_signed_push_is_written_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "manifest.json"
    request = _request(tmp_path, out=out, expires_in="2h")
    plan = plan_push(request)
    assert plan.topic == f"edge/{FLEET}/{DEVICE}/ota" and "model.onnx" in plan.files
    payload, server = start_payload(request, plan)
    assert server is None and payload.base_url == request.url
    result = sign_and_publish(request, plan, payload)
    assert result.published == 0
    assert json.loads(out.read_text()) == result.envelope
    summary = result.summary(str(out))
    assert summary["version"] == 5 and summary["out"] == str(out)
    facts = DeviceFacts(fleet=FLEET, device_id=DEVICE, profile="cpu", family="cpu")
    trust = TrustStore.load(tmp_path / "keys")
    signed = Verifier(trust, facts, VersionStore(tmp_path / "state")).accept(out.read_bytes())
    assert signed.sha256 == summary["manifest_sha256"]


def test_usage_errors_come_before_anything_is_served(tmp_path: Path) -> None:
    with pytest.raises(OtaError, match="--max-inline-mib"):
        plan_push(_request(tmp_path, source="inline", max_inline_mib=0))
    with pytest.raises(OtaError, match="--serve needs --mqtt-url"):
        plan_push(_request(tmp_path, source="serve"))
    with pytest.raises(PushUsageError, match="--retain") as retain:
        plan_push(_request(tmp_path, retain=True, out=tmp_path / "m.json"))
    assert retain.value.exit_code == 2
    broker = MqttConfig(enabled=True, url="mqtt://127.0.0.1:1883")
    with pytest.raises(PushUsageError, match="only the last chunk"):
        plan_push(_request(tmp_path, retain=True, source="inline", mqtt=broker))
    assert _request(tmp_path, mqtt=broker, mqtt_url="mqtt://other:1").broker() is broker


def test_serve_payload_serves_only_the_push(tmp_path: Path) -> None:
    request = _request(tmp_path, source="serve", out=tmp_path / "m.json", serve=ServeRequest())
    plan = plan_push(request)
    payload, server = start_payload(request, plan)
    assert isinstance(server, BundleServer)
    try:
        base = payload.base_url or ""
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base}/labels.txt", timeout=5) as response:
            assert response.read() == (request.bundle_dir / "labels.txt").read_bytes()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/../agent.yaml", timeout=5)
        assert server.served == ["labels.txt"]
    finally:
        server.stop()
