"""Automatic mixed precision: keep in float the nodes whose added quantization error is far
above the rest (measured by the node-error probe), in a few rounds, and give the exclusions up
again when they do not at least halve the output error."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.core.progress import ProgressFn
from agent.engine.quantize.probe import find_outliers

__all__ = ["Exclusion", "exclude_outliers"]

log = logging.getLogger(__name__)

#: Re-quantize the model keeping the given nodes in float.
Requantize = Callable[[Sequence[str]], None]

#: Measure the current Q/DQ model: (added error per node, mean output error).
Measure = Callable[[], tuple[dict[str, float], float]]


@dataclass
class Exclusion:
    """What the automatic pass measured and decided (empty when it did not run)."""

    auto: list[str] = field(default_factory=list[str])
    reverted: list[str] = field(default_factory=list[str])
    errors: dict[str, float] = field(default_factory=dict[str, float])
    final_errors: dict[str, float] = field(default_factory=dict[str, float])
    out_err: float | None = None
    final_out_err: float | None = None


def _new_exclusions(
    result: Exclusion, excluded: Sequence[str], consumers: Mapping[str, Sequence[str]]
) -> list[str]:
    """The outlier nodes of the last measurement not yet excluded, with their quantized
    consumers: Q/DQ on a tensor comes from its producer *or* from consumers quantizing their
    inputs, so a flagged node's quantized consumers stay float with it."""
    kept = [*excluded, *result.auto]
    flagged = [n for n in find_outliers(result.final_errors) if n not in kept]
    new = list(dict.fromkeys([*flagged, *(c for n in flagged for c in consumers.get(n, ()))]))
    return [n for n in new if n not in kept]


def exclude_outliers(
    measure: Measure,
    *,
    excluded: Sequence[str],
    consumers: Mapping[str, Sequence[str]],
    requantize: Requantize,
    progress: ProgressFn,
    max_rounds: int,
) -> Exclusion:
    """Measure the Q/DQ model against float and keep outlier nodes float.

    A destroyed tensor hides the next culprit downstream (its added error looks small when its
    inputs are already wrong), so exclusion runs in up to ``max_rounds`` rounds (0: measure
    only, for the sensitivity ranking).
    """
    progress("probe", 0.0, "measuring per-node quantization error")
    errors, out_err = measure()
    result = Exclusion(errors=errors, final_errors=errors, out_err=out_err, final_out_err=out_err)
    final_out_err = out_err
    for round_ in range(max_rounds):
        new = _new_exclusions(result, excluded, consumers)
        if not new:
            break
        result.auto += new
        progress("probe", 0.3 + 0.2 * round_, f"keeping in float: {new}")
        requantize([*excluded, *result.auto])
        result.final_errors, final_out_err = measure()
        result.final_out_err = final_out_err
    if result.auto and final_out_err > 0.5 * out_err:
        # Keeping them float did not halve the output error: the spikes were noise,
        # not a quantization failure; do not pay for float nodes that buy nothing.
        result.reverted, result.auto = result.auto, []
        requantize(list(excluded))
        result.final_errors, result.final_out_err = errors, out_err
    return result
