"""Device-side acceptance of a push: who may send it, to whom, until when, for what device.

:meth:`Verifier.accept` runs, in order: signature (trust store) → target (fleet, device or one
of the device's groups) → expiry → version above the persisted high-water mark → compatibility
(profile, family, TensorRT, JetPack, model served here) → size limits and disk quota.

:func:`check_bundle` runs after the download, on the staged files: ``model.yaml`` validates and
names the same model, the ONNX and labels files are inside the bundle, and the ONNX keeps all
external data inside the bundle (listed, so hashed, in the manifest). The daemon touches only
the manifest, ``model.yaml``, paths, sizes and hashes: the ONNX file is parsed (to list its
external-data locations) in an isolated, memory-capped child, and everything else the model's
graph must satisfy is checked by ``prepare`` in the build child.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.agent import AgentConfig
from agent.config.device import DeviceProfile
from agent.core.errors import ConfigError, EdgeAgentError, ModelError, OtaReason, OtaRejected
from agent.engine.bundle import bundle_labels, read_bundle_files
from agent.engine.isolate.launch import run_isolated
from agent.engine.isolate.targets import external_locations_target
from agent.ota.manifest import Manifest
from agent.ota.store import VersionStore
from agent.ota.trust import SignedManifest, TrustStore

__all__ = ["DeviceFacts", "Verifier", "check_bundle", "onnx_external_locations", "parse_version"]

_MIB = 1024 * 1024
#: the ONNX inspection child's memory cap: this much plus INSPECT_PER_FILE_MIB per MiB of ONNX
INSPECT_BASE_MIB = 384
INSPECT_PER_FILE_MIB = 3
INSPECT_TIMEOUT_S = 120.0


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0"`` → ``(10, 3, 0)``; trailing zeros do not matter when comparing."""
    parts = [int(p) for p in text.strip().split(".") if p.strip().isdigit()]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True)
class DeviceFacts:
    """What the verifier knows about this device (passed in by the daemon)."""

    fleet: str
    device_id: str
    profile: str
    family: str
    groups: frozenset[str] = frozenset()
    tensorrt_version: str | None = None
    jetpack_version: str | None = None
    #: model names this device serves; empty = accept any model name
    models: frozenset[str] = field(default_factory=frozenset[str])

    @classmethod
    def from_config(
        cls,
        cfg: AgentConfig,
        profile: DeviceProfile,
        *,
        tensorrt_version: str | None = None,
        jetpack_version: str | None = None,
    ) -> DeviceFacts:
        """Facts from agent.yaml (fleet, device id, mqtt.group, models) and the resolved
        profile; the versions come from the backend / board detection."""
        return cls(
            fleet=cfg.fleet,
            device_id=cfg.device_id,
            profile=profile.name,
            family=profile.identity.family,
            groups=frozenset({cfg.mqtt.group}) if cfg.mqtt.group else frozenset(),
            tensorrt_version=tensorrt_version,
            jetpack_version=jetpack_version,
            models=frozenset(m.name for m in cfg.models),
        )


class Verifier:
    """Everything that is checked before a single byte of the bundle is fetched."""

    def __init__(
        self,
        trust: TrustStore,
        device: DeviceFacts,
        store: VersionStore,
        *,
        max_bundle_mib: int = 512,
        clock: Callable[[], float] = time.time,
    ):
        self.trust = trust
        self.device = device
        self.store = store
        self.max_bundle_bytes = max_bundle_mib * _MIB
        self.clock = clock

    def check_signature(self, envelope: bytes | Mapping[str, Any]) -> SignedManifest:
        return self.trust.verify(envelope)

    def check_target(self, manifest: Manifest) -> None:
        t, d = manifest.target, self.device
        ok = t.fleet == d.fleet and (
            (t.device is not None and t.device == d.device_id)
            or (t.group is not None and t.group in d.groups)
        )
        if not ok:
            who = f"device {t.device}" if t.device else f"group {t.group}"
            raise OtaRejected(
                f"push is for fleet {t.fleet} {who}; this is device {d.device_id} of fleet "
                f"{d.fleet} in groups {sorted(d.groups)}",
                reason=OtaReason.WRONG_TARGET,
                fix="push to this device's id or one of its groups (ota.groups in agent.yaml)",
            )

    def check_expiry(self, manifest: Manifest) -> None:
        now = int(self.clock())
        if now >= manifest.expires:
            raise OtaRejected(
                f"manifest for {manifest.name} v{manifest.version} expired at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(manifest.expires))} "
                f"(device clock {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))})",
                reason=OtaReason.EXPIRED,
                fix="push again with a new version and a later --expires-in; check the "
                "device clock (NTP) if it should not have expired",
            )

    def check_compat(self, manifest: Manifest) -> None:
        c, d = manifest.compat, self.device
        problems: list[str] = []
        if d.models and manifest.name not in d.models:
            problems.append(f"model {manifest.name} is not served here ({sorted(d.models)})")
        if c.profiles and d.profile not in c.profiles:
            problems.append(f"profile {d.profile} is not in {c.profiles}")
        if c.families and d.family not in c.families:
            problems.append(f"family {d.family} is not in {c.families}")
        for what, need, have in (
            ("TensorRT", c.min_tensorrt, d.tensorrt_version),
            ("JetPack", c.min_jetpack, d.jetpack_version),
        ):
            if need is None:
                continue
            if have is None:
                problems.append(f"needs {what} >= {need}; this device has none")
            elif parse_version(have) < parse_version(need):
                problems.append(f"needs {what} >= {need}; this device has {have}")
        if problems:
            raise OtaRejected(
                f"{manifest.name} v{manifest.version} is incompatible with this device: "
                + "; ".join(problems),
                reason=OtaReason.INCOMPATIBLE,
                fix="push a bundle made for this device (--profiles/--families/--min-* of "
                "`edge-agent push`), or target other devices",
            )

    def accept(
        self, envelope: bytes | Mapping[str, Any], *, resume: bool = False
    ) -> SignedManifest:
        """All checks before download; ``resume`` skips the high-water check (used when
        recovery resumes a version this device already accepted)."""
        signed = self.check_signature(envelope)
        m = signed.manifest
        self.check_target(m)
        self.check_expiry(m)
        if not resume:
            self.store.check_newer(m.name, m.version)
        self.check_compat(m)
        self.store.check_quota(m.name, m.total_size, self.max_bundle_bytes)
        return signed


