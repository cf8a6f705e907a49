"""``edge-agent inspect MODEL``: the engine's inputs and outputs (names, shapes with their dynamic
dimensions and the optimization profile's min/opt/max, dtypes), its layers after fusion and their
precision; for an INT8 artifact also the layers kept in float (reason, added error), the
calibration method chosen, the accuracy-search attempts and the gate numbers.

MODEL is an artifact directory, an ``.onnx`` (built on the fly) or a TensorRT plan
(:mod:`agent.cli.artifacts`)."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from agent.backends.base import ProfileShapedRunner, TensorSpec
from agent.cli.artifacts import Loaded, add_model_args, open_model
from agent.cli.common import format_table, print_json
from agent.cli.quant_summary import quantization_json, quantization_text
from agent.engine.cache import Artifact

__all__ = ["io_json", "register"]


def _dynamic(shape: tuple[int | str, ...]) -> list[int]:
    return [i for i, d in enumerate(shape) if not (isinstance(d, int) and d > 0)]


def _specs(
    loaded: Loaded,
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict[str, Any]]:
    """Inputs, outputs and the profile's min/opt/max per input: recorded in the manifest, or
    read from the engine of a bare plan (TensorRT: ``get_tensor_profile_shape``)."""
    artifact = loaded.artifact
    recorded = artifact.manifest.get("shapes")
    if artifact.inputs or artifact.outputs:
        return artifact.inputs, artifact.outputs, recorded if isinstance(recorded, dict) else {}
    runner = loaded.backend.runner(artifact.dir, artifact.main_file)  # a bare plan: ask it
    with runner:
        shapes = runner.profile_shapes() if isinstance(runner, ProfileShapedRunner) else {}
        profile = {name: s.to_json() for name, s in shapes.items()}
        return runner.inputs, runner.outputs, profile


def io_json(loaded: Loaded) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs: name, shape, dtype, dynamic axes and (inputs) the profile's
    min/opt/max (None for a static input)."""
    inputs, outputs, profile = _specs(loaded)

    def item(spec: TensorSpec, *, is_input: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {**spec.to_json(), "dynamic_axes": _dynamic(spec.shape)}
        if is_input:
            doc["profile"] = profile.get(spec.name)
        return doc

    return {
        "inputs": [item(t, is_input=True) for t in inputs],
        "outputs": [item(t, is_input=False) for t in outputs],
    }


def _cmd_inspect(args: argparse.Namespace) -> int:
    loaded = open_model(args)
    artifact = loaded.artifact
    io = io_json(loaded)
    layers = loaded.backend.inspect(artifact.dir, artifact.main_file)
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
                "source": loaded.source,
                "backend": artifact.backend,
                "precision": artifact.precision,
                "overrides": artifact.manifest.get("overrides") or {},
                **io,
                "layers": layers,
                "summary": summary,
                "quantization": quantization_json(artifact.manifest),
            }
        )
        return 0
    _print_io(artifact, io)
    _print_layers(layers, by_prec, by_op)
    text = quantization_text(artifact.manifest)
    if text:
        print()
        print(text)
    return 0


def _shape_text(shape: list[int | str]) -> str:
    return "x".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape)


def _print_io(artifact: Artifact, io: dict[str, list[dict[str, Any]]]) -> None:
    print(f"artifact: {artifact.dir} ({artifact.backend}, {artifact.precision})")
    overrides = artifact.manifest.get("overrides")
    if overrides:
        print(f"overrides: {overrides}")
    rows: list[list[str]] = []
    for kind in ("inputs", "outputs"):
        for t in io[kind]:
            prof = t.get("profile")
            ranges = (
                "-" if not prof else " / ".join(_shape_text(prof[k]) for k in ("min", "opt", "max"))
            )
            rows.append([kind[:-1], t["name"], _shape_text(t["shape"]), t["dtype"], ranges])
    print(format_table(["I/O", "NAME", "SHAPE (? = dynamic)", "DTYPE", "MIN / OPT / MAX"], rows))
    print()


def _print_layers(layers: list[dict[str, Any]], by_prec: Counter[str], by_op: Counter[str]) -> None:
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
    p = sub.add_parser(
        "inspect",
        help="inputs/outputs (shapes, dtypes, min/opt/max) and layers of a model",
        description="Inputs and outputs, layers after fusion and their precision, and the "
        "quantization report of an artifact directory, an .onnx (built on the fly) or a "
        "TensorRT plan.",
    )
    add_model_args(p, "inspect")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(handler=_cmd_inspect)
