"""The checks ``edge-agent run`` makes before it serves, in one place.

``edge-agent validate-config`` and ``edge-agent run`` both call :func:`agent_issues` (through
:func:`agent.config.load.validate_file` and :func:`agent.config.load.load_run_config`), so a
file that passes one passes the other. For ``agent.yaml``:

* ``profile`` names a profile of the store, and that profile file is valid;
* every model bundle holds ``model.yaml`` (and, through :class:`Probes`, a valid one whose ONNX
  and labels files exist), and every ``calib_dir`` holds calibration frames;
* there is at least one source (unless ``run --source`` replaces them);
* the MQTT TLS files exist, and with MQTT on the broker password can be read;
* with OTA on, MQTT is on (pushes arrive over MQTT) and ``ota.trust_dir`` holds public keys.

The checks that need code above the configuration layer (the bundle reader, the calibration
folder listing, the OTA trust store) are done by :class:`Probes`, which
:mod:`agent.app.preflight` implements with the very functions ``run`` calls later. A section that
fails its schema is skipped here (its pydantic errors are reported): the others are still
checked, so one pass reports every problem of a file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from agent.config.agent import AgentConfig, OtaConfig, SourceConfig
from agent.config.broker import MqttConfig
from agent.config.fleet import FleetConfig, PostgresStoreConfig
from agent.config.model import ModelRef
from agent.config.profiles.store import ProfileStore
from agent.config.yaml import Loc, YamlDoc
from agent.core.errors import ConfigError, ConfigIssue, EdgeAgentError

__all__ = [
    "AgentView",
    "Probes",
    "RunOverrides",
    "agent_issues",
    "bundle_issues",
    "fleet_issues",
    "mqtt_issues",
    "profile_name_issues",
    "resolve_path",
]


class Probes(Protocol):
    """Checks done by the code ``run`` itself uses (each raises an :class:`EdgeAgentError`,
    or a :class:`ConfigError` with the located issues of another file)."""

    def bundle(self, path: Path) -> None:
        """The bundle's ``model.yaml`` is valid; its ONNX and labels files exist."""
        ...

    def calib_dir(self, path: Path) -> None:
        """The folder holds calibration frames."""
        ...

    def trust_dir(self, path: Path) -> None:
        """The folder holds the Ed25519 public keys OTA pushes are verified with."""
        ...


@dataclass(frozen=True)
class RunOverrides:
    """What ``run``'s command line changes in the checks (none for ``validate-config``)."""

    profile: str | None = None  # --profile
    profiles_dir: Path | None = None  # --profiles-dir
    sources: bool = False  # --source given: the config's sources are replaced
    mqtt_url: str | None = None  # --mqtt-url: MQTT on


OTA_NEEDS_MQTT = (
    "OTA is on but MQTT is off, so no push can ever arrive; set mqtt.enabled: true (with "
    "mqtt.url) or ota.enabled: false"
)
NO_SOURCES = "no sources to run; add sources: to the config, or pass --source URI to run"


def resolve_path(path: Path, base: Path) -> Path:
    """``path`` with ``~`` expanded, relative to ``base`` (the config file's directory)."""
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


@dataclass
class AgentView:
    """The sections of ``agent.yaml`` the checks read; a section that is not valid on its own
    is None (or left out of a list), so the checks of the valid ones still run."""

    profile: str | None = None
    models: list[tuple[int, ModelRef]] = field(default_factory=list[tuple[int, ModelRef]])
    sources: list[Any] | None = None
    mqtt: MqttConfig | None = None
    ota: OtaConfig | None = None

    @classmethod
    def of(cls, cfg: AgentConfig) -> AgentView:
        return cls(cfg.profile, list(enumerate(cfg.models)), cfg.sources, cfg.mqtt, cfg.ota)

    @classmethod
    def partial(cls, data: Mapping[str, Any]) -> AgentView:
        """What validates section by section of a file that failed the whole schema."""
        profile = data.get("profile", "auto")
        models = data.get("models")
        return cls(
            profile=profile if isinstance(profile, str) else None,
            models=_items(models, ModelRef),
            sources=_valid_list(data.get("sources", []), SourceConfig),
            mqtt=_section(data.get("mqtt", {}), MqttConfig),
            ota=_section(data.get("ota", {}), OtaConfig),
        )


