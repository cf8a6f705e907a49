"""Sign and publish one push (``edge-agent push``): plan → payload → sign → write/publish.

* :func:`plan_push` loads the bundle and the signing key, lists the files (plus golden pairs),
  picks the topic and refuses requests that cannot work, before anything is served or sent.
* :func:`start_payload` says how devices get the files: a URL, a local :class:`BundleServer`
  (``--serve``), or inline MQTT chunks.
* :func:`sign_and_publish` hashes and signs the manifest, writes the envelope (``--out``) and
  publishes it at QoS 1 (plus the inline chunks), returning a :class:`PushResult`.

With ``retain`` the manifest stays on the broker (``edge/<fleet>/<device>/ota``), so a device
that is offline now takes it when it connects, until the manifest expires. A device ignores a
manifest that is not newer than what it runs, so a retained push already applied is harmless;
to clear it, publish an empty retained message to the same topic (``mosquitto_pub -r -n -t
TOPIC``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.comms.mqtt import publish_once
from agent.config.broker import MqttConfig
from agent.core.fsutil import atomic_write_json
from agent.engine.bundle import ModelBundle, load_bundle
from agent.fleet.push import (
    PushUsageError,
    bundle_files,
    chunk_messages,
    golden_files,
    make_manifest,
    ota_topic,
    parse_duration,
)
from agent.fleet.server import BundleServer
from agent.ota.manifest import Compat, Golden, Manifest, Payload, manifest_sha256, sign_manifest
from agent.ota.trust import load_private_key

__all__ = [
    "GoldenRequest",
    "PushPlan",
    "PushRequest",
    "PushResult",
    "ServeRequest",
    "plan_push",
    "sign_and_publish",
    "start_payload",
]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class GoldenRequest:
    """``--golden DIR``: NAME.input.npy / NAME.expected.npy pairs and their tolerances."""

    directory: Path
    atol: str
    rtol: str


@dataclass(frozen=True)
class ServeRequest:
    """``--serve``: where the local bundle server listens and the host devices use."""

    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str | None = None


@dataclass(frozen=True)
class PushRequest:
    """Everything the operator asked for; ``source`` says how devices get the files."""

    bundle_dir: Path
    key_path: Path
    version: int
    fleet: str
    device: str | None
    group: str | None
    source: Literal["url", "serve", "inline"]
    url: str | None = None
    serve: ServeRequest = field(default_factory=ServeRequest)
    expires_in: str = "24h"
    compat: Compat = field(default_factory=Compat)
    golden: GoldenRequest | None = None
    chunk_kib: int = 64
    max_inline_mib: int = 16
    mqtt_url: str | None = None
    out: Path | None = None
    mqtt: MqttConfig | None = None
    """The broker (wins over ``mqtt_url``, which is a plain URL without credentials)."""
    retain: bool = False

    def broker(self) -> MqttConfig | None:
        """The broker to publish to, or None (``--out`` only)."""
        if self.mqtt is not None:
            return self.mqtt
        return MqttConfig(enabled=True, url=self.mqtt_url) if self.mqtt_url else None


@dataclass(frozen=True)
class PushPlan:
    """A checked request: the bundle, the key, the files to send and the topic."""

    bundle: ModelBundle
    key: Ed25519PrivateKey
    files: dict[str, Path]
    golden: Golden | None
    topic: str
    total_size: int


@dataclass(frozen=True)
class PushResult:
    """The signed push and how many MQTT messages carried it."""

    manifest: Manifest
    envelope: dict[str, Any]
    topic: str
    published: int
    retained: bool = False

    @property
    def sha256(self) -> str:
        """The manifest's hash, as devices report it in their OTA record."""
        return manifest_sha256(self.envelope["manifest"])

    def summary(self, out: str | None) -> dict[str, Any]:
        """What ``edge-agent push`` prints when it published or wrote the envelope."""
        manifest, payload = self.manifest, self.manifest.payload
        return {
            "model": manifest.name,
            "version": manifest.version,
            "topic": self.topic,
            "manifest_sha256": self.sha256,
            "files": len(manifest.files),
            "bytes": manifest.total_size,
            "payload": payload.kind,
            "base_url": payload.base_url,
            "expires": manifest.expires,
            "published_messages": self.published,
            "retained": self.retained,
            "out": out,
        }


