"""The device's trust store: a directory of Ed25519 public keys (PEM), several allowed.

A push is accepted when at least one of its signatures verifies with a trusted key. Keys are
named by :func:`agent.ota.manifest.key_id`; rotating means adding the new key's file, pushing
with both keys for a while, then removing the old file.

Also: key generation and loading for the fleet side (``edge-agent keygen`` / ``push``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import OtaError, OtaRejected
from agent.core.logs import log_fields
from agent.ota.manifest import (
    Manifest,
    Signature,
    canonical_json,
    decode_signature,
    key_id,
    manifest_sha256,
    parse_envelope,
    validate_manifest,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "SignedManifest",
    "TrustStore",
    "generate_keypair",
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
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return _load_key(
        path,
        serialization.load_pem_public_key,
        Ed25519PublicKey,
        what="public",
        reason="trust_store",
        fix="put PEM public keys written by `edge-agent keygen` (NAME.pub) there",
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from a PEM file (PKCS#8)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return _load_key(
        path,
        lambda data: serialization.load_pem_private_key(data, password=None),
        Ed25519PrivateKey,
        what="private",
        reason="signing_key",
        fix="pass the NAME.key file written by `edge-agent keygen` (unencrypted PEM)",
    )


def generate_keypair(out_dir: Path, name: str) -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (private, PEM PKCS#8, mode 0600) and ``NAME.pub`` (public, PEM) to
    ``out_dir``; refuses to overwrite either. Returns (private path, public path, key id)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.core.fsutil import atomic_write_bytes, fsync_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for existing in (priv_path, pub_path):
        if existing.exists():
            raise OtaError(
                "refusing to overwrite an existing key file",
                reason="exists",
                fix="choose another --name or --out, or move the old key away first",
                path=existing,
            )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL: never replace a key that appeared meanwhile; 0600 from the first byte
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        atomic_write_bytes(pub_path, pub, mode=0o644)
    except BaseException:
        priv_path.unlink(missing_ok=True)
        raise
    fsync_dir(out_dir)
    return priv_path, pub_path, key_id(key.public_key())


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
                reason="trust_store",
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
                reason="trust_store",
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
        from cryptography.exceptions import InvalidSignature

        raw, signatures = parse_envelope(envelope)
        data = canonical_json(raw)
        trusted = [s for s in signatures if s.key_id in self.keys]
        if not trusted:
            raise OtaRejected(
                "no signature by a trusted key (signed by "
                + ", ".join(s.key_id for s in signatures)
                + f"; trusted: {', '.join(sorted(self.keys))})",
                reason="unknown_key",
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
            reason="bad_signature",
            fix="re-sign the manifest with `edge-agent push`; do not edit it after signing",
        )