def _section(value: Any, model: type[Any]) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _items(value: Any, model: type[BaseModel]) -> list[tuple[int, Any]]:
    if not isinstance(value, list):
        return []
    found = ((i, _section(item, model)) for i, item in enumerate(value))
    return [(i, item) for i, item in found if item is not None]


def _valid_list(value: Any, model: type[BaseModel]) -> list[Any] | None:
    """The list when every item validates, else None (its count is unknown)."""
    if not isinstance(value, list):
        return None
    items = _items(value, model)
    return [item for _i, item in items] if len(items) == len(value) else None


class _Checker:
    """Turns what a check raises into issues located at the key it is about."""

    def __init__(self, doc: YamlDoc, base: Path) -> None:
        self.doc = doc
        self.base = base

    def issue(self, loc: Loc, message: str) -> ConfigIssue:
        return ConfigIssue(self.doc.path, self.doc.line_of(loc), _key(loc), message)

    def call(self, loc: Loc, check: Callable[[], object]) -> list[ConfigIssue]:
        try:
            check()
        except ConfigError as exc:  # another file's problems (model.yaml, the profile)
            return exc.issues
        except EdgeAgentError as exc:
            where = f" ({exc.path})" if exc.path else ""
            fix = f"; {exc.fix}" if exc.fix else ""
            return [self.issue(loc, f"{exc.message}{where}{fix}")]
        except OSError as exc:
            message = f"cannot read {exc.filename}: {exc.strerror}; check its permissions"
            return [self.issue(loc, message)]
        return []

    def file(self, loc: Loc, value: Path | None) -> list[ConfigIssue]:
        if value is None:
            return []
        full = resolve_path(value, self.base)
        if full.is_file():
            return []
        return [self.issue(loc, f"file '{full}' does not exist; fix the path or remove the key")]


