"""Start-of-rollout preparation: copy the bundle, plan the waves, sign one manifest per device.

All the signing happens here, once, so the controller never keeps the private key: the
per-device envelopes go to the store with the rollout (``RolloutStore.create``). The bundle is
copied to ``<rollout_dir>/bundle/`` first and hashed from the copy, which is exactly what the
bundle server serves at ``base_url``; a later change of the operator's directory changes
nothing.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.errors import EdgeAgentError
from agent.core.logs import log_fields
from agent.engine.bundle import load_bundle
from agent.fleet.push import bundle_files, make_manifest, parse_duration
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.plan import plan_waves, select_targets
from agent.fleet.rollout.records import DeviceProgress, Rollout, Wave
from agent.fleet.rollout.spec import RolloutSpec
from agent.fleet.rollout.states import RolloutState
from agent.ota.manifest import Manifest, Payload, Target, manifest_sha256, sign_manifest
from agent.ota.trust import load_private_key

__all__ = ["BUNDLE_DIR", "PreparedRollout", "new_rollout_id", "prepare_rollout"]

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
_ID = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True)
class PreparedRollout:
    """A planned rollout and its signed envelopes (device id → compact JSON text)."""

    rollout: Rollout
    manifests: dict[str, str]


def new_rollout_id() -> str:
    return secrets.token_hex(6)


def copy_bundle_files(source: Path, rollout_dir: Path) -> dict[str, Path]:
    """Copy the bundle's files to ``<rollout_dir>/bundle/``; relative path → copied file."""
    files = bundle_files(source)
    dest = rollout_dir / BUNDLE_DIR
    if dest.exists():
        raise EdgeAgentError(
            "the rollout's bundle directory exists already",
            fix="use a new rollout id or remove the directory of the old attempt",
            path=dest,
        )
    staging = rollout_dir / f".{BUNDLE_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    copied: dict[str, Path] = {}
    for rel, path in files.items():
        target = staging.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied[rel] = dest.joinpath(*rel.split("/"))
    staging.rename(dest)
    return copied


def _sign_all(
    manifest: Manifest, fleet: str, devices: Sequence[str], key: Ed25519PrivateKey
) -> tuple[dict[str, str], dict[str, str]]:
    """Per device: the signed envelope text and its manifest's sha256."""
    texts: dict[str, str] = {}
    shas: dict[str, str] = {}
    for device in devices:
        targeted = manifest.model_copy(update={"target": Target(fleet=fleet, device=device)})
        envelope = sign_manifest(targeted, [key])
        texts[device] = json.dumps(envelope, separators=(",", ":"), sort_keys=True)
        shas[device] = manifest_sha256(envelope["manifest"])
    return texts, shas


def _rollout(
    rollout_id: str,
    spec: RolloutSpec,
    *,
    manifest: Manifest,
    waves: Sequence[tuple[str, ...]],
    shas: Mapping[str, str],
    base_url: str,
    now: float,
) -> Rollout:
    devices = {
        device: DeviceProgress(wave=index, sha256=shas[device])
        for index, wave in enumerate(waves)
        for device in wave
    }
    return Rollout(
        id=rollout_id,
        fleet=manifest.target.fleet,
        model=manifest.name,
        version=spec.version,
        spec=spec,
        state=RolloutState.PLANNED,
        created_at=now,
        updated_at=now,
        expires_at=float(manifest.expires),
        base_url=base_url,
        waves=tuple(Wave(i, tuple(w)) for i, w in enumerate(waves)),
        devices=devices,
    )


def prepare_rollout(
    spec: RolloutSpec,
    *,
    fleet: str,
    key_path: Path,
    devices: Sequence[DeviceRecord],
    rollout_dir: Path,
    base_url: str,
    rollout_id: str | None = None,
    now: float,
) -> PreparedRollout:
    """Check the bundle and the key, plan the waves, copy the bundle under ``rollout_dir``
    (served by the caller at ``base_url``) and sign one manifest per target device."""
    rid = rollout_id or new_rollout_id()
    if not _ID.fullmatch(rid):
        raise EdgeAgentError(f"{rid!r} is not a rollout id", fix="use 12 lower-case hex digits")
    bundle = load_bundle(spec.bundle)
    waves = plan_waves(spec, select_targets(spec, devices, fleet))
    targets = [d for wave in waves for d in wave]
    key = load_private_key(key_path)  # a bad key fails before anything is copied
    files = copy_bundle_files(spec.bundle, rollout_dir)
    manifest = make_manifest(
        files,
        name=bundle.config.name,
        version=spec.version,
        fleet=fleet,
        device=targets[0],
        payload=Payload(kind="url", base_url=base_url.rstrip("/")),
        expires_in_s=parse_duration(spec.expires),
        now=int(now),
    )
    texts, shas = _sign_all(manifest, fleet, targets, key)
    rollout = _rollout(
        rid, spec, manifest=manifest, waves=waves, shas=shas, base_url=base_url, now=now
    )
    log.info(
        "rollout prepared",
        extra=log_fields(
            rollout=rid,
            fleet=fleet,
            model=manifest.name,
            version=spec.version,
            devices=len(targets),
            waves=[len(w) for w in waves],
        ),
    )
    return PreparedRollout(rollout, texts)
