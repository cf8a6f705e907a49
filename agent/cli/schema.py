"""``edge-agent schema``: the JSON Schema of every configuration file kind, for editors.

The schemas are generated from the pydantic models ``validate-config`` and ``run`` validate with
(:data:`agent.config.load.SCHEMAS`), so an editor's completion and red squiggles match what the
agent accepts (the checks of files and sections that a schema cannot express stay in
``validate-config``). ``--out DIR`` writes one ``edge-agent.<kind>.schema.json`` per kind;
``--kind KIND`` alone prints that kind's schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent import __version__
from agent.cli.common import print_json
from agent.config.load import KINDS, SCHEMAS, Kind
from agent.core.errors import EdgeAgentError
from agent.core.fsutil import atomic_write_text

__all__ = ["json_schema", "register", "schema_file_name"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_WHAT: dict[Kind, str] = {
    "agent": "agent.yaml: the device agent's configuration (edge-agent run --config)",
    "profile": "device_profiles/<name>.yaml: a device profile",
    "model": "model.yaml: a model bundle's description, next to its ONNX file",
    "fleet": "fleet.yaml: the fleet controller's configuration (edge-agent fleet serve)",
}


def schema_file_name(kind: Kind) -> str:
    return f"edge-agent.{kind}.schema.json"


def json_schema(kind: Kind) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one configuration file kind."""
    body = SCHEMAS[kind].model_json_schema()
    head = {
        "$schema": DRAFT,
        "$id": schema_file_name(kind),
        "title": body.pop("title", kind),
        "description": f"{_WHAT[kind]} (edge-agent {__version__})",
    }
    return {**head, **body}


def _cmd_schema(args: argparse.Namespace) -> int:
    kinds: tuple[Kind, ...] = (args.kind,) if args.kind else KINDS
    if args.out is None:
        if args.kind is None:
            raise EdgeAgentError(
                "nothing to do", fix="pass --out DIR to write every schema, or --kind KIND"
            )
        print_json(json_schema(args.kind))
        return 0
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            path = out / schema_file_name(kind)
            atomic_write_text(path, json.dumps(json_schema(kind), indent=2) + "\n")
            print(path, file=sys.stdout)
    except OSError as exc:
        raise EdgeAgentError(
            f"cannot write the schemas: {exc.strerror}", fix="pick a writable --out", path=out
        ) from exc
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "schema",
        help="write the JSON Schemas of the configuration files (for editors)",
        description="Write the JSON Schema of every configuration file kind (agent.yaml, "
        "device profile, model.yaml, fleet.yaml) for editors such as VS Code with the YAML "
        "extension (yaml-language-server), or print one with --kind.",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write edge-agent.<kind>.schema.json files into DIR (default: print --kind's)",
    )
    parser.add_argument(
        "--kind", default=None, choices=list(KINDS), help="only this kind (default: all)"
    )
    parser.set_defaults(handler=_cmd_schema)
