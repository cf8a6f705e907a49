"""Statistical power of the validation gate (exact binomial, stdlib only).

The gate passes a candidate when its observed agreement ``k / n`` reaches the tolerance ``t``
(top-1 agreement per frame for classify, matched boxes per reference box for detect). A
candidate whose *true* agreement is below ``t`` should fail; with few trials it often does not.
The gate's power at ``n`` trials is ``P(K / n < t)`` for ``K ~ Binomial(n, p)``, where ``p`` is
the agreement of the candidate at risk: one that disagrees twice as often as the tolerance
allows, ``p = 1 - 2 (1 - t)`` (classify: 0.98 against the default 0.99 — a real 2 %
disagreement; detect: 0.90 against 0.95).

Because ``k`` is an integer the power is a saw-tooth in ``n``; :func:`required_trials` is the
count from which it never drops below the target again (523 frames for 0.98 vs 0.99 at 95 %;
the first count that reaches 95 % is 386, but 387..522 include counts that do not).
"""

from __future__ import annotations

import functools
import logging
import math

from agent.engine.validate.results import GatePower

__all__ = [
    "POWER_TARGET",
    "fail_probability",
    "gate_power",
    "pass_threshold",
    "required_trials",
    "risk_agreement",
]

log = logging.getLogger(__name__)

#: Probability with which the candidate at risk must fail.
POWER_TARGET = 0.95
_SEARCH_LIMIT = 200_000


def risk_agreement(tolerance: float) -> float:
    """True agreement of the candidate the gate must catch: twice the allowed disagreement."""
    return max(0.0, 1.0 - 2.0 * (1.0 - tolerance))


def pass_threshold(trials: int, tolerance: float) -> int:
    """The fewest agreeing trials ``k`` with ``k / trials >= tolerance`` (as the gate computes)."""
    need = min(trials, max(0, math.ceil(tolerance * trials)))
    while need > 0 and (need - 1) / trials >= tolerance:
        need -= 1
    while need <= trials and need / trials < tolerance:
        need += 1
    return need


def _log_pmf(k: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def fail_probability(trials: int, true_rate: float, tolerance: float) -> float:
    """``P(K < pass_threshold)`` for ``K ~ Binomial(trials, true_rate)``: exact, summed from the
    threshold down until the terms vanish."""
    if trials <= 0:
        return 0.0
    need = pass_threshold(trials, tolerance)
    if need <= 0:
        return 0.0
    if true_rate <= 0.0:
        return 1.0
    if true_rate >= 1.0:
        return 0.0 if need <= trials else 1.0
    total = 0.0
    mean = trials * true_rate
    for k in range(min(need, trials + 1) - 1, -1, -1):
        term = math.exp(_log_pmf(k, trials, true_rate))
        total += term
        if k < mean and term < 1e-17 * max(total, 1e-300):
            break
    return min(1.0, total)


@functools.lru_cache(maxsize=64)
def required_trials(true_rate: float, tolerance: float, target: float = POWER_TARGET) -> int:
    """The count from which the power to fail a candidate of ``true_rate`` stays >= ``target``.

    Scans up to a bound where a normal approximation puts the power far above the target
    (z = 4.5), so the saw-tooth cannot dip below it again; 0 when no count is needed (the
    candidate always fails) and -1 when none suffices (``true_rate >= tolerance``)."""
    if true_rate >= tolerance:
        return -1
    sd = math.sqrt(max(true_rate * (1 - true_rate), 1e-12))
    bound = min(_SEARCH_LIMIT, math.ceil((4.5 * sd / (tolerance - true_rate)) ** 2) + 50)
    last_short = 0
    for n in range(1, bound + 1):
        if fail_probability(n, true_rate, tolerance) < target:
            last_short = n
    return last_short + 1


def gate_power(unit: str, trials: int, tolerance: float, target: float = POWER_TARGET) -> GatePower:
    """The power report at the ``trials`` actually compared (frames or reference boxes)."""
    risk = risk_agreement(tolerance)
    return GatePower(
        unit=unit,
        trials=int(trials),
        tolerance=float(tolerance),
        true_agreement=round(risk, 6),
        power=round(fail_probability(trials, risk, tolerance), 4),
        target=target,
        required=required_trials(round(risk, 9), float(tolerance), target),
    )
