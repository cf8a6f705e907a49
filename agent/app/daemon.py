"""The agent as a service: wiring, lifecycle, signals, supervision and the systemd watchdog.

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
  sources stop, in-flight frames drain within ``daemon.stop_timeout_s`` and the final stats are
  logged. Exit 0.
* **FAILED** — a component failed more often than its restart budget allows, or start-up
  failed: the exit code (:class:`ExitCode`) says which, and systemd's ``Restart=on-failure``
  takes over.

Hooks for other subsystems: anything with the :class:`Component` protocol (``name``,
``start``, ``stop``, ``health``, ``snapshot``) can be added with :meth:`Daemon.add_component`
before :meth:`Daemon.run` (MQTT, OTA): it is started after the pipelines, supervised, watched
for progress, stopped first, and its ``snapshot()`` appears in :meth:`Daemon.snapshot` (the
metrics snapshot a telemetry component publishes). ``Daemon.tick_hooks`` run on the main loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib.resources
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agent.app.systemd import Notifier
from agent.config.schema import AgentConfig, DaemonConfig, DeviceProfile, ModelRef, SourceConfig
from agent.core.errors import ConfigError, EdgeAgentError
from agent.core.logs import configure_logging, log_fields
from agent.core.restarts import RestartBudget

if TYPE_CHECKING:
    from agent.backends.base import ProgressFn
    from agent.engine.build import BuildOutcome
    from agent.engine.bundle import ModelBundle
    from agent.pipeline.pipeline import Pipeline

log = logging.getLogger("agent.app.daemon")

_DEFAULT_CONFIG = "agent.default.yaml"
_TICK_S = 0.1
_EXTEND_EVERY_S = 5.0


class ExitCode(enum.IntEnum):
    """Exit codes of ``edge-agent run`` (also in systemd/README.md)."""

    OK = 0  # stopped on SIGTERM/SIGINT, the sources ended, or --duration passed
    ERROR = 1  # start-up failed (engine build, backend, profile detection...)
    CONFIG = 2  # the configuration is invalid (RestartPreventExitStatus: a restart won't fix it)
    RESTART_BUDGET = 3  # a component kept failing past daemon.restart_budget


class DaemonError(EdgeAgentError):
    """The daemon cannot go on."""


class RunError(DaemonError):
    """``edge-agent run`` was asked for something impossible (no sources...)."""

    exit_code = ExitCode.CONFIG


class RestartBudgetSpent(DaemonError):
    """A component failed again after using up its restart budget."""

    exit_code = ExitCode.RESTART_BUDGET


# --------------------------------------------------------------------------- state machine


class DaemonState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RELOADING = "reloading"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_D = DaemonState
ALLOWED_TRANSITIONS: dict[DaemonState, frozenset[DaemonState]] = {
    _D.STARTING: frozenset({_D.READY, _D.STOPPING, _D.FAILED}),
    _D.READY: frozenset({_D.RELOADING, _D.STOPPING, _D.FAILED}),
    _D.RELOADING: frozenset({_D.READY, _D.STOPPING, _D.FAILED}),
    _D.STOPPING: frozenset({_D.STOPPED, _D.FAILED}),
    _D.STOPPED: frozenset(),
    _D.FAILED: frozenset(),
}


class IllegalDaemonTransition(DaemonError):
    """A state change the table does not allow: a bug in the daemon."""


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class Activity:
    """One thing a component is doing. ``busy``: it has work it should be making progress on;
    ``progress``: a counter that advances while it does."""

    key: str
    busy: bool
    progress: int


@dataclass(frozen=True)
class Health:
    """A component's health. ``failure`` (a reason) means it died and needs a restart."""

    failure: str | None = None
    activities: tuple[Activity, ...] = ()


@runtime_checkable
class Component(Protocol):
    """Something the daemon starts, supervises, watches and stops."""

    name: str

    def start(self) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def health(self) -> Health: ...

    def snapshot(self) -> dict[str, Any]: ...


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


# --------------------------------------------------------------------------- config


def default_config_path() -> Path:
    """The embedded default configuration shipped inside the package."""
    return Path(str(importlib.resources.files("agent") / "data" / _DEFAULT_CONFIG))


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_run_config(path: Path) -> AgentConfig:
    """Validate ``path`` (located errors, references checked) and resolve its paths."""
    from agent.cli.config import validate_file
    from agent.config.yaml import load_model_file

    _kind, issues = validate_file(path, "agent")
    if issues:
        raise ConfigError(issues)
    cfg = load_model_file(path, AgentConfig)
    base = path.parent.resolve()
    models = [
        m.model_copy(
            update={
                "bundle": _resolve(m.bundle, base),
                "calib_dir": None if m.calib_dir is None else _resolve(m.calib_dir, base),
            }
        )
        for m in cfg.models
    ]
    sources = [
        s.model_copy(update={"uri": str(_resolve(Path(s.uri), base))})
        if s.type in ("file", "images") and s.uri
        else s
        for s in cfg.sources
    ]
    return cfg.model_copy(
        update={
            "models": models,
            "sources": sources,
            "state_dir": _resolve(cfg.state_dir, base),
            "cache_dir": _resolve(cfg.cache_dir, base),
        }
    )


