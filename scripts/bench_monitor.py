#!/usr/bin/env python3
"""Measure the monitor's own cost: the sampler at 1 Hz, each sample fed to the governor.

For each source (this host's ``/proc`` and ``/sys`` through HostSource, and the Orin Nano fixture
tree through SysfsSource when ``tests/fixtures/sysfs/orin-nano`` exists) it runs the real
:class:`~agent.monitor.sampler.Sampler` thread for ``--seconds`` and reports

* process CPU %: ``time.process_time()`` delta (all threads of this process) over wall time —
  the main thread only sleeps, so this is the sampler + source + governor;
* per-read latency p50/p99/max (``perf_counter`` around ``source.read()``);
* governor update latency p50/p99.

Prints a markdown table; ``--out FILE`` also writes the figures as JSON.

    python scripts/bench_monitor.py --seconds 30 --out bench_monitor.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.config.profiles.store import ProfileStore  # noqa: E402
from agent.monitor.governor.machine import Governor  # noqa: E402
from agent.monitor.sample import MonitorSource, Sample  # noqa: E402
from agent.monitor.sampler import Sampler  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "sysfs" / "orin-nano"


class TimedSource:
    """Wraps a source and records how long each read takes."""

    def __init__(self, inner: MonitorSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.latencies_s: list[float] = []

    def read(self) -> Sample:
        t0 = time.perf_counter()
        try:
            return self.inner.read()
        finally:
            self.latencies_s.append(time.perf_counter() - t0)

    def close(self) -> None:
        self.inner.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure(label: str, source: MonitorSource, profile_name: str, seconds: float) -> dict[str, Any]:
    profile = ProfileStore().load(profile_name)
    governor = Governor(profile, max_fps=30.0)
    timed = TimedSource(source)
    gov_latencies: list[float] = []
    samples: list[Sample] = []

    def on_sample(sample: Sample) -> None:
        t0 = time.perf_counter()
        governor.update(sample)
        gov_latencies.append(time.perf_counter() - t0)
        samples.append(sample)

    sampler = Sampler(timed, 1.0, on_sample=on_sample)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sampler.start()
    time.sleep(seconds)
    sampler.stop(timeout=5.0)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    timed.close()
    lat = timed.latencies_s
    known = sum(1 for s in samples if not s.source.endswith(":error"))
    return {
        "source": label,
        "profile": profile_name,
        "interval_s": 1.0,
        "wall_s": round(wall, 3),
        "samples": len(samples),
        "good_samples": known,
        "cpu_s": round(cpu, 6),
        "cpu_pct": round(100.0 * cpu / wall, 4),
        "read_p50_ms": _ms(percentile(lat, 50)),
        "read_p99_ms": _ms(percentile(lat, 99)),
        "read_max_ms": _ms(max(lat) if lat else None),
        "governor_p50_us": _us(percentile(gov_latencies, 50)),
        "governor_p99_us": _us(percentile(gov_latencies, 99)),
        "missed_ticks": sampler.missed_ticks,
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 3)


def _us(v: float | None) -> float | None:
    return None if v is None else round(v * 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="run time per source")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--root", type=Path, default=Path("/"), help="root for the host source (default /)"
    )
    args = parser.parse_args(argv)

    from agent.monitor.host import HostSource

    results = [measure("host (HostSource, /)", HostSource(args.root), "cpu", args.seconds)]
    if FIXTURE.is_dir():
        from agent.monitor.sysfs import SysfsSource

        results.append(
            measure(
                "orin-nano fixture (SysfsSource)",
                SysfsSource(FIXTURE),
                "orin-nano-8gb",
                args.seconds,
            )
        )

    headers = [
        "source",
        "samples",
        "CPU %",
        "read p50 ms",
        "read p99 ms",
        "governor p50 µs",
        "governor p99 µs",
    ]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in results:
        row = [
            r["source"],
            str(r["samples"]),
            f"{r['cpu_pct']:.3f}",
            str(r["read_p50_ms"]),
            str(r["read_p99_ms"]),
            str(r["governor_p50_us"]),
            str(r["governor_p99_us"]),
        ]
        print("| " + " | ".join(row) + " |")
    report = {
        "host": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "seconds_per_source": args.seconds,
        "results": results,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
