"""The pieces of a push: the files, the manifest, the inline chunks, the topic.

* :func:`bundle_files` lists a bundle directory (plus optional golden ``.npy`` files) as
  relative path → local file, refusing symlinks that leave it and hidden/reserved names.
* :func:`make_manifest` hashes them into a :class:`~agent.ota.manifest.Manifest`.
* :func:`chunk_messages` splits the files into inline MQTT chunk messages.
* :func:`ota_topic` is the topic a push goes to.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.comms.topics import device_ota_topic, group_ota_topic
from agent.config.base import NAME_PATTERN
from agent.config.broker import check_device_id
from agent.core.errors import OtaError
from agent.core.fsutil import sha256_file
from agent.ota.manifest import (
    CHUNK_KIND,
    RESERVED_PREFIX,
    Compat,
    FileEntry,
    Golden,
    GoldenCase,
    Manifest,
    Payload,
    Target,
    check_relative_path,
    manifest_sha256,
)

__all__ = [
    "PushUsageError",
    "bundle_files",
    "chunk_messages",
    "golden_files",
    "make_manifest",
    "ota_topic",
    "parse_duration",
]

log = logging.getLogger(__name__)

_SKIP_DIRS = {"__pycache__", ".git"}


class PushUsageError(OtaError):
    """The push as asked cannot work (exit 2): a bad target, duration or combination."""

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None, path: Path | None = None):
        super().__init__(message, reason="usage", fix=fix, path=path)


def ota_topic(fleet: str, *, device: str | None = None, group: str | None = None) -> str:
    """``edge/<fleet>/<device>/ota`` or ``edge/<fleet>/group/<group>/ota``."""
    if (device is None) == (group is None):
        raise PushUsageError(
            "a push targets exactly one of a device and a group",
            fix="pass --device ID or --group NAME",
        )
    try:
        if device:
            check_device_id(device)
        elif not re.fullmatch(NAME_PATTERN, str(group)):
            raise ValueError(f"{group!r} is not a group name (no '+', '#', '/' or leading '$')")
    except ValueError as exc:
        raise PushUsageError(
            str(exc), fix="pass the name exactly as the device's agent.yaml has it"
        ) from exc
    return device_ota_topic(fleet, device) if device else group_ota_topic(fleet, str(group))


def parse_duration(text: str) -> int:
    """``"24h"``, ``"30m"``, ``"7d"``, ``"90s"`` or plain seconds → seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match or int(match.group(1)) <= 0:
        raise PushUsageError(
            f"{text!r} is not a duration",
            fix="write a positive number with s, m, h or d, e.g. 24h",
        )
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * scale


def bundle_files(bundle_dir: Path) -> dict[str, Path]:
    """Relative POSIX path → file for every file of the bundle (sorted)."""
    root = Path(bundle_dir).resolve()
    if not (root / "model.yaml").is_file():
        raise PushUsageError(
            "not a model bundle (no model.yaml)",
            fix="pass the bundle directory holding model.yaml, the ONNX file and labels",
            path=bundle_dir,
        )
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel_parts = path.relative_to(root).parts
        if any(p in _SKIP_DIRS for p in rel_parts) or not path.is_file():
            continue
        if any(p.startswith(RESERVED_PREFIX) for p in rel_parts):
            continue
        try:
            path.resolve().relative_to(root)
        except ValueError as exc:
            raise OtaError(
                "a file in the bundle links outside it",
                reason="unsafe_path",
                fix="copy the file into the bundle instead of linking to it",
                path=path,
            ) from exc
        rel = "/".join(rel_parts)
        check_relative_path(rel)
        files[rel] = path
    return files


def golden_files(golden_dir: Path) -> tuple[dict[str, Path], list[GoldenCase]]:
    """``NAME.input.npy`` + ``NAME.expected.npy`` pairs in ``golden_dir`` → bundle paths under
    ``golden/`` and the cases."""
    inputs = sorted(Path(golden_dir).glob("*.input.npy"))
    files: dict[str, Path] = {}
    cases: list[GoldenCase] = []
    for inp in inputs:
        stem = inp.name[: -len(".input.npy")]
        expected = inp.with_name(f"{stem}.expected.npy")
        if not expected.is_file():
            raise PushUsageError(
                f"golden input {inp.name} has no {expected.name}",
                fix="put NAME.input.npy and NAME.expected.npy pairs in the golden directory",
                path=golden_dir,
            )
        files[f"golden/{inp.name}"] = inp
        files[f"golden/{expected.name}"] = expected
        cases.append(GoldenCase(input=f"golden/{inp.name}", expected=f"golden/{expected.name}"))
    if not cases:
        raise PushUsageError(
            "no NAME.input.npy files in the golden directory",
            fix="save golden inputs with numpy.save as NAME.input.npy and outputs as "
            "NAME.expected.npy",
            path=golden_dir,
        )
    return files, cases


def make_manifest(
    files: Mapping[str, Path],
    *,
    name: str,
    version: int,
    fleet: str,
    device: str | None = None,
    group: str | None = None,
    payload: Payload,
    expires_in_s: int = 86400,
    compat: Compat | None = None,
    golden: Golden | None = None,
    now: int | None = None,
) -> Manifest:
    """Hash ``files`` into a manifest (not signed: see :func:`agent.ota.manifest.sign_manifest`)."""
    created = int(time.time()) if now is None else now
    entries = [
        FileEntry(path=rel, sha256=sha256_file(path), size=path.stat().st_size)
        for rel, path in sorted(files.items())
    ]
    return Manifest(
        name=name,
        version=version,
        created=created,
        expires=created + expires_in_s,
        target=Target(fleet=fleet, device=device, group=group),
        files=entries,
        compat=compat or Compat(),
        golden=golden,
        payload=payload,
    )


def chunk_messages(
    manifest: Manifest, raw_manifest: Mapping[str, Any], files: Mapping[str, Path]
) -> Iterator[bytes]:
    """The inline chunk messages of a push, file by file, in order."""
    size = manifest.payload.chunk_size
    if manifest.payload.kind != "inline" or size is None:
        raise PushUsageError("not an inline manifest", fix="use --inline")
    sha = manifest_sha256(raw_manifest)
    for entry in manifest.files:
        count = manifest.payload.chunk_count(entry.size)
        with files[entry.path].open("rb") as handle:
            for index in range(count):
                block = handle.read(size)
                msg = {
                    "kind": CHUNK_KIND,
                    "manifest_sha256": sha,
                    "file": entry.path,
                    "index": index,
                    "count": count,
                    "data": base64.b64encode(block).decode("ascii"),
                }
                yield json.dumps(msg, separators=(",", ":")).encode("utf-8")
