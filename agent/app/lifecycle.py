"""The daemon's lifecycle: its state machine, signals, start-up, the main loop and the drain.

::

    STARTING ──► READY ◄──► RELOADING
        │          │            │
        └──────────┴────────────┴──► STOPPING ──► STOPPED
        (any state) ─────────────────────────────► FAILED

* **STARTING** — the config is loaded, each model's engine is built or taken from the cache (on
  a helper thread; the main loop keeps answering signals and asks systemd for more start-up
  time with ``EXTEND_TIMEOUT_USEC``), the pipelines and the monitor start. ``READY=1`` goes out
  once the first frame has come through a pipeline (or after ``daemon.ready_timeout_s`` with no
  frame at all: a dead camera must not keep the service in "activating").
* **READY** — the main loop ticks every 100 ms: governor decisions are applied, the supervisor
  restarts failed components within the restart budget, ``WATCHDOG=1`` is sent at half of
  ``WatchdogSec`` *only while every component makes progress* (see :class:`ProgressWatch`), and
  every ``daemon.stats_interval_s`` a stats line is logged and ``STATUS=`` updated.
* **RELOADING** — on SIGHUP (``RELOADING=1``) the config file is read and validated again. An
  invalid file is logged as ``file:line: key: message`` and the running configuration stays;
  a valid one is applied: the log level at once, and the pipelines whose model or sources
  changed are rebuilt (engines prepared on the helper thread while the old pipelines keep
  serving), then swapped; then ``READY=1``.
* **STOPPING** — SIGTERM/SIGINT (or the sources ended, or ``--duration``): ``STOPPING=1``, the
  sources stop, in-flight frames drain within ``daemon.stop_timeout_s``, the final stats and a
  summary are logged. Exit 0 (a second SIGINT stops waiting: 130, :mod:`agent.app.signals`).
* **FAILED** — a component failed more often than its restart budget allows, or start-up
  failed: the exit code (:class:`ExitCode`) says which, and systemd's ``Restart=on-failure``
  takes over.

A :class:`~agent.core.lifecycle.Component` added before :meth:`Daemon.run` is started after the
pipelines, supervised, stopped first. The object graph is built by :mod:`agent.app.service`.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.app.components import Components, FleetWiring
from agent.app.engines import EnginePreparer, Job
from agent.app.events import EventBus
from agent.app.exits import ExitCode, RestartBudgetSpent
from agent.app.pipeline_component import PipelineComponent
from agent.app.readiness import Readiness, status_line
from agent.app.reload import Reloader, model_specs
from agent.app.runconfig import RunConfig
from agent.app.settings import DaemonSettings
from agent.app.signals import install_signals, restore_signals
from agent.app.statslog import log_summary
from agent.app.supervisor import ProgressWatch, Supervisor
from agent.app.systemd import Notifier
from agent.config.agent import AgentConfig
from agent.config.device import DeviceProfile
from agent.core.errors import EdgeAgentError
from agent.core.lifecycle import Component
from agent.core.logs import configure_logging, log_fields
from agent.core.statemachine import StateMachine, table

log = logging.getLogger(__name__)

_TICK_S = 0.1
_EXTEND_EVERY_S = 5.0


class DaemonState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RELOADING = "reloading"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_D = DaemonState
#: the daemon's one transition table (STOPPED and FAILED are terminal)
TRANSITIONS = table(
    {
        _D.STARTING: {_D.READY, _D.STOPPING, _D.FAILED},
        _D.READY: {_D.RELOADING, _D.STOPPING, _D.FAILED},
        _D.RELOADING: {_D.READY, _D.STOPPING, _D.FAILED},
        _D.STOPPING: {_D.STOPPED, _D.FAILED},
        _D.STOPPED: set[DaemonState](),
        _D.FAILED: set[DaemonState](),
    }
)


@dataclass(frozen=True)
class DaemonParts:
    """The daemon's collaborators, built by :func:`agent.app.service.build_service`."""

    config: RunConfig
    events: EventBus
    components: Components
    engines: EnginePreparer
    supervisor: Supervisor
    watch: ProgressWatch
    readiness: Readiness
    settings: DaemonSettings
    reloader: Reloader
    wire_fleet: FleetWiring


