"""Loading configuration the way ``edge-agent run`` does: exactly the checks it makes.

:func:`validate_file` is what ``edge-agent validate-config`` reports and what the daemon refuses
to start on; :func:`load_run_config` validates ``agent.yaml`` and resolves its paths;
:func:`resolve_profile` picks the device profile (``auto`` detects the board);
:func:`load_fleet_config` does for ``fleet.yaml`` (the controller) what ``load_run_config`` does
for ``agent.yaml``.
"""

from __future__ import annotations

import difflib
import importlib.resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from agent.config.agent import AgentConfig, SourceConfig
from agent.config.broker import MqttConfig
from agent.config.device import DeviceProfile
from agent.config.fleet import FleetConfig, PostgresStoreConfig, SqliteStoreConfig
from agent.config.model import ModelBundleConfig
from agent.config.profiles.board import read_board
from agent.config.profiles.detect import detect
from agent.config.profiles.store import ProfileStore
from agent.config.yaml import YamlDoc, load_model_file, read_yaml, validate_doc
from agent.core.errors import ConfigError, ConfigIssue, EdgeAgentError

Kind = Literal["agent", "profile", "model", "fleet"]
SCHEMAS: dict[Kind, type[BaseModel]] = {
    "agent": AgentConfig,
    "profile": DeviceProfile,
    "model": ModelBundleConfig,
    "fleet": FleetConfig,
}
_FLEET_ONLY = frozenset(FleetConfig.model_fields) - frozenset(AgentConfig.model_fields)
_AGENT_ONLY = frozenset(AgentConfig.model_fields) - frozenset(FleetConfig.model_fields)
"""agent.yaml has ``fleet`` and ``mqtt`` too: a fleet.yaml is told apart by its own keys."""
DEFAULT_CONFIG = "agent.default.yaml"
"""The embedded default configuration, in the package's ``data`` folder."""


def guess_kind(path: Path, data: Any) -> Kind:
    """Which schema a file is meant for: by location and name first, then by content."""
    if path.parent.name == "device_profiles":
        return "profile"
    if path.name in ("model.yaml", "model.yml"):
        return "model"
    if path.name.startswith("fleet") and path.suffix in (".yaml", ".yml"):
        return "fleet"
    if isinstance(data, dict):
        keys = set(data)
        if {"fleet", "mqtt"} <= keys and keys & _FLEET_ONLY and not keys & _AGENT_ONLY:
            return "fleet"
        if "identity" in keys or {"build", "shapes", "runtime"} & keys:
            return "profile"
        if "task" in keys:
            return "model"
    return "agent"


def _profile_reference(doc: YamlDoc, cfg: AgentConfig) -> list[ConfigIssue]:
    """The named profile exists in the profile store."""
    if cfg.profile == "auto":
        return []
    issues: list[ConfigIssue] = []
    try:
        names = ProfileStore().names()
    except EdgeAgentError as exc:
        names = []
        issues.append(ConfigIssue(doc.path, doc.line_of(("profile",)), "profile", str(exc)))
    if names and cfg.profile not in names:
        close = difflib.get_close_matches(cfg.profile, names, n=2, cutoff=0.4)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        issues.append(
            ConfigIssue(
                doc.path,
                doc.line_of(("profile",)),
                "profile",
                f"unknown profile '{cfg.profile}'; {hint}known profiles: "
                f"{', '.join(names)} (or 'auto' to detect the board)",
            )
        )
    return issues


def _missing_file(
    doc: YamlDoc, loc: tuple[str, ...], value: Path | None, base: Path
) -> list[ConfigIssue]:
    if value is None:
        return []
    full = value if value.is_absolute() else base / value
    if full.is_file():
        return []
    message = f"file '{full}' does not exist; fix the path or remove the key"
    return [ConfigIssue(doc.path, doc.line_of(loc), ".".join(loc), message)]


def _tls_references(doc: YamlDoc, mqtt: MqttConfig, base: Path) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    if mqtt.tls is not None:
        for field in ("ca_file", "cert_file", "key_file"):
            value: Path | None = getattr(mqtt.tls, field)
            issues.extend(_missing_file(doc, ("mqtt", "tls", field), value, base))
    return issues


