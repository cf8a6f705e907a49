"""``edge-agent inspect ARTIFACT``: the layers of an engine after fusion and their precision;
for an INT8 artifact also the layers kept in float (reason, added error), the calibration
method chosen, the accuracy-search attempts and the gate numbers."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from agent.cli.artifacts import load_with_backend
from agent.cli.common import format_table, print_json
from agent.cli.quant_summary import quantization_json, quantization_text
from agent.engine.cache import Artifact

__all__ = ["register"]


def _cmd_inspect(args: argparse.Namespace) -> int:
    artifact, backend = load_with_backend(args.artifact)
    layers = backend.inspect(artifact.dir, artifact.main_file)
    by_op = Counter(str(layer.get("op_type", "?")) for layer in layers)
    by_prec = Counter(str(layer.get("precision", "?")) for layer in layers)
    if args.json:
        summary = {
            "layers": len(layers),
            "by_precision": dict(by_prec.most_common()),
            "by_op_type": dict(by_op.most_common()),
        }
        print_json(
            {
                "artifact": str(artifact.dir),
                "backend": artifact.backend,
                "precision": artifact.precision,
                "layers": layers,
                "summary": summary,
                "quantization": quantization_json(artifact.manifest),
            }
        )
        return 0
    _print_layers(artifact, layers, by_prec, by_op)
    text = quantization_text(artifact.manifest)
    if text:
        print()
        print(text)
    return 0


def _print_layers(
    artifact: Artifact,
    layers: list[dict[str, Any]],
    by_prec: Counter[str],
    by_op: Counter[str],
) -> None:
    print(f"artifact: {artifact.dir} ({artifact.backend}, {artifact.precision})")
    rows = [
        [
            str(i),
            str(layer.get("name", "")),
            str(layer.get("op_type", "")),
            str(layer.get("precision", "")),
        ]
        for i, layer in enumerate(layers)
    ]
    print(format_table(["#", "NAME", "OP", "PRECISION"], rows))
    print()
    print(
        f"{len(layers)} layers; by precision: "
        + ", ".join(f"{k} {v}" for k, v in by_prec.most_common())
    )
    print(format_table(["OP", "COUNT"], [[k, str(v)] for k, v in by_op.most_common()]))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``inspect`` to the ``edge-agent`` parser."""
    p = sub.add_parser("inspect", help="layers of an engine artifact and their precision")
    p.add_argument("artifact", help="artifact directory (printed by build)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_inspect)