class Daemon:
    """``edge-agent run``: see the module docstring for the lifecycle."""

    def __init__(
        self,
        parts: DaemonParts,
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.parts = parts
        self.config = parts.config
        self.components = parts.components
        self.supervisor = parts.supervisor
        self.clock = clock
        self._notifier = notifier
        self._machine = StateMachine("daemon", TRANSITIONS, DaemonState.STARTING,
                                     on_change=self._log_change)  # fmt: skip
        self.tick_hooks: list[Callable[[float], None]] = []
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._reload_requested = threading.Event()
        self._started = clock()

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> DaemonState:
        return self._machine.state

    @property
    def pipelines(self) -> dict[str, PipelineComponent]:
        return self.components.pipelines

    @property
    def notifier(self) -> Notifier:
        if self._notifier is None:
            self._notifier = Notifier.from_environ()
        return self._notifier

    def add_component(self, component: Component) -> None:
        """Register a component before :meth:`run`."""
        self.components.extra.append(component)

    def request_stop(self, reason: str) -> None:
        """Ask the main loop to drain and stop (safe from a signal handler or any thread)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_reload(self) -> None:
        """Ask the main loop to re-read the config (safe from a signal handler, any thread)."""
        self._reload_requested.set()

    def uptime_s(self) -> float:
        return round(self.clock() - self._started, 3)

    def snapshot(self) -> dict[str, Any]:
        """The metrics snapshot: daemon state, each pipeline's stats, the monitor's governor
        and energy figures, supervision counters, and each extra component's snapshot."""
        comps, profile = self.components, self.config.profile
        return {
            "state": self.state.value,
            "uptime_s": self.uptime_s(),
            "config": str(self.config.config_path),
            "profile": profile.name if profile is not None else None,
            "pipelines": {n: c.snapshot() for n, c in comps.pipelines.items()},
            "monitor": comps.monitor.snapshot() if comps.monitor is not None else None,
            "supervisor": self.supervisor.to_json(),
            "stuck": list(self.parts.readiness.stuck),
            "components": {c.name: c.snapshot() for c in comps.extra},
        }

    def run(self) -> int:
        """Start, serve, stop. Returns the exit code; configuration and start-up errors raise
        (the CLI prints them): :class:`ConfigError` (2), other :class:`EdgeAgentError` (1)."""
        previous = install_signals(self)
        try:
            return self._run()
        except RestartBudgetSpent as exc:
            log.error(str(exc), extra=log_fields(event="failed", reason="restart budget"))
            self._fail(str(exc))
            return ExitCode.RESTART_BUDGET
        except EdgeAgentError as exc:
            self._fail(str(exc))
            raise
        finally:
            self.components.shutdown()
            restore_signals(previous)
            if self._notifier is not None:
                self._notifier.close()

    # ------------------------------------------------------------------ state

    def _to(self, new: DaemonState, reason: str = "") -> None:
        self._machine.to(new, reason)

    @staticmethod
    def _log_change(old: DaemonState, new: DaemonState, reason: str) -> None:
        log.debug(
            "daemon %s → %s", old.value, new.value,
            extra=log_fields(event="state", old=old.value, new=new.value, reason=reason),
        )  # fmt: skip

    def _fail(self, reason: str) -> None:
        if self.state not in (DaemonState.FAILED, DaemonState.STOPPED):
            self._to(DaemonState.FAILED, reason)
        self.notifier.status(f"failed: {reason}"[:400])

    def _status_line(self) -> str:
        comps = self.components
        return status_line(
            self.state.value,
            comps.models.all_stats(),
            governor=comps.governor_state() if comps.monitor is not None else None,
            restarts=sum(self.supervisor.restarts.values()),
            stuck=self.parts.readiness.stuck,
        )

    # ------------------------------------------------------------------ start-up

    def _run(self) -> int:
        config, notifier = self.config, self.notifier
        cfg = config.load()
        configure_logging(config.options.log_level or cfg.logging.level, stream=sys.stdout)
        self.parts.settings.apply(cfg)
        profile, l4t, how = config.resolve_profile(cfg)
        config.use(cfg, profile, l4t)
        log.info(
            "starting",
            extra=log_fields(
                event="start", config=str(config.config_path), profile=profile.name, how=how,
                l4t=l4t, systemd=notifier.enabled, watchdog_s=notifier.watchdog_s,
            ),
        )  # fmt: skip
        early = self._start_fleet(cfg, profile)
        if config.bundle_overrides:  # a committed OTA version serves instead of the config's
            cfg = config.load()
            config.use(cfg, profile, l4t)
        notifier.status(f"starting: preparing engines for profile {profile.name}")
        names = list(model_specs(cfg))
        job = Job("engine-prepare", lambda: self.parts.engines.prepare(cfg, profile, l4t, names))
        if not self._wait_for_engines(job):
            return ExitCode.OK
        self.components.models.prepared.update(job.value)
        for name in names:
            self.components.start_pipeline(name, cfg, profile)
        self.components.start_monitor(profile)
        for comp in self.components.extra:
            if comp not in early:  # started before the engines (birth, build events)
                comp.start()
        self.parts.readiness.serving_since = self.clock()
        return self._serve()

    def _start_fleet(self, cfg: AgentConfig, profile: DeviceProfile) -> list[Component]:
        """Telemetry (MQTT, Prometheus) and OTA, as the config asks. Telemetry starts now, so
        the birth message and build progress go out while engines are prepared."""
        fleet = self.parts.wire_fleet(cfg, profile, self)
        for comp in fleet.components:
            self.add_component(comp)
        self.tick_hooks.extend(fleet.tick_hooks)
        for comp in fleet.early:
            comp.start()
        return fleet.early

    def _wait_for_engines(self, job: Job) -> bool:
        """Wait for the engines, asking systemd for more start-up time; False when a signal
        stopped the daemon meanwhile. Raises what the preparation raised."""
        notifier = self.notifier
        next_extend = self.clock()
        while not job.done:
            if self._stop.is_set():
                self._to(DaemonState.STOPPING, "signal during start-up")
                notifier.stopping("stopping: interrupted during start-up")
                self._to(DaemonState.STOPPED)
                log_summary([], f"{self._stop_reason} during start-up", self.uptime_s(), None)
                return False
            if self.clock() >= next_extend:
                notifier.extend_timeout(_EXTEND_EVERY_S * 6)
                next_extend = self.clock() + _EXTEND_EVERY_S
            job.wait(_TICK_S)
        if job.error is not None:
            raise job.error
        return True

    # ------------------------------------------------------------------ main loop

    def _serve(self) -> int:
        started = self.clock()
        self._next_ping = started
        self._next_stats = started + self.parts.settings.stats_interval_s
        while True:
            reason = self._stop_due(started)
            if reason is not None:
                break
            self._stop.wait(_TICK_S)
            self._tick(self.clock())
        return self._drain(reason)

    def _stop_due(self, started: float) -> str | None:
        if self._stop.is_set():
            return self._stop_reason or "stopped"
        if self.components.finished():
            return "sources ended"
        duration = self.config.options.duration_s
        if duration is not None and self.clock() - started >= duration:
            return "duration"
        return None

    def _tick(self, now: float) -> None:
        comps, readiness, notifier = self.components, self.parts.readiness, self.notifier
        if comps.monitor is not None:
            comps.monitor.apply()
        healths = comps.supervise(self.supervisor, self.parts.watch)
        if readiness.note_stuck(self.parts.watch.update(healths)):
            notifier.status(self._status_line())
        if self.state is DaemonState.STARTING and readiness.ready_due(healths, now):
            self._to(DaemonState.READY, "first frame")
            notifier.ready(self._status_line())
        self._reload_step()
        serving = self.state in (DaemonState.READY, DaemonState.RELOADING)
        ping_every = notifier.ping_interval_s
        if ping_every is not None and now >= self._next_ping and readiness.may_ping(serving):
            notifier.watchdog()
            self._next_ping = now + ping_every
        if now >= self._next_stats:
            self._next_stats = now + self.parts.settings.stats_interval_s
            self.components.log_stats()
            notifier.status(self._status_line())
        for hook in list(self.tick_hooks):
            try:
                hook(now)
            except Exception:
                log.exception("tick hook failed", extra=log_fields(event="hook"))

    def _drain(self, reason: str) -> int:
        self._to(DaemonState.STOPPING, reason)
        self.notifier.stopping(f"stopping ({reason}): draining in-flight frames")
        finals = self.components.drain(reason, self.parts.settings.stop_timeout_s, self.clock)
        self._to(DaemonState.STOPPED, reason)
        since = self.parts.readiness.serving_since
        served = None if since is None else self.clock() - since
        log_summary(finals, reason, self.uptime_s(), served)
        return ExitCode.OK

    # ------------------------------------------------------------------ reload

    def _reload_step(self) -> None:
        reloader = self.parts.reloader
        if not reloader.active:
            if self._reload_requested.is_set() and self.state is DaemonState.READY:
                self._reload_requested.clear()
                self._to(DaemonState.RELOADING, "SIGHUP")
                self.notifier.reloading("reloading configuration")
                rejected = reloader.begin()
                if rejected is not None:
                    self._finish_reload(ok=False, what=rejected)
            return
        outcome = reloader.poll()
        if outcome is not None:
            self._finish_reload(ok=outcome[0], what=outcome[1])

    def _finish_reload(self, *, ok: bool, what: str) -> None:
        # A profile asked for by set-profile sticks only once a reload applied it.
        self.config.settle_profile_override(applied=ok)
        self.parts.events.emit(
            "config.reload", {"ok": ok, "what": what, "config": str(self.config.config_path)}
        )
        self._to(DaemonState.READY, f"reload {what}")
        status = self._status_line()
        if not ok:
            status = f"reload rejected ({what}), running the previous config; " + status
        self.notifier.ready(status)
