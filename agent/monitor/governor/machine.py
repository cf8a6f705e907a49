"""The governor: turns monitor samples into a decision (pool size, fps cap, builds, shedding).

It decides; it applies nothing. The pipeline's actuator reads :attr:`Governor.decision` (or the
decision carried by each event) and resizes its pool, caps its frame rate, sheds frames and holds
engine builds. Nothing here imports the pipeline.

:class:`Governor` is the thin stateful shell: it reads the injected clock, keeps the two track
machines (:mod:`~agent.monitor.governor.states`), the dwell and the counters, and asks the pure
core (:mod:`~agent.monitor.governor.decide`, where the rules are written down) what to do.
The decision combines the tracks: ``pool = min(memory pool, thermal pool)``; :attr:`state` is
the more severe track's state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agent.config.device import DeviceProfile
from agent.monitor.governor.actions import ACTIONS, Decision, GovernorEvent, Step
from agent.monitor.governor.decide import Tracks, decide, decision_of
from agent.monitor.governor.limits import Limits
from agent.monitor.governor.reading import Reading, read_sample
from agent.monitor.governor.states import GovernorState, Track, more_severe, track_machine
from agent.monitor.sample import Sample


class Governor:
    """Deterministic state machine: ``update(sample)`` → events; read :attr:`decision`.

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
        self.limits = Limits.of(profile, max_fps)
        self.profile = profile
        self.max_fps = max_fps
        self.fps_floor = self.limits.fps_floor
        self._clock = clock
        self._memory = track_machine(Track.MEMORY)
        self._thermal = track_machine(Track.THERMAL)
        self._tracks = Tracks()
        self._last_action: float | None = None
        self.counters: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        self.last_reading: dict[str, Any] | None = None

    @property
    def state(self) -> GovernorState:
        """The more severe of the two tracks' states."""
        return more_severe(self._memory.state, self._thermal.state)

    @property
    def memory_state(self) -> GovernorState:
        return self._memory.state

    @property
    def thermal_state(self) -> GovernorState:
        return self._thermal.state

    @property
    def decision(self) -> Decision:
        return decision_of(self._tracks, self.limits)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "memory_state": self._memory.state.value,
            "thermal_state": self._thermal.state.value,
            "decision": self.decision.to_json(),
            "counters": dict(self.counters),
        }

    def update(self, sample: Sample) -> list[GovernorEvent]:
        """Feed one sample; returns the action taken (at most one), as a list of events."""
        now = self._clock()
        reading = read_sample(sample, self.profile)
        self.last_reading = reading.to_json()
        dwell_ok = self._last_action is None or now - self._last_action >= self.limits.dwell_s
        tracks = replace(self._tracks, memory=self._memory.state, thermal=self._thermal.state)
        after, step = decide(tracks, reading, self.limits, dwell_ok)
        if step is None:
            self._tracks = after
            return []
        return [self._apply(step, after, reading, now)]

    def _apply(self, step: Step, after: Tracks, reading: Reading, now: float) -> GovernorEvent:
        """Move ``step.track`` (checked against its table), record the action."""
        machine = self._memory if step.track is Track.MEMORY else self._thermal
        before = machine.to(step.target, step.action.value)
        self._tracks = after
        self._last_action = now
        self.counters[step.action.value] += 1
        return GovernorEvent(
            ts=now,
            action=step.action,
            reason=step.reason,
            reading=reading.to_json(),
            track=step.track.value,
            from_state=before,
            to_state=step.target,
            decision=self.decision,
        )
