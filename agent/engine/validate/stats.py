"""Confidence intervals for the gate's task metrics (pure numpy/stdlib).

* :func:`wilson_interval` — a proportion (top-1 accuracy) with the Wilson score interval;
* :func:`paired_difference_interval` — the difference of two proportions measured on the same
  frames (Newcombe 1998, method 10: Wilson limits combined with the pairs' correlation);
* :func:`bootstrap_weights` — seeded multinomial resampling of frames as weight vectors, for
  statistics such as mAP50 that have no closed form (a resample that draws a frame twice gives
  it weight 2).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np

__all__ = ["Z95", "bootstrap_weights", "paired_difference_interval", "wilson_interval"]

log = logging.getLogger(__name__)

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``successes / trials``; (0, 1) for no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference_interval(a: np.ndarray, b: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """95 % interval of ``mean(a) - mean(b)`` for paired 0/1 outcomes on the same frames
    (Newcombe's hybrid score interval, method 10, without continuity correction)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    n = len(a)
    if n == 0 or len(b) != n:
        return -1.0, 1.0
    both, only_a = int((a & b).sum()), int((a & ~b).sum())
    only_b, neither = int((~a & b).sum()), int((~a & ~b).sum())
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, z)
    l2, u2 = wilson_interval(both + only_b, n, z)
    denom = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(denom) if denom > 0 else 0.0
    d = p1 - p2
    lower = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    upper = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return max(-1.0, d - math.sqrt(max(lower, 0.0))), min(1.0, d + math.sqrt(max(upper, 0.0)))


def bootstrap_weights(
    frames: int, samples: int, seed: int, chunk: int = 100
) -> Iterator[np.ndarray]:
    """``samples`` resamples of ``frames`` frames (with replacement) as ``chunk x frames``
    weight matrices (float64), from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < samples:
        size = min(chunk, samples - done)
        yield rng.multinomial(frames, np.full(frames, 1.0 / frames), size=size).astype(np.float64)
        done += size
