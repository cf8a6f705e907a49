"""The measuring loop of ``edge-agent bench``: N concurrent runners, one thread each."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np

from agent.backends.base import Runner
from agent.cli.bench_stats import STAGES, StageTimed

__all__ = ["Streams"]


class Streams:
    """One thread per runner: activate and warm up, meet at a barrier, infer until stopped.

    ``samples[i]`` holds stream ``i``'s latencies (ms); ``stages[s]`` the per-stage times of
    runners that measure them (:class:`~agent.cli.bench_stats.StageTimed`)."""

    def __init__(self, runners: list[Runner], feed: dict[str, np.ndarray], warmup: int) -> None:
        self.runners = runners
        self.feed = feed
        self.warmup = warmup
        self.samples: list[list[float]] = [[] for _ in runners]
        self.stages: dict[str, list[float]] = {s: [] for s in STAGES}
        self.errors: list[BaseException] = []
        self._barrier = threading.Barrier(len(runners) + 1)
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _warm(self, runner: Runner) -> bool:
        try:
            runner.activate()
            for _ in range(max(0, self.warmup)):
                runner.infer(self.feed)
        except BaseException as exc:
            self.errors.append(exc)
            self._barrier.abort()
            return False
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                self._barrier.wait()
        return True

    def _record_stages(self, runner: StageTimed) -> None:
        times = runner.last_stage_ms()
        if times is None:
            return
        with self._lock:
            for stage in STAGES:
                if stage in times:
                    self.stages[stage].append(float(times[stage]))

    def _worker(self, index: int) -> None:
        runner = self.runners[index]
        if not self._warm(runner):
            return
        timed = runner if isinstance(runner, StageTimed) else None
        try:
            mine = self.samples[index]
            while not self._stop.is_set():
                start = time.perf_counter()
                runner.infer(self.feed)
                mine.append((time.perf_counter() - start) * 1000.0)
                if timed is not None:
                    self._record_stages(timed)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            runner.deactivate()

    def run(self, seconds: float) -> float:
        """Measure for ``seconds`` once every stream is warm; the wall time measured."""
        pool = [
            threading.Thread(target=self._worker, args=(i,), daemon=True)
            for i in range(len(self.runners))
        ]
        for t in pool:
            t.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            self._barrier.wait()
        started = time.perf_counter()
        if not self.errors:
            time.sleep(max(0.0, seconds))
        self._stop.set()
        for t in pool:
            t.join()
        return time.perf_counter() - started
