"""How a stage ends an update early: the updater is stopping, or the stage failed."""

from __future__ import annotations

from agent.ota.states import UpdateState


class Stopped(BaseException):
    """The updater is stopping; the record stays in its state for recovery."""


class StepFailed(Exception):
    """A stage failed: the record goes to ``state`` with ``reason`` and ``detail``."""

    def __init__(self, state: UpdateState, reason: str, detail: str):
        super().__init__(detail)
        self.state, self.reason, self.detail = state, reason, detail
