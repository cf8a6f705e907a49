"""What a built engine holds: its I/O tensors, its optimization profile's min/opt/max shapes, and
its layers after fusion read with the engine inspector (``ProfilingVerbosity.DETAILED`` keeps
names, precisions and tactics)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from agent.backends.base import InputShapes, TensorSpec
from agent.backends.tensorrt.loader import (
    deserialize,
    dims,
    load_trt,
    make_logger,
    np_dtype_name,
    read_engine,
    trt,
)
from agent.backends.tensorrt.plan import Capabilities, detect_capabilities
from agent.core.errors import BackendUnavailable


def io_specs(
    engine: trt.ICudaEngine, caps: Capabilities
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    if caps.io_tensors_api:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(
                name,
                dims(engine.get_tensor_shape(name)),
                np_dtype_name(engine.get_tensor_dtype(name)),
            )
            is_input = engine.get_tensor_mode(name).name == trt.TensorIOMode.INPUT.name
            (inputs if is_input else outputs).append(spec)
    elif caps.bindings_api:
        # TensorRT < 8.5 only (8.6 has the name-based API). getattr: tensorrt-stubs 10.x no
        # longer declares the bindings API, which TensorRT 10 removed.
        legacy: Any = engine
        for i in range(int(legacy.num_bindings)):
            spec = TensorSpec(
                str(legacy.get_binding_name(i)),
                dims(legacy.get_binding_shape(i)),
                np_dtype_name(legacy.get_binding_dtype(i)),
            )
            (inputs if legacy.binding_is_input(i) else outputs).append(spec)
    else:
        raise BackendUnavailable(
            f"TensorRT {caps.version} has neither the tensor nor the bindings I/O API",
            fix="install TensorRT 8.6 or newer from JetPack",
        )
    return inputs, outputs


def profile_shapes(
    engine: trt.ICudaEngine, caps: Capabilities, inputs: tuple[TensorSpec, ...]
) -> dict[str, InputShapes]:
    """min/opt/max of each dynamic input of ``inputs`` in optimization profile 0 (a static
    input has none: its one shape is its profile). TensorRT 8.5+ (and 10.x, 11.x):
    ``ICudaEngine.get_tensor_profile_shape(name, profile_index)``, a list of three ``Dims``; before
    8.5 only the bindings-era ``get_profile_shape(profile_index, binding)`` (deprecated in 8.5 for
    the former, removed in 10.0), which also takes the binding's name."""
    shapes: dict[str, InputShapes] = {}
    for spec in inputs:
        if all(isinstance(d, int) and d > 0 for d in spec.shape):
            continue
        if caps.io_tensors_api:
            found = engine.get_tensor_profile_shape(spec.name, 0)
        else:
            legacy: Any = engine  # tensorrt-stubs 10.x no longer declare the bindings API
            found = legacy.get_profile_shape(0, spec.name)
        low, opt, high = (dims(d) for d in found)
        shapes[spec.name] = InputShapes(low, opt, high)
    return shapes


def _precision_of(fmt: str) -> str:
    text = fmt.upper()
    for key, name in (
        ("INT8", "int8"),
        ("FP8", "fp8"),
        ("BF16", "bf16"),
        ("FP16", "fp16"),
        ("HALF", "fp16"),
        ("FP32", "fp32"),
        ("FLOAT", "fp32"),
        ("INT64", "int64"),
        ("INT32", "int32"),
        ("BOOL", "bool"),
    ):
        if key in text:
            return name
    return "unknown"


def _tensor_info(entry: Mapping[str, Any]) -> dict[str, Any]:
    # ≤ 10.x: one "Format/Datatype" string; 11.x splits it into "Format" and "DataType".
    fmt = str(entry.get("Format/Datatype", entry.get("Format", "")))
    dtype = str(entry.get("DataType", ""))
    return {
        "name": str(entry.get("Name", "")),
        "shape": list(entry.get("Dimensions", [])),
        "precision": _precision_of(dtype or fmt),
        "format": fmt,
    }


def layers_from_inspector_json(text: str) -> list[dict[str, Any]]:
    """Engine-inspector JSON (``LayerInformationFormat.JSON``) → one dict per fused layer."""
    data: Any = json.loads(text)
    raw_layers: list[Any] = []
    if isinstance(data, dict):
        raw_layers = list(cast("dict[str, Any]", data).get("Layers", []))
    layers: list[dict[str, Any]] = []
    for raw in raw_layers:
        if not isinstance(raw, dict):  # built without ProfilingVerbosity.DETAILED: names only
            layers.append({"name": str(raw), "type": "unknown", "precision": "unknown"})
            continue
        entry = cast("dict[str, Any]", raw)
        inputs = [_tensor_info(cast("dict[str, Any]", t)) for t in entry.get("Inputs", [])]
        outputs = [_tensor_info(cast("dict[str, Any]", t)) for t in entry.get("Outputs", [])]
        # A layer's precision is what it computes in: its first input's type (a Quantize layer
        # reads float and writes int8; a fused int8 conv reads int8), falling back to outputs.
        precision = next(
            (t["precision"] for t in inputs + outputs if t["precision"] != "unknown"), "unknown"
        )
        layers.append(
            {
                "name": str(entry.get("Name", "")),
                "type": str(entry.get("LayerType", "unknown")),
                "precision": precision,
                "inputs": inputs,
                "outputs": outputs,
                "tactic": str(entry.get("TacticName", entry.get("TacticValue", ""))),
                "origin": str(entry.get("Origin", "")),
            }
        )
    return layers


def inspector_layers(engine: trt.ICudaEngine) -> list[dict[str, Any]]:
    """:func:`layers_from_inspector_json` of ``engine`` (empty without an engine inspector)."""
    if not hasattr(engine, "create_engine_inspector"):
        return []
    inspector = engine.create_engine_inspector()
    return layers_from_inspector_json(
        inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    )


def inspect_engine(artifact_dir: Path, main_file: str) -> list[dict[str, Any]]:
    """Layers after fusion, with their precision, read with the engine inspector."""
    caps = detect_capabilities(load_trt())
    if not caps.engine_inspector:
        raise BackendUnavailable(
            f"TensorRT {caps.version} has no engine inspector",
            fix="install TensorRT 8.6 or newer from JetPack",
        )
    path = artifact_dir / main_file
    _runtime, engine = deserialize(make_logger(), read_engine(path), path)
    return inspector_layers(engine)
