"""What ``edge-agent run`` was asked for (:class:`DaemonOptions`) and the configuration the
daemon runs now (:class:`RunConfig`): loaded with the command line's overrides, its profile
resolved, replaced as a whole when a reload applies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.app.preflight import RunOverrides, load_run_config
from agent.config.agent import AgentConfig
from agent.config.cachedir import resolve_cache_dir
from agent.config.device import DeviceProfile
from agent.config.load import default_config_path, resolve_profile, source_override


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


class RunConfig:
    """The running configuration (``cfg``, ``profile``, ``l4t``: None until start-up loaded
    them). ``bundle_overrides`` maps a model to the bundle served instead of the config's (a
    committed OTA version); a profile asked for by ``set-profile`` sticks only once a reload
    applied it."""

    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.config_path = options.config_path or default_config_path()
        self.bundle_overrides: dict[str, Path] = {}
        self.cfg: AgentConfig | None = None
        self.profile: DeviceProfile | None = None
        self.l4t: str | None = None
        self.profile_override: str | None = None
        self._profile_override_applied: str | None = None

    def load(self) -> AgentConfig:
        """The config file, checked as ``validate-config`` checks it (with the command line's
        overrides: :mod:`agent.app.preflight`), with ``--mqtt-url``, the OTA bundle overrides
        and ``--source`` applied."""
        opts = self.options
        overrides = RunOverrides(
            profile=self.profile_override or opts.profile,
            profiles_dir=Path(opts.profiles_dir) if opts.profiles_dir else None,
            sources=bool(opts.sources),
            mqtt_url=opts.mqtt_url,
        )
        cfg = load_run_config(self.config_path, overrides)
        if self.options.mqtt_url:
            mqtt = cfg.mqtt.model_copy(update={"enabled": True, "url": self.options.mqtt_url})
            cfg = cfg.model_copy(update={"mqtt": type(cfg.mqtt).model_validate(mqtt.model_dump())})
        if self.bundle_overrides:
            models = [
                m.model_copy(update={"bundle": self.bundle_overrides.get(m.name, m.bundle)})
                for m in cfg.models
            ]
            cfg = cfg.model_copy(update={"models": models})
        if self.options.sources:
            first = cfg.models[0].name
            sources = [source_override(u, first, i) for i, u in enumerate(self.options.sources)]
            cfg = cfg.model_copy(update={"sources": sources})
        return cfg

    def resolve_profile(self, cfg: AgentConfig) -> tuple[DeviceProfile, str | None, str]:
        """(profile, L4T release, how it was chosen): set-profile, --profile, the config's."""
        name = self.profile_override or self.options.profile or cfg.profile
        return resolve_profile(name, self.options.profiles_dir)

    def cache_dir(self, cfg: AgentConfig) -> Path:
        """The engine cache: ``--cache-dir``, else the config's, else the default every
        command uses (:func:`agent.config.cachedir.resolve_cache_dir`)."""
        return resolve_cache_dir(self.options.cache_dir, cfg.cache_dir).path

    def use(self, cfg: AgentConfig, profile: DeviceProfile, l4t: str | None) -> None:
        self.cfg, self.profile, self.l4t = cfg, profile, l4t

    def request_profile(self, name: str) -> None:
        """``set-profile``: the next reload resolves this profile."""
        self.profile_override = name

    def settle_profile_override(self, *, applied: bool) -> None:
        """After a reload: keep the asked-for profile if it applied, else forget it."""
        if applied:
            self._profile_override_applied = self.profile_override
        else:
            self.profile_override = self._profile_override_applied