def source_override(uri: str, model: str, index: int) -> SourceConfig:
    """``--source URI``: the kind of source from the URI's form."""
    if uri.startswith(("rtsp://", "rtsps://")):
        kind = "rtsp"
    elif uri.startswith(("http://", "https://")):
        kind = "http"
    elif uri.startswith("/dev/video") or uri.isdigit():
        kind = "v4l2"
    elif uri == "synthetic" or uri.startswith("synthetic:"):
        return SourceConfig(name=f"src{index}", type="synthetic", uri="", model=model)
    elif "!" in uri:
        kind = "gstreamer"
    elif Path(uri).is_dir():
        kind = "images"
    else:
        kind = "file"
    value = str(Path(uri).resolve()) if kind in ("file", "images") else uri
    return SourceConfig(name=f"src{index}", type=kind, uri=value, model=model)


@dataclass(frozen=True)
class DaemonOptions:
    """What ``edge-agent run`` was asked for. ``None`` means "the config's value"."""

    config_path: Path | None = None
    profile: str | None = None
    profiles_dir: str | None = None
    sources: tuple[str, ...] = ()
    cache_dir: Path | None = None
    workers: int | None = None
    duration_s: float | None = None
    stats_interval_s: float | None = None
    stop_timeout_s: float | None = None
    realtime: bool = False
    jsonl: Path | None = None
    snapshots: Path | None = None
    print_results: bool = False
    monitor: bool = True
    monitor_source: str = "auto"
    root: Path = Path("/")
    log_level: str | None = None
    progress_factory: Callable[[], Any] | None = None  # a ProgressFn with an optional close()
    mqtt_url: str | None = None  # --mqtt-url: this broker, MQTT on, whatever the config says


# --------------------------------------------------------------------------- pipelines


@dataclass(frozen=True)
class _Prepared:
    ref: ModelRef
    outcome: BuildOutcome
    bundle: ModelBundle


def _model_specs(cfg: AgentConfig) -> dict[str, tuple[ModelRef, tuple[SourceConfig, ...]]]:
    """Per served model: its ref and its sources (what decides whether a reload restarts it)."""
    used = {s.model for s in cfg.sources}
    return {
        m.name: (m, tuple(s for s in cfg.sources if s.model == m.name))
        for m in cfg.models
        if m.name in used
    }


class PipelineComponent:
    """One model's :class:`~agent.pipeline.pipeline.Pipeline` as a supervised component. A
    restart builds a fresh Pipeline on the same (already validated) engine."""

    def __init__(self, name: str, make: Callable[[], Pipeline]) -> None:
        self.name = f"pipeline:{name}"
        self.model = name
        self._make = make
        self.pipeline: Pipeline | None = None
        self._serving_workers = 0

    def start(self) -> None:
        self.pipeline = self._make().start()

    def stop(self, timeout: float) -> None:
        if self.pipeline is not None:
            self._serving_workers = self.pipeline.stats()["workers"]
            self.pipeline.stop(timeout=timeout)

    @property
    def finished(self) -> bool:
        return self.pipeline is not None and self.pipeline.finished

    def health(self) -> Health:
        if self.pipeline is None:
            return Health(failure="not started")
        h = self.pipeline.health()
        acts = [Activity("results", h.pending, h.completed)]
        acts.extend(
            Activity(f"source:{name}", sp.state == "streaming", sp.frames)
            for name, sp in h.sources.items()
        )
        return Health(failure="; ".join(h.failures) or None, activities=tuple(acts))

    def snapshot(self) -> dict[str, Any]:
        return self.pipeline.stats() if self.pipeline is not None else {}

    def final_stats(self) -> dict[str, Any]:
        stats = self.snapshot()
        return {**stats, "workers": self._serving_workers} if stats else stats


