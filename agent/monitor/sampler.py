"""Sampling a monitor source on its own thread at a fixed interval.

The schedule is drift-free: tick *k* is due at ``start + k × interval`` on the injected clock, so
a slow read delays one sample, not every later one; ticks missed entirely (a read that took longer
than the interval) are skipped and counted, never bunched up.

A source must not raise, but a broken one must not take the monitor down either: an exception
from ``source.read()`` (or a result that is not a :class:`Sample`) becomes a sample whose fields
are all unknown, with ``source`` set to ``"<name>:error"``. Each distinct error is logged once as a
warning. Readings that are not finite numbers, or far outside what a board can report, become
unknown too. The ``on_sample`` callback runs on the sampler thread; its exceptions are logged and
the thread goes on (a consumer on another thread should only enqueue there).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.core.logs import log_fields
from agent.monitor.sample import MemorySample, MonitorSource, Sample

__all__ = ["Sampler", "sanitize"]

log = logging.getLogger(__name__)

_MAX_DISTINCT_WARNINGS = 64
# What a board can plausibly report; outside it a reading is garbage, not a measurement.
_TEMP_RANGE_C = (-60.0, 200.0)
_POWER_RANGE_W = (0.0, 2000.0)
_PCT_RANGE = (0.0, 100.0)


def _number(value: Any, lo: float | None = None, hi: float | None = None) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return None
    return value


def _number_map(raw: Any, lo: float, hi: float) -> dict[str, float | None]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): _number(v, lo, hi) for k, v in raw.items()}


def sanitize(sample: Sample) -> Sample:
    """The same sample with every implausible or non-numeric reading replaced by None."""
    mem = sample.memory if isinstance(sample.memory, MemorySample) else MemorySample()
    memory = MemorySample(
        total_mib=_number(mem.total_mib, 0.0),
        used_mib=_number(mem.used_mib, 0.0),
        available_mib=_number(mem.available_mib, 0.0),
        swap_total_mib=_number(mem.swap_total_mib, 0.0),
        swap_used_mib=_number(mem.swap_used_mib, 0.0),
    )
    if (
        memory.total_mib is not None
        and memory.available_mib is not None
        and memory.available_mib > memory.total_mib
    ):
        memory = dataclasses.replace(memory, available_mib=None)
    throttling_raw: Any = sample.throttling
    throttling: dict[str, bool] = {}
    if isinstance(throttling_raw, dict):
        for key, value in throttling_raw.items():
            if isinstance(value, bool):
                throttling[str(key)] = value
    mode: Any = sample.power_mode
    return dataclasses.replace(
        sample,
        power_w=_number_map(sample.power_w, *_POWER_RANGE_W),
        board_power_w=_number(sample.board_power_w, *_POWER_RANGE_W),
        board_power_limit_w=_number(sample.board_power_limit_w, *_POWER_RANGE_W),
        temps_c=_number_map(sample.temps_c, *_TEMP_RANGE_C),
        memory=memory,
        gpu_load_pct=_number(sample.gpu_load_pct, *_PCT_RANGE),
        cpu_load_pct=_number(sample.cpu_load_pct, *_PCT_RANGE),
        power_mode=mode if isinstance(mode, str) and mode else None,
        throttling=throttling,
    )


class Sampler:
    """Reads ``source`` every ``interval_s`` on a daemon thread and hands each sample on."""

    def __init__(
        self,
        source: MonitorSource,
        interval_s: float,
        *,
        on_sample: Callable[[Sample], None],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        name: str = "edge-agent-monitor",
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.source = source
        self.interval_s = float(interval_s)
        self._on_sample = on_sample
        self._clock = clock
        self._wall_clock = wall_clock
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._latest: Sample | None = None
        self._warned: set[tuple[str, str]] = set()
        self.reads = 0
        self.errors = 0
        self.callback_errors = 0
        self.missed_ticks = 0

    # ------------------------------------------------------------------ public

    @property
    def latest(self) -> Sample | None:
        """The most recent sample (an error sample included), or None before the first."""
        with self._lock:
            return self._latest

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def read_once(self) -> Sample:
        """One safe reading (never raises), recorded as :attr:`latest`; no callback."""
        source_name = str(getattr(self.source, "name", type(self.source).__name__))
        try:
            result: Any = self.source.read()
            if not isinstance(result, Sample):
                raise TypeError(
                    f"{source_name}.read() returned {type(result).__name__}, not a Sample"
                )
            sample = sanitize(result)
        except Exception as exc:
            self.errors += 1
            self._warn_once(source_name, exc)
            sample = Sample(ts=self._wall_clock(), source=f"{source_name}:error")
        self.reads += 1
        with self._lock:
            self._latest = sample
        return sample

    def tick(self) -> Sample:
        """One reading delivered to ``on_sample`` (whose exceptions are logged, not raised)."""
        sample = self.read_once()
        try:
            self._on_sample(sample)
        except Exception:
            self.callback_errors += 1
            log.exception(
                "monitor sample callback failed; sampling goes on",
                extra=log_fields(callback_errors=self.callback_errors),
            )
        return sample

    def start(self) -> None:
        """Start the sampling thread (first reading at once)."""
        if self.running:
            raise RuntimeError("sampler already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to stop and join it for at most ``timeout`` s; True when it ended.

        A read stuck in the source cannot be interrupted; the thread is a daemon, so it never
        keeps the process alive, and ``stop`` still returns within ``timeout``.
        """
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(max(0.0, timeout))
        if thread.is_alive():
            log.warning(
                "monitor sampler did not stop in time (a source read is stuck)",
                extra=log_fields(timeout_s=timeout),
            )
            return False
        self._thread = None
        return True

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _run(self) -> None:
        start = self._clock()
        k = 0
        while not self._stop.is_set():
            self.tick()
            k += 1
            due = start + k * self.interval_s
            now = self._clock()
            if now >= due:
                # Overran one or more ticks: skip to the next one still in the future.
                behind = int((now - start) // self.interval_s) + 1
                self.missed_ticks += behind - k
                k = behind
                due = start + k * self.interval_s
            if self._stop.wait(max(0.0, due - now)):
                break

    def _warn_once(self, source_name: str, exc: Exception) -> None:
        key = (type(exc).__name__, str(exc))
        if key in self._warned:
            return
        if len(self._warned) == _MAX_DISTINCT_WARNINGS:
            self._warned.add(key)
            log.warning(
                f"monitor source {source_name}: more than {_MAX_DISTINCT_WARNINGS} distinct "
                "errors; not logging further ones"
            )
            return
        if len(self._warned) > _MAX_DISTINCT_WARNINGS:
            return
        self._warned.add(key)
        log.warning(
            f"monitor source {source_name} failed to read ({type(exc).__name__}: {exc}); "
            "this sample's fields are unknown, sampling goes on",
            extra=log_fields(source=source_name, error=type(exc).__name__, detail=str(exc)),
        )
