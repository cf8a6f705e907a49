"""Content-addressed engine cache with verified reads and atomic, durable commits.

An entry is a directory ``<root>/<model>-<precision>-<digest[:24]>/`` holding the backend's
files plus ``artifact.json`` (the manifest: key, files with their SHA-256 and size, I/O specs,
bundle config, validation report, creation time). Every file is re-hashed on lookup; an entry
that fails is logged, removed and reported as a miss, so the caller rebuilds it instead of
loading a corrupted engine.

A commit copies the builder's staging directory into a temporary directory inside the cache
root, fsyncs every file and the directory, renames it to its final name and fsyncs the root:
a crash at any point leaves either no entry or a complete one (plus, at worst, a ``.tmp-*``
directory that the next :class:`EngineCache` sweeps away on its first lookup or commit: see
:mod:`agent.engine.tmpdirs` for how a leftover is told from a live build's directory).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.backends.base import InputShapes, TensorSpec
from agent.core.errors import ArtifactError
from agent.core.fsutil import fsync_dir, fsync_file, sha256_file
from agent.engine.tmpdirs import UNCLAIMED_GRACE_S, claim_dir, sweep_scratch

__all__ = [
    "MANIFEST",
    "Artifact",
    "CacheKey",
    "EngineCache",
    "load_artifact",
]

log = logging.getLogger(__name__)

MANIFEST = "artifact.json"
FORMAT = 1
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_SAFE = re.compile(r"[^a-z0-9._-]+")
_REBUILD = "rebuild it with `edge-agent build` (add --force to replace the cache entry)"


def _shapes_json(shapes: Mapping[str, InputShapes] | Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(shapes):
        value = shapes[name]
        out[name] = value.to_json() if isinstance(value, InputShapes) else value
    return out


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes the bytes (or the validity) of a built engine.

    Two builds with equal keys are interchangeable; any difference (a new ONNX file, other
    calibration frames, another TensorRT version, another L4T release...) gives another entry.
    ``recipe`` carries quantization settings (method, percentile, nodes kept in float).
    """

    onnx_sha256: str
    calib_sha256: str
    precision: str
    shapes: Mapping[str, Any]
    workspace_mib: int
    backend: str
    backend_version: str
    gpu_compute_capability: str | None = None
    dla_core: int | None = None
    l4t_release: str | None = None
    model: str = "model"
    recipe: Mapping[str, Any] = field(default_factory=dict[str, Any])

    def to_json(self) -> dict[str, Any]:
        return {
            "onnx_sha256": self.onnx_sha256,
            "calib_sha256": self.calib_sha256 or "none",
            "precision": self.precision,
            "shapes": _shapes_json(self.shapes),
            "workspace_mib": int(self.workspace_mib),
            "backend": self.backend,
            "backend_version": self.backend_version,
            "gpu_compute_capability": self.gpu_compute_capability,
            "dla_core": self.dla_core,
            "l4t_release": self.l4t_release,
            "model": self.model,
            "recipe": {k: self.recipe[k] for k in sorted(self.recipe)},
        }

    def digest(self) -> str:
        """Stable hex SHA-256 of the canonical JSON of the key."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def dirname(self) -> str:
        model = _SAFE.sub("-", self.model.lower()).strip("-") or "model"
        return f"{model[:48]}-{self.precision}-{self.digest()[:24]}"


@dataclass(frozen=True)
class Artifact:
    """One verified cache entry (or an artifact directory given on the command line)."""

    dir: Path
    manifest: dict[str, Any]

    @property
    def backend(self) -> str:
        return str(self.manifest["backend"])

    @property
    def precision(self) -> str:
        return str(self.manifest["precision"])

    @property
    def main_file(self) -> str:
        return str(self.manifest["main_file"])

    @property
    def main_path(self) -> Path:
        return self.dir / self.main_file

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_json(t) for t in self.manifest.get("inputs", []))

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_json(t) for t in self.manifest.get("outputs", []))

    @property
    def digest(self) -> str:
        return str(self.manifest.get("digest", ""))

    def verify(self) -> None:
        """Re-hash every file listed in the manifest; raise :class:`ArtifactError` on the first
        missing, resized or altered one."""
        files = self.manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise ArtifactError("manifest lists no files", fix=_REBUILD, path=self.dir / MANIFEST)
        if self.main_file not in files:
            raise ArtifactError(
                f"main file '{self.main_file}' is not in the manifest's files",
                fix=_REBUILD,
                path=self.dir / MANIFEST,
            )
        for name, meta in files.items():
            path = self.dir / name
            if not path.is_file():
                raise ArtifactError("file is missing", fix=_REBUILD, path=path)
            size = path.stat().st_size
            if size != int(meta["size"]):
                raise ArtifactError(
                    f"size {size} differs from the recorded {meta['size']} bytes (truncated or "
                    "replaced)",
                    fix=_REBUILD,
                    path=path,
                )
            actual = sha256_file(path)
            if actual != meta["sha256"]:
                raise ArtifactError(
                    f"sha256 {actual[:16]}… differs from the recorded {str(meta['sha256'])[:16]}… "
                    "(corrupted or modified)",
                    fix=_REBUILD,
                    path=path,
                )


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"no {MANIFEST} here; this is not an engine artifact directory",
            fix="pass the directory printed by `edge-agent build`, or " + _REBUILD,
            path=directory,
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"unreadable manifest: {exc}", fix=_REBUILD, path=path) from exc
    if not isinstance(data, dict):
        raise ArtifactError("manifest is not a JSON object", fix=_REBUILD, path=path)
    for required in ("backend", "precision", "main_file", "files"):
        if required not in data:
            raise ArtifactError(f"manifest lacks '{required}'", fix=_REBUILD, path=path)
    return data


def load_artifact(path: Path | str) -> Artifact:
    """Open and verify an artifact directory (or its ``artifact.json``) for CLI commands."""
    directory = Path(path)
    if directory.name == MANIFEST:
        directory = directory.parent
    if not directory.exists():
        raise ArtifactError("does not exist", fix=_REBUILD, path=directory)
    artifact = Artifact(directory.resolve(), _read_manifest(directory))
    artifact.verify()
    return artifact


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class EngineCache:
    """Engine cache rooted at ``root`` (created on first use)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._swept = False

    # ------------------------------------------------------------------ housekeeping

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep_once()

    def _sweep_once(self) -> None:
        """The sweep on opening: the first lookup or commit of this instance."""
        if not self._swept:
            self._swept = True
            self.sweep()

    def sweep(self, max_age_s: float = UNCLAIMED_GRACE_S) -> list[Path]:
        """Remove leftovers of interrupted builds and commits: ``.tmp-*`` directories whose
        owner is gone (:mod:`agent.engine.tmpdirs`; unclaimed ones once older than
        ``max_age_s``), never one a live build holds, and ``.trash-*`` directories. Returns
        what was removed."""
        if not self.root.is_dir():
            return []
        removed = sweep_scratch(self.root, grace_s=max_age_s)
        removed += sweep_scratch(self.root, prefixes=(_TRASH_PREFIX,), grace_s=-1.0)
        return removed

    def path_for(self, key: CacheKey) -> Path:
        return self.root / key.dirname()

    def entries(self) -> Iterator[Path]:
        """Directories of committed entries (not verified)."""
        if not self.root.is_dir():
            return
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and (child / MANIFEST).is_file():
                yield child

    def _discard(self, directory: Path, reason: str) -> None:
        log.warning(
            "discarding cache entry; it will be rebuilt",
            extra={"path": str(directory), "reason": reason},
        )
        trash = self.root / f"{_TRASH_PREFIX}{directory.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(directory, trash)
        except OSError:
            _remove_tree(directory)
            return
        fsync_dir(self.root)
        _remove_tree(trash)

    # ------------------------------------------------------------------ lookup / commit

    def lookup(self, key: CacheKey) -> Artifact | None:
        """The verified entry for ``key``, or None. A corrupted or mismatched entry is removed
        and reported as a miss (never returned)."""
        self._sweep_once()
        directory = self.path_for(key)
        if not directory.is_dir():
            return None
        digest = key.digest()
        try:
            manifest = _read_manifest(directory)
            if manifest.get("digest") != digest:
                raise ArtifactError(
                    f"manifest digest {str(manifest.get('digest'))[:16]}… does not match the "
                    f"key {digest[:16]}…",
                    fix=_REBUILD,
                    path=directory / MANIFEST,
                )
            artifact = Artifact(directory, manifest)
            artifact.verify()
        except ArtifactError as exc:
            self._discard(directory, str(exc))
            return None
        log.debug("cache hit", extra={"path": str(directory)})
        return artifact

    def commit(
        self, key: CacheKey, staging_dir: Path | str, manifest: Mapping[str, Any]
    ) -> Artifact:
        """Publish the files of ``staging_dir`` (written by the builder) as the entry for
        ``key``, atomically. ``manifest`` carries backend, precision, main_file, inputs,
        outputs, validation...; ``files``, ``key``, ``digest`` and ``created`` are filled here.
        An existing entry for the same key is replaced."""
        staging = Path(staging_dir)
        if not staging.is_dir():
            raise ArtifactError("staging directory does not exist", path=staging)
        self._ensure_root()
        final = self.path_for(key)
        tmp = self.root / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        claim = claim_dir(tmp)
        try:
            files = _copy_staged(staging, tmp)
            doc = _manifest_doc(key, manifest, files, staging)
            _write_manifest(tmp / MANIFEST, doc)
            claim.release(remove_file=True)
            fsync_dir(tmp)
            if final.exists():
                self._discard(final, "replaced by a new commit")
            os.rename(tmp, final)
            fsync_dir(self.root)
        except BaseException:
            claim.release()
            _remove_tree(tmp)
            raise
        log.info(
            "committed engine to cache",
            extra={"path": str(final), "precision": key.precision, "backend": key.backend},
        )
        return Artifact(final, doc)

    def remove(self, key: CacheKey) -> bool:
        directory = self.path_for(key)
        if not directory.exists():
            return False
        self._discard(directory, "removed on request")
        return True


