"""OTA state on disk: installed versions, the high-water mark, the committed pointer.

Layout under ``<state_dir>/ota/``::

    hwm.json              {"<model>": <highest version accepted past verification>}
    retry.json            {"<model>": {"version": v, "manifest_sha256": ...}}: a failed transfer
                          that the same signed manifest may retry
    committed.json        {"<model>": {"current": {...}, "history": [{...}, ...]}}
    journal.json          the current/last update (see agent.ota.updater)
    staging/              downloads in progress (removed on start and after each update)
    models/<model>/<version>/   installed bundles (+ .ota-envelope.json, the signed manifest)

Every write is atomic (tmp → fsync → rename → fsync dir). A version directory appears by one
``rename`` from staging, so it is either complete or absent. Pruning renames a version into
staging before deleting it, for the same reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.core.errors import OtaError, OtaReason, OtaRejected
from agent.core.fsutil import atomic_write_json, fsync_dir, sha256_file
from agent.core.logs import log_fields
from agent.ota.manifest import RESERVED_PREFIX

__all__ = ["ENVELOPE_FILE", "CommittedVersion", "VersionStore"]

log = logging.getLogger(__name__)

ENVELOPE_FILE = f"{RESERVED_PREFIX}-envelope.json"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class CommittedVersion:
    """What the daemon serves for a model: a version that passed probation."""

    model: str
    version: int
    bundle_dir: str
    engine_sha256: str | None
    artifact_dir: str | None
    committed_at: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommittedVersion:
        return cls(
            model=str(data["model"]),
            version=int(data["version"]),
            bundle_dir=str(data["bundle_dir"]),
            engine_sha256=data.get("engine_sha256"),
            artifact_dir=data.get("artifact_dir"),
            committed_at=int(data.get("committed_at", 0)),
        )


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


class VersionStore:
    """Versions on disk for every model, with keep-last-N pruning and a disk quota."""

    def __init__(self, state_dir: Path, *, keep_versions: int = 3, disk_quota_mib: int = 2048):
        self.root = Path(state_dir) / "ota"
        self.keep_versions = max(1, keep_versions)
        self.quota_bytes = disk_quota_mib * _MIB
        self.models_dir = self.root / "models"
        self.staging_root = self.root / "staging"
        self.hwm_path = self.root / "hwm.json"
        self.retry_path = self.root / "retry.json"
        self.committed_path = self.root / "committed.json"
        self.journal_path = self.root / "journal.json"
        for d in (self.root, self.models_dir, self.staging_root):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ json helpers

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise OtaError(
                f"OTA state file is unreadable: {exc}",
                reason=OtaReason.STATE_CORRUPT,
                fix="restore it from a backup or delete it (a deleted hwm.json lets older "
                "versions be pushed again)",
                path=path,
            ) from exc
        if not isinstance(data, dict):
            raise OtaError(
                "OTA state file is not a JSON object",
                reason=OtaReason.STATE_CORRUPT,
                fix="delete it",
                path=path,
            )
        return data  # pyright: ignore[reportUnknownVariableType]

    # ------------------------------------------------------------------ high-water mark

    def high_water(self, model: str) -> int:
        value = self._read(self.hwm_path).get(model, 0)
        return int(value) if isinstance(value, int) else 0

    def check_newer(self, model: str, version: int, manifest_sha256: str | None = None) -> None:
        """Refuse a version at or below the high-water mark (``not_newer``), except the very
        manifest whose transfer failed (:meth:`allow_retry`): that one may be tried again."""
        hwm = self.high_water(model)
        if version > hwm or self.retry_allowed(model, version, manifest_sha256):
            return
        raise OtaRejected(
            f"{model} version {version} is not newer than the highest version this "
            f"device has accepted ({hwm})",
            reason=OtaReason.NOT_NEWER,
            fix=f"push with --version {hwm + 1} or higher (versions are never reused; only "
            "the same signed manifest may be sent again after a failed transfer)",
        )

    def advance(self, model: str, version: int) -> None:
        """Raise the high-water mark to ``version`` (durably, before any download); a retry
        allowance for ``model`` is used up."""
        data = self._read(self.hwm_path)
        current = data.get(model, 0)
        if not isinstance(current, int) or current < version:
            data[model] = version
            atomic_write_json(self.hwm_path, data)
        self._set_retry(model, None)

    # ------------------------------------------------------------------ retry of a transfer

    def allow_retry(self, model: str, version: int, manifest_sha256: str) -> None:
        """The transfer of this signed manifest failed: the same manifest (and no other) may
        be accepted again at ``version`` (durably)."""
        self._set_retry(model, {"version": version, "manifest_sha256": manifest_sha256})

    def retry_allowed(self, model: str, version: int, manifest_sha256: str | None) -> bool:
        found = self._read(self.retry_path).get(model)
        return (
            manifest_sha256 is not None
            and isinstance(found, dict)
            and found.get("version") == version  # pyright: ignore[reportUnknownMemberType]
            and found.get("manifest_sha256") == manifest_sha256  # pyright: ignore[reportUnknownMemberType]
        )

    def retry_pending(self, manifest_sha256: str) -> bool:
        """Whether some model may retry the manifest ``manifest_sha256``."""
        return any(
            isinstance(v, dict) and v.get("manifest_sha256") == manifest_sha256  # pyright: ignore[reportUnknownMemberType]
            for v in self._read(self.retry_path).values()
        )

    def _set_retry(self, model: str, value: dict[str, Any] | None) -> None:
        data = self._read(self.retry_path)
        if data.get(model) == value:
            return
        if value is None:
            data.pop(model, None)
        else:
            data[model] = value
        atomic_write_json(self.retry_path, data)

    # ------------------------------------------------------------------ versions

    def version_dir(self, model: str, version: int) -> Path:
        return self.models_dir / model / str(version)

    def versions(self, model: str) -> list[int]:
        """Installed versions of ``model``, newest first."""
        base = self.models_dir / model
        if not base.is_dir():
            return []
        found = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
        return sorted(found, reverse=True)

    def new_staging(self, model: str, version: int) -> Path:
        path = self.staging_root / f"{model}-{version}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def clean_staging(self) -> list[str]:
        """Remove every staging leftover; returns their names."""
        removed: list[str] = []
        if self.staging_root.is_dir():
            for p in sorted(self.staging_root.iterdir()):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p.name)
        return removed

    def install(self, staging: Path, model: str, version: int, envelope: dict[str, Any]) -> Path:
        """Move a fully checked staging directory to ``models/<model>/<version>`` atomically."""
        atomic_write_json(staging / ENVELOPE_FILE, envelope)
        target = self.version_dir(model, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a leftover of an interrupted earlier attempt at this version
            self._remove_version_dir(target)
        os.replace(staging, target)
        fsync_dir(target.parent)
        fsync_dir(self.staging_root)
        return target

    def read_envelope(self, model: str, version: int) -> dict[str, Any]:
        return self._read(self.version_dir(model, version) / ENVELOPE_FILE)

    def _remove_version_dir(self, path: Path) -> None:
        trash = self.staging_root / f".trash-{path.parent.name}-{path.name}-{uuid.uuid4().hex[:6]}"
        os.replace(path, trash)
        fsync_dir(path.parent)
        shutil.rmtree(trash, ignore_errors=True)

    def remove_version(self, model: str, version: int) -> None:
        path = self.version_dir(model, version)
        if path.exists():
            self._remove_version_dir(path)

    # ------------------------------------------------------------------ quota

    def usage_bytes(self) -> int:
        return _dir_bytes(self.models_dir)

    def check_quota(self, model: str, incoming: int, max_bundle_bytes: int) -> None:
        """Refuse (``over_quota``) a bundle above the per-bundle limit or one that would take
        the kept versions over the disk quota (after pruning what may be pruned)."""
        if incoming > max_bundle_bytes:
            raise OtaRejected(
                f"bundle is {incoming / _MIB:.1f} MiB, above ota.max_bundle_mib "
                f"({max_bundle_bytes / _MIB:.0f} MiB)",
                reason=OtaReason.OVER_QUOTA,
                fix="ship a smaller model or raise ota.max_bundle_mib in agent.yaml",
            )
        self.prune(model, keep=max(1, self.keep_versions - 1))
        used = self.usage_bytes()
        if used + incoming > self.quota_bytes:
            raise OtaRejected(
                f"bundle needs {incoming / _MIB:.1f} MiB but kept versions use "
                f"{used / _MIB:.1f} of the {self.quota_bytes / _MIB:.0f} MiB quota",
                reason=OtaReason.OVER_QUOTA,
                fix="raise ota.disk_quota_mib or lower ota.keep_versions in agent.yaml",
            )

    # ------------------------------------------------------------------ committed pointer

    def _committed_doc(self) -> dict[str, Any]:
        return self._read(self.committed_path)

    def committed(self, model: str) -> CommittedVersion | None:
        entry = self._committed_doc().get(model)
        if not isinstance(entry, dict) or not isinstance(entry.get("current"), dict):  # pyright: ignore[reportUnknownMemberType]
            return None
        return CommittedVersion.from_json(entry["current"])  # pyright: ignore[reportUnknownArgumentType]

    def committed_all(self) -> dict[str, CommittedVersion]:
        out: dict[str, CommittedVersion] = {}
        for name in self._committed_doc():
            found = self.committed(name)
            if found is not None:
                out[name] = found
        return out

    def history(self, model: str) -> list[CommittedVersion]:
        """Previously committed versions, most recent first (the current one excluded)."""
        entry = self._committed_doc().get(model)
        if not isinstance(entry, dict):
            return []
        items: Any = entry.get("history", [])  # pyright: ignore[reportUnknownMemberType]
        return [CommittedVersion.from_json(h) for h in items if isinstance(h, dict)]  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]

    def commit(
        self,
        model: str,
        version: int,
        bundle_dir: Path,
        *,
        engine_sha256: str | None,
        artifact_dir: Path | None,
        demote_current: bool = True,
    ) -> CommittedVersion:
        """Make ``version`` the committed one (atomically), then prune old versions.

        The version committed so far goes to the head of the history (the next rollback
        target) unless ``demote_current`` is False (a rollback away from it)."""
        doc = self._committed_doc()
        entry: dict[str, Any] = doc.get(model) or {}
        history: list[dict[str, Any]] = [h for h in entry.get("history", []) if isinstance(h, dict)]
        current = entry.get("current")
        if demote_current and isinstance(current, dict) and current.get("version") != version:
            history.insert(0, current)  # pyright: ignore[reportUnknownArgumentType]
        history = [h for h in history if h.get("version") != version][:20]
        record = CommittedVersion(
            model=model,
            version=version,
            bundle_dir=str(bundle_dir),
            engine_sha256=engine_sha256,
            artifact_dir=None if artifact_dir is None else str(artifact_dir),
            committed_at=int(time.time()),
        )
        doc[model] = {"current": record.to_json(), "history": history}
        atomic_write_json(self.committed_path, doc)
        log.info(
            "model version committed",
            extra=log_fields(model=model, version=version, bundle=str(bundle_dir)),
        )
        self.prune(model)
        return record

    def uncommit(self, model: str) -> None:
        """Forget the committed OTA version of ``model``: the configured bundle serves again."""
        doc = self._committed_doc()
        if model in doc:
            del doc[model]
            atomic_write_json(self.committed_path, doc)

    def prune(self, model: str, keep: int | None = None) -> list[int]:
        """Remove installed versions beyond the newest ``keep`` (default keep_versions); the
        committed version and the newest previously committed one are never removed."""
        keep = self.keep_versions if keep is None else keep
        protected: set[int] = set()
        current = self.committed(model)
        if current is not None:
            protected.add(current.version)
        history = self.history(model)
        if history:
            protected.add(history[0].version)
        kept: list[int] = []
        removed: list[int] = []
        for version in self.versions(model):
            if version in protected or len(kept) < keep:
                kept.append(version)
                continue
            self.remove_version(model, version)
            removed.append(version)
        if removed:
            log.info("old versions pruned", extra=log_fields(model=model, removed=removed))
        return removed

    def verify_installed(self, model: str, version: int) -> bool:
        """True when the installed files still match the stored signed manifest."""
        directory = self.version_dir(model, version)
        try:
            manifest: Any = self.read_envelope(model, version).get("manifest", {})
            files: Any = manifest.get("files", [])
            for entry in files:
                path = directory / str(entry["path"])
                if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                    return False
        except (OSError, OtaError, KeyError, TypeError, AttributeError):
            return False
        return bool(files)
