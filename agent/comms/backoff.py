"""Reconnect backoff: paho doubles the delay from a base up to ``reconnect_max_s``; the base is
re-drawn with jitter whenever a session is lost, so a fleet does not reconnect in lockstep."""

from __future__ import annotations

import random


def jittered_base_s(reconnect_min_s: float) -> float:
    """A fresh base delay: ``reconnect_min_s`` × uniform(0.5, 1.5)."""
    return reconnect_min_s * random.uniform(0.5, 1.5)