def _copy_staged(staging: Path, tmp: Path) -> dict[str, dict[str, Any]]:
    """Copy the builder's files (durably) into ``tmp``; returns name -> sha256 and size."""
    files: dict[str, dict[str, Any]] = {}
    for src in sorted(staging.rglob("*")):
        if not src.is_file() or src.name == MANIFEST:
            continue
        rel = src.relative_to(staging).as_posix()
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        fsync_file(dst)
        files[rel] = {"sha256": sha256_file(dst), "size": dst.stat().st_size}
    for sub in sorted({p.parent for p in tmp.rglob("*") if p.is_file()}, reverse=True):
        fsync_dir(sub)
    return files


def _manifest_doc(
    key: CacheKey, manifest: Mapping[str, Any], files: dict[str, dict[str, Any]], staging: Path
) -> dict[str, Any]:
    """The builder's manifest with format, key, digest, files and creation time filled in."""
    doc = dict(manifest)
    doc.update(
        {
            "format": FORMAT,
            "key": key.to_json(),
            "digest": key.digest(),
            "files": files,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    doc.setdefault("backend", key.backend)
    doc.setdefault("precision", key.precision)
    if doc.get("main_file") not in files:
        raise ArtifactError(
            f"main file '{doc.get('main_file')}' was not written by the builder",
            fix="this is a bug in the backend; report it with the build log",
            path=staging,
        )
    return doc


def _write_manifest(path: Path, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def tmp_dirs(root: Path) -> list[Path]:
    """In-progress or leftover commit directories under ``root`` (for tests and `status`)."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX))]
