"""``edge-agent validate-config FILE...``: check agent.yaml, device profiles, model.yaml and the
fleet controller's fleet.yaml files.

Each problem is printed as ``file:line: key: message``; the exit code is 2 when any file has a
problem and 0 when all are valid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config.load import Kind, validate_file


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
        help="validate agent.yaml, device profiles, model.yaml and fleet.yaml files",
        description="Validate configuration files. Prints file:line: key: message per problem "
        "and exits 2 if any file is invalid.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument(
        "--kind",
        default="auto",
        choices=["auto", "agent", "profile", "model", "fleet"],
        help="schema to use (auto: from the file's location, name and keys)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    parser.set_defaults(handler=_cmd_validate)
