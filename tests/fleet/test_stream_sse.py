"""``GET /api/stream`` against a real controller, Mosquitto and simulated devices: a device's
change arrives within 2 s, events of one device are coalesced, the 33rd client gets 503, and
stopping the controller ends every stream."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.fleet.keygen import generate_keypair
from agent.fleet.sim import SimConfig, SimFleet
from tests.helpers.broker import Broker
from tests.helpers.fleet_controller import fleet_config, request, running, wait_for

FLEET = "ssef"


class SseReader:
    """One raw stream: the status line, then ``(time, event, data)`` as they arrive."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(
            b"GET /api/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.file = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            self.headers[name.lower()] = value.strip()
        self.events: list[tuple[float, str, Any]] = []
        self.comments: list[str] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._thread.start()

    def _read(self) -> None:
        name, data = "message", ""
        try:
            for raw in self.file:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data += line.removeprefix("data: ")
                elif line == "" and data:
                    self.events.append((time.monotonic(), name, json.loads(data)))
                    name, data = "message", ""
        except (OSError, ValueError):  # closed here
            pass
        self.ended.set()

    def of(self, name: str) -> list[Any]:
        return [doc for _, event, doc in list(self.events) if event == name]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.file.close()


def _is(name: str, doc: Any, device: str) -> bool:
    return name == "device" and doc["device"] == device


def _open(url: str) -> SseReader | None:
    reader = SseReader(url)
    if reader.status == 200:
        return reader
    reader.close()
    return None


@pytest.fixture
def sims(broker: Broker, tmp_path: Path) -> Iterator[SimFleet]:
    generate_keypair(tmp_path / "keys", "ops")
    cfg = SimConfig(
        mqtt_url=broker.url, trust_dir=tmp_path / "keys", devices=3, fleet=FLEET, prefix="cam",
        interval_s=0.05, step_s=0.01, seed=9,
    )  # fmt: skip
    with SimFleet(cfg) as fleet:
        assert fleet.wait_connected(15)
        yield fleet


def test_changes_arrive_live_and_coalesced(broker: Broker, sims: SimFleet, tmp_path: Path) -> None:
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=None)
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        wait_for(lambda: len(request(url, "GET", "/api/devices")[1]["devices"]) == 3, 15, "sims")
        reader = SseReader(url)
        try:
            assert reader.status == 200
            assert reader.headers["content-type"].startswith("text/event-stream")
            assert reader.headers["cache-control"] == "no-cache"
            summary = wait_for(lambda: reader.of("summary"), 5, "a first summary")[0]
            assert summary["devices"]["total"] == 3
            # metrics every 0.05 s per device: events of one device come at most every 0.5 s
            time.sleep(3.0)
            times = [t for t, name, doc in reader.events if _is(name, doc, "cam-0000")]
            assert 2 <= len(times) <= 8, times
            assert all(b - a >= 0.45 for a, b in itertools.pairwise(times))
            # a device that goes offline shows up as offline within 2 s
            seen = len(reader.events)
            sims.take_offline(["cam-0001"], clean=True)
            offline = wait_for(
                lambda: [
                    doc for _, name, doc in reader.events[seen:]
                    if _is(name, doc, "cam-0001") and doc["status"] == "offline"
                ], 2.0, "cam-0001 offline over the stream", step=0.02,
            )  # fmt: skip
            assert offline[0]["online"] is False and offline[0]["seen_ago_s"] >= 0
            wait_for(lambda: len(reader.of("summary")) >= 2, 5, "a periodic summary")
        finally:
            reader.close()


def test_client_cap_and_clean_shutdown(broker: Broker, tmp_path: Path) -> None:
    cfg = fleet_config(tmp_path, broker.url, fleet=FLEET, token_file=None)
    readers: list[SseReader] = []
    with running(cfg, tmp_path) as ctl:
        url = ctl.api_url
        try:
            readers = [SseReader(url) for _ in range(32)]
            assert [r.status for r in readers] == [200] * 32
            extra = SseReader(url)
            assert extra.status == 503
            extra.close()
            # ordinary requests still fit beside 32 streams
            assert request(url, "GET", "/api/health")[0] == 200
            readers.pop().close()
            readers.append(wait_for(lambda: _open(url), 5, "a free slot"))
        except BaseException:
            for reader in readers:
                reader.close()
            raise
    # the controller stopped: every stream ended (no thread left writing to them)
    for reader in readers:
        assert reader.ended.wait(5)
        reader.close()
