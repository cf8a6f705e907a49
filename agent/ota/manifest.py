"""Signed OTA manifests: the manifest model, Ed25519 signing and verification (over the
canonical JSON of :mod:`agent.ota.canonical`).

An envelope, as published on ``edge/<fleet>/<device>/ota`` or ``edge/<fleet>/group/<g>/ota``::

    {"manifest": {...}, "signatures": [{"key_id": "<16 hex>", "sig": "<base64>"}]}

Each signature is Ed25519 over ``canonical_json(manifest)``; ``key_id`` is the first 16 hex
digits of the sha256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import posixpath
from collections.abc import Mapping
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, ValidationError, field_validator, model_validator

from agent.config.base import Strict, at
from agent.core.errors import OtaReason, OtaRejected
from agent.ota.canonical import MAX_SAFE_INT, canonical_json

__all__ = [
    "CHUNK_KIND",
    "FORMAT",
    "RESERVED_PREFIX",
    "Compat",
    "FileEntry",
    "Golden",
    "GoldenCase",
    "Manifest",
    "Payload",
    "Signature",
    "Target",
    "check_relative_path",
    "decode_signature",
    "key_id",
    "manifest_sha256",
    "parse_envelope",
    "sign_manifest",
    "validate_manifest",
]

FORMAT = 1
CHUNK_KIND = "chunk"
#: File names the device keeps for itself inside an installed version directory.
RESERVED_PREFIX = ".ota"
_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_SHA256 = r"^[0-9a-f]{64}$"
_DECIMAL = r"^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
_VERSION = r"^\d+(\.\d+){0,3}$"


def manifest_sha256(manifest: Mapping[str, Any]) -> str:
    """Hex sha256 of the canonical manifest: names one push (chunks refer to it)."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short id of a public key: first 16 hex digits of sha256(raw 32-byte key)."""

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --------------------------------------------------------------------------- paths


def check_relative_path(path: str, what: str = "file path") -> str:
    """Return ``path`` when it is a plain relative POSIX path inside a bundle, else raise
    :class:`OtaRejected` (reason ``unsafe_path``)."""
    problem = None
    if not path:
        problem = "is empty"
    elif "\\" in path or "\0" in path:
        problem = "contains a backslash or NUL"
    elif path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        problem = "is absolute"
    elif any(part in ("..", ".", "") for part in path.split("/")):
        problem = "has '..', '.' or empty components"
    elif posixpath.normpath(path) != path:
        problem = "is not normalized"
    elif path.split("/", maxsplit=1)[0].startswith(RESERVED_PREFIX):
        problem = f"starts with the reserved prefix '{RESERVED_PREFIX}'"
    if problem:
        raise OtaRejected(
            f"{what} {path!r} {problem}",
            reason=OtaReason.UNSAFE_PATH,
            fix="list bundle files by plain relative paths inside the bundle directory",
        )
    return path


# --------------------------------------------------------------------------- the model


