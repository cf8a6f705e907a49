"""agent.core.progress: the no-op callback and the throttle."""

from __future__ import annotations

import threading

from agent.core.progress import ProgressFn, no_progress, throttle


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _recorder() -> tuple[list[tuple[str, float, str]], ProgressFn]:
    calls: list[tuple[str, float, str]] = []

    def fn(stage: str, fraction: float, message: str) -> None:
        calls.append((stage, fraction, message))

    return calls, fn


def test_no_progress_accepts_anything() -> None:
    assert no_progress("build", 0.5, "half") is None


def test_throttle_by_time() -> None:
    calls, fn = _recorder()
    clock = _Clock()
    shown = throttle(fn, 1.0, clock=clock)
    shown("build", 0.1, "a")  # first call always passes
    clock.now = 0.5
    shown("build", 0.2, "b")  # too soon
    clock.now = 1.0
    shown("build", 0.3, "c")
    assert [c[2] for c in calls] == ["a", "c"]


def test_new_stage_and_completion_always_pass() -> None:
    calls, fn = _recorder()
    clock = _Clock()
    shown = throttle(fn, 100.0, clock=clock)
    shown("calibrate", 0.0, "a")
    shown("calibrate", 0.5, "dropped")
    shown("build", 0.0, "b")
    shown("build", 1.0, "c")
    shown("build", 1.0, "d")
    assert [c[2] for c in calls] == ["a", "b", "c", "d"]


def test_min_step() -> None:
    calls, fn = _recorder()
    shown = throttle(fn, float("inf"), min_step=0.25, clock=_Clock())
    for i in range(17):
        shown("download", i / 16, str(i))
    assert [c[2] for c in calls] == ["0", "4", "8", "12", "16"]


def test_throttle_is_thread_safe() -> None:
    calls, fn = _recorder()
    shown = throttle(fn, 0.0)

    def hammer() -> None:
        for i in range(200):
            shown("s", i / 200, "")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 800
