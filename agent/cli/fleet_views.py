"""Text views of the fleet controller's API answers for ``edge-agent fleet`` (tables)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent.cli.common import format_table

__all__ = ["ago", "devices_table", "rollout_list_table", "rollout_status_text"]

_MAX_DEVICE_ROWS = 30


def ago(seconds: float | None) -> str:
    """``12s``, ``4m``, ``3h``, ``2d`` (``-`` for unknown)."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _stamp(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _device_row(d: Mapping[str, Any]) -> list[str]:
    model = d.get("model") or {}
    ota = d.get("ota") or {}
    metrics = d.get("metrics") or {}
    fps = metrics.get("fps")
    version = model.get("version")
    served = f"{model.get('name', '-')} v{version}" if model else "-"
    ota_state = _text(ota.get("state"))
    if ota.get("reason"):
        ota_state += f" ({ota['reason']})"
    engine = d.get("engine_hash") or model.get("engine_hash")
    return [
        str(d.get("device", "?")),
        "yes" if d.get("online") else "no",
        ago(d.get("seen_ago_s")),
        _text(d.get("group")),
        served,
        str(engine)[:12] if engine else "-",
        ota_state,
        f"{fps:.1f}" if isinstance(fps, (int, float)) else "-",
    ]


def devices_table(devices: Sequence[Mapping[str, Any]]) -> str:
    headers = ["DEVICE", "ONLINE", "SEEN", "GROUP", "MODEL", "ENGINE", "OTA", "FPS"]
    online = sum(1 for d in devices if d.get("online"))
    table = format_table(headers, [_device_row(d) for d in devices])
    return f"{table}\n{len(devices)} devices, {online} online"


def rollout_list_table(rollouts: Sequence[Mapping[str, Any]]) -> str:
    headers = ["ROLLOUT", "STATE", "MODEL", "CREATED", "DEVICES", "ACTIVE", "FAILED", "WAVE"]
    rows: list[list[str]] = []
    for r in rollouts:
        counts = r.get("counts") or {}
        waves = r.get("waves") or []
        rows.append([
            str(r.get("id", "?")),
            str(r.get("state", "?")),
            f"{r.get('model', '?')} v{r.get('version', '?')}",
            _stamp(r.get("created_at")),
            str(sum(int(v) for v in counts.values())),
            str(counts.get("active", 0)),
            str(int(counts.get("failed", 0)) + int(counts.get("rolled_back", 0))),
            f"{int(r.get('current_wave', 0)) + 1}/{len(waves)}",
        ])  # fmt: skip
    return format_table(headers, rows) if rows else "no rollouts"


def _waves_table(status: Mapping[str, Any]) -> str:
    devices: Mapping[str, Any] = status.get("devices") or {}
    rows: list[list[str]] = []
    for wave in status.get("waves") or []:
        states = [str((devices.get(d) or {}).get("state", "?")) for d in wave.get("devices", [])]
        rows.append([
            "canary" if wave.get("index") == 0 else str(wave.get("index")),
            str(len(states)),
            str(wave.get("state", "?")),
            _stamp(wave.get("started_at")),
            _stamp(wave.get("done_at")),
            str(states.count("active")),
            str(states.count("in_progress") + states.count("pending")),
            str(states.count("failed") + states.count("rolled_back")),
            str(states.count("offline")),
        ])  # fmt: skip
    headers = ["WAVE", "DEVICES", "STATE", "STARTED", "DONE", "ACTIVE", "WAITING", "FAILED",
               "OFFLINE"]  # fmt: skip
    return format_table(headers, rows)


def _problem_rows(status: Mapping[str, Any]) -> list[list[str]]:
    devices: Mapping[str, Any] = status.get("devices") or {}
    rows: list[list[str]] = []
    for device, info in sorted(devices.items()):
        state = str(info.get("state"))
        if state in ("failed", "rolled_back", "offline"):
            rows.append([device, state, _text(info.get("reason")), _text(info.get("note"))])
    return rows


def rollout_status_text(status: Mapping[str, Any]) -> str:
    counts: Mapping[str, Any] = status.get("counts") or {}
    lines = [
        f"rollout {status.get('id')}  {status.get('state')}  "
        f"{status.get('model')} v{status.get('version')}  fleet {status.get('fleet')}",
        "devices: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        "",
        _waves_table(status),
    ]
    if status.get("abort_reason"):
        lines += ["", f"aborted: {status['abort_reason']}"]
        if status.get("tripped"):
            lines.append("tripped by: " + ", ".join(str(d) for d in status["tripped"]))
    problems = _problem_rows(status)
    if problems:
        shown = problems[:_MAX_DEVICE_ROWS]
        lines += ["", format_table(["DEVICE", "STATE", "REASON", "NOTE"], shown)]
        if len(problems) > len(shown):
            lines.append(f"... and {len(problems) - len(shown)} more (--json lists all)")
    return "\n".join(lines)
