"""The stats lines a person reads (trimmed record, monitor figures, the summary on stop) and the
daemon's SIGINT handling (a second Ctrl-C stops waiting), with real signals."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest

from agent.app.signals import install_signals, restore_signals
from agent.app.statslog import log_stats, log_summary, stats_record
from agent.core.logs import STATS_LOGGER
from agent.pipeline.stats import PipelineStats, SourceFigures, StageLatency


def _stats(results: int = 300, dropped: int = 2, total: float = 9.0) -> PipelineStats:
    lat = {
        "queue": StageLatency(0.5, 3.0),
        "infer": StageLatency(4.0, 6.0),
        "total": StageLatency(total, total * 2),
    }
    cam = SourceFigures("streaming", 15.0, results, 0, dropped, 0, 0, 0)
    return PipelineStats(
        model="det", precision="int8", fps_cap=None, shedding=False, engine="e1", workers=2,
        mean_batch=1.0, nan_outputs=0, swaps=0, worker_restarts=0, sources={"cam": cam},
        latency_ms=lat, sink_errors=0,
    )  # fmt: skip


def test_stats_record_is_trimmed_to_what_the_line_says() -> None:
    full, trimmed = json.dumps(_stats().to_json()), json.dumps(stats_record(_stats()))
    assert len(trimmed) < len(full)
    record = stats_record(_stats())
    assert record["sources"]["cam"] == {
        "state": "streaming", "fps": 15.0, "results": 300, "dropped": 2, "errors": 0,
    }  # fmt: skip
    assert set(record["latency_ms"]) == {"infer", "total"}


def test_stats_line_carries_governor_power_and_temperature(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = {"governor": {"state": "thermal_fps", "counters": {}}, "energy": {}}
    reading = {"board_power_w": 12.34, "max_temp_c": 71.6, "memory_used_pct": 40.0}
    with caplog.at_level(logging.INFO, logger=STATS_LOGGER):
        log_stats(_stats(), monitor, reading)
        log_stats(_stats(), {}, {})  # no monitor: no tail
    first, second = caplog.records
    assert first.getMessage() == (
        "det int8 ×2: cam 15.0 fps, 2 dropped; latency p50/p99 9.0/18.0 ms (infer 4.0/6.0); "
        "governor thermal_fps; 12.3 W; 72 °C"
    )
    fields = first.fields  # type: ignore[attr-defined]
    assert fields["governor"] == {"state": "thermal_fps"}
    assert fields["power_w"] == 12.34 and fields["temp_c"] == 71.6
    assert second.getMessage().endswith("(infer 4.0/6.0)")


def test_summary_adds_pipelines_up(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=STATS_LOGGER):
        log_summary([_stats(300, 2, 9.0), _stats(150, 1, 12.0)], "SIGINT", 31.04, 30.0)
        log_summary([], "SIGINT during start-up", 2.0, None)
    served, early = caplog.records
    assert served.getMessage() == (
        "stopped (SIGINT) after 31.0 s: 450 frames, 15.0 fps, 3 dropped, "
        "latency p50/p99 12.0/24.0 ms"
    )
    assert served.fields["frames"] == 450 and served.fields["event"] == "stop"  # type: ignore[attr-defined]
    assert early.getMessage() == "stopped (SIGINT during start-up) after 2.0 s: 0 frames, 0 dropped"


class _Daemon:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.reloads = 0

    @property
    def stop_requested(self) -> bool:
        return bool(self.reasons)

    def request_stop(self, reason: str) -> None:
        self.reasons.append(reason)

    def request_reload(self) -> None:
        self.reloads += 1


def test_a_second_ctrl_c_stops_waiting_for_the_drain() -> None:
    daemon = _Daemon()
    previous = install_signals(daemon)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        assert daemon.reasons == ["SIGTERM"] and daemon.reloads == 1
        os.kill(os.getpid(), signal.SIGTERM)  # systemd repeating itself: still a clean stop
        assert daemon.reasons == ["SIGTERM", "SIGTERM"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # stopping already: Ctrl-C again → exit 130
    finally:
        restore_signals(previous)
    assert signal.getsignal(signal.SIGINT) is previous[signal.SIGINT]
