"""An attacker on the broker for the hostile-input OTA tests: one persistent MQTT publisher,
the forged / deep / padded messages of issue #14, the daemon's RSS and its drop counters (from
its ``ota.dropped`` log lines)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.ota_e2e_util import Daemon

PAD_BYTES = 250 * 1024


class Publisher:
    """One MQTT connection publishing at QoS 1 (waits for each PUBACK in batches)."""

    def __init__(self, url: str) -> None:
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.max_inflight_messages_set(64)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, int(port), keepalive=30)
        self.client.loop_start()

    def publish(self, topic: str, payloads: list[bytes], *, qos: int = 1) -> None:
        infos = [self.client.publish(topic, p, qos=qos) for p in payloads]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def forged_chunk(chunk: bytes) -> bytes:
    """A legitimate chunk with ``"count": 999``: the manifest sha256 is public."""
    return json.dumps(dict(json.loads(chunk), count=999)).encode()


def deep_message(depth: int = 100_000) -> bytes:
    return b"[" * depth + b"]" * depth


def padded_chunks(n: int, *, pad: int = PAD_BYTES) -> list[bytes]:
    """Chunk messages for unknown manifests: empty data, ``pad`` bytes of padding each."""
    return [
        json.dumps(
            {
                "kind": "chunk",
                "manifest_sha256": f"{i:064x}",
                "file": "model.onnx",
                "index": 0,
                "count": 1,
                "data": "",
                "pad": "A" * pad,
            }
        ).encode()
        for i in range(n)
    ]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssWatch:
    """The peak VmRSS of a process, sampled every ``step`` s on a thread."""

    def __init__(self, pid: int, step: float = 0.05) -> None:
        self.pid, self.step = pid, step
        self.start_mib = self.peak_mib = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.step):
            try:
                self.peak_mib = max(self.peak_mib, rss_mib(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self) -> float:
        """Stop sampling; the growth over the start, MiB."""
        self._stop.set()
        self._thread.join(5)
        return self.peak_mib - self.start_mib


def drop_counts(daemon: Daemon) -> dict[str, int]:
    """The daemon's latest ``ota.dropped`` summary (reason → count), {} when none yet."""
    found: dict[str, int] = {}
    for line in list(daemon.lines):
        if '"ota.dropped"' not in line:
            continue
        try:
            doc: Any = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("dropped"), dict):
            found = {str(k): int(v) for k, v in doc["dropped"].items()}  # pyright: ignore[reportUnknownVariableType,reportUnknownMemberType,reportUnknownArgumentType]
    return found


def wait_drops(daemon: Daemon, want: dict[str, int], timeout: float = 15.0) -> dict[str, int]:
    """Wait for a summary with at least ``want`` of each reason; the last summary either way."""
    deadline = time.monotonic() + timeout
    counts = drop_counts(daemon)
    while time.monotonic() < deadline:
        counts = drop_counts(daemon)
        if all(counts.get(k, 0) >= n for k, n in want.items()):
            break
        time.sleep(0.2)
    return counts


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
