"""The device's trust store: a directory of Ed25519 public keys (PEM), several allowed.

A push is accepted when at least one of its signatures verifies with a trusted key. Keys are
named by :func:`agent.ota.manifest.key_id`; rotating means adding the new key's file, pushing
with both keys for a while, then removing the old file.

Also: loading a private key for the fleet side (``edge-agent push``); key generation is in
:mod:`agent.fleet.keygen`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.core.errors import OtaError, OtaReason, OtaRejected
from agent.core.logs import log_fields
from agent.ota.canonical import canonical_json
from agent.ota.manifest import (
    Manifest,
    Signature,
    decode_signature,
    key_id,
    manifest_sha256,
    parse_envelope,
    validate_manifest,
)

__all__ = [
    "SignedManifest",
    "TrustStore",
    "load_private_key",
    "load_public_key",
]

log = logging.getLogger(__name__)

KEY_SUFFIXES = (".pem", ".pub")


@dataclass(frozen=True)
class SignedManifest:
    """A manifest whose signature verified. ``raw`` is the manifest as signed."""

    manifest: Manifest
    raw: dict[str, Any]
    signatures: tuple[Signature, ...]
    sha256: str
    key_id: str

    def envelope(self) -> dict[str, Any]:
        return {"manifest": self.raw, "signatures": [s.model_dump() for s in self.signatures]}


def _load_key(
    path: Path, load: Callable[[bytes], object], kind: type, *, what: str, reason: str, fix: str
) -> Any:
    """A PEM key from ``path`` via ``load``, refused unless it is a ``kind``."""
    try:
        key = load(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise OtaError(
            f"cannot read an Ed25519 {what} key: {exc}", reason=reason, fix=fix, path=path
        ) from exc
    if not isinstance(key, kind):
        raise OtaError(
            f"the key is a {type(key).__name__}, not Ed25519",
            reason=reason,
            fix="make one with `edge-agent keygen`",
            path=path,
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (SubjectPublicKeyInfo)."""

    return _load_key(
        path,
        serialization.load_pem_public_key,
        Ed25519PublicKey,
        what="public",
        reason=OtaReason.TRUST_STORE,
        fix="put PEM public keys written by `edge-agent keygen` (NAME.pub) there",
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from a PEM file (PKCS#8)."""

    return _load_key(
        path,
        lambda data: serialization.load_pem_private_key(data, password=None),
        Ed25519PrivateKey,
        what="private",
        reason=OtaReason.SIGNING_KEY,
        fix="pass the NAME.key file written by `edge-agent keygen` (unencrypted PEM)",
    )


class TrustStore:
    """Public keys from ``directory`` (``*.pem`` / ``*.pub``), keyed by key id."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey], directory: Path | None = None):
        self.keys = dict(keys)
        self.directory = directory

    @classmethod
    def load(cls, directory: Path) -> TrustStore:
        directory = Path(directory)
        if not directory.is_dir():
            raise OtaError(
                "trust directory does not exist",
                reason=OtaReason.TRUST_STORE,
                fix="create it and copy the fleet's public key (NAME.pub from `edge-agent "
                "keygen`) into it, or set ota.trust_dir",
                path=directory,
            )
        keys: dict[str, Ed25519PublicKey] = {}
        for path in sorted(directory.iterdir()):
            if path.suffix in KEY_SUFFIXES and path.is_file():
                key = load_public_key(path)
                keys[key_id(key)] = key
        if not keys:
            raise OtaError(
                "no public keys in the trust directory",
                reason=OtaReason.TRUST_STORE,
                fix="copy the fleet's NAME.pub (from `edge-agent keygen`) into it",
                path=directory,
            )
        log.info("trust store loaded", extra=log_fields(directory=str(directory), keys=list(keys)))
        return cls(keys, directory)

    def verify(self, envelope: bytes | Mapping[str, Any]) -> SignedManifest:
        """Check the envelope's signatures, then validate its manifest.

        Raises :class:`OtaRejected`: ``malformed`` (not an envelope / invalid manifest),
        ``unknown_key`` (no signature by a trusted key), ``bad_signature`` (a trusted key's
        signature does not verify), ``unsafe_path`` (a file path leaves the bundle).
        """

        raw, signatures = parse_envelope(envelope)
        data = canonical_json(raw)
        trusted = [s for s in signatures if s.key_id in self.keys]
        if not trusted:
            raise OtaRejected(
                "no signature by a trusted key (signed by "
                + ", ".join(s.key_id for s in signatures)
                + f"; trusted: {', '.join(sorted(self.keys))})",
                reason=OtaReason.UNKNOWN_KEY,
                fix="sign with a fleet key whose public half is in the device's trust "
                "directory, or add that public key to it",
                path=self.directory,
            )
        for sig in trusted:
            try:
                self.keys[sig.key_id].verify(decode_signature(sig), data)
            except InvalidSignature:
                continue
            manifest = validate_manifest(raw)
            return SignedManifest(
                manifest=manifest,
                raw=raw,
                signatures=tuple(signatures),
                sha256=manifest_sha256(raw),
                key_id=sig.key_id,
            )
        raise OtaRejected(
            f"signature by key {trusted[0].key_id} does not match the manifest "
            "(altered in transit or signed over other bytes)",
            reason=OtaReason.BAD_SIGNATURE,
            fix="re-sign the manifest with `edge-agent push`; do not edit it after signing",
        )
