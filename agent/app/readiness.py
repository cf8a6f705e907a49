"""What the daemon tells systemd: when ``READY=1`` is due (the first frame, or
``daemon.ready_timeout_s`` without one), whether ``WATCHDOG=1`` may go out (not while an
activity is stuck), and the ``STATUS=`` line."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from agent.core.lifecycle import Health
from agent.core.logs import log_fields
from agent.pipeline.stats import PipelineStats

log = logging.getLogger(__name__)


def frames_served(healths: Mapping[str, Health]) -> int:
    """Results delivered by every pipeline (their ``results`` activity counters)."""
    return sum(
        a.progress
        for n, h in healths.items()
        if n.startswith("pipeline:")
        for a in h.activities
        if a.key == "results"
    )


class Readiness:
    """The READY and WATCHDOG decisions, and the stuck activities the STATUS line shows."""

    def __init__(self, ready_timeout_s: float) -> None:
        self.ready_timeout_s = ready_timeout_s
        self.serving_since: float | None = None
        self.stuck: list[str] = []
        self._stuck_logged = False

    def ready_due(self, healths: Mapping[str, Health], now: float) -> bool:
        """Whether READY is due now (logged: ``ready``, and a warning when no frame came)."""
        frames = frames_served(healths)
        waited = now - (self.serving_since or now)
        if frames == 0 and waited < self.ready_timeout_s:
            return False
        if frames == 0:
            log.warning(
                "no frame after %g s; reporting ready anyway (a source may be down)",
                self.ready_timeout_s, extra=log_fields(event="ready", frames=0),
            )  # fmt: skip
        log.info("ready", extra=log_fields(event="ready", frames=frames, after_s=round(waited, 3)))
        return True

    def note_stuck(self, stuck: list[str]) -> bool:
        """Record the stuck activities; log when progress stops and when it comes back.
        True when that changed (the STATUS line should say so)."""
        self.stuck = stuck
        if stuck and not self._stuck_logged:
            self._stuck_logged = True
            log.error(
                "no progress: %s; withholding the systemd watchdog ping",
                "; ".join(stuck),
                extra=log_fields(event="stuck", stuck=stuck),
            )
            return True
        if not stuck and self._stuck_logged:
            self._stuck_logged = False
            log.info("progress again; watchdog pings resume", extra=log_fields(event="unstuck"))
            return True
        return False

    def may_ping(self, serving: bool) -> bool:
        """WATCHDOG=1 only once ready (systemd arms the watchdog then) and while not stuck."""
        return serving and not self.stuck


def status_line(
    state: str,
    pipelines: Mapping[str, PipelineStats | None],
    *,
    governor: str | None,
    restarts: int,
    stuck: list[str],
) -> str:
    """``STATUS=``: state, fps/workers/source states per pipeline, governor, restarts, stuck."""
    parts = []
    for name, stats in pipelines.items():
        if stats is None:
            continue
        fps = sum(s.fps for s in stats.sources.values())
        states = ",".join(f"{n} {s.state}" for n, s in stats.sources.items())
        parts.append(f"{name} {fps:.1f} fps, {stats.workers} workers [{states}]")
    text = f"{state}: " + ("; ".join(parts) or "no pipelines")
    if governor is not None:
        text += f"; governor {governor}"
    if restarts:
        text += f"; {restarts} restarts"
    if stuck:
        text += f"; STUCK: {stuck[0]}"
    return text