def _external_problem(location: str, onnx_dir: Path, bundle_dir: Path, files: Iterable[str]) -> str:
    if not location:
        return "an external-data tensor has no location"
    if location.startswith("/") or "\\" in location or (len(location) > 1 and location[1] == ":"):
        return f"external data location {location!r} is absolute"
    if ".." in location.split("/"):
        return f"external data location {location!r} contains '..'"
    target = onnx_dir / location
    try:
        resolved = target.resolve()
        resolved.relative_to(bundle_dir.resolve())
    except (OSError, ValueError):
        return f"external data location {location!r} resolves outside the bundle"
    if target.is_symlink():
        return f"external data location {location!r} is a symlink"
    rel = resolved.relative_to(bundle_dir.resolve()).as_posix()
    if rel not in set(files):
        return f"external data file {location!r} is not listed (hashed) in the manifest"
    return ""


def onnx_external_locations(onnx_path: Path) -> list[str]:
    """The external-data locations of ``onnx_path``, read in an isolated child whose memory
    cap scales with the file's size; raises :class:`OtaRejected` (malformed) when the file is
    not a readable ONNX model or cannot be read within the cap."""
    size_mib = onnx_path.stat().st_size / _MIB
    try:
        outcome = run_isolated(
            external_locations_target,
            (str(onnx_path),),
            memory_cap_mib=int(INSPECT_BASE_MIB + INSPECT_PER_FILE_MIB * size_mib),
            timeout_s=INSPECT_TIMEOUT_S,
            what="ONNX inspection",
        )
    except EdgeAgentError as exc:
        raise OtaRejected(
            f"{onnx_path.name} is not a readable ONNX model: {exc}",
            reason=OtaReason.MALFORMED,
            fix="export the model again",
        ) from exc
    return [str(location) for location in outcome.value]


def check_bundle(bundle_dir: Path, manifest: Manifest) -> None:
    """Post-download checks on the staged bundle (raises :class:`OtaRejected`); the model is
    parsed only in an isolated child (:func:`onnx_external_locations`)."""
    try:
        files = read_bundle_files(bundle_dir)
        bundle_labels(files)
    except (ConfigError, ModelError) as exc:
        raise OtaRejected(
            f"pushed bundle is not a valid model bundle: {exc}",
            reason=OtaReason.MALFORMED,
            fix="check the bundle with `edge-agent build` before pushing it",
        ) from exc
    if files.config.name != manifest.name:
        raise OtaRejected(
            f"model.yaml names model {files.config.name!r} but the manifest {manifest.name!r}",
            reason=OtaReason.MALFORMED,
            fix="push the bundle under the name in its model.yaml",
        )
    listed = [f.path for f in manifest.files]
    for location in onnx_external_locations(files.onnx_path):
        problem = _external_problem(location, files.onnx_path.parent, bundle_dir, listed)
        if problem:
            raise OtaRejected(
                f"{files.config.onnx}: {problem}",
                reason=OtaReason.EXTERNAL_DATA_OUTSIDE_BUNDLE,
                fix="save the model with external data next to it "
                "(onnx.save_model(..., save_as_external_data=True, location='weights.bin')) "
                "and include that file in the bundle",
            )