def _key(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


def mqtt_issues(doc: YamlDoc, mqtt: MqttConfig, base: Path, *, enabled: bool) -> list[ConfigIssue]:
    """The TLS files exist; with MQTT on, the password can be read from its file or variable
    (what the client does when it connects)."""
    c = _Checker(doc, base)
    issues: list[ConfigIssue] = []
    if mqtt.tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            issues.extend(c.file(("mqtt", "tls", name), getattr(mqtt.tls, name)))
    if enabled and mqtt.username is not None and mqtt.password is None:
        given = "password_file" if mqtt.password_file is not None else "password_env"
        secret = mqtt.password_file
        path = None if secret is None else resolve_path(secret, base)
        resolved = mqtt.model_copy(update={"password_file": path})
        issues.extend(c.call(("mqtt", given), resolved.secret_password))
    return issues


def _profile_issues(c: _Checker, name: str | None, overrides: RunOverrides) -> list[ConfigIssue]:
    """The profile (``--profile`` or the config's) is in the store and its file is valid."""
    chosen = overrides.profile or name
    if chosen is None or chosen == "auto":  # auto: the board is detected when run starts
        return []
    # an unknown name raises naming the closest profiles; an invalid file, its issues
    return c.call(("profile",), lambda: ProfileStore(overrides.profiles_dir).load(chosen))


def _model_issues(
    c: _Checker, models: list[tuple[int, ModelRef]], probes: Probes | None
) -> list[ConfigIssue]:
    """Each bundle holds a valid model.yaml; each calib_dir holds frames."""
    issues: list[ConfigIssue] = []
    for index, ref in models:
        loc: Loc = ("models", index, "bundle")
        bundle = resolve_path(ref.bundle, c.base)
        if not (bundle / "model.yaml").is_file() and not (
            bundle.is_file() and bundle.suffix in (".yaml", ".yml")
        ):
            fix = "point bundle at a directory holding model.yaml and the ONNX file"
            issues.append(c.issue(loc, f"no model.yaml in '{bundle}'; {fix}"))
        elif probes is not None:
            issues.extend(c.call(loc, functools.partial(probes.bundle, bundle)))
        if ref.calib_dir is not None:
            calib = resolve_path(ref.calib_dir, c.base)
            calib_loc: Loc = ("models", index, "calib_dir")
            if not calib.is_dir():
                message = f"calibration folder '{calib}' does not exist"
                issues.append(c.issue(calib_loc, f"{message}; fix the path or remove the key"))
            elif probes is not None:
                issues.extend(c.call(calib_loc, functools.partial(probes.calib_dir, calib)))
    return issues


def _ota_issues(
    c: _Checker, ota: OtaConfig, mqtt_on: bool | None, probes: Probes | None
) -> list[ConfigIssue]:
    """OTA pushes arrive over MQTT and are verified with the trust directory's keys."""
    if not ota.enabled:
        return []
    issues: list[ConfigIssue] = []
    if mqtt_on is False:
        issues.append(c.issue(("ota", "enabled"), OTA_NEEDS_MQTT))
    trust = resolve_path(ota.trust_dir, c.base)
    if probes is not None:
        issues.extend(c.call(("ota", "trust_dir"), lambda: probes.trust_dir(trust)))
    elif not trust.is_dir():
        message = f"trust directory '{trust}' does not exist"
        fix = "create it with the fleet's public key (NAME.pub) or fix the path"
        issues.append(c.issue(("ota", "trust_dir"), f"{message}; {fix}"))
    return issues


def agent_issues(
    doc: YamlDoc,
    view: AgentView,
    base: Path,
    *,
    probes: Probes | None = None,
    overrides: RunOverrides | None = None,
) -> list[ConfigIssue]:
    """Every problem ``run`` would refuse to start on, beyond the schema (see the module
    docstring); relative paths are taken relative to ``base``."""
    over = overrides or RunOverrides()
    c = _Checker(doc, base)
    issues = _profile_issues(c, view.profile, over)
    issues.extend(_model_issues(c, view.models, probes))
    if view.sources is not None and not view.sources and not over.sources:
        issues.append(c.issue(("sources",), NO_SOURCES))
    mqtt_on = None if view.mqtt is None else bool(view.mqtt.enabled or over.mqtt_url)
    if view.mqtt is not None:
        issues.extend(mqtt_issues(doc, view.mqtt, base, enabled=bool(mqtt_on)))
    if view.ota is not None:
        issues.extend(_ota_issues(c, view.ota, mqtt_on, probes))
    return issues


def fleet_issues(doc: YamlDoc, cfg: FleetConfig, base: Path) -> list[ConfigIssue]:
    """``fleet.yaml``: the TLS, API token and PostgreSQL DSN files exist; the broker password
    can be read."""
    c = _Checker(doc, base)
    issues = mqtt_issues(doc, cfg.mqtt, base, enabled=cfg.mqtt.enabled)
    issues.extend(c.file(("api", "token_file"), cfg.api.token_file))
    if isinstance(cfg.store, PostgresStoreConfig):
        issues.extend(c.file(("store", "dsn_file"), cfg.store.dsn_file))
    return issues


def profile_name_issues(doc: YamlDoc, data: Any, path: Path) -> list[ConfigIssue]:
    """A device profile's ``name`` is its file name (the store finds it by file name)."""
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or name == path.stem:
        return []
    message = (
        f"profile name '{name}' differs from the file name '{path.stem}'; rename one so they match"
    )
    return [ConfigIssue(doc.path, doc.line_of(("name",)), "name", message)]


def bundle_issues(doc: YamlDoc, path: Path, probes: Probes | None) -> list[ConfigIssue]:
    """``model.yaml``: the ONNX and labels files it names exist (as the build reads them)."""
    if probes is None:
        return []
    return _Checker(doc, path.parent).call(("(bundle)",), lambda: probes.bundle(path))
