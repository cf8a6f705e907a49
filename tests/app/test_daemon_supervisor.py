"""Supervision: a component that keeps failing is restarted within its budget, then the daemon
exits with code 3 so that systemd restarts the service; the progress watch; the state table."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.app.exits import ExitCode, RestartBudgetSpent
from agent.app.lifecycle import TRANSITIONS, DaemonState
from agent.app.runconfig import DaemonOptions
from agent.app.service import build_service
from agent.app.supervisor import ProgressWatch, Supervisor
from agent.app.systemd import Notifier
from agent.core.errors import InternalError
from agent.core.lifecycle import Activity, Health
from tests.assets import DET_BUNDLE as BUNDLE
from tests.assets import DET_CALIB as CALIB


class CrashingWorker:
    """A real component: a thread that does some work and then dies with an exception."""

    def __init__(self, name: str = "crasher", life_s: float = 0.05) -> None:
        self.name = name
        self.life_s = life_s
        self.starts = 0
        self.stops = 0
        self.thread: threading.Thread | None = None

    def _work(self) -> None:
        time.sleep(self.life_s)
        raise RuntimeError("simulated decoder crash")

    def start(self) -> None:
        self.starts += 1
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def stop(self, timeout: float) -> None:
        self.stops += 1
        if self.thread is not None:
            self.thread.join(timeout)

    def health(self) -> Health:
        if self.thread is None or not self.thread.is_alive():
            return Health(failure="worker thread died")
        return Health(activities=(Activity("alive", False, 0),))

    def snapshot(self) -> dict[str, Any]:
        return {"starts": self.starts}


def test_supervisor_restarts_within_budget_then_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threading, "excepthook", lambda _args: None)  # expected crashes
    now = [0.0]
    sup = Supervisor(3, 60.0, clock=lambda: now[0])
    comp = CrashingWorker()
    comp.start()
    restarts = 0
    with pytest.raises(RestartBudgetSpent) as info:
        for _ in range(100):
            assert comp.thread is not None
            comp.thread.join(5)
            if sup.check(comp, comp.health()):
                restarts += 1
            now[0] += 1.0
    assert restarts == 3 and comp.starts == 4
    assert sup.restarts == {"crasher": 3}
    assert info.value.exit_code == ExitCode.RESTART_BUDGET == 3
    assert "daemon.restart_budget" in str(info.value)  # the message says what to change


def test_a_restart_that_raises_is_logged_and_counted_against_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A component whose start() raises on restart (e.g. the camera device vanished) does not
    take the main loop down: it is logged, stays failed, and is retried within the budget."""
    now = [0.0]
    sup = Supervisor(2, 60.0, clock=lambda: now[0])
    comp = CrashingWorker("flaky")
    attempts: list[float] = []

    def broken_start() -> None:
        attempts.append(now[0])
        raise OSError(19, "No such device", "/dev/video0")

    comp.start = broken_start  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="agent.app.supervisor"):
        assert not sup.check(comp, Health(failure="worker thread died"))
        now[0] += 1.0
        # its health no longer reports the old failure; the failed restart still counts
        assert not sup.check(comp, Health())
        now[0] += 1.0
        with pytest.raises(RestartBudgetSpent, match=r"restart failed: OSError"):
            sup.check(comp, Health())
    assert attempts == [0.0, 1.0] and sup.restarts == {"flaky": 2}
    assert sum("restarting flaky failed" in r.getMessage() for r in caplog.records) == 2


def test_budget_window_slides() -> None:
    now = [0.0]
    sup = Supervisor(2, 10.0, clock=lambda: now[0])
    comp = CrashingWorker()
    failed = Health(failure="dead")
    comp.start = lambda: None  # type: ignore[method-assign]
    assert sup.check(comp, failed)
    now[0] = 5.0
    assert sup.check(comp, failed)
    now[0] = 16.0  # both earlier restarts are out of the window
    assert sup.check(comp, failed)
    assert not sup.check(comp, Health())


