"""Supervision: failed components are restarted (stop, then start) within a per-component
restart budget (:class:`Supervisor`), and :class:`ProgressWatch` decides whether every busy
activity still makes progress (what allows the systemd watchdog ping)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.app.exits import RestartBudgetSpent
from agent.core.lifecycle import Component, Health
from agent.core.logs import log_fields
from agent.core.restarts import RestartBudget

log = logging.getLogger(__name__)


class Supervisor:
    """Restarts failed components (stop, then start) within a per-component budget."""

    def __init__(
        self, budget: int, window_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget = budget
        self.window_s = window_s
        self.clock = clock
        self.restarts: dict[str, int] = {}
        self._budgets: dict[str, RestartBudget] = {}
        #: components whose last restart raised: still failed, whatever their health says
        self._start_errors: dict[str, str] = {}

    def configure(self, budget: int, window_s: float) -> None:
        self.budget, self.window_s = budget, window_s
        for b in self._budgets.values():
            b.count, b.window_s = budget, window_s

    def check(self, component: Component, health: Health) -> bool:
        """Restart ``component`` if ``health`` says it failed; True when it was restarted.
        Raises :class:`RestartBudgetSpent` when the budget does not allow another restart."""
        name = component.name
        failure = health.failure or self._start_errors.get(name)
        if failure is None:
            return False
        budget = self._budgets.setdefault(name, RestartBudget(self.budget, self.window_s))
        if not budget.try_spend(self.clock()):
            raise RestartBudgetSpent(
                f"component '{name}' failed again ({failure}) after "
                f"{self.restarts.get(name, 0)} restarts; restart budget of {self.budget} per "
                f"{self.window_s:g} s is spent",
                fix="see the log for the cause of the failures; raise daemon.restart_budget or "
                "daemon.restart_window_s only if the failures are transient",
            )
        self.restarts[name] = self.restarts.get(name, 0) + 1
        log.warning(
            "component %s failed: %s; restarting (%d/%d in %g s)",
            name, failure, budget.used, self.budget, self.window_s,
            extra=log_fields(event="restart", component=name, reason=failure,
                             restarts=self.restarts[name]),
        )  # fmt: skip
        try:
            component.stop(timeout=2.0)
        except Exception:
            log.exception(
                "stopping %s before its restart failed; starting it anyway", name,
                extra=log_fields(event="restart", component=name),
            )  # fmt: skip
        try:
            component.start()
        except Exception as exc:  # counts as another failure, within the same budget
            self._start_errors[name] = f"restart failed: {type(exc).__name__}: {exc}"
            log.exception(
                "restarting %s failed", name, extra=log_fields(event="restart", component=name)
            )
            return False
        self._start_errors.pop(name, None)
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "restarts": dict(self.restarts),
            "budget": self.budget,
            "window_s": self.window_s,
        }


class ProgressWatch:
    """Decides whether the agent is making progress (and so may ping the systemd watchdog).

    An activity is **stuck** when it is busy and its progress counter has not moved for longer
    than ``timeout_s``. Idle by design (not busy: no frame pending, sources ended, stalled or
    reconnecting with back-off) is never stuck. A stuck main loop stops pinging by itself.
    """

    def __init__(self, timeout_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[int, float]] = {}

    def update(self, healths: dict[str, Health]) -> list[str]:
        """Record the latest healths; returns a description of each stuck activity."""
        now = self.clock()
        stuck: list[str] = []
        live: set[tuple[str, str]] = set()
        for name, health in healths.items():
            for act in health.activities:
                key = (name, act.key)
                live.add(key)
                last = self._seen.get(key)
                if last is None or not act.busy or act.progress != last[0]:
                    self._seen[key] = (act.progress, now)
                    continue
                idle_for = now - last[1]
                if idle_for > self.timeout_s:
                    stuck.append(f"{name}/{act.key}: no progress for {idle_for:.1f}s")
        for key in set(self._seen) - live:
            del self._seen[key]
        return stuck

    def forget(self, component: str) -> None:
        for key in [k for k in self._seen if k[0] == component]:
            del self._seen[key]