class MonitorComponent:
    """Monitor → governor → pipelines. The sampler thread only enqueues; :meth:`apply` runs on
    the main loop: the governor's pool size and fps cap go to every pipeline, energy figures to
    the stats."""

    name = "monitor"

    def __init__(
        self,
        profile: DeviceProfile,
        pipelines: Callable[[], list[Pipeline]],
        source: str,
        root: Path,
    ) -> None:
        from agent.monitor.energy import EnergyMeter
        from agent.monitor.governor import Governor
        from agent.monitor.select import open_source

        self.profile = profile
        self._pipelines = pipelines
        caps = [c for p in pipelines() for c in p.fps_caps()]
        # The governor lowers the fps cap from here: the configured caps, else 30 fps.
        self.governor = Governor(profile, max_fps=max(caps, default=30.0))
        self.energy = EnergyMeter()
        self.last_sample: Any = None
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._applied: Any = None
        choice = source if source in ("jtop", "sysfs", "host") else "auto"
        self.source = open_source(profile, root=root, prefer=choice)  # type: ignore[arg-type]
        self.sampler: Any = None

    def start(self) -> None:
        from agent.monitor.sampler import Sampler

        self.sampler = Sampler(
            self.source, self.profile.monitor.interval_s, on_sample=self._enqueue
        )
        self.sampler.start()
        self._applied = None  # re-apply the decision to (possibly new) pipelines

    def _enqueue(self, sample: Any) -> None:
        with self._lock:
            self._pending.append(sample)
            del self._pending[:-16]

    def apply(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        pipelines = self._pipelines()
        for sample in pending:
            fps = sum(s["fps"] for p in pipelines for s in p.stats()["sources"].values())
            self.energy.add_sample(sample, fps)
            self.last_sample = sample
            for event in self.governor.update(sample):
                log.warning(
                    f"governor: {event.action}: {event.reason}",
                    extra=log_fields(event="governor", governor=event.to_json()),
                )
                if self.on_event is not None:
                    self.on_event("governor.action", event.to_json())
        decision = self.governor.decision
        if decision != self._applied:
            for p in pipelines:
                p.resize(decision.pool_size)
                p.limit(fps_cap=decision.fps_cap, shed_frames=decision.shed_frames)
            self._applied = decision

    def reapply(self) -> None:
        """Apply the governor's decision again on the next tick (the pipelines changed)."""
        self._applied = None

    def health(self) -> Health:
        if self.sampler is None or not self.sampler.running:
            return Health(failure="monitor sampler thread is not running")
        return Health(activities=(Activity("samples", True, int(self.sampler.reads)),))

    def snapshot(self) -> dict[str, Any]:
        return {"governor": self.governor.to_json(), "energy": self.energy.to_json()}

    def stop(self, timeout: float) -> None:
        if self.sampler is not None:
            self.sampler.stop(timeout=min(timeout, 2.0))

    def close(self) -> None:
        self.source.close()


def stats_message(stats: dict[str, Any]) -> str:
    parts = []
    for name, s in stats["sources"].items():
        parts.append(f"{name}: {s['fps']:.1f} fps, {s['dropped']} dropped ({s['state']})")
    lat = stats["latency_ms"]
    stage = ", ".join(
        f"{k} {v['p50']:.1f}/{v['p99']:.1f}" for k, v in lat.items() if v["p50"] is not None
    )
    return (
        f"{stats['model']} [{stats['precision']}, {stats['workers']} workers] "
        + "; ".join(parts)
        + (f"; latency ms p50/p99: {stage}" if stage else "")
    )


def _energy_message(extra: dict[str, Any]) -> str:
    energy = extra.get("energy") or {}
    fpw = energy.get("fps_per_watt")
    state = (extra.get("governor") or {}).get("state")
    text = f"; {fpw:.2f} fps/W" if isinstance(fpw, (int, float)) else ""
    return text + (f"; governor {state}" if state else "")


class _Job:
    """A function on a daemon thread (engine builds): the main loop polls ``done``. A daemon
    thread, so a SIGTERM during a long build exits at once (the build child dies with us)."""

    def __init__(self, name: str, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()

        def body() -> None:
            try:
                self.value = fn()
            except BaseException as exc:
                self.error = exc
            finally:
                self._done.set()

        self._thread = threading.Thread(target=body, name=name, daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


@dataclass
class _Reload:
    cfg: AgentConfig
    profile: DeviceProfile
    l4t: str | None
    changed: list[str]
    removed: list[str]
    job: _Job | None = None
    started: float = field(default_factory=time.monotonic)


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """``edge-agent run``: see the module docstring for the lifecycle."""

    def __init__(
        self,
        options: DaemonOptions,
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.config_path = options.config_path or default_config_path()
        self.clock = clock
        self._notifier = notifier
        self._state = DaemonState.STARTING
        self._state_lock = threading.Lock()
        self.pipelines: dict[str, PipelineComponent] = {}
        self.monitor: MonitorComponent | None = None
        self.extra: list[Component] = []
        self.tick_hooks: list[Callable[[Daemon, float], None]] = []
        #: receive every daemon event (kind, data) from any thread; they must only enqueue
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        #: model name → bundle served instead of the config's (a committed OTA version)
        self.bundle_overrides: dict[str, Path] = {}
        #: profile asked for by the set-profile command (applied by the next reload)
        self.profile_override: str | None = None
        self._profile_override_applied: str | None = None
        self.telemetry: Any = None
        self.ota: Any = None
        self._swap_lock = threading.RLock()
        self._throttle: dict[str, float] = {}
        self.cfg: AgentConfig | None = None
        self.profile: DeviceProfile | None = None
        self.l4t: str | None = None
        self._prepared: dict[str, _Prepared] = {}
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._reload_requested = threading.Event()
        self._reload: _Reload | None = None
        self._started = clock()
        self._serving_since: float | None = None
        self._stuck: list[str] = []
        self._stuck_logged = False
        defaults = DaemonConfig()
        self.stats_interval_s = defaults.stats_interval_s
        self.stop_timeout_s = defaults.stop_timeout_s
        self.ready_timeout_s = defaults.ready_timeout_s
        self.supervisor = Supervisor(
            defaults.restart_budget, defaults.restart_window_s, clock=clock
        )
        self.watch = ProgressWatch(defaults.progress_timeout_s, clock=clock)

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> DaemonState:
        return self._state

    @property
    def notifier(self) -> Notifier:
        if self._notifier is None:
            self._notifier = Notifier.from_environ()
        return self._notifier

    def add_component(self, component: Component) -> None:
        """Register a component (MQTT, OTA...) before :meth:`run`."""
        self.extra.append(component)

    def request_stop(self, reason: str) -> None:
        """Ask the main loop to drain and stop (safe from a signal handler or any thread)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    def request_reload(self) -> None:
        """Ask the main loop to re-read the config (safe from a signal handler, any thread)."""
        self._reload_requested.set()

    def components(self) -> list[Component]:
        out: list[Component] = list(self.pipelines.values())
        if self.monitor is not None:
            out.append(self.monitor)
        return out + self.extra

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """An event for the fleet (``source.state``, ``governor.action``, ``build.progress``,
        ``ota.state``, ``pool.event``, ``model.swapped``): every listener gets
        it; a failing listener is logged, never propagated."""
        for listener in list(self.listeners):
            try:
                listener(kind, data)
            except Exception:
                log.exception("event listener failed", extra=log_fields(event="hook"))

    def emit_throttled(self, kind: str, data: dict[str, Any], every_s: float = 1.0) -> None:
        """:meth:`emit` at most once per ``every_s`` per kind (progress), and always at 100 %."""
        now = self.clock()
        if data.get("fraction") != 1.0 and now - self._throttle.get(kind, -1e9) < every_s:
            return
        self._throttle[kind] = now
        self.emit(kind, data)

    def builds_allowed(self) -> bool:
        """The governor's build admission (True without a monitor)."""
        monitor = self.monitor
        return True if monitor is None else bool(monitor.governor.decision.builds_allowed)

    def pipeline_stats(self, model: str) -> dict[str, Any]:
        comp = self.pipelines.get(model)
        return comp.snapshot() if comp is not None else {}

    def pipeline_failures(self, model: str) -> tuple[str, ...]:
        comp = self.pipelines.get(model)
        if comp is None or comp.pipeline is None:
            return ("not running",)
        return comp.pipeline.health().failures

    def latest_frame(self, source: str | None) -> Any:
        """The newest decoded frame of ``source`` (any source when None), or None."""
        for comp in list(self.pipelines.values()):
            pipe = comp.pipeline
            if pipe is None:
                continue
            frame = pipe.latest_frame(source)
            if frame is not None:
                return frame
        return None

    def model_info(self, model: str) -> dict[str, Any] | None:
        """Name, bundle version, precision and engine hash of what serves ``model``."""
        from agent.app.wiring import engine_hash

        comp = self.pipelines.get(model)
        pipe = comp.pipeline if comp is not None else None
        if pipe is None:
            return None
        artifact = pipe.artifact
        return {
            "name": model,
            "version": pipe.bundle.version,
            "precision": artifact.precision,
            "engine_hash": engine_hash(artifact.main_path),
        }

    def swap_model(self, model: str, bundle_dir: Path, artifact_dir: Path) -> None:
        """Serve ``artifact_dir`` (built from ``bundle_dir``) for ``model``: the pipeline's pool
        is swapped between frames (see :meth:`Pipeline.swap`); later restarts and reloads use
        the new bundle. Raises, with the old model still serving, when the swap fails."""
        from agent.engine.bundle import load_bundle
        from agent.engine.cache import load_artifact

        bundle = load_bundle(bundle_dir)
        artifact = load_artifact(artifact_dir)
        with self._swap_lock:
            comp = self.pipelines.get(model)
            if comp is None or comp.pipeline is None:
                raise RunError(
                    f"model '{model}' has no running pipeline to swap",
                    fix="add a source for the model to agent.yaml",
                )
            info = comp.pipeline.swap(artifact=artifact, bundle=bundle.config, labels=bundle.labels)
            old = self._prepared[model]
            outcome = dataclasses.replace(old.outcome, artifact=artifact)
            self._prepared[model] = _Prepared(old.ref, outcome, bundle)
            self.bundle_overrides[model] = bundle_dir
        self.emit("model.swapped", {"model": model, "engine": artifact.dir.name, **info})

    def snapshot(self) -> dict[str, Any]:
        """The metrics snapshot: daemon state, each pipeline's stats, the monitor's governor
        and energy figures, supervision counters, and each extra component's snapshot."""
        now = self.clock()
        return {
            "state": self._state.value,
            "uptime_s": round(now - self._started, 3),
            "config": str(self.config_path),
            "profile": self.profile.name if self.profile is not None else None,
            "pipelines": {n: c.snapshot() for n, c in self.pipelines.items()},
            "monitor": self.monitor.snapshot() if self.monitor is not None else None,
            "supervisor": self.supervisor.to_json(),
            "stuck": list(self._stuck),
            "components": {c.name: c.snapshot() for c in self.extra},
        }

    def run(self) -> int:
        """Start, serve, stop. Returns the exit code; configuration and start-up errors raise
        (the CLI prints them): :class:`ConfigError` (2), other :class:`EdgeAgentError` (1)."""
        previous = self._install_signals()
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
            self._shutdown_components()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._notifier is not None:
                self._notifier.close()

    # ------------------------------------------------------------------ lifecycle

    def _to(self, new: DaemonState, reason: str = "") -> None:
        with self._state_lock:
            old = self._state
            if new not in ALLOWED_TRANSITIONS[old]:
                raise IllegalDaemonTransition(
                    f"illegal daemon state transition {old.value} → {new.value}",
                    fix="this is a bug in the daemon",
                )
            self._state = new
        log.debug(
            "daemon %s → %s", old.value, new.value,
            extra=log_fields(event="state", old=old.value, new=new.value, reason=reason),
        )  # fmt: skip

    def _fail(self, reason: str) -> None:
        if self._state not in (DaemonState.FAILED, DaemonState.STOPPED):
            self._to(DaemonState.FAILED, reason)
        self.notifier.status(f"failed: {reason}"[:400])

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self.request_reload()

        handlers: dict[int, Any] = {
            signal.SIGINT: on_stop,
            signal.SIGTERM: on_stop,
            signal.SIGHUP: on_hup,
        }
        return {sig: signal.signal(sig, h) for sig, h in handlers.items()}

    def _settings(self, cfg: AgentConfig) -> None:
        d = cfg.daemon
        self.stats_interval_s = self.options.stats_interval_s or d.stats_interval_s
        self.stop_timeout_s = self.options.stop_timeout_s or d.stop_timeout_s
        self.supervisor.configure(d.restart_budget, d.restart_window_s)
        self.watch.timeout_s = d.progress_timeout_s
        self.ready_timeout_s = d.ready_timeout_s
        slow = [s.name for s in cfg.sources if s.stall_timeout_s >= d.progress_timeout_s]
        if slow:
            log.warning(
                "sources %s have stall_timeout_s >= daemon.progress_timeout_s (%g s): the "
                "watchdog will report them stuck before they notice the stall themselves; "
                "lower their stall_timeout_s or raise daemon.progress_timeout_s",
                slow, d.progress_timeout_s, extra=log_fields(event="config_warning"),
            )  # fmt: skip

    def _load(self) -> AgentConfig:
        cfg = load_run_config(self.config_path)
        if self.options.mqtt_url:
            mqtt = cfg.mqtt.model_copy(update={"enabled": True, "url": self.options.mqtt_url})
            cfg = cfg.model_copy(update={"mqtt": type(cfg.mqtt).model_validate(mqtt.model_dump())})
        if self.bundle_overrides:
            cfg = cfg.model_copy(
                update={
                    "models": [
                        m.model_copy(update={"bundle": self.bundle_overrides.get(m.name, m.bundle)})
                        for m in cfg.models
                    ]
                }
            )
        if self.options.sources:
            first = cfg.models[0].name
            cfg = cfg.model_copy(
                update={
                    "sources": [
                        source_override(u, first, i) for i, u in enumerate(self.options.sources)
                    ]
                }
            )
        if not cfg.sources:
            raise RunError(
                f"{self.config_path}: no sources to run",
                fix="add sources: to the config or pass --source URI",
            )
        return cfg

    def _resolve_profile(self, cfg: AgentConfig) -> tuple[DeviceProfile, str | None, str]:
        from agent.cli.common import resolve_profile

        name = self.profile_override or self.options.profile or cfg.profile
        return resolve_profile(name, self.options.profiles_dir)

    def cache_dir(self, cfg: AgentConfig) -> Path:
        """The engine cache: ``--cache-dir``, else the config's."""
        return self.options.cache_dir.expanduser() if self.options.cache_dir else cfg.cache_dir

    def _run(self) -> int:
        cfg = self._load()
        configure_logging(self.options.log_level or cfg.logging.level, stream=sys.stdout)
        self._settings(cfg)
        profile, l4t, how = self._resolve_profile(cfg)
        self.cfg, self.profile, self.l4t = cfg, profile, l4t
        notifier = self.notifier
        log.info(
            "starting",
            extra=log_fields(
                event="start", config=str(self.config_path), profile=profile.name, how=how,
                l4t=l4t, systemd=notifier.enabled, watchdog_s=notifier.watchdog_s,
            ),
        )  # fmt: skip
        self._start_fleet(cfg, profile)
        if self.bundle_overrides:  # a committed OTA version serves instead of the config's
            cfg = self._load()
            self.cfg = cfg
        notifier.status(f"starting: preparing engines for profile {profile.name}")
        specs = _model_specs(cfg)
        job = _Job("engine-prepare", lambda: self._prepare(cfg, profile, l4t, list(specs)))
        next_extend = self.clock()
        while not job.done:
            if self._stop.is_set():
                log.info("stopped during start-up", extra=log_fields(event="stop"))
                self._to(DaemonState.STOPPING, "signal during start-up")
                notifier.stopping("stopping: interrupted during start-up")
                self._to(DaemonState.STOPPED)
                return ExitCode.OK
            if self.clock() >= next_extend:
                notifier.extend_timeout(_EXTEND_EVERY_S * 6)
                next_extend = self.clock() + _EXTEND_EVERY_S
            job.wait(_TICK_S)
        if job.error is not None:
            raise job.error
        self._prepared.update(job.value)
        for name in specs:
            self.pipelines[name] = self._pipeline_component(name, cfg, profile)
            self.pipelines[name].start()
        if self.options.monitor:
            self.monitor = MonitorComponent(
                profile, self._live_pipelines, self.options.monitor_source, self.options.root
            )
            self.monitor.on_event = self.emit
            self.monitor.start()
        for comp in self.extra:
            if comp is not self.telemetry:  # started before the engines (birth, build events)
                comp.start()
        self._serving_since = self.clock()
        return self._serve()

    def _start_fleet(self, cfg: AgentConfig, profile: DeviceProfile) -> None:
        """Telemetry (MQTT, Prometheus) and OTA, as the config asks. Telemetry starts now, so
        the birth message and build progress go out while engines are prepared."""
        from agent.app.wiring import fleet_components

        self.telemetry, self.ota = fleet_components(self, cfg, profile)
        for comp in (self.telemetry, self.ota):
            if comp is not None:
                self.add_component(comp)
        if self.telemetry is not None:
            self.telemetry.start()

    def _prepare(
        self, cfg: AgentConfig, profile: DeviceProfile, l4t: str | None, names: list[str]
    ) -> dict[str, _Prepared]:
        """Build (or load from the cache) and load each named model's engine."""
        from agent.engine.build import build_engine
        from agent.engine.bundle import load_bundle

        refs = {m.name: m for m in cfg.models}
        out: dict[str, _Prepared] = {}
        for name in names:
            ref = refs[name]
            factory = self.options.progress_factory
            printer = factory() if factory is not None else None
            shown: ProgressFn = printer if printer is not None else _no_progress

            def progress(
                stage: str, fraction: float, message: str, _shown: Any = shown, _model: str = name
            ) -> None:
                _shown(stage, fraction, message)
                self.emit_throttled(
                    "build.progress",
                    {"model": _model, "stage": stage, "fraction": round(fraction, 3),
                     "message": message},
                )  # fmt: skip

            try:
                outcome = build_engine(
                    ref.bundle, profile, precision=ref.precision, calib_dir=ref.calib_dir,
                    cache_dir=self.cache_dir(cfg), l4t_release=l4t, progress=progress,
                )  # fmt: skip
            finally:
                close = getattr(printer, "close", None)
                if callable(close):
                    close()
            log.info(
                "engine ready",
                extra=log_fields(
                    event="engine", model=name, artifact=str(outcome.artifact.dir),
                    precision=outcome.artifact.precision, why=outcome.report.why,
                    cache_hit=outcome.cache_hit,
                ),
            )  # fmt: skip
            out[name] = _Prepared(ref, outcome, load_bundle(ref.bundle))
        return out

    def _pipeline_component(
        self, name: str, cfg: AgentConfig, profile: DeviceProfile
    ) -> PipelineComponent:
        from agent.backends.base import get_backend
        from agent.pipeline.pipeline import Pipeline, PipelineOptions
        from agent.pipeline.sinks import ConsoleSink, FanoutSink, JsonlSink, Sink, SnapshotSink

        sources = [s for s in cfg.sources if s.model == name]
        opts = self.options
        backend = get_backend(profile.build.backend)
        options = PipelineOptions(
            workers=opts.workers or profile.runtime.streams,
            max_batch=profile.shapes.batch.opt,
            threads_per_worker=profile.runtime.intra_op_threads,
            queue_depth=profile.runtime.queue_depth,
            realtime=opts.realtime,
            keep_frames=opts.snapshots is not None,
            prefer_gpu_preprocess=profile.build.backend == "tensorrt",
        )

        def make() -> Pipeline:
            prepared = self._prepared[name]  # the newest engine (a hot swap replaces it)
            sinks: list[Sink] = []
            detections = self.telemetry.detections_sink() if self.telemetry else None
            if detections is not None:
                sinks.append(detections)
            if opts.print_results:
                sinks.append(ConsoleSink(sys.stdout))
            if opts.jsonl is not None:
                sinks.append(JsonlSink(opts.jsonl))
            if opts.snapshots is not None:
                sinks.append(SnapshotSink(opts.snapshots / name))
            return Pipeline(
                model=name,
                artifact=prepared.outcome.artifact,
                backend=backend,
                bundle=prepared.bundle.config,
                labels=prepared.bundle.labels,
                sources=sources,
                sink=FanoutSink(sinks),
                options=options,
                on_status=lambda st: self.emit("source.state", st.to_json()),
                on_pool_event=self._pool_event,
            )

        return PipelineComponent(name, make)

    def _pool_event(self, event: Any) -> None:
        from agent.pipeline.pool import PoolEventKind

        if event.kind in (
            PoolEventKind.WORKER_FAILED,
            PoolEventKind.WORKER_RESTARTED,
            PoolEventKind.RESTART_BUDGET_EXHAUSTED,
            PoolEventKind.RESIZED,
        ):
            self.emit("pool.event", event.to_json())

    def _live_pipelines(self) -> list[Pipeline]:
        return [c.pipeline for c in self.pipelines.values() if c.pipeline is not None]

    # ------------------------------------------------------------------ main loop

    def _serve(self) -> int:
        notifier = self.notifier
        ping_every = notifier.ping_interval_s
        next_ping = self.clock()
        next_stats = self.clock() + self.stats_interval_s
        started = self.clock()
        reason = "stopped"
        while True:
            if self._stop.is_set():
                reason = self._stop_reason or "stopped"
                break
            if self.pipelines and all(c.finished for c in self.pipelines.values()):
                reason = "sources ended"
                break
            duration = self.options.duration_s
            if duration is not None and self.clock() - started >= duration:
                reason = "duration"
                break
            self._stop.wait(_TICK_S)
            now = self.clock()
            if self.monitor is not None:
                self.monitor.apply()
            healths = self._supervise()
            self._stuck = self.watch.update(healths)
            self._note_stuck()
            self._readiness(healths, now)
            self._reload_step()
            if ping_every is not None and now >= next_ping and self._may_ping():
                notifier.watchdog()
                next_ping = now + ping_every
            if now >= next_stats:
                next_stats = now + self.stats_interval_s
                self._log_stats()
            for hook in list(self.tick_hooks):
                try:
                    hook(self, now)
                except Exception:
                    log.exception("tick hook failed", extra=log_fields(event="hook"))
        return self._drain(reason)

    def _supervise(self) -> dict[str, Health]:
        healths: dict[str, Health] = {}
        for comp in self.components():
            health = comp.health()
            with self._swap_lock:  # a restart never races an OTA swap of the same pipeline
                restarted = self.supervisor.check(comp, health)
            if restarted:
                self.watch.forget(comp.name)
                if self.monitor is not None and isinstance(comp, PipelineComponent):
                    self.monitor.reapply()  # re-apply to the new pipeline
                health = comp.health()
            healths[comp.name] = health
        return healths

    def _note_stuck(self) -> None:
        """Log (and show in STATUS=) when progress stops and when it comes back."""
        if self._stuck and not self._stuck_logged:
            self._stuck_logged = True
            log.error(
                "no progress: %s; withholding the systemd watchdog ping",
                "; ".join(self._stuck),
                extra=log_fields(event="stuck", stuck=self._stuck),
            )
            self.notifier.status(self._status_line())
        elif not self._stuck and self._stuck_logged:
            self._stuck_logged = False
            log.info("progress again; watchdog pings resume", extra=log_fields(event="unstuck"))
            self.notifier.status(self._status_line())

    def _may_ping(self) -> bool:
        """WATCHDOG=1 only once ready (systemd arms the watchdog then) and while not stuck."""
        return self._state in (DaemonState.READY, DaemonState.RELOADING) and not self._stuck

    def _readiness(self, healths: dict[str, Health], now: float) -> None:
        if self._state is not DaemonState.STARTING:
            return
        frames = sum(
            a.progress
            for n, h in healths.items()
            if n.startswith("pipeline:")
            for a in h.activities
            if a.key == "results"
        )
        waited = now - (self._serving_since or now)
        if frames == 0 and waited < self.ready_timeout_s:
            return
        if frames == 0:
            log.warning(
                "no frame after %g s; reporting ready anyway (a source may be down)",
                self.ready_timeout_s, extra=log_fields(event="ready", frames=0),
            )  # fmt: skip
        self._to(DaemonState.READY, "first frame")
        self.notifier.ready(self._status_line())
        log.info("ready", extra=log_fields(event="ready", frames=frames, after_s=round(waited, 3)))

    def _status_line(self) -> str:
        parts = []
        for name, comp in self.pipelines.items():
            stats = comp.snapshot()
            if not stats:
                continue
            fps = sum(s["fps"] for s in stats["sources"].values())
            states = ",".join(f"{n} {s['state']}" for n, s in stats["sources"].items())
            parts.append(f"{name} {fps:.1f} fps, {stats['workers']} workers [{states}]")
        text = f"{self._state.value}: " + ("; ".join(parts) or "no pipelines")
        if self.monitor is not None:
            text += f"; governor {self.monitor.governor.to_json().get('state')}"
        restarts = sum(self.supervisor.restarts.values())
        if restarts:
            text += f"; {restarts} restarts"
        if self._stuck:
            text += f"; STUCK: {self._stuck[0]}"
        return text

    def _log_stats(self) -> None:
        extra = self.monitor.snapshot() if self.monitor is not None else {}
        for comp in self.pipelines.values():
            stats = comp.snapshot()
            if not stats:
                continue
            log.info(
                stats_message(stats) + _energy_message(extra),
                extra=log_fields(event="stats", stats=stats, **extra),
            )
        self.notifier.status(self._status_line())

    def _drain(self, reason: str) -> int:
        self._to(DaemonState.STOPPING, reason)
        self.notifier.stopping(f"stopping ({reason}): draining in-flight frames")
        deadline = self.clock() + self.stop_timeout_s
        for comp in reversed(self.extra):
            self._stop_quietly(comp, min(2.0, max(0.1, deadline - self.clock())))
        comps = list(self.pipelines.values())
        for i, comp in enumerate(comps):
            left = max(0.1, (deadline - self.clock()) / (len(comps) - i))
            comp.stop(timeout=left)  # drains in-flight frames: their results count too
            stats = comp.final_stats()
            if stats:
                log.info(
                    "final " + stats_message(stats),
                    extra=log_fields(event="final_stats", stats=stats, reason=reason),
                )
        self.pipelines.clear()
        if self.monitor is not None:
            self.monitor.stop(1.0)
            self.monitor.close()
            self.monitor = None
        self._to(DaemonState.STOPPED, reason)
        log.info("stopped", extra=log_fields(event="stop", reason=reason))
        return ExitCode.OK

    def _stop_quietly(self, comp: Component, timeout: float) -> None:
        try:
            comp.stop(timeout)
        except Exception:
            log.exception("stopping %s failed", comp.name, extra=log_fields(event="stop"))

    def _shutdown_components(self) -> None:
        """Whatever is still running after a failure: stop it, bounded."""
        for comp in self.extra:
            self._stop_quietly(comp, 1.0)
        for comp in self.pipelines.values():
            self._stop_quietly(comp, 1.0)
        self.pipelines.clear()
        if self.monitor is not None:
            self._stop_quietly(self.monitor, 1.0)
            with contextlib.suppress(Exception):
                self.monitor.close()
            self.monitor = None

    # ------------------------------------------------------------------ reload

    def _reload_step(self) -> None:
        if self._reload is None:
            if self._reload_requested.is_set() and self._state is DaemonState.READY:
                self._reload_requested.clear()
                self._begin_reload()
            return
        job = self._reload.job
        if job is not None and not job.done:
            return
        plan, self._reload = self._reload, None
        if job is not None and job.error is not None:
            log.error(
                "reload: preparing the new engines failed: %s; keeping the running "
                "configuration", job.error,
                extra=log_fields(event="reload", ok=False, error=str(job.error)),
            )  # fmt: skip
            self._finish_reload(ok=False, what="engine preparation failed")
            return
        if job is not None:
            self._prepared.update(job.value)
        self._apply_reload(plan)

    def _begin_reload(self) -> None:
        self._to(DaemonState.RELOADING, "SIGHUP")
        self.notifier.reloading("reloading configuration")
        log.info(
            "reloading %s", self.config_path,
            extra=log_fields(event="reload", config=str(self.config_path)),
        )  # fmt: skip
        try:
            cfg = self._load()
            profile, l4t, _how = self._resolve_profile(cfg)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error(
                    "reload rejected: %s", issue,
                    extra=log_fields(event="reload", ok=False, file=issue.file, line=issue.line,
                                     key=issue.key, error=issue.message),
                )  # fmt: skip
            self._finish_reload(ok=False, what="invalid configuration")
            return
        except EdgeAgentError as exc:
            log.error(
                "reload rejected: %s",
                exc,
                extra=log_fields(event="reload", ok=False, error=str(exc)),
            )
            self._finish_reload(ok=False, what=str(exc))
            return
        old = _model_specs(self.cfg) if self.cfg is not None else {}
        new = _model_specs(cfg)
        profile_changed = self.profile is None or profile.name != self.profile.name
        cache_changed = self.cfg is not None and self.cache_dir(cfg) != self.cache_dir(self.cfg)
        changed = [n for n in new if profile_changed or cache_changed or old.get(n) != new[n]]
        removed = [n for n in old if n not in new]
        plan = _Reload(cfg, profile, l4t, changed, removed)
        if changed:
            plan.job = _Job("engine-prepare", lambda: self._prepare(cfg, profile, l4t, changed))
        self._reload = plan

    def _apply_reload(self, plan: _Reload) -> None:
        cfg = plan.cfg
        level = self.options.log_level or cfg.logging.level
        logging.getLogger().setLevel(level.upper())
        self._settings(cfg)
        for name in plan.removed + plan.changed:
            comp = self.pipelines.pop(name, None)
            if comp is not None:
                comp.stop(timeout=self.stop_timeout_s)
                self.watch.forget(comp.name)
                stats = comp.final_stats()
                if stats:
                    log.info(
                        "final " + stats_message(stats),
                        extra=log_fields(event="final_stats", stats=stats, reason="reload"),
                    )
        profile_changed = self.profile is not None and plan.profile.name != self.profile.name
        if self.cfg is not None:
            # Telemetry and OTA are wired once, at start: say so instead of implying it applied.
            ignored = [k for k in _START_ONLY if getattr(cfg, k) != getattr(self.cfg, k)]
            if ignored:
                log.warning(
                    "reload: %s changed but %s read only at start; restart the agent to apply",
                    ", ".join(ignored), "is" if len(ignored) == 1 else "are",
                    extra=log_fields(event="reload", restart_needed=ignored),
                )  # fmt: skip
                self.emit("config.restart_needed", {"sections": ignored})
        self.cfg, self.profile, self.l4t = cfg, plan.profile, plan.l4t
        for name in plan.changed:
            comp = self._pipeline_component(name, cfg, plan.profile)
            comp.start()
            self.pipelines[name] = comp
        if self.monitor is not None:
            if profile_changed:
                self.monitor.stop(1.0)
                self.monitor.close()
                self.monitor = MonitorComponent(
                    plan.profile, self._live_pipelines, self.options.monitor_source,
                    self.options.root,
                )  # fmt: skip
                self.monitor.on_event = self.emit
            self.monitor.start()
            self.monitor.reapply()  # re-apply to the new pipelines
        log.info(
            "reload applied: log level %s; restarted %s; removed %s", level,
            plan.changed or "no pipeline", plan.removed or "none",
            extra=log_fields(event="reload", ok=True, level=level, restarted=plan.changed,
                             removed=plan.removed),
        )  # fmt: skip
        self._finish_reload(ok=True, what="applied")

    def _finish_reload(self, *, ok: bool, what: str) -> None:
        # A profile asked for by set-profile sticks only once a reload applied it.
        if ok:
            self._profile_override_applied = self.profile_override
        else:
            self.profile_override = self._profile_override_applied
        self.emit("config.reload", {"ok": ok, "what": what, "config": str(self.config_path)})
        self._to(DaemonState.READY, f"reload {what}")
        status = self._status_line()
        if not ok:
            status = f"reload rejected ({what}), running the previous config; " + status
        self.notifier.ready(status)


#: AgentConfig sections the fleet components (MQTT, Prometheus, OTA) read once, at start
_START_ONLY = ("device_id", "fleet", "state_dir", "mqtt", "metrics", "ota")


def _no_progress(stage: str, fraction: float, message: str) -> None:
    del stage, fraction, message


__all__ = [
    "ALLOWED_TRANSITIONS",
    "Activity",
    "Component",
    "Daemon",
    "DaemonOptions",
    "DaemonState",
    "ExitCode",
    "Health",
    "MonitorComponent",
    "PipelineComponent",
    "ProgressWatch",
    "RestartBudget",
    "RestartBudgetSpent",
    "Supervisor",
    "default_config_path",
    "load_run_config",
    "source_override",
]
