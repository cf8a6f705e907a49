"""The governor driven by recorded sample sequences (1 s samples, realistic Orin values)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config.device import DeviceProfile
from agent.config.profiles.store import ProfileStore
from agent.monitor.governor.actions import ACTIONS, Decision, GovernorEvent
from agent.monitor.governor.limits import fps_floor
from agent.monitor.governor.machine import Governor
from agent.monitor.governor.states import GovernorState
from agent.monitor.sample import MemorySample, Sample

TOTAL_MIB = 15_656.0  # Orin NX 16GB MemTotal


@pytest.fixture(scope="module")
def nx16() -> DeviceProfile:
    """Orin NX 16GB: 3 streams; memory 80/92 %; 82/96 °C; hysteresis 5 %; dwell 10 s."""
    return ProfileStore().load("orin-nx-16gb")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def mk(
    ts: float,
    *,
    mem: float | None = 45.0,
    temp: float | None = 55.0,
    power: float | None = 11.0,
    mode: str | None = "25W",
) -> Sample:
    """A sample as the sysfs source would produce it on an Orin NX under load."""
    memory = (
        MemorySample(
            total_mib=TOTAL_MIB,
            used_mib=TOTAL_MIB * mem / 100 * 0.9,
            available_mib=TOTAL_MIB * (1 - mem / 100),
            swap_total_mib=7828.0,
            swap_used_mib=0.0,
        )
        if mem is not None
        else MemorySample()
    )
    temps: dict[str, float | None] = (
        {
            "cpu-thermal": temp - 1.8,
            "gpu-thermal": temp,
            "soc0-thermal": temp - 2.4,
            "tj-thermal": temp + 0.3,
        }
        if temp is not None
        else {"cpu-thermal": None, "gpu-thermal": None}
    )
    rails: dict[str, float | None] = (
        {"VDD_IN": power, "VDD_CPU_GPU_CV": power * 0.45, "VDD_SOC": power * 0.25}
        if power is not None
        else {"VDD_IN": None}
    )
    return Sample(
        ts=ts,
        source="sysfs",
        power_w=rails,
        board_power_w=power,
        temps_c=temps,
        memory=memory,
        gpu_load_pct=88.0,
        cpu_load_pct=35.0,
        power_mode=mode,
        throttling={"thermal": False, "oc_alarm": False},
    )


def drive(gov: Governor, clock: Clock, samples: Iterable[Sample]) -> list[GovernorEvent]:
    events: list[GovernorEvent] = []
    for s in samples:
        clock.now = s.ts
        events.extend(gov.update(s))
    return events


def ramp(a: float, b: float, seconds: int) -> list[float]:
    return [a + (b - a) * i / seconds for i in range(seconds)]


def assert_dwell(events: list[GovernorEvent], dwell: float) -> None:
    for prev, nxt in itertools.pairwise(events):
        if nxt.action != "memory_critical":
            assert nxt.ts - prev.ts >= dwell, (prev, nxt)


def full(profile: DeviceProfile) -> Decision:
    return Decision(profile.runtime.streams, None, builds_allowed=True, shed_frames=False)


# --------------------------------------------------------------------------- heat


def test_heat_ramp_lowers_fps_stepwise_then_shrinks_then_recovers(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    temps = ramp(60, 90, 240) + [90.0] * 60 + ramp(90, 60, 240) + [60.0] * 300
    samples = [mk(float(t), temp=temp) for t, temp in enumerate(temps)]
    events = drive(gov, clock, samples)
    actions = [e.action for e in events]
    assert (
        actions == ["fps_lower"] * 5 + ["pool_shrink"] * 2 + ["pool_grow"] * 2 + ["fps_raise"] * 5
    )
    assert_dwell(events, nx16.monitor.min_dwell_s)

    caps = [e.decision.fps_cap for e in events[:5]]
    assert caps == pytest.approx([22.5, 16.875, 12.65625, 9.4921875, 7.5])
    assert all(e.decision.pool_size == 3 for e in events[:5])
    # The first step comes when the hottest zone (tj) crosses 82 °C.
    assert events[0].reading["max_temp_c"] >= 82.0
    assert events[0].reading["hottest_zone"] == "tj-thermal"
    assert events[0].from_state is GovernorState.NORMAL
    assert events[0].to_state is GovernorState.THERMAL_FPS
    # Still over at the fps floor → the pool shrinks, one worker per dwell, to 1.
    assert "floor" in events[5].reason
    assert [e.decision.pool_size for e in events[5:7]] == [2, 1]
    assert events[6].to_state is GovernorState.THERMAL_POOL
    assert all(e.decision.fps_cap == pytest.approx(7.5) for e in events[5:9])

    # No recovery until the hottest zone is below 82 × 0.95 = 77.9 °C, then one step per dwell:
    # the pool first, then the fps cap, then uncapped.
    recovery = events[7:]
    assert all(e.reading["max_temp_c"] < 77.9 for e in recovery)
    assert [e.decision.pool_size for e in recovery[:2]] == [2, 3]
    assert recovery[-1].decision.fps_cap is None
    assert recovery[-1].to_state is GovernorState.NORMAL
    assert gov.decision == full(nx16)
    assert gov.state is GovernorState.NORMAL
    # Builds are a memory matter; heat never holds them, and never sheds frames.
    assert all(e.decision.builds_allowed and not e.decision.shed_frames for e in events)


def test_critical_temperature_shrinks_pool_before_fps_floor(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    temps = ramp(60, 98, 60) + [98.0] * 40
    events = drive(gov, clock, [mk(float(t), temp=x) for t, x in enumerate(temps)])
    first_shrink = next(e for e in events if e.action == "pool_shrink")
    assert "critical" in first_shrink.reason
    assert first_shrink.reading["max_temp_c"] >= 96.0
    assert first_shrink.decision.fps_cap is not None
    assert first_shrink.decision.fps_cap > fps_floor(30.0)
    assert first_shrink.to_state is GovernorState.THERMAL_POOL
    # Pool at 1 and still critical: the cap keeps going down instead.
    later = events[events.index(first_shrink) + 1 :]
    assert [e.action for e in later] == ["pool_shrink", "fps_lower", "fps_lower"]
    assert gov.decision.pool_size == 1
    assert_dwell(events, nx16.monitor.min_dwell_s)


def test_power_over_budget_of_the_active_mode(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=20.0, clock=clock)
    # 12 W is fine in 25W mode but over the 10W mode's budget.
    drive(gov, clock, [mk(float(t), power=12.0, mode="25W") for t in range(30)])
    assert gov.state is GovernorState.NORMAL
    events = drive(gov, clock, [mk(float(t), power=12.0, mode="10W") for t in range(30, 45)])
    assert [e.action for e in events] == ["fps_lower", "fps_lower"]
    assert "board power 12.00 W >= budget 10 W (10W)" in events[0].reason
    assert events[0].reading["power_budget_w"] == 10.0
    assert events[0].reading["power_mode_id"] == 1
    # Back in 25W mode at 12 W: below 25 × 0.95, so it recovers step by step.
    events = drive(gov, clock, [mk(float(t), power=12.0, mode="25W") for t in range(45, 100)])
    assert [e.action for e in events] == ["fps_raise", "fps_raise"]
    assert gov.decision.fps_cap is None


def test_unknown_mode_name_uses_default_budget(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=20.0, clock=clock)
    default_budget = nx16.power_budget_w(None)
    assert default_budget is not None
    (event,) = drive(gov, clock, [mk(0.0, power=default_budget + 1, mode="NOT_A_MODE")])
    assert event.reading["power_budget_w"] == default_budget
    assert event.reading["power_mode_id"] is None


def test_without_max_fps_heat_goes_straight_to_pool(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=None, clock=clock)
    events = drive(gov, clock, [mk(float(t), temp=85.0) for t in range(40)])
    assert [e.action for e in events] == ["pool_shrink", "pool_shrink"]
    assert "max fps unknown" in events[0].reason
    assert all(e.decision.fps_cap is None for e in events)
    events = drive(gov, clock, [mk(float(t), temp=60.0) for t in range(40, 80)])
    assert [e.action for e in events] == ["pool_grow", "pool_grow"]
    assert events[-1].to_state is GovernorState.NORMAL


# --------------------------------------------------------------------------- memory


def test_memory_spike_sheds_then_recovers(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    mems = ramp(70, 95, 10) + [95.0] * 30 + ramp(95, 70, 25) + [70.0] * 60
    events = drive(gov, clock, [mk(float(t), mem=m) for t, m in enumerate(mems)])
    assert [e.action for e in events] == [
        "memory_high",
        "memory_critical",
        "memory_eased",
        "memory_recovered",
    ]
    high, crit, eased, recovered = events
    assert high.decision == Decision(2, None, builds_allowed=False, shed_frames=False)
    assert high.reading["memory_used_pct"] >= 80.0
    assert "memory 80.0% >= high 80%" in high.reason
    # Critical is immediate even inside the dwell after "high" (OOM is worse than a step).
    assert crit.ts - high.ts < nx16.monitor.min_dwell_s
    assert crit.decision == Decision(1, None, builds_allowed=False, shed_frames=True)
    assert crit.from_state is GovernorState.MEMORY_HIGH
    assert crit.to_state is GovernorState.MEMORY_CRITICAL
    # Leaving critical needs < 92 × 0.95 = 87.4 %; leaving high needs < 80 × 0.95 = 76 %.
    assert eased.reading["memory_used_pct"] < 87.4
    assert eased.decision == Decision(2, None, builds_allowed=False, shed_frames=False)
    assert recovered.reading["memory_used_pct"] < 76.0
    assert recovered.ts - eased.ts >= nx16.monitor.min_dwell_s
    assert recovered.decision == full(nx16)
    assert gov.counters["memory_critical"] == 1
    assert gov.state is GovernorState.NORMAL


def test_critical_recovery_never_skips_high(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=None, clock=clock)
    events = drive(gov, clock, [mk(0.0, mem=96.0)] + [mk(float(t), mem=40.0) for t in range(1, 40)])
    assert [(e.from_state, e.to_state) for e in events] == [
        (GovernorState.NORMAL, GovernorState.MEMORY_CRITICAL),
        (GovernorState.MEMORY_CRITICAL, GovernorState.MEMORY_HIGH),
        (GovernorState.MEMORY_HIGH, GovernorState.NORMAL),
    ]
    assert events[1].ts == pytest.approx(10.0)
    assert events[2].ts == pytest.approx(20.0)


def test_memory_and_heat_combine(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    events = drive(gov, clock, [mk(float(t), mem=85.0, temp=86.0) for t in range(25)])
    assert [e.action for e in events] == ["memory_high", "fps_lower", "fps_lower"]
    assert gov.state is GovernorState.MEMORY_HIGH
    assert gov.thermal_state is GovernorState.THERMAL_FPS
    assert gov.decision == Decision(2, 16.875, builds_allowed=False, shed_frames=False)


# --------------------------------------------------------------------------- oscillation


def count_transitions(events: list[GovernorEvent]) -> int:
    return sum(1 for e in events if e.from_state is not e.to_state)


def test_memory_oscillating_at_threshold_does_not_flap(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    mems = [79.5 if t % 2 else 80.5 for t in range(300)]
    events = drive(gov, clock, [mk(float(t), mem=m) for t, m in enumerate(mems)])
    assert [e.action for e in events] == ["memory_high"]
    assert count_transitions(events) == 1
    assert gov.state is GovernorState.MEMORY_HIGH


def test_temperature_oscillating_at_threshold_never_reverses(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    # gpu 81.4 / 82.4 → tj 81.7 / 82.7 around the 82 °C throttle point, for 5 minutes.
    temps = [81.4 if t % 2 else 82.4 for t in range(300)]
    events = drive(gov, clock, [mk(float(t), temp=x) for t, x in enumerate(temps)])
    assert events, "being over the threshold half the time is still pressure"
    assert all(e.action in {"fps_lower", "pool_shrink"} for e in events)  # never back and forth
    assert_dwell(events, nx16.monitor.min_dwell_s)
    assert len(events) <= 300 / nx16.monitor.min_dwell_s


def test_temperature_oscillating_in_dead_band_holds(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    drive(gov, clock, [mk(float(t), temp=85.0) for t in range(25)])  # three fps steps
    cap = gov.decision.fps_cap
    # 78.0 / 81.0 (tj +0.3): between the release level 77.9 and the throttle point 82.
    temps = [78.0 if t % 2 else 81.0 for t in range(25, 325)]
    events = drive(
        gov, clock, [mk(float(t), temp=x) for t, x in zip(range(25, 325), temps, strict=True)]
    )
    assert events == []
    assert gov.decision.fps_cap == cap


def test_oscillation_across_the_band_is_bounded_by_dwell(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=None, clock=clock)
    mems = [70.0 if t % 2 else 85.0 for t in range(300)]
    events = drive(gov, clock, [mk(float(t), mem=m) for t, m in enumerate(mems)])
    assert_dwell(events, nx16.monitor.min_dwell_s)
    assert len(events) <= 300 / nx16.monitor.min_dwell_s + 1


# --------------------------------------------------------------------------- unknown readings


def test_unknown_readings_never_trigger(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    blank = [Sample(ts=float(t), source="sysfs:error") for t in range(100)] + [
        mk(float(t), mem=None, temp=None, power=None, mode=None) for t in range(100, 200)
    ]
    assert drive(gov, clock, blank) == []
    nan = mk(200.0, temp=55.0)
    nan = Sample(
        ts=201.0, source="x", temps_c={"gpu-thermal": float("nan")}, board_power_w=float("inf")
    )
    assert drive(gov, clock, [nan]) == []
    assert gov.decision == full(nx16)


def test_unknown_readings_never_release(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    drive(gov, clock, [mk(float(t), mem=95.0, temp=88.0) for t in range(25)])
    before = gov.decision
    unknown = [mk(float(t), mem=None, temp=None, power=None) for t in range(25, 200)]
    assert drive(gov, clock, unknown) == []
    assert gov.decision == before
    # Power drove an episode; power then goes unknown while the temperature is cool: hold.
    clock2 = Clock()
    gov2 = Governor(nx16, max_fps=30.0, clock=clock2)
    drive(gov2, clock2, [mk(float(t), power=30.0, mode="25W") for t in range(5)])
    assert gov2.thermal_state is GovernorState.THERMAL_FPS
    assert drive(gov2, clock2, [mk(float(t), power=None, temp=50.0) for t in range(5, 100)]) == []
    # Power known and low again: recovery.
    events = drive(gov2, clock2, [mk(float(t), power=8.0, temp=50.0) for t in range(100, 112)])
    assert [e.action for e in events] == ["fps_raise"]


# --------------------------------------------------------------------------- events, counters


def test_events_carry_what_why_reading_and_counters(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    temps = ramp(60, 90, 240) + [90.0] * 60 + ramp(90, 60, 240) + [60.0] * 100
    mems = [50.0] * 100 + [93.0] * 20 + [50.0] * 520
    samples = [
        mk(float(t), temp=x, mem=m) for t, (x, m) in enumerate(zip(temps, mems, strict=True))
    ]
    events = drive(gov, clock, samples)
    assert gov.counters == {a: Counter(e.action.value for e in events)[a] for a in ACTIONS}
    assert sum(gov.counters.values()) == len(events)
    for e in events:
        assert e.action in ACTIONS
        assert e.reason and any(ch.isdigit() for ch in e.reason)
        assert set(e.reading) >= {"memory_used_pct", "max_temp_c", "board_power_w", "sample_ts"}
        assert e.reading["sample_ts"] == e.ts
        data = e.to_json()
        assert data["from_state"] == e.from_state.value
        assert data["decision"]["pool_size"] == e.decision.pool_size
    assert gov.to_json()["counters"] == gov.counters


def test_rejects_bad_max_fps(nx16: DeviceProfile) -> None:
    with pytest.raises(ValueError, match="max_fps"):
        Governor(nx16, max_fps=0.0)


# --------------------------------------------------------------------------- property


MODES = st.sampled_from(["25W", "10W", "15W", "MAXN_SUPER", "bogus", None])
READINGS = st.tuples(
    st.floats(min_value=0.05, max_value=30.0),  # seconds since the previous sample
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0)),
    st.one_of(st.none(), st.floats(min_value=20.0, max_value=110.0)),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=60.0)),
    MODES,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    streams=st.integers(min_value=1, max_value=6),
    max_fps=st.one_of(st.none(), st.floats(min_value=0.5, max_value=120.0)),
    stream=st.lists(READINGS, min_size=1, max_size=150),
)
def test_property_bounds_and_dwell(
    nx16: DeviceProfile,
    streams: int,
    max_fps: float | None,
    stream: list[tuple[float, float | None, float | None, float | None, str | None]],
) -> None:
    profile = nx16.model_copy(
        update={"runtime": nx16.runtime.model_copy(update={"streams": streams})}
    )
    clock = Clock()
    gov = Governor(profile, max_fps=max_fps, clock=clock)
    t = 0.0
    events: list[GovernorEvent] = []
    for dt, mem, temp, power, mode in stream:
        t += dt
        clock.now = t
        new = gov.update(mk(t, mem=mem, temp=temp, power=power, mode=mode))
        assert len(new) <= 1
        if mem is None and temp is None and power is None:
            assert new == []
        events.extend(new)
        d = gov.decision
        assert 1 <= d.pool_size <= streams
        if max_fps is None:
            assert d.fps_cap is None
        elif d.fps_cap is not None:
            assert fps_floor(max_fps) - 1e-9 <= d.fps_cap <= max_fps
        assert d.shed_frames == (gov.memory_state is GovernorState.MEMORY_CRITICAL)
        assert d.builds_allowed == (gov.memory_state is GovernorState.NORMAL)
    assert_dwell(events, profile.monitor.min_dwell_s)
    assert sum(gov.counters.values()) == len(events)


def test_heat_episode_recovers_while_power_sits_just_under_budget(nx16: DeviceProfile) -> None:
    clock = Clock()
    gov = Governor(nx16, max_fps=30.0, clock=clock)
    # 24.5 W in 25W mode: under the budget, inside its hysteresis band; power is not a cause.
    drive(gov, clock, [mk(float(t), temp=85.0, power=24.5) for t in range(15)])
    assert gov.thermal_state is GovernorState.THERMAL_FPS
    events = drive(gov, clock, [mk(float(t), temp=70.0, power=24.5) for t in range(15, 60)])
    assert [e.action for e in events] == ["fps_raise", "fps_raise"]
    assert gov.decision.fps_cap is None
