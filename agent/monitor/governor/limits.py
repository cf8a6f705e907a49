"""The governor's limits: the profile's thresholds, hysteresis and dwell, and the fps ladder.

The thermal fps stage lowers the cap as ``max_fps × 0.75**k``, clipped to a floor of
max(1 fps, 25 % of max_fps); ``fps_steps_max`` is the k that reaches the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.config.device import DeviceProfile

FPS_STEP = 0.75
"""Each thermal fps step multiplies the cap by this factor."""

FPS_FLOOR_MIN = 1.0
FPS_FLOOR_SHARE = 0.25


def fps_floor(max_fps: float) -> float:
    """Lowest fps cap the thermal policy sets: max(1 fps, 25 % of max_fps), never above max."""
    return min(max_fps, max(FPS_FLOOR_MIN, FPS_FLOOR_SHARE * max_fps))


def _steps_to_floor(max_fps: float, floor: float) -> int:
    cap, steps = max_fps, 0
    while cap > floor + 1e-9:
        cap *= FPS_STEP
        steps += 1
    return steps


@dataclass(frozen=True)
class Limits:
    """Everything the decision core compares readings with (power budgets stay per reading:
    they depend on the sample's power mode)."""

    streams: int
    memory_high_pct: float
    memory_critical_pct: float
    temp_throttle_c: float
    temp_critical_c: float
    hysteresis_pct: float
    dwell_s: float
    max_fps: float | None
    fps_floor: float | None
    fps_steps_max: int

    @property
    def keep(self) -> float:
        """Release factor: a track recovers below ``threshold × keep``."""
        return 1.0 - self.hysteresis_pct / 100.0

    @classmethod
    def of(cls, profile: DeviceProfile, max_fps: float | None) -> Limits:
        """The limits of ``profile`` for a pipeline of ``max_fps`` (None: no fps stage)."""
        if max_fps is not None and not (math.isfinite(max_fps) and max_fps > 0):
            raise ValueError(f"max_fps must be a positive number or None, got {max_fps!r}")
        mon = profile.monitor
        floor = None if max_fps is None else fps_floor(max_fps)
        return cls(
            streams=profile.runtime.streams,
            memory_high_pct=mon.memory_high_pct,
            memory_critical_pct=mon.memory_critical_pct,
            temp_throttle_c=mon.temp_throttle_c,
            temp_critical_c=mon.temp_critical_c,
            hysteresis_pct=mon.hysteresis_pct,
            dwell_s=mon.min_dwell_s,
            max_fps=max_fps,
            fps_floor=floor,
            fps_steps_max=0
            if max_fps is None or floor is None
            else _steps_to_floor(max_fps, floor),
        )

    def cap(self, steps: int) -> float | None:
        """The fps cap after ``steps`` thermal steps (None: uncapped)."""
        if self.max_fps is None or steps <= 0 or self.fps_floor is None:
            return None
        return max(self.fps_floor, self.max_fps * FPS_STEP**steps)
