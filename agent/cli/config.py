"""``edge-agent validate-config FILE...``: check agent.yaml, device profiles and model.yaml files.

Each problem is printed as ``file:line: key: message``; the exit code is 2 when any file has a
problem and 0 when all are valid.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from agent.config.schema import AgentConfig, DeviceProfile, ModelBundleConfig
from agent.config.yaml import YamlDoc, read_yaml, validate_doc
from agent.core.errors import ConfigError, ConfigIssue, EdgeAgentError

Kind = Literal["agent", "profile", "model"]
SCHEMAS: dict[Kind, type[BaseModel]] = {
    "agent": AgentConfig,
    "profile": DeviceProfile,
    "model": ModelBundleConfig,
}


def guess_kind(path: Path, data: Any) -> Kind:
    """Which schema a file is meant for: by location and name first, then by content."""
    if path.parent.name == "device_profiles":
        return "profile"
    if path.name in ("model.yaml", "model.yml"):
        return "model"
    if isinstance(data, dict):
        keys = set(data)
        if "identity" in keys or {"build", "shapes", "runtime"} & keys:
            return "profile"
        if "task" in keys:
            return "model"
    return "agent"


def _agent_references(doc: YamlDoc, cfg: AgentConfig, base: Path) -> list[ConfigIssue]:
    """Checks that need the file system: the profile exists, bundles and files exist."""
    from agent.config.profiles import ProfileStore

    issues: list[ConfigIssue] = []
    if cfg.profile != "auto":
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
    if cfg.mqtt.tls is not None:
        for field in ("ca_file", "cert_file", "key_file"):
            value: Path | None = getattr(cfg.mqtt.tls, field)
            if value is None:
                continue
            full = value if value.is_absolute() else base / value
            if not full.is_file():
                issues.append(
                    ConfigIssue(
                        doc.path,
                        doc.line_of(("mqtt", "tls", field)),
                        f"mqtt.tls.{field}",
                        f"file '{full}' does not exist; fix the path or remove the key",
                    )
                )
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
        issues.extend(_agent_references(doc, model, path.parent))
    return chosen, issues


def _cmd_validate(args: argparse.Namespace) -> int:
    kind: Kind | None = None if args.kind == "auto" else args.kind
    bad = 0
    for name in args.files:
        used, issues = validate_file(Path(name), kind)
        for issue in issues:
            print(issue, file=sys.stdout)
        if issues:
            bad += 1
        elif not args.quiet:
            print(f"{name}: ok ({used})")
    return 2 if bad else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "validate-config",
        help="validate agent.yaml, device profiles and model.yaml files",
        description="Validate configuration files. Prints file:line: key: message per problem "
        "and exits 2 if any file is invalid.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument(
        "--kind",
        default="auto",
        choices=["auto", "agent", "profile", "model"],
        help="schema to use (auto: from the file's location, name and keys)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    parser.set_defaults(handler=_cmd_validate)