def _with_golden(bundle: ModelBundle, files: dict[str, Path], request: GoldenRequest) -> Golden:
    """Add the golden pairs to ``files``; the golden check the device runs after its build."""
    extra, cases = golden_files(request.directory)
    clash = sorted(set(extra) & set(files))
    if clash:
        raise PushUsageError(
            f"golden files clash with bundle files {clash}",
            fix="remove the bundle's own golden/ folder or rename the golden files",
        )
    files.update(extra)
    return Golden(
        input_name=bundle.config.input.name,
        output_name=bundle.config.output.name,
        cases=cases,
        atol=request.atol,
        rtol=request.rtol,
    )


def _check_request(request: PushRequest, total_size: int) -> None:
    if request.source == "inline" and total_size > request.max_inline_mib * _MIB:
        raise PushUsageError(
            f"bundle is {total_size / _MIB:.1f} MiB, above --max-inline-mib "
            f"{request.max_inline_mib}",
            fix="serve it with --url or --serve instead of --inline",
        )
    broker = request.broker()
    if request.source == "serve" and broker is None and request.out is None:
        raise PushUsageError(
            "--serve needs --mqtt-url (or --out) so that devices learn about the push",
            fix="add --mqtt-url mqtt://broker:1883 or --out manifest.json",
        )
    if request.retain and (broker is None or request.source == "inline"):
        raise PushUsageError(
            "--retain keeps a manifest fetched by URL on the broker; it needs --mqtt-url and "
            "cannot be used with --inline (only the last chunk would be kept)",
            fix="use --url or --serve with --mqtt-url, or drop --retain",
        )


def plan_push(request: PushRequest) -> PushPlan:
    """Load and check everything a push needs; raises :class:`OtaError` on a bad request."""
    bundle = load_bundle(request.bundle_dir)
    key = load_private_key(request.key_path)
    files = bundle_files(request.bundle_dir)
    golden = None if request.golden is None else _with_golden(bundle, files, request.golden)
    total = sum(p.stat().st_size for p in files.values())
    topic = ota_topic(request.fleet, device=request.device, group=request.group)
    _check_request(request, total)
    return PushPlan(bundle, key, files, golden, topic, total)


def start_payload(request: PushRequest, plan: PushPlan) -> tuple[Payload, BundleServer | None]:
    """How devices get the files; with ``--serve`` a started server the caller stops."""
    if request.source == "serve":
        serve = request.serve
        server = BundleServer(
            plan.files, host=serve.host, port=serve.port, advertise_host=serve.advertise_host
        ).start()
        return Payload(kind="url", base_url=server.base_url), server
    if request.source == "inline":
        return Payload(kind="inline", chunk_size=request.chunk_kib * 1024), None
    return Payload(kind="url", base_url=request.url), None


def _publish(
    mqtt: MqttConfig,
    plan: PushPlan,
    manifest: Manifest,
    envelope: dict[str, Any],
    data: bytes,
    *,
    retain: bool,
) -> int:
    publish_once(mqtt, plan.topic, data, qos=1, retain=retain)
    published = 1
    if manifest.payload.kind == "inline":
        for chunk in chunk_messages(manifest, envelope["manifest"], plan.files):
            publish_once(mqtt, plan.topic, chunk, qos=1)
            published += 1
    return published


def sign_and_publish(request: PushRequest, plan: PushPlan, payload: Payload) -> PushResult:
    """Hash and sign the manifest; write it to ``request.out`` and publish it when asked."""
    manifest = make_manifest(
        plan.files,
        name=plan.bundle.config.name,
        version=request.version,
        fleet=request.fleet,
        device=request.device,
        group=request.group,
        payload=payload,
        expires_in_s=parse_duration(request.expires_in),
        compat=request.compat,
        golden=plan.golden,
    )
    envelope = sign_manifest(manifest, [plan.key])
    data = json.dumps(envelope, separators=(",", ":")).encode("utf-8")
    if request.out is not None:
        atomic_write_json(request.out, envelope)
    published = 0
    broker = request.broker()
    if broker is not None:
        published = _publish(broker, plan, manifest, envelope, data, retain=request.retain)
    return PushResult(manifest, envelope, plan.topic, published, request.retain and published > 0)
