"""The pure decision core: (tracks, reading, limits, dwell) → the tracks after it and at most
one :class:`~agent.monitor.governor.actions.Step`. No I/O, no clock: the caller passes whether
the dwell has passed.

* **memory**, driven by ``memory.used_pct``: high = pool − 1 (floor 1) and builds held;
  critical = pool 1, frames shed, builds held.
* **thermal**, driven by the hottest zone and board input power against the power budget of the
  active nvpmodel mode: each step lowers the fps cap by ×0.75 down to its floor; once at the
  floor, or when the temperature reaches ``temp_critical_c``, each step shrinks the pool by one.

Rules:

* **Hysteresis is relative**: a track recovers only when its readings are below
  ``threshold × (1 − hysteresis_pct / 100)`` (memory 80 % with 5 % → 76 %; 82 °C → 77.9 °C;
  25 W → 23.75 W). Between that and the threshold the governor holds.
* **Dwell**: at most one action per ``min_dwell_s`` across both tracks, escalations and
  recoveries alike. One exception: escalating *into* ``MEMORY_CRITICAL`` is immediate — waiting
  out a dwell at 95 % memory invites the OOM killer, and it cannot flap because leaving it needs
  a reading below ``critical × (1 − h)`` and a full dwell.
* **Recovery is one step per dwell**, in reverse order: memory critical → high → normal; thermal
  pool grows one worker at a time, then the fps cap rises one ×1/0.75 step at a time, then it is
  lifted (``None``).
* **Unknown is not evidence**: a ``None`` reading neither triggers nor releases anything. The
  thermal track releases only when every cause seen during the episode (temperature, power) is
  known and below its release level (and nothing is over a threshold).
* Per update, at most one action; escalations come before recoveries, memory before thermal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.monitor.governor.actions import Action, Decision, Step
from agent.monitor.governor.limits import Limits
from agent.monitor.governor.reading import Reading
from agent.monitor.governor.states import GovernorState, Track

_S = GovernorState
Outcome = tuple["Tracks", Step | None]


@dataclass(frozen=True)
class Tracks:
    """Where both tracks stand: their states, the steps taken, the causes of a heat episode."""

    memory: GovernorState = GovernorState.NORMAL
    thermal: GovernorState = GovernorState.NORMAL
    fps_steps: int = 0
    heat_pool_steps: int = 0
    causes: frozenset[str] = frozenset()

    def thermal_target(self) -> GovernorState:
        """The thermal state that matches the steps taken."""
        if self.heat_pool_steps:
            return _S.THERMAL_POOL
        if self.fps_steps:
            return _S.THERMAL_FPS
        return _S.NORMAL


def decision_of(tracks: Tracks, limits: Limits) -> Decision:
    """The combined decision: ``pool = min(memory pool, thermal pool)``."""
    streams = limits.streams
    if tracks.memory is _S.MEMORY_CRITICAL:
        mem_pool = 1
    elif tracks.memory is _S.MEMORY_HIGH:
        mem_pool = max(1, streams - 1)
    else:
        mem_pool = streams
    return Decision(
        pool_size=min(mem_pool, max(1, streams - tracks.heat_pool_steps)),
        fps_cap=limits.cap(tracks.fps_steps),
        builds_allowed=tracks.memory is _S.NORMAL,
        shed_frames=tracks.memory is _S.MEMORY_CRITICAL,
    )


def decide(tracks: Tracks, r: Reading, limits: Limits, dwell_ok: bool) -> Outcome:
    """At most one action for reading ``r``: escalations first (memory, then thermal), then,
    once the dwell has passed, recoveries (memory, then thermal)."""
    step = memory_escalation(tracks, r, limits, dwell_ok)
    if step is not None:
        return _moved(tracks, step), step
    tracks, step = thermal_escalation(tracks, r, limits, dwell_ok)
    if step is not None or not dwell_ok:
        return tracks, step
    step = memory_recovery(tracks, r, limits)
    if step is not None:
        return _moved(tracks, step), step
    return thermal_recovery(tracks, r, limits)


def _moved(tracks: Tracks, step: Step) -> Tracks:
    """``tracks`` after ``step`` moved its track (a thermal return to NORMAL ends the episode)."""
    if step.track is Track.MEMORY:
        return replace(tracks, memory=step.target)
    causes = frozenset[str]() if step.target is _S.NORMAL else tracks.causes
    return replace(tracks, thermal=step.target, causes=causes)


def memory_escalation(tracks: Tracks, r: Reading, lim: Limits, dwell_ok: bool) -> Step | None:
    pct = r.mem_pct
    if pct is None:
        return None
    if pct >= lim.memory_critical_pct and tracks.memory is not _S.MEMORY_CRITICAL:
        # Immediate, dwell or not (see the module docstring).
        return Step(
            Track.MEMORY,
            _S.MEMORY_CRITICAL,
            Action.MEMORY_CRITICAL,
            f"memory {pct:.1f}% >= critical {lim.memory_critical_pct:g}%: "
            "one worker, shed frames, hold builds",
        )
    if dwell_ok and pct >= lim.memory_high_pct and tracks.memory is _S.NORMAL:
        return Step(
            Track.MEMORY,
            _S.MEMORY_HIGH,
            Action.MEMORY_HIGH,
            f"memory {pct:.1f}% >= high {lim.memory_high_pct:g}%: one worker less, hold builds",
        )
    return None


def memory_recovery(tracks: Tracks, r: Reading, lim: Limits) -> Step | None:
    pct = r.mem_pct
    if pct is None:
        return None
    if tracks.memory is _S.MEMORY_CRITICAL:
        release = lim.memory_critical_pct * lim.keep
        if pct < release:
            return Step(
                Track.MEMORY,
                _S.MEMORY_HIGH,
                Action.MEMORY_EASED,
                f"memory {pct:.1f}% < {release:.1f}% (critical {lim.memory_critical_pct:g}% "
                f"- {lim.hysteresis_pct:g}%): stop shedding frames",
            )
    elif tracks.memory is _S.MEMORY_HIGH:
        release = lim.memory_high_pct * lim.keep
        if pct < release:
            return Step(
                Track.MEMORY,
                _S.NORMAL,
                Action.MEMORY_RECOVERED,
                f"memory {pct:.1f}% < {release:.1f}% (high {lim.memory_high_pct:g}% "
                f"- {lim.hysteresis_pct:g}%): full pool, builds allowed",
            )
    return None


def over_thresholds(r: Reading, lim: Limits) -> list[str]:
    """Why the thermal track is over a threshold (empty when no known reading is)."""
    why: list[str] = []
    if r.temp_c is not None and r.temp_c >= lim.temp_throttle_c:
        limit = "critical" if r.temp_c >= lim.temp_critical_c else "throttle"
        value = lim.temp_critical_c if limit == "critical" else lim.temp_throttle_c
        why.append(f"{r.hottest_zone} {r.temp_c:.1f} °C >= {limit} {value:g} °C")
    if r.power_w is not None and r.budget_w is not None and r.power_w >= r.budget_w:
        mode = f" ({r.power_mode})" if r.power_mode else ""
        why.append(f"board power {r.power_w:.2f} W >= budget {r.budget_w:g} W{mode}")
    return why


def thermal_escalation(tracks: Tracks, r: Reading, lim: Limits, dwell_ok: bool) -> Outcome:
    why = over_thresholds(r, lim)
    if not why:
        if tracks.thermal is _S.NORMAL:
            tracks = replace(tracks, causes=frozenset())
        return tracks, None
    critical = r.temp_c is not None and r.temp_c >= lim.temp_critical_c
    causes = set(tracks.causes)
    # Causes are remembered even while dwelling: recovery waits for every one of them.
    if r.temp_c is not None and r.temp_c >= lim.temp_throttle_c:
        causes.add("temp")
    if r.power_w is not None and r.budget_w is not None and r.power_w >= r.budget_w:
        causes.add("power")
    tracks = replace(tracks, causes=frozenset(causes))
    if not dwell_ok:
        return tracks, None
    return _heat_step(tracks, "; ".join(why), critical, lim)


def _heat_step(tracks: Tracks, reason: str, critical: bool, lim: Limits) -> Outcome:
    """One escalation step: lower the fps cap, else shrink the pool, else (critical, pool at
    1) lower the cap after all; nothing when saturated (one worker at the fps floor)."""
    can_shrink = tracks.heat_pool_steps < lim.streams - 1
    can_lower = tracks.fps_steps < lim.fps_steps_max
    if can_lower and not critical:
        after = replace(tracks, fps_steps=tracks.fps_steps + 1)
        what = f"{reason}: fps cap to {lim.cap(after.fps_steps):.2f}"
        return _thermal(after, after.thermal_target(), Action.FPS_LOWER, what)
    if can_shrink:
        after = replace(tracks, heat_pool_steps=tracks.heat_pool_steps + 1)
        detail = "critical temperature" if critical else "fps cap at its floor"
        if lim.max_fps is None and not critical:
            detail = "no fps cap to lower (max fps unknown)"
        what = f"{reason}: {detail}, one worker less"
        return _thermal(after, _S.THERMAL_POOL, Action.POOL_SHRINK, what)
    if can_lower:  # critical, pool already at 1: lower the cap after all
        after = replace(tracks, fps_steps=tracks.fps_steps + 1)
        what = f"{reason}: pool at 1, fps cap to {lim.cap(after.fps_steps):.2f}"
        return _thermal(after, after.thermal_target(), Action.FPS_LOWER, what)
    return tracks, None


def _thermal(tracks: Tracks, target: GovernorState, action: Action, reason: str) -> Outcome:
    step = Step(Track.THERMAL, target, action, reason)
    return _moved(tracks, step), step


@dataclass(frozen=True)
class _Release:
    """Which signals are known and below their release level, and the words for it."""

    temp_ok: bool
    power_ok: bool
    reason: str


def _release(r: Reading, lim: Limits) -> _Release:
    temp_release = lim.temp_throttle_c * lim.keep
    power_release = r.budget_w * lim.keep if r.budget_w is not None else None
    temp_ok = r.temp_c is not None and r.temp_c < temp_release
    power_ok = r.power_w is not None and power_release is not None and r.power_w < power_release
    clear: list[str] = []
    if temp_ok:
        clear.append(
            f"{r.hottest_zone} {r.temp_c:.1f} °C < {temp_release:.1f} °C "
            f"(throttle {lim.temp_throttle_c:g} °C - {lim.hysteresis_pct:g}%)"
        )
    if power_ok and power_release is not None:
        clear.append(f"board power {r.power_w:.2f} W < {power_release:.2f} W")
    return _Release(temp_ok, power_ok, "; ".join(clear))


def thermal_recovery(tracks: Tracks, r: Reading, lim: Limits) -> Outcome:
    if tracks.thermal is _S.NORMAL:
        return tracks, None
    rel = _release(r, lim)
    # Every cause of this episode must be known and clear (a signal that is not a cause
    # only has to stay under its threshold, which the escalation step already checked).
    if ("temp" in tracks.causes and not rel.temp_ok) or (
        "power" in tracks.causes and not rel.power_ok
    ):
        return tracks, None
    if not (rel.temp_ok or rel.power_ok):
        return tracks, None  # nothing known: no evidence to release on
    reason = rel.reason
    if tracks.heat_pool_steps:
        after = replace(tracks, heat_pool_steps=tracks.heat_pool_steps - 1)
        return _thermal(
            after, after.thermal_target(), Action.POOL_GROW, f"{reason}: one worker more"
        )
    if tracks.fps_steps:
        after = replace(tracks, fps_steps=tracks.fps_steps - 1)
        cap = lim.cap(after.fps_steps)
        what = "fps cap lifted" if cap is None else f"fps cap to {cap:.2f}"
        return _thermal(after, after.thermal_target(), Action.FPS_RAISE, f"{reason}: {what}")
    return tracks, None
