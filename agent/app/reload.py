"""SIGHUP: read and validate the config again, plan what changes, prepare the new engines off
the main loop while the old pipelines keep serving, then apply. An invalid file is logged as
``file:line: key: message`` and the running configuration stays."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.app.components import Components
from agent.app.engines import EnginePreparer, Job
from agent.app.events import EventBus
from agent.app.runconfig import RunConfig
from agent.app.supervisor import ProgressWatch
from agent.config.agent import AgentConfig, SourceConfig
from agent.config.device import DeviceProfile
from agent.config.model import ModelRef
from agent.core.errors import ConfigError, EdgeAgentError
from agent.core.logs import log_fields

log = logging.getLogger(__name__)

#: AgentConfig sections the fleet components (MQTT, Prometheus, OTA) read once, at start
_START_ONLY = ("device_id", "fleet", "state_dir", "mqtt", "metrics", "ota")

ModelSpecs = dict[str, tuple[ModelRef, tuple[SourceConfig, ...]]]


def model_specs(cfg: AgentConfig) -> ModelSpecs:
    """Per served model: its ref and its sources (what decides whether a reload restarts it)."""
    used = {s.model for s in cfg.sources}
    return {
        m.name: (m, tuple(s for s in cfg.sources if s.model == m.name))
        for m in cfg.models
        if m.name in used
    }


def restart_needed(old: AgentConfig, new: AgentConfig) -> list[str]:
    """The start-only sections a reload changed (it cannot apply them)."""
    return [k for k in _START_ONLY if getattr(new, k) != getattr(old, k)]


@dataclass
class ReloadPlan:
    """A validated new configuration and the models whose pipelines it restarts or removes."""

    cfg: AgentConfig
    profile: DeviceProfile
    l4t: str | None
    changed: list[str]
    removed: list[str]
    job: Job | None = None


class Reloader:
    """One reload at a time: :meth:`begin` plans it, :meth:`poll` (each main-loop tick) applies
    it once its engines are prepared. ``apply_settings`` applies the ``daemon:`` section."""

    def __init__(
        self,
        config: RunConfig,
        *,
        components: Components,
        engines: EnginePreparer,
        events: EventBus,
        watch: ProgressWatch,
        apply_settings: Callable[[AgentConfig], None],
        stop_timeout: Callable[[], float],
    ) -> None:
        self.config = config
        self.components = components
        self.engines = engines
        self.events = events
        self.watch = watch
        self.apply_settings = apply_settings
        self.stop_timeout = stop_timeout
        self.plan: ReloadPlan | None = None

    @property
    def active(self) -> bool:
        return self.plan is not None

    def begin(self) -> str | None:
        """Read, validate and plan; the rejection (logged) when the new config is unusable."""
        log.info(
            "reloading %s", self.config.config_path,
            extra=log_fields(event="reload", config=str(self.config.config_path)),
        )  # fmt: skip
        try:
            cfg = self.config.load()
            profile, l4t, _how = self.config.resolve_profile(cfg)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error(
                    "reload rejected: %s", issue,
                    extra=log_fields(event="reload", ok=False, file=issue.file, line=issue.line,
                                     key=issue.key, error=issue.message),
                )  # fmt: skip
            return "invalid configuration"
        except EdgeAgentError as exc:
            log.error(
                "reload rejected: %s",
                exc,
                extra=log_fields(event="reload", ok=False, error=str(exc)),
            )
            return str(exc)
        self.plan = self._plan(cfg, profile, l4t)
        return None

    def _plan(self, cfg: AgentConfig, profile: DeviceProfile, l4t: str | None) -> ReloadPlan:
        running = self.config
        old = model_specs(running.cfg) if running.cfg is not None else {}
        new = model_specs(cfg)
        profile_changed = running.profile is None or profile.name != running.profile.name
        cache_changed = running.cfg is not None and running.cache_dir(cfg) != running.cache_dir(
            running.cfg
        )
        changed = [n for n in new if profile_changed or cache_changed or old.get(n) != new[n]]
        removed = [n for n in old if n not in new]
        plan = ReloadPlan(cfg, profile, l4t, changed, removed)
        if changed:
            plan.job = Job(
                "engine-prepare", lambda: self.engines.prepare(cfg, profile, l4t, changed)
            )
        return plan

    def poll(self) -> tuple[bool, str] | None:
        """None while the new engines are prepared; then (applied, what happened)."""
        plan = self.plan
        if plan is None or (plan.job is not None and not plan.job.done):
            return None
        self.plan = None
        job = plan.job
        if job is not None and job.error is not None:
            log.error(
                "reload: preparing the new engines failed: %s; keeping the running "
                "configuration", job.error,
                extra=log_fields(event="reload", ok=False, error=str(job.error)),
            )  # fmt: skip
            return False, "engine preparation failed"
        if job is not None:
            self.components.models.prepared.update(job.value)
        self._apply(plan)
        return True, "applied"

    def _apply(self, plan: ReloadPlan) -> None:
        cfg, running = plan.cfg, self.config
        level = running.options.log_level or cfg.logging.level
        logging.getLogger().setLevel(level.upper())
        self.apply_settings(cfg)
        for name in plan.removed + plan.changed:
            comp = self.components.stop_pipeline(name, self.stop_timeout(), "reload")
            if comp is not None:
                self.watch.forget(comp.name)
        profile_changed = running.profile is not None and plan.profile.name != running.profile.name
        if running.cfg is not None:
            self._warn_start_only(running.cfg, cfg)
        running.use(cfg, plan.profile, plan.l4t)
        for name in plan.changed:
            self.components.start_pipeline(name, cfg, plan.profile)
        self.components.restart_monitor(plan.profile, new_profile=profile_changed)
        log.info(
            "reload applied: log level %s; restarted %s; removed %s", level,
            plan.changed or "no pipeline", plan.removed or "none",
            extra=log_fields(event="reload", ok=True, level=level, restarted=plan.changed,
                             removed=plan.removed),
        )  # fmt: skip

    def _warn_start_only(self, old: AgentConfig, new: AgentConfig) -> None:
        """Telemetry and OTA are wired once, at start: say so instead of implying it applied."""
        ignored = restart_needed(old, new)
        if ignored:
            log.warning(
                "reload: %s changed but %s read only at start; restart the agent to apply",
                ", ".join(ignored), "is" if len(ignored) == 1 else "are",
                extra=log_fields(event="reload", restart_needed=ignored),
            )  # fmt: skip
            self.events.emit("config.restart_needed", {"sections": ignored})
