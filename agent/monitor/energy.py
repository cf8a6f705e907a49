"""Energy figures: how much work the board does per joule.

``fps_per_watt`` and ``frames_per_joule`` are the same unit (frames/s ÷ J/s = frames/J). They
differ only in how they average:

* :attr:`EnergyMeter.fps_per_watt` is the ratio of the *latest* pipeline fps and board power —
  what the board does right now;
* :attr:`EnergyMeter.frames_per_joule` is frames ÷ energy over the window, both integrated with
  the trapezoid rule over the same intervals — the honest average when fps and power vary.

For constant fps and power the two are equal. Power is the board input power
(``Sample.board_power_w``: ``VDD_IN`` on Jetson, RAPL package power on x86). An interval with an
unknown endpoint (fps or power None) or a gap longer than ``max_gap_s`` is left out of both
integrals, so frames and joules always cover the same time. Every figure is None when it cannot be
computed from known readings.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from agent.monitor.sample import Sample

__all__ = ["EnergyMeter"]


@dataclass(frozen=True)
class _Point:
    ts: float
    fps: float | None
    power_w: float | None


def _clean(value: float | None) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _interpolate(a: _Point, b: _Point, ts: float) -> _Point:
    """The point on the straight line from ``a`` to ``b`` at ``ts`` (both fully known)."""
    assert a.fps is not None and b.fps is not None
    assert a.power_w is not None and b.power_w is not None
    t = (ts - a.ts) / (b.ts - a.ts)
    return _Point(ts, a.fps + (b.fps - a.fps) * t, a.power_w + (b.power_w - a.power_w) * t)


class EnergyMeter:
    """Accumulates (ts, fps, board power) points; integrates over a sliding window and in total.

    ``window_s`` bounds the averaging window of :attr:`frames_per_joule` / :attr:`window_energy_j`;
    :attr:`energy_j` and :attr:`frames` are running totals since the meter was created.
    """

    def __init__(self, window_s: float = 60.0, *, max_gap_s: float = 10.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if not max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0, got {max_gap_s}")
        self.window_s = window_s
        self.max_gap_s = max_gap_s
        self._points: deque[_Point] = deque()
        self._energy_j = 0.0
        self._frames = 0.0
        self._covered_s = 0.0  # time covered by integrable intervals (totals)

    # ------------------------------------------------------------------ input

    def add(self, ts: float, *, fps: float | None, power_w: float | None) -> None:
        """One point; ``ts`` in seconds, monotonic (an older ts than the last is ignored)."""
        point = _Point(float(ts), _clean(fps), _clean(power_w))
        if self._points:
            last = self._points[-1]
            if point.ts <= last.ts:
                return
            seg = self._segment(last, point)
            if seg is not None:
                frames, joules = seg
                self._frames += frames
                self._energy_j += joules
                self._covered_s += point.ts - last.ts
        self._points.append(point)
        horizon = point.ts - self.window_s
        # Keep one point at or before the horizon so the window's first interval is whole.
        while len(self._points) > 1 and self._points[1].ts <= horizon:
            self._points.popleft()

    def add_sample(self, sample: Sample, fps: float | None) -> None:
        """``add(sample.ts, fps=fps, power_w=sample.board_power_w)``."""
        self.add(sample.ts, fps=fps, power_w=sample.board_power_w)

    # ------------------------------------------------------------------ figures

    @property
    def energy_j(self) -> float | None:
        """Board energy since the start (J), over the intervals where power was known."""
        return self._energy_j if self._covered_s > 0 else None

    @property
    def frames(self) -> float | None:
        """Frames since the start, over the same intervals as :attr:`energy_j`."""
        return self._frames if self._covered_s > 0 else None

    @property
    def window_energy_j(self) -> float | None:
        frames_j = self._window()
        return frames_j[1] if frames_j is not None else None

    @property
    def mean_power_w(self) -> float | None:
        """Time-weighted mean board power over the window."""
        window = self._window()
        return window[1] / window[2] if window is not None else None

    @property
    def mean_fps(self) -> float | None:
        """Time-weighted mean fps over the window (same intervals as the power mean)."""
        window = self._window()
        return window[0] / window[2] if window is not None else None

    @property
    def frames_per_joule(self) -> float | None:
        """Frames ÷ joules over the window (trapezoid); None if energy is unknown or zero."""
        window = self._window()
        if window is None or window[1] <= 0:
            return None
        return window[0] / window[1]

    @property
    def fps_per_watt(self) -> float | None:
        """Latest fps ÷ latest board power (instantaneous frames/J); None when either is unknown."""
        if not self._points:
            return None
        last = self._points[-1]
        if last.fps is None or last.power_w is None or last.power_w <= 0:
            return None
        return last.fps / last.power_w

    def to_json(self) -> dict[str, Any]:
        return {
            "fps_per_watt": self.fps_per_watt,
            "frames_per_joule": self.frames_per_joule,
            "mean_fps": self.mean_fps,
            "mean_power_w": self.mean_power_w,
            "window_energy_j": self.window_energy_j,
            "energy_j": self.energy_j,
        }

    # ------------------------------------------------------------------ internals

    def _segment(self, a: _Point, b: _Point) -> tuple[float, float] | None:
        dt = b.ts - a.ts
        if dt <= 0 or dt > self.max_gap_s:
            return None
        if a.fps is None or b.fps is None or a.power_w is None or b.power_w is None:
            return None
        return 0.5 * (a.fps + b.fps) * dt, 0.5 * (a.power_w + b.power_w) * dt

    def _window(self) -> tuple[float, float, float] | None:
        """(frames, joules, seconds) over the window's integrable intervals."""
        if len(self._points) < 2:
            return None
        horizon = self._points[-1].ts - self.window_s
        frames = joules = seconds = 0.0
        for first, b in itertools.pairwise(self._points):
            if b.ts <= horizon or self._segment(first, b) is None:
                continue
            # Clip the interval straddling the horizon, interpolating linearly.
            a = _interpolate(first, b, horizon) if first.ts < horizon else first
            seg = self._segment(a, b)
            if seg is None:
                continue
            seconds += b.ts - a.ts
            frames += seg[0]
            joules += seg[1]
        return (frames, joules, seconds) if seconds > 0 else None
