"""The engine's sha256: read from the artifact manifest, the one place it is recorded.

:meth:`EngineCache.commit <agent.engine.cache.EngineCache.commit>` hashes every file of an
artifact into its manifest (``files[<name>].sha256``) and :meth:`Artifact.verify
<agent.engine.cache.Artifact.verify>` checks them; telemetry, OTA records and the CLI read the
engine's hash from there instead of hashing the engine again.
"""

from __future__ import annotations

import logging

from agent.core.fsutil import sha256_file
from agent.engine.cache import Artifact

__all__ = ["engine_sha256", "engine_sha256_or_none"]

log = logging.getLogger(__name__)


def engine_sha256(artifact: Artifact) -> str:
    """The sha256 of ``artifact``'s main (engine) file as its manifest records it; hashed from
    the file only when the manifest has no entry for it (raises ``OSError`` if unreadable)."""
    files = artifact.manifest.get("files")
    entry = files.get(artifact.main_file) if isinstance(files, dict) else None
    recorded = entry.get("sha256") if isinstance(entry, dict) else None
    if isinstance(recorded, str) and recorded:
        return recorded
    return sha256_file(artifact.main_path)


def engine_sha256_or_none(artifact: Artifact) -> str | None:
    """:func:`engine_sha256`, or None when the engine file cannot be read."""
    try:
        return engine_sha256(artifact)
    except OSError:
        return None
