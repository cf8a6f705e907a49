"""Key generation for the fleet side (``edge-agent keygen``): an Ed25519 pair for signing pushes.

The private key stays with the operator (``NAME.key``, PEM PKCS#8, mode 0600); the public key
(``NAME.pub``) is copied into each device's ``ota.trust_dir`` (:class:`agent.ota.trust.TrustStore`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.errors import OtaError
from agent.core.fsutil import atomic_write_bytes, fsync_dir
from agent.ota.manifest import key_id

__all__ = ["KeyPair", "generate_keypair"]


@dataclass(frozen=True)
class KeyPair:
    """Where a new key pair was written, and the key id devices will know it by."""

    private_key: Path
    public_key: Path
    key_id: str


def _refuse_overwrite(*paths: Path) -> None:
    for existing in paths:
        if existing.exists():
            raise OtaError(
                "refusing to overwrite an existing key file",
                reason="exists",
                fix="choose another --name or --out, or move the old key away first",
                path=existing,
            )


def _write_private(path: Path, pem: bytes) -> None:
    """O_EXCL: never replace a key that appeared meanwhile; 0600 from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())


def generate_keypair(out_dir: Path, name: str) -> KeyPair:
    """Write ``NAME.key`` (private, PEM PKCS#8, mode 0600) and ``NAME.pub`` (public, PEM) to
    ``out_dir``; refuses to overwrite either."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    _refuse_overwrite(priv_path, pub_path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        _write_private(priv_path, pem)
        atomic_write_bytes(pub_path, pub, mode=0o644)
    except BaseException:
        priv_path.unlink(missing_ok=True)
        raise
    fsync_dir(out_dir)
    return KeyPair(priv_path, pub_path, key_id(key.public_key()))
