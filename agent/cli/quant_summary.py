"""The INT8 summary ``inspect`` and ``build`` print: the calibration method chosen, the layers
kept in float (reason, added error), the accuracy-search attempts and the gate numbers, read
from an artifact's manifest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.cli.common import format_table
from agent.engine.validate.results import GateReport

__all__ = ["quantization_json", "quantization_text"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def quantization_json(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The INT8 facts of a manifest as JSON (None for a float artifact)."""
    q = manifest.get("quantization")
    if not isinstance(q, Mapping):
        return None
    search = q.get("search") if isinstance(q.get("search"), Mapping) else None
    validation = manifest.get("validation")
    results = validation.get("results", {}) if isinstance(validation, Mapping) else {}
    return {
        "method": q.get("method"),
        "recipe": q.get("recipe"),
        "float_layers": list(q.get("float_layers") or []),
        "search": search,
        "gate": results,
    }


def _is_tail(layer: Mapping[str, Any]) -> bool:
    return str(layer.get("reason", "")).startswith("float tail")


def _float_rows(layers: list[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            str(f.get("node", "")),
            str(f.get("op", "")) or "-",
            _fmt(f.get("added_error")),
            str(f.get("reason", "")),
        ]
        for f in layers
    ]


def _attempt_rows(search: Mapping[str, Any]) -> list[list[str]]:
    chosen = search.get("chosen")
    rows: list[list[str]] = []
    for a in search.get("attempts") or []:
        rows.append(
            [
                str(a.get("index")) + (" *" if a.get("index") == chosen else ""),
                str(a.get("method")),
                str(a.get("rank")),
                str(a.get("float_layers")),
                str(a.get("metric") or "-"),
                _fmt(a.get("value")),
                _fmt(a.get("passed")),
                _fmt(a.get("p50_ms"), 3),
                str(a.get("error") or ""),
            ]
        )
    return rows


def _search_lines(search: Mapping[str, Any] | None) -> list[str]:
    if search is None:
        return []
    if not search.get("ran"):
        return [f"accuracy search: not run ({search.get('why', '')})"]
    return [
        f"accuracy search: {len(search.get('attempts') or [])} attempt(s) in "
        f"{search.get('seconds', '?')} s; chosen attempt {search.get('chosen')} "
        f"({'passes' if search.get('passed') else 'no attempt passed'}); "
        f"stopped: {search.get('stopped', '')}",
        format_table(
            ["#", "METHOD", "RANK", "FLOAT", "METRIC", "VALUE", "PASSED", "P50_MS", "ERROR"],
            _attempt_rows(search),
        ),
    ]


def quantization_text(manifest: Mapping[str, Any], *, gate: bool = True) -> str:
    """The readable INT8 summary ("" for a float artifact); ``gate`` adds the gate table."""
    facts = quantization_json(manifest)
    if facts is None:
        return ""
    lines = [f"int8 calibration method: {facts['method']} (recipe {facts['recipe']})"]
    layers = [f for f in facts["float_layers"] if not _is_tail(f)]
    tail = len(facts["float_layers"]) - len(layers)
    more = f" (+ {tail} post-processing nodes of the float tail; --json lists them)" if tail else ""
    lines.append(f"layers kept in float: {len(layers) or 'none'}{more}")
    if layers:
        lines.append(format_table(["NODE", "OP", "ADDED_ERROR", "REASON"], _float_rows(layers)))
    lines.extend(_search_lines(facts["search"]))
    validation = manifest.get("validation")
    if gate and isinstance(validation, Mapping) and validation.get("results"):
        report = GateReport.from_json(validation)
        lines.append(f"gate ({report.frames} held-out frames; chosen {report.chosen}):")
        lines.append(
            format_table(
                ["PRECISION", "METRIC", "VALUE", "P50_MS", "P99_MS", "PASSED"],
                report.table_rows(),
            )
        )
    return "\n".join(lines)
