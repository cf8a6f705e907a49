"""Preparing a rollout: the bundle copy, one signed manifest per device, verified by the
device-side trust store and aimed at that device only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.core.errors import EdgeAgentError, OtaError
from agent.fleet.keygen import generate_keypair
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout import BUNDLE_DIR, RolloutState, parse_spec, prepare_rollout
from agent.ota.manifest import manifest_sha256
from agent.ota.trust import TrustStore
from tests.helpers.ota_support import copy_bundle

FLEET = "prod"
NOW = 1_760_000_000.0


def _setup(tmp_path: Path) -> tuple[Path, Path, list[DeviceRecord]]:
    bundle = copy_bundle(tmp_path / "src")
    pair = generate_keypair(tmp_path / "keys", "ops")
    devices = [
        DeviceRecord(fleet=FLEET, device=f"cam-{i}", first_seen=0.0, last_seen=0.0)
        for i in range(3)
    ]
    return bundle, pair.private_key, devices


def test_each_device_gets_its_own_verified_manifest(tmp_path: Path) -> None:
    bundle, key, devices = _setup(tmp_path)
    spec = parse_spec({"bundle": str(bundle), "version": 7, "canary": "1", "expires": "2h"})
    prepared = prepare_rollout(
        spec,
        fleet=FLEET,
        key_path=key,
        devices=devices,
        rollout_dir=tmp_path / "r1",
        base_url="http://127.0.0.1:8080/r1/",
        rollout_id="00112233aabb",
        now=NOW,
    )
    rollout = prepared.rollout
    assert rollout.id == "00112233aabb" and rollout.state is RolloutState.PLANNED
    assert rollout.model == "shapes-cls" and rollout.version == 7
    assert rollout.expires_at == NOW + 7200 and [len(w.devices) for w in rollout.waves] == [1, 2]
    trust = TrustStore.load(tmp_path / "keys")
    for name in ("cam-0", "cam-1", "cam-2"):
        text = prepared.manifests[name]
        signed = trust.verify(text.encode("utf-8"))
        manifest = signed.manifest
        assert manifest.target.device == name and manifest.target.fleet == FLEET
        assert manifest.version == 7 and manifest.name == "shapes-cls"
        assert manifest.payload.base_url == "http://127.0.0.1:8080/r1"
        assert rollout.devices[name].sha256 == signed.sha256
        assert signed.sha256 == manifest_sha256(json.loads(text)["manifest"])
        for entry in manifest.files:
            assert (tmp_path / "r1" / BUNDLE_DIR / entry.path).stat().st_size == entry.size
    assert len({p.sha256 for p in rollout.devices.values()}) == 3
    assert ", " not in prepared.manifests["cam-0"]  # compact JSON text


def test_refusals_before_anything_is_copied(tmp_path: Path) -> None:
    bundle, key, devices = _setup(tmp_path)
    common = {"fleet": FLEET, "devices": devices, "base_url": "http://h/", "now": NOW}
    spec = parse_spec({"bundle": str(bundle), "version": 2, "target": "devices:cam-1,ghost"})
    with pytest.raises(EdgeAgentError, match="ghost"):
        prepare_rollout(spec, key_path=key, rollout_dir=tmp_path / "a", **common)  # type: ignore[arg-type]
    good = parse_spec({"bundle": str(bundle), "version": 2})
    with pytest.raises(OtaError, match="private"):
        prepare_rollout(good, key_path=bundle / "model.yaml", rollout_dir=tmp_path / "b", **common)  # type: ignore[arg-type]
    with pytest.raises(EdgeAgentError, match="rollout id"):
        prepare_rollout(
            good,
            key_path=key,
            rollout_dir=tmp_path / "c",
            rollout_id="XYZ",
            **common,  # type: ignore[arg-type]
        )
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))
    prepare_rollout(good, key_path=key, rollout_dir=tmp_path / "d", **common)  # type: ignore[arg-type]
    with pytest.raises(EdgeAgentError, match="exists already"):
        prepare_rollout(good, key_path=key, rollout_dir=tmp_path / "d", **common)  # type: ignore[arg-type]