def _ancestors(path: str) -> list[str]:
    """``"a/b/c"`` → ``["a", "a/b"]``."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class FileEntry(Strict):
    path: str = Field(
        title="Path", description="Relative POSIX path inside the bundle (no '..', not absolute)."
    )
    sha256: str = Field(pattern=_SHA256, title="SHA-256", description="Hex sha256 of the file.")
    size: int = Field(ge=0, le=MAX_SAFE_INT, title="Size", description="Size in bytes.")


class Compat(Strict):
    profiles: list[str] = Field(
        default_factory=list,
        title="Profiles",
        description="Device profile names this bundle is for; empty = any.",
    )
    families: list[str] = Field(
        default_factory=list,
        title="Families",
        description="Board families (orin-nano, orin-nx, agx-orin, agx-thor, cpu); empty = any.",
    )
    min_tensorrt: str | None = Field(
        default=None,
        pattern=_VERSION,
        title="Minimum TensorRT",
        description="Lowest TensorRT version (dotted) the device must have; null = no need.",
    )
    min_jetpack: str | None = Field(
        default=None,
        pattern=_VERSION,
        title="Minimum JetPack",
        description="Lowest JetPack version (dotted) the device must have; null = no need.",
    )


class GoldenCase(Strict):
    input: str = Field(title="Input", description="Bundle path of an .npy input tensor.")
    expected: str = Field(title="Expected", description="Bundle path of the expected .npy output.")


class Golden(Strict):
    input_name: str = Field(title="Input tensor", description="ONNX input the inputs feed.")
    output_name: str | None = Field(
        default=None, title="Output tensor", description="Output compared (default: the first)."
    )
    cases: list[GoldenCase] = Field(
        min_length=1, title="Cases", description="Golden input/expected-output pairs."
    )
    atol: str = Field(
        default="0.05", pattern=_DECIMAL, title="Absolute tolerance", description="Decimal."
    )
    rtol: str = Field(
        default="0.05", pattern=_DECIMAL, title="Relative tolerance", description="Decimal."
    )


class Payload(Strict):
    kind: Literal["url", "inline"] = Field(
        title="Kind", description="url: download files from base_url; inline: MQTT chunks."
    )
    base_url: str | None = Field(
        default=None,
        title="Base URL",
        description="http(s):// or file:// URL; a file is fetched from <base_url>/<path>.",
    )
    chunk_size: int | None = Field(
        default=None,
        ge=1024,
        le=64 * 1024 * 1024,
        title="Chunk size",
        description="Bytes per inline chunk (the last chunk of a file may be shorter).",
    )

    @model_validator(mode="after")
    def _kind(self) -> Payload:
        if self.kind == "url":
            if not self.base_url or not self.base_url.startswith(
                ("http://", "https://", "file://")
            ):
                raise ValueError(at("base_url", "a url payload needs an http(s):// or file:// URL"))
        elif self.chunk_size is None:
            raise ValueError(at("chunk_size", "an inline payload needs chunk_size"))
        return self

    def chunk_count(self, size: int) -> int:
        """Chunks an inline file of ``size`` bytes is sent in (an empty file is one chunk)."""
        assert self.chunk_size is not None
        return max(1, math.ceil(size / self.chunk_size))


class Target(Strict):
    fleet: str = Field(pattern=_NAME, title="Fleet", description="Fleet the push is for.")
    device: str | None = Field(
        default=None, pattern=_NAME, title="Device", description="One device id."
    )
    group: str | None = Field(default=None, pattern=_NAME, title="Group", description="A group.")

    @model_validator(mode="after")
    def _one(self) -> Target:
        if (self.device is None) == (self.group is None):
            raise ValueError(at("device", "set exactly one of device and group"))
        return self


class Manifest(Strict):
    """What the fleet signs: one model version, its files and where to get them."""

    format: Literal[1] = Field(default=1, title="Format", description="Manifest format version.")
    name: str = Field(pattern=_NAME, title="Model name", description="Model (bundle) name.")
    version: int = Field(
        ge=1, le=MAX_SAFE_INT, title="Version", description="Monotonic integer version."
    )
    created: int = Field(ge=0, title="Created", description="Signing time, epoch seconds (UTC).")
    expires: int = Field(ge=0, title="Expires", description="Refused after this, epoch seconds.")
    target: Target = Field(title="Target", description="Fleet and device or group.")
    files: list[FileEntry] = Field(
        min_length=1, title="Files", description="Every file of the bundle with hash and size."
    )
    compat: Compat = Field(
        default_factory=Compat, title="Compatibility", description="Where it may run."
    )
    golden: Golden | None = Field(
        default=None, title="Golden checks", description="Expected outputs for golden inputs."
    )
    payload: Payload = Field(title="Payload", description="Where the file bytes come from.")

    @field_validator("files")
    @classmethod
    def _files(cls, files: list[FileEntry]) -> list[FileEntry]:
        seen: set[str] = set()
        for entry in files:
            if entry.path in seen:
                raise ValueError(f"file {entry.path!r} is listed twice")
            seen.add(entry.path)
        parents = {p.rsplit("/", 1)[0] for p in seen if "/" in p}
        parents |= {d for p in parents for d in _ancestors(p)}
        clash = sorted(seen & parents)
        if clash:
            raise ValueError(f"{clash[0]!r} is listed as a file and is also a directory of files")
        return files

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.expires <= self.created:
            raise ValueError(at("expires", "must be after created"))
        paths = {f.path for f in self.files}
        if "model.yaml" not in paths:
            raise ValueError(at("files", "the bundle needs a model.yaml"))
        if self.golden is not None:
            for case in self.golden.cases:
                for p in (case.input, case.expected):
                    if p not in paths:
                        raise ValueError(at("golden", f"{p!r} is not one of the files"))
        return self

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Signature(Strict):
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", title="Key id", description="Signer key id.")
    sig: str = Field(title="Signature", description="Base64 Ed25519 signature.")


# --------------------------------------------------------------------------- sign / parse


def sign_manifest(
    manifest: Manifest | Mapping[str, Any], keys: list[Ed25519PrivateKey]
) -> dict[str, Any]:
    """An envelope with one signature per key over the canonical manifest."""
    body = manifest.to_json() if isinstance(manifest, Manifest) else dict(manifest)
    data = canonical_json(body)
    sigs = [
        {"key_id": key_id(k.public_key()), "sig": base64.b64encode(k.sign(data)).decode("ascii")}
        for k in keys
    ]
    return {"manifest": body, "signatures": sigs}


def _malformed(message: str, fix: str = "re-create the push with `edge-agent push`") -> OtaRejected:
    return OtaRejected(message, reason=OtaReason.MALFORMED, fix=fix)


def parse_envelope(data: bytes | Mapping[str, Any]) -> tuple[dict[str, Any], list[Signature]]:
    """Split an envelope into (raw manifest, signatures) without trusting anything yet.

    Raises :class:`OtaRejected` (``malformed``) when it is not an envelope."""
    if isinstance(data, (bytes, bytearray)):
        try:
            doc: Any = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _malformed(f"OTA message is not UTF-8 JSON: {exc}") from exc
    else:
        doc = data
    if not isinstance(doc, dict) or set(doc) != {"manifest", "signatures"}:  # pyright: ignore[reportUnknownArgumentType]
        raise _malformed('an envelope is {"manifest": {...}, "signatures": [...]} and nothing else')
    raw: Any = doc["manifest"]
    sigs: Any = doc["signatures"]
    if not isinstance(raw, dict) or not isinstance(sigs, list) or not sigs:
        raise _malformed("manifest must be an object and signatures a non-empty list")
    try:
        signatures = [Signature.model_validate(s) for s in sigs]  # pyright: ignore[reportUnknownVariableType]
    except ValidationError as exc:
        raise _malformed(f"bad signature entry: {exc.errors()[0]['msg']}") from exc
    return raw, signatures  # pyright: ignore[reportUnknownVariableType]


def validate_manifest(raw: Mapping[str, Any]) -> Manifest:
    """The :class:`Manifest` model of a raw manifest; paths are checked first (unsafe_path)."""
    files: Any = raw.get("files")
    if isinstance(files, list):
        for entry in files:  # pyright: ignore[reportUnknownVariableType]
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):  # pyright: ignore[reportUnknownMemberType]
                check_relative_path(entry["path"])  # pyright: ignore[reportUnknownArgumentType]
    golden: Any = raw.get("golden")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise _malformed(
            f"manifest field {loc}: {first['msg']}",
            fix="fix the manifest (edge-agent push writes a valid one)",
        ) from exc
    if golden is not None and manifest.golden is not None:
        for case in manifest.golden.cases:
            check_relative_path(case.input, "golden input")
            check_relative_path(case.expected, "golden expected output")
    return manifest


def decode_signature(sig: Signature) -> bytes:
    try:
        return base64.b64decode(sig.sig, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OtaRejected(
            f"signature of key {sig.key_id} is not base64",
            reason=OtaReason.BAD_SIGNATURE,
            fix="re-sign the manifest",
        ) from exc
