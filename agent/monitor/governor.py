"""The governor: turns monitor samples into a decision (pool size, fps cap, builds, shedding).

It decides; it applies nothing. The pipeline's actuator reads :attr:`Governor.decision` (or the
decision carried by each event) and resizes its pool, caps its frame rate, sheds frames and holds
engine builds. Nothing here imports the pipeline.

Two tracks, each an explicit state machine with an allowed-transition table:

* **memory** (``NORMAL`` → ``MEMORY_HIGH`` → ``MEMORY_CRITICAL``), driven by ``memory.used_pct``:
  high = pool − 1 (floor 1) and builds held; critical = pool 1, frames shed, builds held.
* **thermal** (``NORMAL`` → ``THERMAL_FPS`` → ``THERMAL_POOL``), driven by the hottest zone and
  board input power against the power budget of the active nvpmodel mode: each step lowers the
  fps cap by ×0.75 down to a floor (max(1 fps, 25 % of max_fps)); once at the floor, or when the
  temperature reaches ``temp_critical_c``, each step shrinks the pool by one (floor 1).

The decision combines the tracks: ``pool = min(memory pool, thermal pool)``. :attr:`state` is the
more severe track's state.

Rules:

* **Hysteresis is relative**: a track recovers only when its readings are below
  ``threshold × (1 − hysteresis_pct / 100)`` (memory 80 % with 5 % → 76 %; 82 °C → 77.9 °C;
  25 W → 23.75 W). Between that and the threshold the governor holds.
* **Dwell**: at most one action per ``min_dwell_s`` across both tracks, measured on the injected
  clock, escalations and recoveries alike. One exception: escalating *into* ``MEMORY_CRITICAL``
  is immediate — waiting out a dwell at 95 % memory invites the OOM killer, and it cannot flap
  because leaving it needs a reading below ``critical × (1 − h)`` and a full dwell.
* **Recovery is one step per dwell**, in reverse order: memory critical → high → normal; thermal
  pool grows one worker at a time, then the fps cap rises one ×1/0.75 step at a time, then it is
  lifted (``None``).
* **Unknown is not evidence**: a ``None`` reading neither triggers nor releases anything. The
  thermal track releases only when every cause seen during the episode (temperature, power) is
  known and below its release level (and nothing is over a threshold).
* Per update, at most one action; escalations come before recoveries, memory before thermal.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from agent.config.schema import DeviceProfile
from agent.monitor.sample import Sample

__all__ = [
    "ACTIONS",
    "FPS_STEP",
    "Decision",
    "Governor",
    "GovernorEvent",
    "GovernorState",
    "IllegalTransition",
    "fps_floor",
]

FPS_STEP = 0.75
"""Each thermal fps step multiplies the cap by this factor."""

FPS_FLOOR_MIN = 1.0
FPS_FLOOR_SHARE = 0.25


class GovernorState(enum.Enum):
    NORMAL = "normal"
    MEMORY_HIGH = "memory_high"
    MEMORY_CRITICAL = "memory_critical"
    THERMAL_FPS = "thermal_fps"  # fps cap lowered (temperature or power over budget)
    THERMAL_POOL = "thermal_pool"  # pool shrunk for heat/power (fps cap at its floor, or critical)


_SEVERITY = {
    GovernorState.NORMAL: 0,
    GovernorState.THERMAL_FPS: 1,
    GovernorState.THERMAL_POOL: 2,
    GovernorState.MEMORY_HIGH: 3,
    GovernorState.MEMORY_CRITICAL: 4,
}

S = GovernorState
_MEMORY_TRANSITIONS: dict[GovernorState, frozenset[GovernorState]] = {
    S.NORMAL: frozenset({S.MEMORY_HIGH, S.MEMORY_CRITICAL}),
    S.MEMORY_HIGH: frozenset({S.MEMORY_CRITICAL, S.NORMAL}),
    S.MEMORY_CRITICAL: frozenset({S.MEMORY_HIGH}),  # recovery is one step at a time
}
_THERMAL_TRANSITIONS: dict[GovernorState, frozenset[GovernorState]] = {
    # NORMAL → THERMAL_POOL: temp ≥ critical, or no fps stage (max_fps unknown).
    S.NORMAL: frozenset({S.THERMAL_FPS, S.THERMAL_POOL}),
    # Self-loops are further steps within the state (another ×0.75, another worker).
    S.THERMAL_FPS: frozenset({S.THERMAL_FPS, S.THERMAL_POOL, S.NORMAL}),
    # → THERMAL_FPS once the pool is whole again; → NORMAL only when no fps step is left.
    S.THERMAL_POOL: frozenset({S.THERMAL_POOL, S.THERMAL_FPS, S.NORMAL}),
}
del S

ACTIONS = (
    "memory_high",  # NORMAL → MEMORY_HIGH: pool − 1, hold builds
    "memory_critical",  # → MEMORY_CRITICAL: pool 1, shed frames, hold builds
    "memory_eased",  # MEMORY_CRITICAL → MEMORY_HIGH: stop shedding, pool back to streams − 1
    "memory_recovered",  # MEMORY_HIGH → NORMAL: full pool, builds allowed
    "fps_lower",  # thermal: fps cap × 0.75 (floor)
    "pool_shrink",  # thermal: one worker less
    "pool_grow",  # thermal recovery: one worker more
    "fps_raise",  # thermal recovery: fps cap ÷ 0.75, lifted (None) at the last step
)


class IllegalTransition(RuntimeError):
    """A bug: the governor tried a transition its table does not allow."""


def fps_floor(max_fps: float) -> float:
    """Lowest fps cap the thermal policy sets: max(1 fps, 25 % of max_fps), never above max."""
    return min(max_fps, max(FPS_FLOOR_MIN, FPS_FLOOR_SHARE * max_fps))


@dataclass(frozen=True)
class Decision:
    """What the actuator should apply. ``fps_cap`` None = uncapped."""

    pool_size: int
    fps_cap: float | None
    builds_allowed: bool
    shed_frames: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GovernorEvent:
    """One action: what (``action``), why (``reason``), the reading that caused it.

    ``from_state``/``to_state`` are the states of the ``track`` ("memory" or "thermal") that
    acted; ``decision`` is the combined decision after the action; ``ts`` is the governor clock.
    """

    ts: float
    action: str
    reason: str
    reading: dict[str, Any]
    track: str
    from_state: GovernorState
    to_state: GovernorState
    decision: Decision

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "action": self.action,
            "reason": self.reason,
            "reading": dict(self.reading),
            "track": self.track,
            "from_state": self.from_state.value,
            "to_state": self.to_state.value,
            "decision": self.decision.to_json(),
        }


@dataclass(frozen=True)
class _Reading:
    mem_pct: float | None
    temp_c: float | None
    hottest_zone: str | None
    power_w: float | None
    budget_w: float | None
    power_mode: str | None
    mode_id: int | None
    sample_ts: float

    def to_json(self) -> dict[str, Any]:
        return {
            "sample_ts": self.sample_ts,
            "memory_used_pct": _round(self.mem_pct),
            "max_temp_c": _round(self.temp_c),
            "hottest_zone": self.hottest_zone,
            "board_power_w": _round(self.power_w),
            "power_budget_w": self.budget_w,
            "power_mode": self.power_mode,
            "power_mode_id": self.mode_id,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _known(value: float | None) -> float | None:
    """A finite number, else None (NaN or inf is as good as unknown)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class Governor:
    """Pure, deterministic state machine: ``update(sample)`` → events; read :attr:`decision`.

    ``max_fps`` is the pipeline's uncapped frame rate; None (unknown, or no pipeline) disables
    the fps stage, so thermal pressure goes straight to shrinking the pool.
    """

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        max_fps: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_fps is not None and not (math.isfinite(max_fps) and max_fps > 0):
            raise ValueError(f"max_fps must be a positive number or None, got {max_fps!r}")
        self.profile = profile
        self.max_fps = max_fps
        self._clock = clock
        mon = profile.monitor
        self._streams = profile.runtime.streams
        self._keep = 1.0 - mon.hysteresis_pct / 100.0
        self._dwell = mon.min_dwell_s
        # Thermal fps stage: cap_k = max_fps × 0.75**k clipped to the floor; k ≤ fps_steps_max.
        self.fps_floor: float | None = None
        self._fps_steps_max = 0
        if max_fps is not None:
            self.fps_floor = fps_floor(max_fps)
            cap, steps = max_fps, 0
            while cap > self.fps_floor + 1e-9:
                cap *= FPS_STEP
                steps += 1
            self._fps_steps_max = steps
        self._memory = GovernorState.NORMAL
        self._thermal = GovernorState.NORMAL
        self._fps_steps = 0
        self._heat_pool_steps = 0
        self._thermal_causes: set[str] = set()
        self._last_action: float | None = None
        self._now = 0.0
        self.counters: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        self.last_reading: dict[str, Any] | None = None

    # ------------------------------------------------------------------ public view

    @property
    def state(self) -> GovernorState:
        """The more severe of the two tracks' states."""
        return max(self._memory, self._thermal, key=_SEVERITY.__getitem__)

    @property
    def memory_state(self) -> GovernorState:
        return self._memory

    @property
    def thermal_state(self) -> GovernorState:
        return self._thermal

    @property
    def decision(self) -> Decision:
        if self._memory is GovernorState.MEMORY_CRITICAL:
            mem_pool = 1
        elif self._memory is GovernorState.MEMORY_HIGH:
            mem_pool = max(1, self._streams - 1)
        else:
            mem_pool = self._streams
        heat_pool = max(1, self._streams - self._heat_pool_steps)
        return Decision(
            pool_size=min(mem_pool, heat_pool),
            fps_cap=self._cap(self._fps_steps),
            builds_allowed=self._memory is GovernorState.NORMAL,
            shed_frames=self._memory is GovernorState.MEMORY_CRITICAL,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "memory_state": self._memory.value,
            "thermal_state": self._thermal.value,
            "decision": self.decision.to_json(),
            "counters": dict(self.counters),
        }

    # ------------------------------------------------------------------ update

    def update(self, sample: Sample) -> list[GovernorEvent]:
        """Feed one sample; returns the action taken (at most one), as a list of events."""
        now = self._now = self._clock()
        reading = self._read(sample)
        self.last_reading = reading.to_json()
        dwell_ok = self._last_action is None or now - self._last_action >= self._dwell
        for step in (self._memory_escalation, self._thermal_escalation):
            event = step(reading, dwell_ok)
            if event is not None:
                return [event]
        if dwell_ok:
            for step in (self._memory_recovery, self._thermal_recovery):
                event = step(reading)
                if event is not None:
                    return [event]
        return []

    # ------------------------------------------------------------------ readings

    def _read(self, sample: Sample) -> _Reading:
        temps = {k: _known(v) for k, v in sample.temps_c.items()}
        known = {k: v for k, v in temps.items() if v is not None}
        hottest = max(known, key=known.__getitem__) if known else None
        mode_id = self._mode_id(sample.power_mode)
        return _Reading(
            mem_pct=_known(sample.memory.used_pct),
            temp_c=known[hottest] if hottest is not None else None,
            hottest_zone=hottest,
            power_w=_known(sample.board_power_w),
            budget_w=self.profile.power_budget_w(mode_id),
            power_mode=sample.power_mode,
            mode_id=mode_id,
            sample_ts=sample.ts,
        )

    def _mode_id(self, name: str | None) -> int | None:
        """nvpmodel id of the sample's mode name (exact, then case-insensitive); None = default."""
        if not name:
            return None
        modes = self.profile.identity.power_modes
        for mode in modes:
            if mode.name == name:
                return mode.id
        folded = name.strip().casefold()
        for mode in modes:
            if mode.name.casefold() == folded:
                return mode.id
        return None

    # ------------------------------------------------------------------ memory track

    def _memory_escalation(self, r: _Reading, dwell_ok: bool) -> GovernorEvent | None:
        mon = self.profile.monitor
        pct = r.mem_pct
        if pct is None:
            return None
        if pct >= mon.memory_critical_pct and self._memory is not GovernorState.MEMORY_CRITICAL:
            # Immediate, dwell or not (see the module docstring).
            return self._act(
                "memory",
                GovernorState.MEMORY_CRITICAL,
                "memory_critical",
                f"memory {pct:.1f}% >= critical {mon.memory_critical_pct:g}%: "
                "one worker, shed frames, hold builds",
                r,
            )
        if dwell_ok and pct >= mon.memory_high_pct and self._memory is GovernorState.NORMAL:
            return self._act(
                "memory",
                GovernorState.MEMORY_HIGH,
                "memory_high",
                f"memory {pct:.1f}% >= high {mon.memory_high_pct:g}%: one worker less, hold builds",
                r,
            )
        return None

    def _memory_recovery(self, r: _Reading) -> GovernorEvent | None:
        mon = self.profile.monitor
        pct = r.mem_pct
        if pct is None:
            return None
        if self._memory is GovernorState.MEMORY_CRITICAL:
            release = mon.memory_critical_pct * self._keep
            if pct < release:
                return self._act(
                    "memory",
                    GovernorState.MEMORY_HIGH,
                    "memory_eased",
                    f"memory {pct:.1f}% < {release:.1f}% (critical {mon.memory_critical_pct:g}% "
                    f"- {mon.hysteresis_pct:g}%): stop shedding frames",
                    r,
                )
        elif self._memory is GovernorState.MEMORY_HIGH:
            release = mon.memory_high_pct * self._keep
            if pct < release:
                return self._act(
                    "memory",
                    GovernorState.NORMAL,
                    "memory_recovered",
                    f"memory {pct:.1f}% < {release:.1f}% (high {mon.memory_high_pct:g}% "
                    f"- {mon.hysteresis_pct:g}%): full pool, builds allowed",
                    r,
                )
        return None

    # ------------------------------------------------------------------ thermal track

    def _over(self, r: _Reading) -> list[str]:
        """Why the thermal track is over a threshold (empty when no known reading is)."""
        mon = self.profile.monitor
        why: list[str] = []
        if r.temp_c is not None and r.temp_c >= mon.temp_throttle_c:
            limit = "critical" if r.temp_c >= mon.temp_critical_c else "throttle"
            value = mon.temp_critical_c if limit == "critical" else mon.temp_throttle_c
            why.append(f"{r.hottest_zone} {r.temp_c:.1f} °C >= {limit} {value:g} °C")
        if r.power_w is not None and r.budget_w is not None and r.power_w >= r.budget_w:
            mode = f" ({r.power_mode})" if r.power_mode else ""
            why.append(f"board power {r.power_w:.2f} W >= budget {r.budget_w:g} W{mode}")
        return why

    def _thermal_escalation(self, r: _Reading, dwell_ok: bool) -> GovernorEvent | None:
        why = self._over(r)
        if not why:
            if self._thermal is GovernorState.NORMAL:
                self._thermal_causes.clear()
            return None
        mon = self.profile.monitor
        hot = r.temp_c is not None and r.temp_c >= mon.temp_throttle_c
        critical = r.temp_c is not None and r.temp_c >= mon.temp_critical_c
        over_power = r.power_w is not None and r.budget_w is not None and r.power_w >= r.budget_w
        # Causes are remembered even while dwelling: recovery waits for every one of them.
        if hot:
            self._thermal_causes.add("temp")
        if over_power:
            self._thermal_causes.add("power")
        if not dwell_ok:
            return None
        can_shrink = self._heat_pool_steps < self._streams - 1
        can_lower = self._fps_steps < self._fps_steps_max
        reason = "; ".join(why)
        if can_lower and not critical:
            self._fps_steps += 1
            return self._act(
                "thermal",
                self._thermal_target(),
                "fps_lower",
                f"{reason}: fps cap to {self._cap(self._fps_steps):.2f}",
                r,
            )
        if can_shrink:
            self._heat_pool_steps += 1
            detail = "critical temperature" if critical else "fps cap at its floor"
            if self.max_fps is None and not critical:
                detail = "no fps cap to lower (max fps unknown)"
            return self._act(
                "thermal",
                GovernorState.THERMAL_POOL,
                "pool_shrink",
                f"{reason}: {detail}, one worker less",
                r,
            )
        if can_lower:  # critical, pool already at 1: lower the cap after all
            self._fps_steps += 1
            return self._act(
                "thermal",
                self._thermal_target(),
                "fps_lower",
                f"{reason}: pool at 1, fps cap to {self._cap(self._fps_steps):.2f}",
                r,
            )
        return None  # saturated: one worker at the fps floor; nothing more to give

    def _thermal_recovery(self, r: _Reading) -> GovernorEvent | None:
        if self._thermal is GovernorState.NORMAL:
            return None
        mon = self.profile.monitor
        temp_release = mon.temp_throttle_c * self._keep
        power_release = r.budget_w * self._keep if r.budget_w is not None else None
        temp_ok = r.temp_c is not None and r.temp_c < temp_release
        power_ok = r.power_w is not None and power_release is not None and r.power_w < power_release
        # Every cause of this episode must be known and clear (a signal that is not a cause
        # only has to stay under its threshold, which the escalation step already checked).
        if "temp" in self._thermal_causes and not temp_ok:
            return None
        if "power" in self._thermal_causes and not power_ok:
            return None
        if not (temp_ok or power_ok):
            return None  # nothing known: no evidence to release on
        clear: list[str] = []
        if temp_ok:
            clear.append(
                f"{r.hottest_zone} {r.temp_c:.1f} °C < {temp_release:.1f} °C "
                f"(throttle {mon.temp_throttle_c:g} °C - {mon.hysteresis_pct:g}%)"
            )
        if power_ok and r.budget_w is not None:
            clear.append(f"board power {r.power_w:.2f} W < {power_release:.2f} W")
        reason = "; ".join(clear)
        if self._heat_pool_steps:
            self._heat_pool_steps -= 1
            return self._act(
                "thermal",
                self._thermal_target(),
                "pool_grow",
                f"{reason}: one worker more",
                r,
            )
        if self._fps_steps:
            self._fps_steps -= 1
            cap = self._cap(self._fps_steps)
            what = "fps cap lifted" if cap is None else f"fps cap to {cap:.2f}"
            return self._act("thermal", self._thermal_target(), "fps_raise", f"{reason}: {what}", r)
        return None

    # ------------------------------------------------------------------ helpers

    def _cap(self, steps: int) -> float | None:
        if self.max_fps is None or steps <= 0 or self.fps_floor is None:
            return None
        return max(self.fps_floor, self.max_fps * FPS_STEP**steps)

    def _thermal_target(self) -> GovernorState:
        if self._heat_pool_steps:
            return GovernorState.THERMAL_POOL
        if self._fps_steps:
            return GovernorState.THERMAL_FPS
        return GovernorState.NORMAL

    def _act(
        self,
        track: str,
        target: GovernorState,
        action: str,
        reason: str,
        r: _Reading,
    ) -> GovernorEvent:
        """Apply one transition of ``track`` (checked against its table) and record it."""
        now = self._now
        if track == "memory":
            before, table = self._memory, _MEMORY_TRANSITIONS
        else:
            before, table = self._thermal, _THERMAL_TRANSITIONS
        if target not in table[before]:
            raise IllegalTransition(f"{track}: {before.value} → {target.value} is not allowed")
        if track == "memory":
            self._memory = target
        else:
            self._thermal = target
            if target is GovernorState.NORMAL:
                self._thermal_causes.clear()
        self._last_action = now
        self.counters[action] += 1
        return GovernorEvent(
            ts=now,
            action=action,
            reason=reason,
            reading=r.to_json(),
            track=track,
            from_state=before,
            to_state=target,
            decision=self.decision,
        )
