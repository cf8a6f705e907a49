"""Energy figures from pipeline fps and board input power."""

from __future__ import annotations

import pytest

from agent.monitor.energy import EnergyMeter
from agent.monitor.sample import Sample


def test_constant_load_figures_agree() -> None:
    meter = EnergyMeter(window_s=60.0)
    for t in range(11):  # 10 s at 30 fps and 12 W
        meter.add(float(t), fps=30.0, power_w=12.0)
    assert meter.energy_j == pytest.approx(120.0)
    assert meter.frames == pytest.approx(300.0)
    assert meter.fps_per_watt == pytest.approx(2.5)
    assert meter.frames_per_joule == pytest.approx(2.5)
    assert meter.mean_power_w == pytest.approx(12.0)
    assert meter.mean_fps == pytest.approx(30.0)


def test_trapezoid_integration_of_a_power_ramp() -> None:
    meter = EnergyMeter(window_s=100.0)
    # Power rises linearly 5 → 15 W over 10 s, sampled every 0.5 s: exactly 100 J.
    for i in range(21):
        t = i * 0.5
        meter.add(t, fps=20.0, power_w=5.0 + t)
    assert meter.energy_j == pytest.approx(100.0)
    assert meter.window_energy_j == pytest.approx(100.0)
    # 200 frames over 100 J; the instantaneous figure is the latest: 20 / 15.
    assert meter.frames_per_joule == pytest.approx(2.0)
    assert meter.fps_per_watt == pytest.approx(20.0 / 15.0)


def test_unknown_power_is_none_and_excluded() -> None:
    meter = EnergyMeter()
    for t in range(5):
        meter.add(float(t), fps=25.0, power_w=None)
    assert meter.energy_j is None
    assert meter.frames_per_joule is None
    assert meter.fps_per_watt is None
    assert meter.to_json()["frames_per_joule"] is None
    # A known stretch, an unknown sample, another known stretch: the intervals touching the
    # unknown sample are left out of frames and joules alike.
    meter = EnergyMeter()
    for t, p in [(0, 10.0), (1, 10.0), (2, None), (3, 20.0), (4, 20.0)]:
        meter.add(float(t), fps=30.0, power_w=p)
    assert meter.energy_j == pytest.approx(10.0 + 20.0)
    assert meter.frames == pytest.approx(60.0)
    assert meter.frames_per_joule == pytest.approx(2.0)
    meter.add(5.0, fps=None, power_w=20.0)
    assert meter.fps_per_watt is None
    assert meter.frames_per_joule == pytest.approx(2.0)


def test_window_slides_and_clips() -> None:
    meter = EnergyMeter(window_s=10.0)
    for t in range(21):  # 10 W for 10 s, then 20 W for 10 s
        meter.add(float(t), fps=40.0, power_w=10.0 if t <= 10 else 20.0)
    assert meter.energy_j == pytest.approx(100.0 + 15.0 + 9 * 20.0)
    # The window is the last 10 s: 10→11 s is the 10→20 W step, 11→20 s is 20 W.
    assert meter.window_energy_j == pytest.approx(15.0 + 180.0)
    assert meter.mean_power_w == pytest.approx(19.5)
    meter.add(20.5, fps=40.0, power_w=20.0)
    # Window now 10.5 → 20.5: the step interval clipped to 10.5 → 11 s, interpolated (15 W at
    # 10.5 s), then 9.5 s at 20 W.
    assert meter.window_energy_j == pytest.approx(0.5 * (15.0 + 20.0) * 0.5 + 9.5 * 20.0)


def test_gaps_and_out_of_order_points_are_ignored() -> None:
    meter = EnergyMeter(max_gap_s=5.0)
    meter.add(0.0, fps=10.0, power_w=10.0)
    meter.add(60.0, fps=10.0, power_w=10.0)  # sampler stalled for a minute: not integrated
    assert meter.energy_j is None
    meter.add(61.0, fps=10.0, power_w=10.0)
    meter.add(30.0, fps=10.0, power_w=999.0)  # older than the last point: ignored
    assert meter.energy_j == pytest.approx(10.0)
    meter.add(62.0, fps=float("nan"), power_w=-4.0)  # garbage is unknown
    assert meter.energy_j == pytest.approx(10.0)


def test_add_sample_uses_board_power() -> None:
    meter = EnergyMeter()
    meter.add_sample(Sample(ts=0.0, source="sysfs", board_power_w=8.0), fps=16.0)
    meter.add_sample(Sample(ts=2.0, source="sysfs", board_power_w=8.0), fps=16.0)
    assert meter.energy_j == pytest.approx(16.0)
    assert meter.fps_per_watt == pytest.approx(2.0)


def test_rejects_bad_window() -> None:
    with pytest.raises(ValueError, match="window_s"):
        EnergyMeter(window_s=0)
    with pytest.raises(ValueError, match="max_gap_s"):
        EnergyMeter(max_gap_s=-1)
