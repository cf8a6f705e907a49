"""Loading configuration the way ``edge-agent run`` does: exactly the checks it makes.

:func:`validate_file` is what ``edge-agent validate-config`` reports and what the daemon refuses
to start on: the schema, then the checks of :mod:`agent.config.checks` (both commands call it
through :mod:`agent.app.preflight`, which supplies the deep probes); :func:`load_run_config`
validates ``agent.yaml`` the same way and resolves its paths;
:func:`resolve_profile` picks the device profile (``auto`` detects the board);
:func:`load_fleet_config` does for ``fleet.yaml`` (the controller) what ``load_run_config`` does
for ``agent.yaml``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel

from agent.config.agent import AgentConfig, SourceConfig
from agent.config.broker import MqttConfig
from agent.config.checks import (
    AgentView,
    Probes,
    RunOverrides,
    agent_issues,
    bundle_issues,
    fleet_issues,
    profile_name_issues,
    resolve_path,
)
from agent.config.device import DeviceProfile
from agent.config.fleet import FleetConfig, SqliteStoreConfig
from agent.config.model import ModelBundleConfig
from agent.config.profiles.board import read_board
from agent.config.profiles.detect import detect
from agent.config.profiles.store import ProfileStore
from agent.config.profiles.support import refuse_unsupported
from agent.config.yaml import YamlDoc, load_model_file, read_yaml, validate_doc
from agent.core.errors import ConfigError, ConfigIssue

Kind = Literal["agent", "profile", "model", "fleet"]
KINDS: tuple[Kind, ...] = ("agent", "profile", "model", "fleet")
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


def _kind_issues(
    kind: Kind,
    doc: YamlDoc,
    model: BaseModel | None,
    probes: Probes | None,
    overrides: RunOverrides | None,
) -> list[ConfigIssue]:
    """The checks beyond the schema (:mod:`agent.config.checks`); ``model`` is None when the
    schema failed (then the sections that validate on their own are still checked)."""
    path = Path(doc.path)
    base = path.parent
    if kind == "agent":
        if isinstance(model, AgentConfig):
            view = AgentView.of(model)
        elif isinstance(doc.data, dict):
            view = AgentView.partial(cast("dict[str, Any]", doc.data))
        else:
            return []
        return agent_issues(doc, view, base, probes=probes, overrides=overrides)
    if kind == "profile":
        return profile_name_issues(doc, doc.data, path)
    if kind == "fleet" and isinstance(model, FleetConfig):
        return fleet_issues(doc, model, base)
    if kind == "model" and model is not None:
        return bundle_issues(doc, path, probes)
    return []


def validate_file(
    path: Path,
    kind: Kind | None = None,
    *,
    probes: Probes | None = None,
    overrides: RunOverrides | None = None,
) -> tuple[Kind | None, list[ConfigIssue]]:
    """Validate one file: every schema error and every check of :mod:`agent.config.checks`
    (``probes`` do the deep ones: :func:`agent.app.preflight.validate_file` passes them).
    Returns the schema used and the problems found (empty = valid)."""
    try:
        doc = read_yaml(path)
    except ConfigError as exc:
        return None, exc.issues
    chosen = kind or guess_kind(path, doc.data)
    model: BaseModel | None = None
    issues: list[ConfigIssue] = []
    try:
        model = validate_doc(doc, SCHEMAS[chosen])
    except ConfigError as exc:
        issues.extend(exc.issues)
    if isinstance(doc.data, dict):
        issues.extend(_kind_issues(chosen, doc, model, probes, overrides))
    # this file's problems in line order, then those of the files it names (model.yaml...)
    issues.sort(key=lambda i: (i.file != doc.path, i.file, i.line))
    return chosen, issues


def default_config_path() -> Path:
    """The embedded default configuration shipped inside the package."""
    return Path(str(importlib.resources.files("agent") / "data" / DEFAULT_CONFIG))


_resolve = resolve_path


def _resolve_mqtt(mqtt: MqttConfig, base: Path) -> MqttConfig:
    """The TLS and password files relative to ``base``."""
    if mqtt.password_file is not None:
        mqtt = mqtt.model_copy(update={"password_file": _resolve(mqtt.password_file, base)})
    if mqtt.tls is None:
        return mqtt
    tls = mqtt.tls.model_copy(
        update={
            f: _resolve(v, base)
            for f in ("ca_file", "cert_file", "key_file")
            if (v := getattr(mqtt.tls, f)) is not None
        }
    )
    return mqtt.model_copy(update={"tls": tls})


def load_run_config(
    path: Path, *, probes: Probes | None = None, overrides: RunOverrides | None = None
) -> AgentConfig:
    """Validate ``path`` as :func:`validate_file` does (all problems in one
    :class:`ConfigError`) and resolve its paths relative to the file's directory."""
    _kind, issues = validate_file(path, "agent", probes=probes, overrides=overrides)
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
    ota = cfg.ota.model_copy(update={"trust_dir": _resolve(cfg.ota.trust_dir, base)})
    return cfg.model_copy(
        update={
            "models": models,
            "sources": sources,
            "mqtt": _resolve_mqtt(cfg.mqtt, base),
            "ota": ota,
            "state_dir": _resolve(cfg.state_dir, base),
            "cache_dir": None if cfg.cache_dir is None else _resolve(cfg.cache_dir, base),
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
    return cfg.model_copy(
        update={
            "store": store,
            "api": api,
            "mqtt": _resolve_mqtt(cfg.mqtt, base),
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
    profile, board = store.load(name), read_board(root)
    if profile.build.backend == "tensorrt":  # a named Jetson profile on JetPack 5 or a Xavier
        refuse_unsupported(board)
    return profile, board.l4t_release, f"--profile {name}"
