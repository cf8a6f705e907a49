"""The daemon's metrics timer (agent.app.telemetry_component): a random first phase, then a
fixed cadence on it, independent of broker reconnects — deterministic with a seeded random."""

from __future__ import annotations

import random
from typing import Any

from agent.app.events import EventBus
from agent.app.telemetry_component import TelemetryComponent


def _timer(seed: int, interval: float = 10.0) -> tuple[TelemetryComponent, list[float]]:
    sent: list[float] = []
    now = [0.0]

    def metrics() -> dict[str, Any]:
        sent.append(now[0])
        return {}

    comp = TelemetryComponent(
        None, None, events=EventBus(), metrics=metrics, profile=lambda: None,
        interval_s=interval, rng=random.Random(seed),
    )  # fmt: skip
    original = comp.tick

    def tick(t: float) -> None:
        now[0] = t
        original(t)

    comp.tick = tick  # type: ignore[method-assign]
    return comp, sent


def test_first_report_waits_a_random_phase_then_keeps_it() -> None:
    comp, sent = _timer(5)
    phase = random.Random(5).uniform(0.0, 10.0)
    t = 0.0
    while t < 60.0:
        comp.tick(t)
        t = round(t + 0.25, 2)
    assert sent, "no report in 60 s"
    assert sent[0] >= phase and sent[0] - phase < 0.25  # not at start: at the drawn phase
    # later reports stay on that phase (no drift from tick lateness, no re-alignment)
    for k, at in enumerate(sent):
        assert phase + k * 10.0 <= at < phase + k * 10.0 + 0.25
    assert len(sent) == len([k for k in range(7) if phase + k * 10.0 < 60.0])


def test_devices_started_together_spread_over_the_interval() -> None:
    firsts = []
    for seed in range(40):
        comp, sent = _timer(seed)
        t = 0.0
        while not sent:
            comp.tick(t)
            t = round(t + 0.1, 2)
        firsts.append(sent[0])
    buckets = {int(f) for f in firsts}  # 1 s buckets over a 10 s interval
    assert len(buckets) >= 7 and max(firsts) - min(firsts) > 5.0


def test_a_shorter_interval_reports_at_once_and_a_late_tick_restarts_the_cadence() -> None:
    comp, sent = _timer(1, interval=10.0)
    comp.tick(0.0)
    comp.tick(11.0)  # phase < 10 passed: report, next slot on the phase
    assert sent == [11.0]
    comp.tick(100.0)  # far behind (a stalled loop): report now, cadence from now
    assert sent == [11.0, 100.0]
    comp.tick(109.9)
    comp.tick(110.0)
    assert sent == [11.0, 100.0, 110.0]
