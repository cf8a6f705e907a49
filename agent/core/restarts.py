"""A restart budget: how often something may be restarted before its supervisor gives up."""

from __future__ import annotations

from collections import deque


class RestartBudget:
    """At most ``count`` restarts in any ``window_s`` seconds (pool workers, daemon
    components)."""

    def __init__(self, count: int, window_s: float):
        self.count = count
        self.window_s = window_s
        self._times: deque[float] = deque()

    @property
    def used(self) -> int:
        return len(self._times)

    def try_spend(self, now: float) -> bool:
        """Record a restart at ``now`` if the budget allows one; False when it is spent."""
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        if len(self._times) >= self.count:
            return False
        self._times.append(now)
        return True
