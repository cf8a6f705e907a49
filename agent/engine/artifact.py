"""The engine's sha256 (read from the artifact manifest, the one place it is recorded), and a
copy of the engine written outside the cache (``build --output``, trtexec's ``--saveEngine``).

:meth:`EngineCache.commit <agent.engine.cache.EngineCache.commit>` hashes every file of an
artifact into its manifest (``files[<name>].sha256``) and :meth:`Artifact.verify
<agent.engine.cache.Artifact.verify>` checks them; telemetry, OTA records and the CLI read the
engine's hash from there instead of hashing the engine again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from agent.core.errors import ArtifactError
from agent.core.fsutil import fsync_dir, sha256_file
from agent.engine.cache import Artifact

__all__ = ["engine_sha256", "engine_sha256_or_none", "save_engine_copy"]

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


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file in ``dst``'s directory: fsync, rename,
    fsync(dir); a reader never sees half an engine."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(dst.parent)


def save_engine_copy(artifact: Artifact, dest: Path) -> list[Path]:
    """Write a copy of ``artifact``'s engine (TensorRT plan, ONNX Runtime model) to ``dest``, in
    addition to the cache entry; an ONNX model's external-data file (``<main>.data``, the name
    the model refers to) goes next to it. ``dest`` may be a directory (the engine keeps its
    name there). Returns the files written; raises :class:`ArtifactError` when it cannot."""
    target = Path(dest).expanduser()
    if target.is_dir():
        target = target / artifact.main_file
    sidecar = f"{artifact.main_file}.data"
    files = artifact.manifest.get("files")
    extra = [sidecar] if isinstance(files, dict) and sidecar in files else []
    written: list[Path] = []
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_atomic(artifact.main_path, target)
        written.append(target)
        for name in extra:
            _copy_atomic(artifact.dir / name, target.parent / name)
            written.append(target.parent / name)
    except OSError as exc:
        raise ArtifactError(
            f"cannot write the engine copy: {exc}",
            fix="pass --output a writable path (a file name, or an existing directory)",
            path=target,
        ) from exc
    log.info("engine copy written", extra={"path": str(target), "artifact": str(artifact.dir)})
    return written
