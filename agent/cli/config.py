"""``edge-agent validate-config FILE...``: check agent.yaml, device profiles, model.yaml and the
fleet controller's fleet.yaml files.

An ``agent.yaml`` gets exactly the checks ``edge-agent run`` makes before it serves (the same
call: :mod:`agent.app.preflight`): the schema, the files it references (model bundles,
calibration folders, the OTA trust directory, TLS and password files, the profile) and the
rules across sections (OTA needs MQTT, at least one source). Every problem of a file is reported
in one pass, each as ``file:line: key: message`` (the message ends with the fix), or as one JSON
document with ``--json``. The exit code is 2 when any file has a problem (as ``run`` exits on an
invalid configuration) and 0 when all are valid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.app.exits import ExitCode
from agent.app.preflight import RunOverrides, validate_file
from agent.cli.common import print_json
from agent.config.load import KINDS, Kind
from agent.core.errors import ConfigIssue


def _issue_json(issue: ConfigIssue) -> dict[str, Any]:
    return {"file": issue.file, "line": issue.line, "key": issue.key, "message": issue.message}


def _cmd_validate(args: argparse.Namespace) -> int:
    kind: Kind | None = None if args.kind == "auto" else args.kind
    overrides = RunOverrides(profiles_dir=Path(args.profiles_dir) if args.profiles_dir else None)
    results: list[dict[str, Any]] = []
    for name in args.files:
        used, issues = validate_file(Path(name), kind, overrides)
        results.append({"file": name, "kind": used, "ok": not issues,
                        "issues": [_issue_json(i) for i in issues]})  # fmt: skip
        if args.json:
            continue
        for issue in issues:
            print(issue, file=sys.stdout)
        if issues:
            count = f"{len(issues)} problem{'s' if len(issues) > 1 else ''}"
            print(f"{name}: {count} ({used or 'unread'})", file=sys.stderr)
        elif not args.quiet:
            print(f"{name}: ok ({used})")
    ok = all(r["ok"] for r in results)
    if args.json:
        print_json({"ok": ok, "files": results})
    return ExitCode.OK if ok else ExitCode.CONFIG


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "validate-config",
        help="validate agent.yaml, device profiles, model.yaml and fleet.yaml files",
        description="Validate configuration files with exactly the checks `edge-agent run` "
        "makes before it serves (schema, referenced files, OTA trust directory, cross-section "
        "rules). Prints every problem as file:line: key: message and exits 2 if any file is "
        "invalid.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument(
        "--kind",
        default="auto",
        choices=["auto", *KINDS],
        help="schema to use (default: auto, from the file's location, name and keys)",
    )
    parser.add_argument(
        "--profiles-dir",
        default=None,
        help="directory of profile YAMLs, as given to run (default: the installed ones)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    parser.add_argument(
        "--json",
        action="store_true",
        help='one JSON document on stdout: {"ok", "files": [{"file", "kind", "ok", "issues": '
        '[{"file", "line", "key", "message"}]}]}',
    )
    parser.set_defaults(handler=_cmd_validate)
