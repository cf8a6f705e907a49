"""Canonical JSON, Ed25519 sign/verify, the trust store and manifest validation."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.errors import OtaError, OtaRejected
from agent.ota.canonical import canonical_json
from agent.ota.manifest import (
    check_relative_path,
    key_id,
    manifest_sha256,
    sign_manifest,
)
from agent.ota.trust import TrustStore
from tests.helpers.ota_support import (
    copy_bundle,
    envelope_bytes,
    file_payload,
    manifest_for,
    new_key,
    write_trust,
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(max_size=12),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]  # pyright: ignore[reportUnknownVariableType]
    return value


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json, max_size=6), st.integers(0, 2**32))
def test_canonical_json_is_independent_of_key_order(doc: dict[str, Any], seed: int) -> None:
    first = canonical_json(doc)
    again = canonical_json(_shuffled(doc, random.Random(seed)))
    assert first == again
    assert json.loads(first.decode("utf-8")) == doc  # it is plain JSON
    assert canonical_json(json.loads(first.decode("utf-8"))) == first  # a fixed point


@settings(max_examples=50, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
def test_canonical_json_refuses_floats(value: float, key: str) -> None:
    with pytest.raises(OtaRejected) as info:
        canonical_json({"a": [1, {key: value}]})
    assert info.value.reason == "malformed"
    assert "float" in str(info.value)


def test_canonical_json_matches_jcs_examples() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'
    assert canonical_json({"é": "\u2028\n\x01"}) == '{"é":"\u2028\\n\\u0001"}'.encode()
    # keys sort by UTF-16 code units: U+1F600 (surrogates D83D...) before U+FB01
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2}).decode() == '{"\U0001f600":2,"\ufb01":1}'
    with pytest.raises(OtaRejected, match="outside"):
        canonical_json({"n": 2**60})
    with pytest.raises(OtaRejected, match="not a string"):
        canonical_json({1: "x"})


def test_sign_verify_round_trip_and_key_rotation(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    old, new = new_key(), new_key()
    trust = TrustStore.load(write_trust(tmp_path / "trust", old, new))
    assert set(trust.keys) == {key_id(old.public_key()), key_id(new.public_key())}
    manifest = manifest_for(bundle, 5, file_payload(bundle))
    envelope = sign_manifest(manifest, [new, old])
    signed = trust.verify(json.dumps(envelope).encode())
    assert signed.manifest == manifest
    assert signed.key_id == key_id(new.public_key())
    assert signed.sha256 == manifest_sha256(manifest.to_json())
    assert {f.path for f in manifest.files} == {"labels.txt", "model.onnx", "model.yaml"}
    # a device that only trusts the old key still accepts the doubly signed push
    only_old = TrustStore.load(write_trust(tmp_path / "trust-old", old))
    assert only_old.verify(envelope).key_id == key_id(old.public_key())


def test_wrong_key_is_unknown_key_and_tampering_is_bad_signature(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    trusted, stranger = new_key(), new_key()
    trust = TrustStore.load(write_trust(tmp_path / "trust", trusted))
    manifest = manifest_for(bundle, 2, file_payload(bundle))
    with pytest.raises(OtaRejected) as info:
        trust.verify(envelope_bytes(manifest, stranger))
    assert info.value.reason == "unknown_key"
    assert key_id(stranger.public_key()) in str(info.value)

    envelope = json.loads(envelope_bytes(manifest, trusted))
    envelope["manifest"]["version"] = 3
    with pytest.raises(OtaRejected) as info:
        trust.verify(envelope)
    assert info.value.reason == "bad_signature"

    envelope = json.loads(envelope_bytes(manifest, trusted))
    sig = bytearray(__import__("base64").b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 1
    envelope["signatures"][0]["sig"] = __import__("base64").b64encode(bytes(sig)).decode()
    with pytest.raises(OtaRejected) as info:
        trust.verify(envelope)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"manifest": {}, "signatures": [], "extra": 1}',
        b'{"manifest": {}, "signatures": []}',
        b'{"manifest": {}, "signatures": [{"key_id": "zz", "sig": ""}]}',
    ],
)
def test_malformed_envelopes(tmp_path: Path, payload: bytes) -> None:
    trust = TrustStore.load(write_trust(tmp_path / "trust", new_key()))
    with pytest.raises(OtaRejected) as info:
        trust.verify(payload)
    assert info.value.reason == "malformed"
    assert info.value.fix


def test_signed_but_invalid_manifest_is_malformed(tmp_path: Path) -> None:
    key = new_key()
    trust = TrustStore.load(write_trust(tmp_path / "trust", key))
    bundle = copy_bundle(tmp_path / "b")
    raw = manifest_for(bundle, 1, file_payload(bundle)).to_json()
    raw["surprise"] = True
    with pytest.raises(OtaRejected, match="surprise") as info:
        trust.verify(envelope_bytes(raw, key))
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("extra", ["model.onnx/weights.bin", "model.yaml/a/b"])
def test_a_file_that_is_also_a_directory_is_malformed(tmp_path: Path, extra: str) -> None:
    key = new_key()
    trust = TrustStore.load(write_trust(tmp_path / "trust", key))
    bundle = copy_bundle(tmp_path / "b")
    raw = manifest_for(bundle, 1, file_payload(bundle)).to_json()
    raw["files"].append({"path": extra, "sha256": "0" * 64, "size": 1})
    with pytest.raises(OtaRejected, match="also a directory") as info:
        trust.verify(envelope_bytes(raw, key))
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    "bad", ["../model.onnx", "/etc/passwd", "a/../../b", "./x", "a//b", "C:x", "a\\b", ".ota-x"]
)
def test_unsafe_paths_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(OtaRejected) as info:
        check_relative_path(bad)
    assert info.value.reason == "unsafe_path"
    key = new_key()
    trust = TrustStore.load(write_trust(tmp_path / "trust", key))
    bundle = copy_bundle(tmp_path / "b")
    raw = manifest_for(bundle, 1, file_payload(bundle)).to_json()
    raw["files"][0]["path"] = bad
    with pytest.raises(OtaRejected) as info:
        trust.verify(envelope_bytes(raw, key))
    assert info.value.reason == "unsafe_path"


def test_trust_store_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(OtaError, match="does not exist") as info:
        TrustStore.load(tmp_path / "missing")
    assert info.value.fix and "keygen" in info.value.fix
    (tmp_path / "empty").mkdir()
    with pytest.raises(OtaError, match="no public keys"):
        TrustStore.load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.pub").write_text("garbage")
    with pytest.raises(OtaError) as info:
        TrustStore.load(tmp_path / "bad")
    assert str(tmp_path / "bad" / "x.pub") in str(info.value)
