"""The app's pure parts, each on its own: the event bus, readiness and STATUS, the metrics
mapping from typed pipeline stats, the reload plan, and the command handlers with no daemon."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest

from agent.app.control import DaemonControl
from agent.app.events import EventBus
from agent.app.metrics import metrics_body, stats_message
from agent.app.readiness import Readiness, status_line
from agent.app.reload import model_specs, restart_needed
from agent.app.runconfig import DaemonOptions, RunConfig
from agent.config.agent import AgentConfig
from agent.core.errors import EdgeAgentError
from agent.core.lifecycle import Activity, Health
from agent.pipeline.stats import PipelineStats, SourceFigures, StageLatency


def _stats(fps: float = 12.5, results: int = 40) -> PipelineStats:
    lat = {
        "infer": StageLatency(4.0, 6.0),
        "queue": StageLatency(None, None),
        "total": StageLatency(9.0, 15.0),
    }
    cam = SourceFigures("streaming", fps, results, 0, 2, 1, 0, 0)
    return PipelineStats(
        model="det", precision="int8", fps_cap=None, shedding=False, engine="e1", workers=2,
        mean_batch=1.0, nan_outputs=0, swaps=0, worker_restarts=0, sources={"cam": cam},
        latency_ms=lat, sink_errors=0,
    )  # fmt: skip


def _cfg(**extra: Any) -> AgentConfig:
    doc: dict[str, Any] = {
        "device_id": "d1",
        "fleet": "f",
        "models": [{"name": "det", "bundle": "b"}, {"name": "idle", "bundle": "c"}],
        "sources": [{"name": "cam", "type": "synthetic", "model": "det"}],
    }
    doc.update(extra)
    return AgentConfig.model_validate(doc)


def test_event_bus_throttles_progress_and_survives_a_failing_listener() -> None:
    now = [0.0]
    bus = EventBus(clock=lambda: now[0])
    got: list[tuple[str, dict[str, Any]]] = []

    def broken(kind: str, data: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    bus.subscribe(broken)
    bus.subscribe(lambda k, d: got.append((k, d)))
    bus.emit("source.state", {"state": "streaming"})
    bus.emit_throttled("build.progress", {"fraction": 0.1})
    bus.emit_throttled("build.progress", {"fraction": 0.2})  # within 1 s: dropped
    bus.emit_throttled("build.progress", {"fraction": 1.0})  # 100 % always goes out
    now[0] = 2.0
    bus.emit_throttled("build.progress", {"fraction": 0.5})
    assert [d.get("fraction", d.get("state")) for _, d in got] == ["streaming", 0.1, 1.0, 0.5]


def test_ready_after_the_first_frame_or_the_timeout() -> None:
    ready = Readiness(ready_timeout_s=5.0)
    ready.serving_since = 100.0
    idle = {"pipeline:det": Health(activities=(Activity("results", True, 0),))}
    assert not ready.ready_due(idle, 101.0)
    assert ready.ready_due(idle, 105.5)  # no frame at all: ready anyway after the timeout
    served = {"pipeline:det": Health(activities=(Activity("results", False, 3),))}
    assert Readiness(ready_timeout_s=60.0).ready_due(served, 0.0)


def test_stuck_withholds_the_watchdog_and_shows_in_status() -> None:
    ready = Readiness(ready_timeout_s=5.0)
    assert ready.may_ping(serving=True) and not ready.may_ping(serving=False)
    assert ready.note_stuck(["pipeline:det/results: no progress for 3.0s"])
    assert not ready.may_ping(serving=True)
    assert not ready.note_stuck(["pipeline:det/results: no progress for 3.1s"])  # no news
    line = status_line(
        "ready", {"det": _stats(), "gone": None}, governor="nominal", restarts=2, stuck=ready.stuck
    )
    assert line == (
        "ready: det 12.5 fps, 2 workers [cam streaming]; governor nominal; 2 restarts; "
        "STUCK: pipeline:det/results: no progress for 3.1s"
    )
    assert ready.note_stuck([]) and ready.may_ping(serving=True)


def test_metrics_body_and_stats_line_from_typed_stats() -> None:
    info = {"name": "det", "version": "1.0.0", "precision": "int8", "engine_hash": "ab"}
    body = metrics_body(12.0, {"det": _stats()}, {"det": info}, None)
    assert body == {
        "uptime_s": 12.0,
        "uptime_seconds": 12.0,
        "sources": {
            "cam": {
                "state": "streaming",
                "fps": 12.5,
                "latency_ms": {"p50": 9.0, "p99": 15.0},
                "latency_seconds": {"0.5": 0.009, "0.99": 0.015},
                "drops": 3,
                "frames": 40,
            }
        },
        "stages_ms": {"infer": 4.0},
        "stage_seconds": {"infer": {"0.5": 0.004, "0.99": 0.006}},
        "models": {"det": info},
        "model": info,
    }
    assert stats_message(_stats()) == (
        "det int8 ×2: cam 12.5 fps, 2 dropped; latency p50/p99 9.0/15.0 ms (infer 4.0/6.0)"
    )


def test_reload_plan_inputs() -> None:
    old, new = _cfg(), _cfg(metrics={"enabled": True, "port": 9400})
    assert list(model_specs(old)) == ["det"]  # a model without a source is not served
    assert restart_needed(old, new) == ["metrics"]
    assert restart_needed(old, old) == []


def test_control_asks_for_a_reload_and_a_profile_without_a_daemon(tmp_path: Path) -> None:
    config = RunConfig(DaemonOptions(config_path=tmp_path / "agent.yaml"))
    asked: list[str] = []
    control = DaemonControl(config, lambda _s: None, lambda: asked.append("reload"), lambda: None)
    assert control.config_json() == {}  # not started yet
    assert control.reload().startswith("reload of ")
    assert control.set_profile("cpu").startswith("profile cpu requested")
    assert asked == ["reload", "reload"] and config.profile_override == "cpu"
    config.settle_profile_override(applied=False)  # the reload failed: the override goes
    assert config.profile_override is None
    config.cfg = _cfg(mqtt={"password": "hunter2"})
    assert control.config_json()["mqtt"]["password"] == "***"
    with pytest.raises(EdgeAgentError, match="over-the-air updates are off"):
        control.rollback_model(None)


def test_rollback_answers_from_the_updater() -> None:
    config = RunConfig(DaemonOptions())
    config.cfg = _cfg()
    done: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
    done.set_result({"model": "det", "state": "rolled_back"})

    class Updater:
        def rollback(self, model: str) -> concurrent.futures.Future[dict[str, Any]]:
            return done

    control = DaemonControl(config, lambda _s: None, lambda: None, Updater)
    assert control.rollback_model(None) == {"model": "det", "state": "rolled_back"}
