"""Device-side acceptance: every rejection reason, the persisted high-water mark, quota,
post-download bundle checks (ONNX external data)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import onnx
import pytest
from onnx import helper, numpy_helper

from agent.core.errors import OtaRejected
from agent.ota.manifest import Compat
from agent.ota.reasons import REJECT_REASONS
from agent.ota.store import VersionStore
from agent.ota.verify import check_bundle, parse_version
from tests.helpers.ota_support import (
    DEVICE,
    copy_bundle,
    envelope_bytes,
    file_payload,
    manifest_for,
    new_key,
    verifier,
    write_trust,
)


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    key = new_key()
    trust = write_trust(tmp_path / "trust", key)
    bundle = copy_bundle(tmp_path / "bundle")
    return key, trust, bundle


def _reject(fn, reason: str) -> OtaRejected:  # type: ignore[no-untyped-def]
    with pytest.raises(OtaRejected) as info:
        fn()
    assert info.value.reason == reason, str(info.value)
    assert info.value.reason in REJECT_REASONS
    assert info.value.fix
    return info.value


def test_accepts_a_good_push_for_device_and_group(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, trust, bundle = setup
    v = verifier(tmp_path / "state", trust)
    signed = v.accept(envelope_bytes(manifest_for(bundle, 1, file_payload(bundle)), key))
    assert signed.manifest.version == 1
    group_push = manifest_for(bundle, 2, file_payload(bundle), group="lab")
    assert v.accept(envelope_bytes(group_push, key)).manifest.target.group == "lab"


def test_wrong_target(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, trust, bundle = setup
    v = verifier(tmp_path / "state", trust)
    other = manifest_for(bundle, 1, file_payload(bundle), device="dev2")
    err = _reject(lambda: v.accept(envelope_bytes(other, key)), "wrong_target")
    assert DEVICE in str(err)
    other_group = manifest_for(bundle, 1, file_payload(bundle), group="attic")
    _reject(lambda: v.accept(envelope_bytes(other_group, key)), "wrong_target")


def test_expired(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, trust, bundle = setup
    v = verifier(tmp_path / "state", trust)
    old = manifest_for(
        bundle, 1, file_payload(bundle), now=int(time.time()) - 7200, expires_in_s=3600
    )
    err = _reject(lambda: v.accept(envelope_bytes(old, key)), "expired")
    assert "expired at" in str(err)


def test_replay_refused_before_and_after_restart(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, trust, bundle = setup
    state = tmp_path / "state"
    v = verifier(state, trust)
    push5 = envelope_bytes(manifest_for(bundle, 5, file_payload(bundle)), key)
    signed = v.accept(push5)
    v.store.advance(signed.manifest.name, signed.manifest.version)
    _reject(lambda: v.accept(push5), "not_newer")  # same version again
    push4 = envelope_bytes(manifest_for(bundle, 4, file_payload(bundle)), key)
    _reject(lambda: v.accept(push4), "not_newer")
    # a new process over the same state dir remembers the high-water mark
    v2 = verifier(state, trust)
    assert v2.store.high_water("shapes-cls") == 5
    err = _reject(lambda: v2.accept(push5), "not_newer")
    assert "--version 6" in (err.fix or "")
    _reject(lambda: v2.accept(push4), "not_newer")
    v2.accept(envelope_bytes(manifest_for(bundle, 6, file_payload(bundle)), key))
    assert json.loads((state / "ota" / "hwm.json").read_text()) == {"shapes-cls": 5}


@pytest.mark.parametrize(
    ("compat", "device", "needle"),
    [
        (Compat(profiles=["orin-nano-8gb"]), {}, "profile cpu"),
        (Compat(families=["orin-nano", "agx-orin"]), {}, "family cpu"),
        (Compat(min_tensorrt="10.3"), {}, "TensorRT"),
        (Compat(min_tensorrt="10.3"), {"tensorrt_version": "8.6.2"}, "8.6.2"),
        (Compat(min_jetpack="6.1"), {"jetpack_version": "6.0"}, "JetPack"),
        (Compat(), {"models": frozenset({"shapes-det"})}, "not served here"),
    ],
)
def test_incompatible(setup, tmp_path: Path, compat: Compat, device: dict, needle: str) -> None:  # type: ignore[no-untyped-def]
    key, trust, bundle = setup
    v = verifier(tmp_path / "state", trust, **device)
    m = manifest_for(bundle, 1, file_payload(bundle), compat=compat)
    err = _reject(lambda: v.accept(envelope_bytes(m, key)), "incompatible")
    assert needle in str(err)


def test_compatible_versions() -> None:
    assert parse_version("10.3.0") == parse_version("10.3") < parse_version("10.10")


def test_over_quota_and_over_max_bundle(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, trust, bundle = setup
    (bundle / "pad.bin").write_bytes(b"\0" * (2 * 1024 * 1024))
    v = verifier(tmp_path / "state", trust, quota_mib=1)
    m = manifest_for(bundle, 1, file_payload(bundle))
    err = _reject(lambda: v.accept(envelope_bytes(m, key)), "over_quota")
    assert "max_bundle_mib" in str(err)
    # within the per-bundle limit but the kept versions fill the quota
    v2 = verifier(tmp_path / "state2", trust, quota_mib=3)
    store: VersionStore = v2.store
    for version in (1, 2):
        d = store.new_staging("shapes-cls", version)
        (d / "blob").write_bytes(b"\0" * (1024 * 1024))
        store.install(d, "shapes-cls", version, {"manifest": {}})
        d = store.version_dir("shapes-cls", version)
        store.commit("shapes-cls", version, d, engine_sha256=None, artifact_dir=None)
    third = envelope_bytes(manifest_for(bundle, 3, file_payload(bundle)), key)
    err = _reject(lambda: v2.accept(third), "over_quota")
    assert "disk_quota_mib" in (err.fix or "")


def _external_model(path: Path, location: str) -> None:
    """A one-node ONNX model whose weight tensor is stored externally at ``location``."""
    weight = numpy_helper.from_array(__import__("numpy").ones((2, 2), "float32"), "w")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])],
        initializer=[weight],
    )
    onnx.save_model(helper.make_model(graph), str(path))


@pytest.mark.parametrize("location", ["../x", "/etc/passwd", "sub/../../x", "notlisted.bin"])
def test_external_data_outside_bundle(setup, tmp_path: Path, location: str) -> None:  # type: ignore[no-untyped-def]
    _key, _trust, bundle = setup
    _external_model(bundle / "model.onnx", location)
    m = manifest_for(bundle, 1, file_payload(bundle))
    err = _reject(lambda: check_bundle(bundle, m), "external_data_outside_bundle")
    assert "model.onnx" in str(err)


def test_external_data_inside_bundle_is_fine(setup) -> None:  # type: ignore[no-untyped-def]
    _key, _trust, bundle = setup
    _external_model(bundle / "model.onnx", "weights.bin")
    (bundle / "weights.bin").write_bytes(b"\0" * 16)
    check_bundle(bundle, manifest_for(bundle, 1, file_payload(bundle)))


def test_bundle_naming_another_model_is_malformed(setup) -> None:  # type: ignore[no-untyped-def]
    _key, _trust, bundle = setup
    text = (bundle / "model.yaml").read_text().replace("name: shapes-cls", "name: other")
    (bundle / "model.yaml").write_text(text)
    m = manifest_for(bundle, 1, file_payload(bundle))
    _reject(lambda: check_bundle(bundle, m), "malformed")
