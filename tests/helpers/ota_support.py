"""Shared helpers for the OTA tests: real bundles, real keys, real signed envelopes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.fleet.push import bundle_files, make_manifest
from agent.ota.manifest import Compat, Manifest, Payload, sign_manifest
from agent.ota.store import VersionStore
from agent.ota.trust import TrustStore
from agent.ota.verify import DeviceFacts, Verifier
from tests.assets import CLS_BUNDLE

FLEET, DEVICE = "fleet1", "dev1"


def copy_bundle(dest: Path, *, heldout: bool = False) -> Path:
    """A fresh copy of the bundled shapes classifier (model.yaml, model.onnx, labels.txt);
    its 600-image labelled ``heldout/`` set only with ``heldout`` (manifest tests need none)."""
    ignore = None if heldout else shutil.ignore_patterns("heldout")
    shutil.copytree(CLS_BUNDLE, dest, ignore=ignore)
    (dest / "metrics.json").unlink(missing_ok=True)
    return dest


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_trust(directory: Path, *keys: Ed25519PrivateKey) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, key in enumerate(keys):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (directory / f"key{i}.pub").write_bytes(pem)
    return directory


def facts(**overrides: Any) -> DeviceFacts:
    base: dict[str, Any] = {
        "fleet": FLEET,
        "device_id": DEVICE,
        "profile": "cpu",
        "family": "cpu",
        "groups": frozenset({"lab"}),
    }
    base.update(overrides)
    return DeviceFacts(**base)


def manifest_for(
    bundle: Path,
    version: int,
    payload: Payload,
    *,
    device: str | None = DEVICE,
    group: str | None = None,
    compat: Compat | None = None,
    expires_in_s: int = 3600,
    now: int | None = None,
) -> Manifest:
    return make_manifest(
        bundle_files(bundle),
        name="shapes-cls",
        version=version,
        fleet=FLEET,
        device=None if group else device,
        group=group,
        payload=payload,
        compat=compat,
        expires_in_s=expires_in_s,
        now=now,
    )


def envelope_bytes(manifest: Manifest | dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    return json.dumps(sign_manifest(manifest, [key])).encode("utf-8")


def file_payload(bundle: Path) -> Payload:
    return Payload(kind="url", base_url=bundle.resolve().as_uri())


def verifier(
    state_dir: Path, trust_dir: Path, *, keep: int = 3, quota_mib: int = 64, **fact_kw: Any
) -> Verifier:
    store = VersionStore(state_dir, keep_versions=keep, disk_quota_mib=quota_mib)
    return Verifier(TrustStore.load(trust_dir), facts(**fact_kw), store, max_bundle_mib=quota_mib)


# The states of an update that goes all the way, in order.
HAPPY = [
    "received",
    "verified",
    "downloaded",
    "building",
    "validating",
    "activating",
    "probation",
    "active",
]
