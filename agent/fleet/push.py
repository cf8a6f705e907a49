"""The fleet side of a push: make and sign a manifest, serve the files, make inline chunks.

* :func:`bundle_files` lists a bundle directory (plus optional golden ``.npy`` files) as
  relative path → local file, refusing symlinks that leave it and hidden/reserved names.
* :func:`make_manifest` hashes them into a :class:`~agent.ota.manifest.Manifest`.
* :class:`BundleServer` serves exactly those files over HTTP from a thread (loopback by
  default), under a random URL prefix; tests use it as the download server.
* :func:`chunk_messages` splits the files into inline MQTT chunk messages.
* :func:`ota_topic` is the topic a push goes to.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.core.errors import OtaError
from agent.core.fsutil import sha256_file
from agent.core.logs import log_fields
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
    "BundleServer",
    "bundle_files",
    "chunk_messages",
    "golden_files",
    "make_manifest",
    "ota_topic",
    "parse_duration",
]

log = logging.getLogger(__name__)

_SKIP_DIRS = {"__pycache__", ".git"}


def ota_topic(fleet: str, *, device: str | None = None, group: str | None = None) -> str:
    """``edge/<fleet>/<device>/ota`` or ``edge/<fleet>/group/<group>/ota``."""
    if (device is None) == (group is None):
        raise OtaError(
            "a push targets exactly one of a device and a group",
            reason="usage",
            fix="pass --device ID or --group NAME",
        )
    return f"edge/{fleet}/{device}/ota" if device else f"edge/{fleet}/group/{group}/ota"


def parse_duration(text: str) -> int:
    """``"24h"``, ``"30m"``, ``"7d"``, ``"90s"`` or plain seconds → seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match or int(match.group(1)) <= 0:
        raise OtaError(
            f"{text!r} is not a duration",
            reason="usage",
            fix="write a positive number with s, m, h or d, e.g. 24h",
        )
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * scale


def bundle_files(bundle_dir: Path) -> dict[str, Path]:
    """Relative POSIX path → file for every file of the bundle (sorted)."""
    root = Path(bundle_dir).resolve()
    if not (root / "model.yaml").is_file():
        raise OtaError(
            "not a model bundle (no model.yaml)",
            reason="usage",
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
            raise OtaError(
                f"golden input {inp.name} has no {expected.name}",
                reason="usage",
                fix="put NAME.input.npy and NAME.expected.npy pairs in the golden directory",
                path=golden_dir,
            )
        files[f"golden/{inp.name}"] = inp
        files[f"golden/{expected.name}"] = expected
        cases.append(GoldenCase(input=f"golden/{inp.name}", expected=f"golden/{expected.name}"))
    if not cases:
        raise OtaError(
            "no NAME.input.npy files in the golden directory",
            reason="usage",
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
        raise OtaError("not an inline manifest", reason="usage", fix="use --inline")
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


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # pyright: ignore[reportIncompatibleVariableOverride]

    def do_GET(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        prefix = f"/{self.server.token}/"
        source = None
        if path.startswith(prefix):
            source = self.server.files.get(path[len(prefix) :])
        if source is None:
            self.send_error(404, "not part of this push")
            return
        try:
            data = source.read_bytes()
        except OSError:
            self.send_error(500, "cannot read the file")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.server.served.append(path[len(prefix) :])

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("push server: " + format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], files: Mapping[str, Path], token: str):
        self.files = dict(files)
        self.token = token
        self.served: list[str] = []
        super().__init__(address, _Handler)


class BundleServer:
    """Serve ``files`` (relative path → local file) over HTTP from a background thread.

    ``with BundleServer(files) as server: server.base_url`` — bound to 127.0.0.1 and a free
    port by default; only the listed files are served, under a random path prefix.
    """

    def __init__(
        self,
        files: Mapping[str, Path],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
    ):
        self.files = dict(files)
        self.host = host
        self.port = port
        self.advertise_host = advertise_host
        self.token = secrets.token_hex(8)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> BundleServer:
        try:
            self._server = _Server((self.host, self.port), self.files, self.token)
        except OSError as exc:
            raise OtaError(
                f"cannot listen on {self.host}:{self.port}: {exc}",
                reason="usage",
                fix="choose another --port (0 picks a free one) or --host",
            ) from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ota-push-server", daemon=True
        )
        self._thread.start()
        log.info("push server started", extra=log_fields(url=self.base_url))
        return self

    @property
    def base_url(self) -> str:
        host = self.advertise_host or self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/{self.token}"

    @property
    def served(self) -> list[str]:
        return [] if self._server is None else list(self._server.served)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> BundleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
