"""The real daemon (``python -m agent run``) under a real NOTIFY_SOCKET with a 1 s watchdog:
READY after the first frame, WATCHDOG while frames flow and not while the pipeline is stuck,
SIGHUP with an invalid then a valid config, STOPPING and exit 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.assets import DET_BUNDLE as BUNDLE
from tests.assets import DET_CALIB as CALIB
from tests.assets import REPO
from tests.helpers.mjpeg_server import MjpegServer

pytestmark = pytest.mark.timeout(240)


class NotifyListener:
    """Binds a datagram socket like systemd does and records (time, fields) per message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.lock:
                self.messages.append((time.monotonic(), fields))

    def since(self, t: float, key: str) -> list[tuple[float, dict[str, str]]]:
        with self.lock:
            return [(ts, f) for ts, f in self.messages if ts >= t and key in f]

    def wait_for(self, key: str, after: float, timeout: float) -> tuple[float, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.since(after, key)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {key} within {timeout}s; got {self.messages[-10:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Agent:
    """The daemon as a subprocess; stdout JSON lines collected on a thread."""

    def __init__(self, config: Path, cache: Path, notify: Path, watchdog_usec: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.update(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC=str(watchdog_usec))
        command = [sys.executable, "-m", "agent", "run", "--config", str(config)]
        command += ["--cache-dir", str(cache), "--no-monitor"]
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[str] = []
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                with self.lock:
                    self.records.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    def find(self, pred: Callable[[dict], bool]) -> list[dict]:
        with self.lock:
            return [r for r in self.records if pred(r)]

    def wait_record(self, pred: Callable[[dict], bool], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(pred)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no such record; stderr tail: {''.join(self._stderr)[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _config(path: Path, sources: str, *, level: str = "info") -> None:
    path.write_text(
        f"""device_id: test-dev
fleet: test
profile: cpu
models:
  - name: shapes-det
    bundle: {BUNDLE}
    calib_dir: {CALIB}
sources:
{sources}
logging:
  level: {level}
daemon:
  progress_timeout_s: 2
  stats_interval_s: 0.5
  stop_timeout_s: 5
"""
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("daemon-cache")


def test_ready_watchdog_stuck_reload_and_stop(tmp_path: Path, cache: Path) -> None:
    server = MjpegServer(fps=15).start()
    listener = NotifyListener(tmp_path / "notify.sock")
    config = tmp_path / "agent.yaml"
    # A long stall timeout: the source itself will not notice the frozen camera in this test,
    # so a streaming source without frames for > progress_timeout_s is "stuck".
    http = f"  - {{name: cam, type: http, uri: '{server.url}', model: shapes-det, "
    http += "stall_timeout_s: 60}"
    _config(config, http)
    agent = Agent(config, cache, listener.path, watchdog_usec=1_000_000)
    try:
        # READY=1 only once a frame has gone through
        t_ready, ready = listener.wait_for("READY", 0.0, timeout=150)
        record = agent.wait_record(lambda r: r.get("event") == "ready", 10)
        assert record["frames"] >= 1
        assert "shapes-det" in ready.get("STATUS", "")
        assert not listener.since(0.0, "WATCHDOG") or listener.since(0.0, "WATCHDOG")[0][0] >= (
            t_ready - 0.01
        ), "no watchdog ping before READY"

        # frames flow → a ping every ~0.5 s (half of WATCHDOG_USEC)
        time.sleep(2.5)
        flowing = listener.since(t_ready, "WATCHDOG")
        assert len(flowing) >= 3, flowing
        assert listener.since(t_ready, "STATUS"), "STATUS= follows the stats line"

        # the camera freezes (connection open, no frames): after progress_timeout_s the
        # source is stuck and the pings stop
        server.pause()
        t_pause = time.monotonic()
        time.sleep(6.5)
        # last frame ≤ pause (+ what was in flight) → stuck 2 s later → at most one more ping
        late = listener.since(t_pause + 3.5, "WATCHDOG")
        assert late == [], f"pings while stuck: {late}"
        stuck = agent.wait_record(lambda r: r.get("event") == "stuck", 5)
        assert "source:cam" in stuck["msg"]
        assert any("STUCK" in f.get("STATUS", "") for _, f in listener.since(t_pause, "STATUS"))

        # frames again → pings again
        server.resume()
        t_resume = time.monotonic()
        listener.wait_for("WATCHDOG", t_resume, timeout=10)

        # SIGHUP with an invalid config: rejected, old config kept, still serving and pinging
        config.write_text(config.read_text().replace("fleet: test", "fleet: test\nflet: oops"))
        t_hup = time.monotonic()
        agent.proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING", t_hup, timeout=10)
        t_back, back = listener.wait_for("READY", t_hup, timeout=10)
        assert "reload rejected" in back.get("STATUS", "")
        rejected = agent.wait_record(
            lambda r: r.get("event") == "reload" and r.get("ok") is False, 5
        )
        assert rejected["file"] == str(config) and rejected["line"] == 3
        assert f"{config}:3: flet" in rejected["msg"]
        time.sleep(1.5)
        assert len(listener.since(t_back, "WATCHDOG")) >= 2
        assert agent.proc.poll() is None

        # SIGHUP with a valid, changed config: a second source and the debug level
        two = http + "\n  - {name: synth, type: synthetic, model: shapes-det, fps_cap: 10}"
        _config(config, two, level="debug")
        # ... and a section read only at start (Prometheus stays off): reported, not applied
        config.write_text(config.read_text() + "metrics:\n  enabled: false\n  port: 9309\n")
        t_hup2 = time.monotonic()
        agent.proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING", t_hup2, timeout=10)
        listener.wait_for("READY", t_hup2, timeout=60)
        applied = agent.wait_record(
            lambda r: r.get("event") == "reload" and r.get("ok") is True, 10
        )
        assert applied["restarted"] == ["shapes-det"] and applied["level"] == "debug"
        restart = agent.wait_record(lambda r: "restart_needed" in r, 5)
        assert restart["restart_needed"] == ["metrics"] and restart["level"] == "warning"
        agent.wait_record(
            lambda r: (
                r.get("event") == "stats"
                and r["stats"]["sources"].get("synth", {}).get("results", 0) > 0
            ),
            20,
        )
        assert agent.find(lambda r: r.get("level") == "debug"), "the new log level applies"
        t_new = time.monotonic()
        time.sleep(1.5)
        assert len(listener.since(t_new, "WATCHDOG")) >= 2

        # SIGTERM: STOPPING=1, drain, exit 0 within the stop timeout
        t_term = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(timeout=30)
        took = time.monotonic() - t_term
        assert agent.proc.returncode == 0, "".join(agent._stderr)[-2000:]
        assert took < 5 + 5, took
        listener.wait_for("STOPPING", t_term, timeout=2)
        final = agent.wait_record(lambda r: r.get("event") == "stop", 5)
        assert final["reason"] == "SIGTERM"
    finally:
        agent.stop()
        listener.close()
        server.stop()
