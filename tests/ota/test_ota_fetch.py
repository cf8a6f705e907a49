"""Getting bundle bytes: file:// and http:// from the push server; size and hash checks; nothing
half-written left behind (inline chunks: tests/ota/test_ota_chunks.py)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.core.errors import OtaError, OtaRejected
from agent.core.fsutil import sha256_file
from agent.fleet.push import bundle_files
from agent.fleet.server import BundleServer
from agent.ota.fetch import download_bundle, download_file
from agent.ota.manifest import FileEntry, Payload
from tests.helpers.ota_support import copy_bundle, file_payload, manifest_for


def _same_files(a: Path, b: Path) -> None:
    for rel in bundle_files(a):
        assert sha256_file(a / rel) == sha256_file(b / rel), rel


def test_download_via_file_url(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    m = manifest_for(bundle, 1, file_payload(bundle))
    seen: list[tuple[int, int]] = []
    download_bundle(m, tmp_path / "stage", progress=lambda d, t, _m: seen.append((d, t)))
    _same_files(bundle, tmp_path / "stage")
    assert seen[-1] == (m.total_size, m.total_size)
    assert all(d <= t for d, t in seen)


def test_download_via_push_server(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    files = bundle_files(bundle)
    with BundleServer(files) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        m = manifest_for(bundle, 1, Payload(kind="url", base_url=server.base_url))
        download_bundle(m, tmp_path / "stage", timeout_s=10)
        assert sorted(server.served) == sorted(files)
        # only the listed files under the random prefix are served
        entry = FileEntry(path="model.yaml", sha256="0" * 64, size=10)
        with pytest.raises(OtaError) as info:
            download_file(server.base_url + "/../etc/passwd", entry, tmp_path / "x", timeout_s=5)
        assert info.value.reason == "fetch_failed"
    _same_files(bundle, tmp_path / "stage")


def test_flipped_byte_is_hash_mismatch_and_file_removed(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    m = manifest_for(bundle, 1, file_payload(bundle))
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(OtaRejected) as info:
        download_bundle(m, tmp_path / "stage")
    assert info.value.reason == "hash_mismatch"
    assert "model.onnx" in str(info.value)
    assert not (tmp_path / "stage" / "model.onnx").exists()


def test_longer_file_with_content_length_is_refused_early(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    with BundleServer(bundle_files(bundle)) as server:
        m = manifest_for(bundle, 1, Payload(kind="url", base_url=server.base_url))
        with (bundle / "labels.txt").open("ab") as handle:
            handle.write(b"extra\n")
        with pytest.raises(OtaRejected) as info:
            download_bundle(m, tmp_path / "stage", timeout_s=10)
    assert info.value.reason == "size_mismatch"


class _Endless(BaseHTTPRequestHandler):
    """Sends up to 64 MiB with no Content-Length: a download must stop at the manifest size."""

    sent = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        block = b"\xab" * 65536
        try:
            for _ in range(1024):
                self.wfile.write(block)
                type(self).sent += len(block)
        except OSError:
            return

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def test_oversize_download_stops_at_manifest_size(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/blob"
        entry = FileEntry(path="blob", sha256="0" * 64, size=100_000)
        with pytest.raises(OtaRejected) as info:
            download_file(url, entry, tmp_path / "stage" / "blob", timeout_s=10)
        assert info.value.reason == "size_mismatch"
        assert not (tmp_path / "stage" / "blob").exists()
    finally:
        server.shutdown()
        server.server_close()
    # the client hung up long before the server's 64 MiB (kernel buffers hold a few MiB)
    assert _Endless.sent < 32 * 1024 * 1024


class _Trickle(BaseHTTPRequestHandler):
    """Sends one byte every 50 ms: each read is well inside the socket timeout."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            return

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def test_trickling_download_stops_at_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.ota import fetch

    monkeypatch.setattr(fetch, "MIN_RATE_BYTES_S", 1000)  # deadline: 1 s + 1000 B / 1000 B/s
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/blob"
        entry = FileEntry(path="blob", sha256="0" * 64, size=1000)
        with pytest.raises(OtaError) as info:
            download_file(url, entry, tmp_path / "stage" / "blob", timeout_s=1.0)
        assert info.value.reason == "download_timeout"
        assert "too slow" in str(info.value)
        assert not (tmp_path / "stage" / "blob").exists()
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started < 10  # not the 50 s the server would take


def test_short_download_is_size_mismatch(tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "b")
    m = manifest_for(bundle, 1, file_payload(bundle))
    (bundle / "labels.txt").write_bytes((bundle / "labels.txt").read_bytes()[:-2])
    with pytest.raises(OtaRejected) as info:
        download_bundle(m, tmp_path / "stage")
    assert info.value.reason == "size_mismatch"


def test_unreachable_url_fails_with_fetch_failed(tmp_path: Path) -> None:
    entry = FileEntry(path="x", sha256="0" * 64, size=1)
    with pytest.raises(OtaError) as info:
        download_file("file:///nonexistent/x", entry, tmp_path / "x")
    assert info.value.reason == "fetch_failed" and not isinstance(info.value, OtaRejected)
    with pytest.raises(OtaRejected, match="scheme"):
        download_file("ftp://127.0.0.1/x", entry, tmp_path / "x")
