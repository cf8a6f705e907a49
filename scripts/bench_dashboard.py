#!/usr/bin/env python3
"""Dashboard benchmark: a real Mosquitto, a real ``edge-agent fleet serve`` (SQLite store),
``--devices`` simulated devices (``python -m agent.fleet.sim``, sharded past 300 a process) and
the distribution's headless Chromium opening the fleet page. Not a test: figures only.

    python scripts/bench_dashboard.py                      # 1,000 devices, metrics every 5 s
    python scripts/bench_dashboard.py --devices 300 --scroll-s 5 --out bench.json

Measured in the page (Performance API):

1. **first paint**: ``first-paint`` and ``first-contentful-paint`` after navigation start, and the
   time until the table holds one row per device (checked every animation frame).
2. **responsiveness under updates**: with every device reporting every ``--interval`` s (the
   controller streams each change to the page), the table's scroll container is scrolled up and
   down every frame for ``--scroll-s`` s; recorded: long tasks (``PerformanceObserver``
   ``longtask``: main-thread work over 50 ms), frame intervals (``requestAnimationFrame``
   deltas: p50 / p95 / max) and the ``device`` events the page received meanwhile.

It prints a table and writes JSON (``--out``). Figures depend on the machine (the controller,
the simulator, the broker and the browser share it); compare runs, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_fleet import Bench, _raise_fd_limit, _wait  # noqa: E402

from tests.helpers.browser import Chromium, unavailable  # noqa: E402

# Installed before the page's own scripts: count the stream's device events and keep every
# long task (the observer is only on while the scroll loop runs).
INIT_JS = """
(() => {
  const bench = {deviceEvents: 0, longTasks: []};
  window.__bench = bench;
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(url, options) {
      super(url, options);
      this.addEventListener('device', () => { bench.deviceEvents += 1; });
    }
  };
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) bench.longTasks.push([e.startTime, e.duration]);
  }).observe({type: 'longtask', buffered: true});
})();
"""

ROWS_READY_JS = """n => document.querySelectorAll('tr[data-device-id]').length >= n
  && performance.now()"""

# Scroll the element that scrolls the device table (or the document) every frame, back and
# forth, for `seconds`; return the frame intervals and what happened meanwhile.
SCROLL_JS = """async seconds => {
  const table = document.querySelector('table#devices');
  let el = table ? table.parentElement : null;
  while (el && el !== document.body && !(el.scrollHeight > el.clientHeight + 10
         && /(auto|scroll)/.test(getComputedStyle(el).overflowY))) el = el.parentElement;
  if (!el || el === document.body) el = document.scrollingElement;
  const bench = window.__bench, t0 = performance.now(), events0 = bench.deviceEvents;
  const deltas = [];
  let last = t0, dir = 1;
  await new Promise(done => {
    const frame = now => {
      deltas.push(now - last); last = now;
      const before = el.scrollTop;
      el.scrollTop = before + dir * 40;
      if (el.scrollTop === before) dir = -dir;
      if (now - t0 < seconds * 1000) requestAnimationFrame(frame); else done();
    };
    requestAnimationFrame(frame);
  });
  const t1 = performance.now();
  return {
    deltas: deltas.slice(1),
    longTasks: bench.longTasks.filter(([start]) => start >= t0 && start <= t1).map(t => t[1]),
    deviceEvents: bench.deviceEvents - events0,
    seconds: (t1 - t0) / 1000,
    scroller: el === document.scrollingElement ? 'document' : (el.id || el.className || el.tagName),
    scrollRange: el.scrollHeight - el.clientHeight,
  };
}"""


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _first_paint(browser: Chromium, url: str, devices: int) -> tuple[Any, dict[str, Any]]:
    page = browser.page(init_script=INIT_JS)
    page.set_default_timeout(120_000)
    page.goto(f"{url}/#/")
    rows_ms = page.wait_for_function(ROWS_READY_JS, arg=devices, polling="raf").json_value()
    paints = page.evaluate(
        "Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]))"
    )
    nav = page.evaluate(
        "(e => e ? {dom_content_loaded: e.domContentLoadedEventEnd, load: e.loadEventEnd} : {})"
        "(performance.getEntriesByType('navigation')[0])"
    )
    return page, {
        "first_paint_ms": round(paints.get("first-paint", float("nan")), 1),
        "first_contentful_paint_ms": round(paints.get("first-contentful-paint", float("nan")), 1),
        "dom_content_loaded_ms": round(nav.get("dom_content_loaded", float("nan")), 1),
        "rows_ready_ms": round(float(rows_ms), 1),
        "rows": page.evaluate("document.querySelectorAll('tr[data-device-id]').length"),
    }


def _responsiveness(page: Any, seconds: float) -> dict[str, Any]:
    page.set_default_timeout((seconds + 30) * 1000)
    got = page.evaluate(SCROLL_JS, seconds)
    deltas, long_tasks = got["deltas"], got["longTasks"]
    return {
        "seconds": round(got["seconds"], 2),
        "frames": len(deltas),
        "frame_ms_p50": round(_percentile(deltas, 0.5), 1),
        "frame_ms_p95": round(_percentile(deltas, 0.95), 1),
        "frame_ms_max": round(max(deltas, default=float("nan")), 1),
        "long_tasks": len(long_tasks),
        "long_task_ms_total": round(sum(long_tasks), 1),
        "long_task_ms_max": round(max(long_tasks, default=0.0), 1),
        "device_events": got["deviceEvents"],
        "device_events_per_s": round(got["deviceEvents"] / max(got["seconds"], 1e-3), 1),
        "scroller": got["scroller"],
        "scroll_range_px": got["scrollRange"],
    }


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'phase':<16} {'figure':<28} value", "-" * 56]
    for phase in ("setup", "first_paint", "responsiveness"):
        for key, value in result[phase].items():
            lines.append(f"{phase:<16} {key:<28} {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bench = Bench(work, args)
    try:
        bench.start_controller()
        assert bench.api is not None
        t0 = time.monotonic()
        bench.start_sim()
        _wait(
            lambda: sum(1 for d in bench.devices() if d["online"] and d["metrics"]) >= args.devices,
            120 + args.devices / 10,
            f"{args.devices} devices online with metrics",
            step=0.5,
        )
        setup = {"devices": args.devices, "interval_s": args.interval}
        setup["registered_s"] = round(time.monotonic() - t0, 1)
        time.sleep(args.settle_s)  # let the devices' report phases spread
        with Chromium() as browser:
            page, paint = _first_paint(browser, bench.api.url, args.devices)
            responsive = _responsiveness(page, args.scroll_s)
            setup["chromium"] = browser.binary
            setup["page_errors"] = list(browser.errors)
        return {"setup": setup, "first_paint": paint, "responsiveness": responsive}
    finally:
        bench.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Dashboard benchmark: first paint and scrolling.")
    p.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    p.add_argument("--interval", type=float, default=5.0, help="metrics interval, s (default 5)")
    p.add_argument("--scroll-s", type=float, default=10.0, help="scroll loop length, s")
    p.add_argument("--settle-s", type=float, default=10.0, help="wait before opening the page")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--controller-log", type=Path, help="the controller's stderr (default: tmp)")
    args = p.parse_args(argv)
    reason = unavailable()
    if reason:
        print(f"bench_dashboard: {reason}", file=sys.stderr)
        return 2
    _raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        result = run(args, Path(tmp))
    print(_table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