def test_progress_watch() -> None:
    now = [0.0]
    watch = ProgressWatch(2.0, clock=lambda: now[0])

    def health(busy: bool, progress: int) -> dict[str, Health]:
        return {"p": Health(activities=(Activity("results", busy, progress),))}

    assert watch.update(health(True, 1)) == []
    now[0] = 1.5
    assert watch.update(health(True, 1)) == []
    now[0] = 2.6  # busy, no progress for 2.6 s
    stuck = watch.update(health(True, 1))
    assert stuck and stuck[0].startswith("p/results: no progress for 2.6s")
    now[0] = 2.7
    assert watch.update(health(True, 2)) == []  # progress again
    now[0] = 10.0
    assert watch.update(health(False, 2)) == []  # idle by design is never stuck
    now[0] = 11.0
    assert watch.update(health(True, 2)) == []  # becoming busy starts a new clock


def test_state_table() -> None:
    assert DaemonState.READY in TRANSITIONS[DaemonState.STARTING]
    assert TRANSITIONS[DaemonState.STOPPED] == frozenset()
    daemon = build_service(DaemonOptions(), notifier=Notifier(None))
    with pytest.raises(InternalError):
        daemon._to(DaemonState.RELOADING)  # starting → reloading is not allowed


@pytest.mark.timeout(180)
def test_daemon_exits_3_when_a_component_keeps_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real daemon (real engine, synthetic camera, pipeline) with one component that
    crashes every time: restarted within the budget, then run() returns 3."""
    monkeypatch.setattr(threading, "excepthook", lambda _args: None)
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""device_id: t
fleet: t
profile: cpu
models:
  - {{name: shapes-det, bundle: {BUNDLE}, calib_dir: {CALIB}}}
sources:
  - {{name: cam, type: synthetic, model: shapes-det, fps_cap: 20}}
daemon:
  restart_budget: 2
  restart_window_s: 60
"""
    )
    daemon = build_service(
        DaemonOptions(config_path=config, cache_dir=tmp_path / "cache", monitor=False),
        notifier=Notifier(None),
    )
    crasher = CrashingWorker(life_s=0.3)
    daemon.add_component(crasher)
    started = time.monotonic()
    code = daemon.run()
    assert code == ExitCode.RESTART_BUDGET
    assert daemon.state is DaemonState.FAILED
    assert crasher.starts == 3  # first start + 2 restarts
    assert daemon.supervisor.restarts == {"crasher": 2}
    assert time.monotonic() - started < 150
    out = capsys.readouterr().out
    assert out.count('"event": "restart"') == 2
    assert "restart budget of 2 per 60 s is spent" in out
    assert not daemon.pipelines, "the pipelines were stopped on the way out"


@pytest.mark.timeout(180)
def test_a_crashed_decode_thread_restarts_its_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source whose decode thread crashes (an exception out of the capture, injected into the
    real synthetic source once) is reported by Pipeline.health(); the supervisor restarts that
    model's pipeline and frames flow again."""
    from agent.pipeline.sources import synthetic as sources

    original = sources.SyntheticSource._read
    calls = {"n": 0}

    def flaky_read(self: sources.SyntheticSource) -> Any:
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("capture driver bug")
        return original(self)

    monkeypatch.setattr(sources.SyntheticSource, "_read", flaky_read)
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""device_id: t
fleet: t
profile: cpu
models:
  - {{name: shapes-det, bundle: {BUNDLE}, calib_dir: {CALIB}}}
sources:
  - {{name: cam, type: synthetic, model: shapes-det, fps_cap: 20}}
daemon: {{stats_interval_s: 1}}
"""
    )
    daemon = build_service(
        DaemonOptions(
            config_path=config, cache_dir=tmp_path / "cache", monitor=False, duration_s=5.0
        ),
        notifier=Notifier(None),
    )
    assert daemon.run() == ExitCode.OK
    assert daemon.supervisor.restarts == {"pipeline:shapes-det": 1}
    out = capsys.readouterr().out
    assert "decode thread died" in out or "decode thread crashed" in out
    final = [ln for ln in out.splitlines() if '"event": "final_stats"' in ln]
    assert final and '"state": "stopped"' in final[-1]
    results_after = int(final[-1].split('"results": ')[1].split(",")[0])
    assert results_after > 10, "the restarted pipeline serves frames again"
