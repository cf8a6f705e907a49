"""The sampler thread: survives broken sources and callbacks, keeps its schedule, stops on time."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import pytest

from agent.monitor.sample import MemorySample, Sample
from agent.monitor.sampler import Sampler, sanitize


def good(ts: float = 1.0) -> Sample:
    return Sample(
        ts=ts,
        source="fake",
        power_w={"VDD_IN": 7.2},
        board_power_w=7.2,
        temps_c={"tj-thermal": 51.0},
        memory=MemorySample(total_mib=7620.0, available_mib=4000.0),
        gpu_load_pct=40.0,
        cpu_load_pct=20.0,
        power_mode="25W",
        throttling={"oc_alarm": False},
    )


class FlakySource:
    """Cycles: good, OSError, garbage return, ValueError, a Sample full of garbage, good..."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    def read(self) -> Any:
        self.calls += 1
        kind = self.calls % 5
        if kind == 1:
            return good(float(self.calls))
        if kind == 2:
            raise OSError("i2c bus timeout")
        if kind == 3:
            return {"not": "a sample"}
        if kind == 4:
            raise ValueError("bad reading")
        return Sample(
            ts=float(self.calls),
            source="flaky",
            power_w={"VDD_IN": math.nan, "VDD_SOC": -3.0},
            board_power_w=math.inf,
            temps_c={"tj-thermal": 9000.0, "cpu-thermal": "hot"},  # type: ignore[dict-item]
            memory=MemorySample(total_mib=-1.0, available_mib=math.nan),
            gpu_load_pct=250.0,
            cpu_load_pct=True,  # type: ignore[arg-type]
            power_mode=42,  # type: ignore[arg-type]
            throttling={"thermal": "yes"},  # type: ignore[dict-item]
        )

    def close(self) -> None:
        self.closed = True


class StuckSource:
    name = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()

    def read(self) -> Sample:
        self.release.wait(5.0)
        return good()

    def close(self) -> None:
        self.release.set()


def test_errors_become_unknown_samples_with_one_warning_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[Sample] = []
    sampler = Sampler(FlakySource(), 1.0, on_sample=got.append, wall_clock=lambda: 123.0)
    with caplog.at_level(logging.WARNING, logger="agent.monitor.sampler"):
        for _ in range(20):
            sampler.tick()
    assert len(got) == 20
    errors = [s for s in got if s.source == "flaky:error"]
    assert len(errors) == 12  # OSError, garbage and ValueError, 4 rounds each
    for s in errors:
        assert s.ts == 123.0
        assert s.board_power_w is None and s.max_temp_c is None and s.memory.used_pct is None
        assert s.power_w == {} and s.temps_c == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert any("OSError: i2c bus timeout" in w for w in warnings)
    assert any("returned dict, not a Sample" in w for w in warnings)
    assert sampler.errors == 12 and sampler.reads == 20


def test_garbage_fields_become_unknown() -> None:
    source = FlakySource()
    source.calls = 4  # next read returns the garbage Sample
    sampler = Sampler(source, 1.0, on_sample=lambda _s: None)
    s = sampler.read_once()
    assert s.source == "flaky"
    assert s.power_w == {"VDD_IN": None, "VDD_SOC": None}
    assert s.board_power_w is None
    assert s.temps_c == {"tj-thermal": None, "cpu-thermal": None}
    assert s.memory.used_pct is None
    assert s.gpu_load_pct is None and s.cpu_load_pct is None
    assert s.power_mode is None
    assert s.throttling == {}
    assert sampler.latest is s
    assert sanitize(good()) == good()


def test_callback_exceptions_are_logged_and_sampling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Sample] = []

    def callback(sample: Sample) -> None:
        seen.append(sample)
        if len(seen) % 2:
            raise RuntimeError("consumer bug")

    sampler = Sampler(FlakySource(), 0.002, on_sample=callback)
    with caplog.at_level(logging.ERROR, logger="agent.monitor.sampler"):
        sampler.start()
        deadline = time.monotonic() + 5.0
        while len(seen) < 12 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sampler.running
        assert sampler.stop(timeout=2.0)
    assert len(seen) >= 12
    assert sampler.callback_errors >= 6
    assert any("callback failed" in r.getMessage() for r in caplog.records)
    assert not sampler.running
    assert sampler.latest is not None


def test_thread_survives_a_source_that_always_raises() -> None:
    class Broken:
        name = "broken"

        def read(self) -> Sample:
            raise RuntimeError("no device")

        def close(self) -> None:
            pass

    got: list[Sample] = []
    sampler = Sampler(Broken(), 0.002, on_sample=got.append)
    sampler.start()
    deadline = time.monotonic() + 5.0
    while len(got) < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sampler.running
    assert sampler.stop(timeout=2.0)
    assert len(got) >= 10
    assert all(s.source == "broken:error" for s in got)


def test_stop_returns_within_bound_even_when_a_read_is_stuck() -> None:
    source = StuckSource()
    sampler = Sampler(source, 0.01, on_sample=lambda _s: None)
    sampler.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    assert sampler.stop(timeout=0.2) is False
    assert time.monotonic() - t0 < 1.0
    source.close()  # unblock the daemon thread
    assert sampler.stop(timeout=2.0) is True


def test_stop_is_prompt_with_a_long_interval() -> None:
    sampler = Sampler(FlakySource(), 30.0, on_sample=lambda _s: None)
    sampler.start()
    time.sleep(0.02)
    t0 = time.monotonic()
    assert sampler.stop(timeout=2.0)
    assert time.monotonic() - t0 < 0.5
    assert sampler.reads == 1
    assert sampler.stop() is True  # idempotent


def test_schedule_is_drift_free_and_skips_missed_ticks() -> None:
    """Reads that take 60 % of the interval do not push later ticks back; a read that takes
    2.5 intervals skips the missed ticks instead of bunching them up."""
    interval = 0.08
    starts: list[float] = []

    class Slow:
        name = "slow"

        def read(self) -> Sample:
            starts.append(time.monotonic())
            time.sleep(interval * (2.5 if len(starts) == 4 else 0.6))
            return good()

        def close(self) -> None:
            pass

    sampler = Sampler(Slow(), interval, on_sample=lambda _s: None)
    sampler.start()
    deadline = time.monotonic() + 5.0
    while len(starts) < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sampler.stop(timeout=2.0)
    t0 = starts[0]
    offsets = [(s - t0) / interval for s in starts[:9]]
    # Ticks land on the grid (no accumulated drift): 0, 1, 2, 3, then 6, 7, 8 ...
    grid = [0, 1, 2, 3, 6, 7, 8, 9, 10]
    for got, want in zip(offsets, grid, strict=True):
        assert got == pytest.approx(want, abs=0.4)
    assert sampler.missed_ticks == 2


def test_rejects_bad_interval_and_double_start() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        Sampler(FlakySource(), 0.0, on_sample=lambda _s: None)
    sampler = Sampler(FlakySource(), 10.0, on_sample=lambda _s: None)
    with sampler, pytest.raises(RuntimeError, match="already running"):
        sampler.start()
    assert not sampler.running