def _fleet_references(doc: YamlDoc, cfg: FleetConfig, base: Path) -> list[ConfigIssue]:
    """TLS files, the API token file and the PostgreSQL DSN file exist."""
    issues = _tls_references(doc, cfg.mqtt, base)
    issues.extend(_missing_file(doc, ("api", "token_file"), cfg.api.token_file, base))
    if isinstance(cfg.store, PostgresStoreConfig):
        issues.extend(_missing_file(doc, ("store", "dsn_file"), cfg.store.dsn_file, base))
    return issues


def _file_references(doc: YamlDoc, cfg: AgentConfig, base: Path) -> list[ConfigIssue]:
    """Model bundles and TLS files exist (relative paths are relative to the file)."""
    issues: list[ConfigIssue] = []
    for index, model in enumerate(cfg.models):
        bundle = model.bundle if model.bundle.is_absolute() else base / model.bundle
        if not (bundle / "model.yaml").is_file() and not (
            bundle.is_file() and bundle.suffix in (".yaml", ".yml")
        ):
            issues.append(
                ConfigIssue(
                    doc.path,
                    doc.line_of(("models", index, "bundle")),
                    f"models.{index}.bundle",
                    f"no model.yaml in '{bundle}'; point bundle at a directory holding "
                    "model.yaml and the ONNX file",
                )
            )
    issues.extend(_tls_references(doc, cfg.mqtt, base))
    return issues


def validate_file(path: Path, kind: Kind | None = None) -> tuple[Kind | None, list[ConfigIssue]]:
    """Validate one file; returns the schema used and the problems found (empty = valid)."""
    try:
        doc = read_yaml(path)
    except ConfigError as exc:
        return None, exc.issues
    chosen = kind or guess_kind(path, doc.data)
    try:
        model = validate_doc(doc, SCHEMAS[chosen])
    except ConfigError as exc:
        return chosen, exc.issues
    issues: list[ConfigIssue] = []
    if isinstance(model, DeviceProfile) and model.name != path.stem:
        issues.append(
            ConfigIssue(
                doc.path,
                doc.line_of(("name",)),
                "name",
                f"profile name '{model.name}' differs from the file name '{path.stem}'; "
                f"rename one so they match",
            )
        )
    if isinstance(model, AgentConfig):
        issues.extend(_profile_reference(doc, model))
        issues.extend(_file_references(doc, model, path.parent))
    if isinstance(model, FleetConfig):
        issues.extend(_fleet_references(doc, model, path.parent))
    return chosen, issues


def default_config_path() -> Path:
    """The embedded default configuration shipped inside the package."""
    return Path(str(importlib.resources.files("agent") / "data" / DEFAULT_CONFIG))


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_run_config(path: Path) -> AgentConfig:
    """Validate ``path`` (located errors, references checked) and resolve its paths."""
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


def load_fleet_config(path: Path) -> FleetConfig:
    """Validate ``fleet.yaml`` (located errors, referenced files checked) and resolve its paths
    relative to the file's directory."""
    _kind, issues = validate_file(path, "fleet")
    if issues:
        raise ConfigError(issues)
    cfg = load_model_file(path, FleetConfig)
    base = path.parent.resolve()
    store = cfg.store
    if isinstance(store, SqliteStoreConfig):
        store = store.model_copy(update={"path": _resolve(store.path, base)})
    elif store.dsn_file is not None:
        store = store.model_copy(update={"dsn_file": _resolve(store.dsn_file, base)})
    api = cfg.api
    if api.token_file is not None:
        api = api.model_copy(update={"token_file": _resolve(api.token_file, base)})
    mqtt = cfg.mqtt
    if mqtt.tls is not None:
        tls = mqtt.tls.model_copy(
            update={
                f: _resolve(v, base)
                for f in ("ca_file", "cert_file", "key_file")
                if (v := getattr(mqtt.tls, f)) is not None
            }
        )
        mqtt = mqtt.model_copy(update={"tls": tls})
    return cfg.model_copy(
        update={
            "store": store,
            "api": api,
            "mqtt": mqtt,
            "state_dir": _resolve(cfg.state_dir, base),
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


def resolve_profile(
    name: str, profiles_dir: str | None, root: Path = Path("/")
) -> tuple[DeviceProfile, str | None, str]:
    """(profile, L4T release of the board under ``root``, how the profile was chosen).

    ``auto`` detects the board; any other name is loaded from the profile store.
    """
    store = ProfileStore(Path(profiles_dir) if profiles_dir else None)
    if name == "auto":
        found = detect(root, store)
        return store.load(found.profile), found.board.l4t_release, found.reason
    return store.load(name), read_board(root).l4t_release, f"--profile {name}"
