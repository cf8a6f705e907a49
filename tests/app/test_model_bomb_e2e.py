"""The model bomb against the running daemon: a real Mosquitto, the daemon as a subprocess
(``python -m agent run``) serving the shapes classifier, a signed push (``edge-agent push``) of
a 294 KB bundle whose ``ConstantOfShape`` makes a 16000×16000 int64 tensor. The build child
runs out of memory under its cap, the update ends ``failed`` / ``build_failed`` naming the out
of memory, the old model keeps serving, and the daemon's peak resident memory (VmHWM of
``/proc/<daemon pid>/status``, reset just before the push) grows by less than 128 MiB."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.assets import REPO
from tests.helpers.broker import Broker, Collector
from tests.helpers.model_bomb import bomb_bundle
from tests.helpers.ota_e2e_util import (
    Daemon,
    copy_bundle,
    keygen,
    run_cli,
    wait_until,
    write_bright_video,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

FLEET = "bomb"
DEVICE = "target"
PEAK_GROWTH_MIB = 128
CAP_MIB = 1024


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


class DaemonPeak:
    """The daemon's peak RSS from now on: its VmHWM reset (``/proc/<pid>/clear_refs``) where
    allowed, and its VmRSS sampled every 20 ms either way."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.hwm_reset = False
        try:
            with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
            self.hwm_reset = True
        except OSError:
            pass
        self.before_kib = _status_kib(pid, "VmRSS")
        self.sampled_kib = self.before_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.sampled_kib = max(self.sampled_kib, _status_kib(self.pid, "VmRSS"))
            except (OSError, AssertionError):
                return

    def growth_mib(self) -> float:
        self._stop.set()
        self._thread.join(5)
        hwm = _status_kib(self.pid, "VmHWM") if self.hwm_reset else 0
        return (max(hwm, self.sampled_kib) - self.before_kib) / 1024.0


def _profile(directory: Path) -> Path:
    directory.mkdir(parents=True)
    doc = yaml.safe_load((REPO / "device_profiles" / "cpu.yaml").read_text())
    doc["telemetry"]["interval_s"] = 0.5
    doc["build"]["build_memory_cap_mib"] = CAP_MIB
    (directory / "cpu.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


@pytest.fixture
def daemon(tmp_path: Path, broker: Broker) -> Iterator[tuple[Daemon, Collector, Path]]:
    key, pub = keygen(tmp_path / "keys", "fleet")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "fleet.pub").write_bytes(pub.read_bytes())
    config = write_config(
        tmp_path / "agent.yaml", fleet=FLEET, device=DEVICE,
        bundle=copy_bundle(tmp_path / "base"), video=write_bright_video(tmp_path / "v.mp4"),
        state_dir=tmp_path / "state", trust_dir=trust,
    )  # fmt: skip
    doc = yaml.safe_load(config.read_text())
    doc["models"][0]["precision"] = "fp32"  # a quicker cold start; the bomb fails before
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    topic = f"edge/{FLEET}/{DEVICE}"
    watch = Collector(broker.url, [f"{topic}/model", f"{topic}/metrics"])
    proc = Daemon(
        config, cache_dir=tmp_path / "cache", profiles_dir=_profile(tmp_path / "profiles"),
        mqtt_url=broker.url, log=tmp_path / "daemon.log",
    )  # fmt: skip
    try:
        wait_until(lambda: _metrics(watch, topic) or not proc.alive(), 120, "the daemon serving")
        assert proc.alive(), proc.tail()
        yield proc, watch, key
    finally:
        proc.stop()
        watch.close()


def _metrics(watch: Collector, topic: str) -> dict[str, Any] | None:
    found = [m.json() for m in watch.on(f"{topic}/metrics")]
    return next((m for m in reversed(found) if "model" in m), None)


def test_model_bomb_is_refused_in_the_child_and_the_daemon_stays_small(
    daemon: tuple[Daemon, Collector, Path], tmp_path: Path, broker: Broker
) -> None:
    proc, watch, key = daemon
    topic = f"edge/{FLEET}/{DEVICE}"
    serving = _metrics(watch, topic)
    assert serving is not None
    bomb = bomb_bundle(tmp_path / "bomb", version=2)
    assert (bomb / "model.onnx").stat().st_size < 300_000  # small file, huge tensor
    peak = DaemonPeak(proc.pid)
    res = run_cli(
        "push", str(bomb), "--key", str(key), "--version", "2", "--url", bomb.as_uri(),
        "--device", DEVICE, "--fleet", FLEET, "--mqtt-url", broker.url, "--wait", "0",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr

    def final() -> dict[str, Any] | None:
        assert proc.alive(), proc.tail()
        states = [m.json() for m in watch.on(f"{topic}/model")]
        done = {"active", "rejected", "failed", "rolled_back"}
        return next((s for s in states if s.get("version") == 2 and s["state"] in done), None)

    state = wait_until(final, 120, f"the bomb's update to end\n{proc.tail()}")
    growth = peak.growth_mib()
    assert state["state"] == "failed" and state["reason"] == "build_failed", state
    assert "out of memory" in state["detail"], state
    assert "building" in state["transitions"], state
    assert growth < PEAK_GROWTH_MIB, f"daemon peak RSS grew {growth:.0f} MiB"
    # the committed model keeps serving
    now = time.time()
    after = wait_until(lambda: _metrics_after(watch, topic, now), 20, "fresh metrics")
    assert after["model"]["engine_hash"] == serving["model"]["engine_hash"]
    print(json.dumps({"daemon_peak_growth_mib": round(growth, 1), "hwm_reset": peak.hwm_reset}))


def _metrics_after(watch: Collector, topic: str, ts: float) -> dict[str, Any] | None:
    found = [m.json() for m in watch.on(f"{topic}/metrics")]
    return next((m for m in found if m.get("ts", 0) > ts and "model" in m), None)
