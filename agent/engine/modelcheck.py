"""Checks on a bundle's ONNX file before anything else reads it: parseable and complete, external
data inside the bundle, only operators a backend here implements, accepted by the ONNX checker.
Every failure is a :class:`ModelError` naming the bundle's file and the fix."""

from __future__ import annotations

from pathlib import Path

from agent.core.errors import ModelError
from agent.engine.bundle import is_inside
from agent.engine.onnxgraph import (
    ModelProto,
    ValidationError,
    check_model,
    external_locations,
    has_standard_operator,
    load_model,
)

__all__ = ["check_external", "check_onnx", "check_ops", "load_onnx"]

#: Operator domains ONNX Runtime implements besides the default one.
_KNOWN_DOMAINS = {"", "ai.onnx", "com.microsoft", "ai.onnx.ml"}


def load_onnx(path: Path) -> ModelProto:
    """The model at ``path`` without its external data; refuses empty, truncated, non-ONNX."""
    fix = "re-export the model (torch.onnx.export / yolo export format=onnx) and copy it again"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"cannot read the ONNX file: {exc}", fix=fix, path=path) from exc
    if size == 0:
        raise ModelError("the ONNX file is empty", fix=fix, path=path)
    try:
        model = load_model(path, external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(
            f"not an ONNX model, or a truncated one (protobuf parse failed: {exc})",
            fix="check the copy is complete (compare sizes/sha256); " + fix,
            path=path,
        ) from exc
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(
            "the file parsed but holds no graph (truncated, or not an ONNX model)",
            fix="check the copy is complete (compare sizes/sha256); " + fix,
            path=path,
        )
    return model


def check_external(model: ModelProto, path: Path, bundle_dir: Path) -> list[str]:
    """The external-data files of ``model``, each checked to exist inside ``bundle_dir``."""
    locations = external_locations(model)
    for location, names in locations.items():
        target = path.parent / location
        if not location or Path(location).is_absolute() or not is_inside(target, bundle_dir):
            raise ModelError(
                f"external data '{location}' (tensor {names[0]}) resolves outside the bundle "
                f"directory {bundle_dir}",
                fix="save the model with its external data file next to it in the bundle "
                "(onnx.save_model(..., save_as_external_data=True, location='model.onnx.data'))",
                path=path,
            )
        if not target.is_file():
            raise ModelError(
                f"external data file '{location}' is missing (tensor {names[0]})",
                fix="copy the .data file that was exported with the model into the bundle",
                path=path,
            )
    return sorted(locations)


def check_ops(model: ModelProto, path: Path) -> None:
    """Refuse custom-domain operators and names that are not ONNX operators at the opset."""
    opsets = {e.domain: e.version for e in model.opset_import}
    for node in model.graph.node:
        domain = node.domain or ""
        if domain not in _KNOWN_DOMAINS:
            raise ModelError(
                f"unsupported operator {domain}::{node.op_type} (node '{node.name}'): "
                "no backend here implements the custom domain",
                fix="re-export without the custom op (or replace it with standard ONNX ops); "
                "plugins are not supported",
                path=path,
            )
        if domain in ("", "ai.onnx"):
            version = opsets.get(domain, opsets.get("", opsets.get("ai.onnx", 1)))
            if not has_standard_operator(node.op_type, version):
                raise ModelError(
                    f"unsupported operator {node.op_type} (node '{node.name}') at opset "
                    f"{version}: it is not an ONNX operator",
                    fix="re-export with standard ONNX operators only",
                    path=path,
                )


def check_onnx(path: Path) -> None:
    """Run the ONNX checker on the file, as a :class:`ModelError` naming it."""
    try:
        check_model(path)
    except ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelError(
            f"the ONNX checker rejected the model: {first}",
            fix="re-export the model with a current exporter; if an operator is reported "
            "unknown, replace it with standard ONNX ops",
            path=path,
        ) from exc
