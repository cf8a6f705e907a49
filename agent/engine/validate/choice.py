"""The decision: which validated precision serves.

:func:`choose_precision` picks the fastest precision that passes; INT8 that is not faster than
float is not chosen, and the reason says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from agent.core.errors import ValidationFailed
from agent.engine.validate.results import PrecisionResult

__all__ = ["choose_precision"]

log = logging.getLogger(__name__)

_FLOAT_FIRST = ("fp32", "fp16", "int8")


def _speed(r: PrecisionResult) -> tuple[float, int]:
    """Sort key: p50 latency, then float before int8 on a tie."""
    p50 = r.p50_ms if r.p50_ms is not None else float("inf")
    return (p50, _FLOAT_FIRST.index(r.precision) if r.precision in _FLOAT_FIRST else 9)


def _explicit(results: Mapping[str, PrecisionResult], requested: str) -> tuple[str, str]:
    """An explicitly requested precision: it must pass."""
    result = results.get(requested)
    if result is None:
        raise ValidationFailed(
            f"precision {requested} was requested but not validated",
            fix="this is a bug in the build orchestrator; report it",
        )
    if not result.passed:
        lat = f", p50 {result.p50_ms:.3f} ms" if result.p50_ms is not None else ""
        raise ValidationFailed(
            f"{result.describe()} against the float reference on "
            f"{result.details.get('frames', '?')} held-out frames{lat}; details "
            f"{result.details}",
            fix="calibrate with more representative frames (--calib), try "
            "calibration.method percentile or minmax, keep sensitive nodes in float "
            "(keep_float in model.yaml), or build --precision auto/fp32",
        )
    return requested, f"{requested} requested explicitly; {result.describe()}"


def _passing(
    results: Mapping[str, PrecisionResult],
    allowed: Sequence[str],
    available: Sequence[str],
    notes: list[str],
) -> list[PrecisionResult]:
    """The allowed, available precisions that pass; what was left out goes to ``notes``."""
    considered = [p for p in allowed if p in available and p in results]
    skipped = [p for p in allowed if p not in available]
    if skipped:
        notes.append(f"{', '.join(skipped)} not available on this backend")
    for r in (results[p] for p in considered if not results[p].passed):
        notes.append(r.describe())
    passing = [results[p] for p in considered if results[p].passed]
    if not passing:
        raise ValidationFailed(
            "no precision passed the validation gate: "
            + "; ".join(r.describe() for r in (results[p] for p in considered)),
            fix="check the calibration frames and the model's tolerance in model.yaml; the "
            "float engine should always match its own reference — if fp32 fails, the backend "
            "or the model is broken",
        )
    return passing


def _without_slow_int8(passing: list[PrecisionResult], notes: list[str]) -> list[PrecisionResult]:
    """INT8 that is not faster than the best passing float precision is not chosen."""
    floats = [r for r in passing if r.precision != "int8"]
    best_float = min(floats, key=_speed) if floats else None
    int8 = next((r for r in passing if r.precision == "int8"), None)
    if int8 is None or best_float is None or _speed(int8)[0] < _speed(best_float)[0]:
        return passing
    notes.append(
        f"int8 passes but is not faster than {best_float.precision} "
        f"(p50 {int8.p50_ms:.3f} ms vs {best_float.p50_ms:.3f} ms), so it is not chosen"
    )
    return [r for r in passing if r.precision != "int8"]


def _why(chosen: PrecisionResult, passing: list[PrecisionResult], notes: list[str]) -> str:
    why = f"auto: {chosen.precision} is the fastest passing precision"
    if chosen.p50_ms is not None:
        why += f" (p50 {chosen.p50_ms:.3f} ms"
        others = [r for r in passing if r is not chosen and r.p50_ms is not None]
        if others:
            why += "; " + ", ".join(f"{r.precision} {r.p50_ms:.3f} ms" for r in others)
        why += ")"
    why += f"; {chosen.describe()}"
    if notes:
        why += "; " + "; ".join(notes)
    return why


def choose_precision(
    results: Mapping[str, PrecisionResult],
    requested: str,
    allowed: Sequence[str],
    available: Sequence[str],
) -> tuple[str, str]:
    """Pick the precision to serve; returns ``(precision, why)``.

    ``requested`` ``auto``: the fastest (by p50) precision that is allowed by the profile,
    available on the backend and passes the gate; INT8 that is not faster than the best float
    precision is not chosen. An explicit precision must pass, else :class:`ValidationFailed`
    with the numbers.
    """
    if requested != "auto":
        return _explicit(results, requested)
    notes: list[str] = []
    passing = _without_slow_int8(_passing(results, allowed, available, notes), notes)
    chosen = min(passing, key=_speed)
    return chosen.precision, _why(chosen, passing, notes)
