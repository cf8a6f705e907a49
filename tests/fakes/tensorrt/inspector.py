"""The fake's ``EngineInspector`` (``install_inspector``): layer information as JSON, in the shape
each generation writes.

≤ 10.x: ``{"Layers": [...], "Bindings": ["input_0", "output_0"]}``; each layer tensor carries one
``"Format/Datatype"`` string. 11.x: "The Bindings field ... has been removed. It is replaced by
the new I/O Tensors field, which is a list of JSON objects" with ``Name``, ``IOMode``,
``DataType``, ``Dimensions``, ``Location``, ``IsShapeInferenceIO`` and, for inputs,
``ProfileInfo`` (``MinShape``/``OptShape``/``MaxShape``/``Format``) — NVIDIA, "Migrating
IEngineInspector Usage from TensorRT 10.x to 11.x" (TensorRT 11.0–11.3 docs). The 11.x layer
tensors here carry ``DataType`` and ``Format`` apart, named as in those I/O objects (the migration
page shows the I/O change; the per-layer split is this fake's reading, and the agent's parser
accepts both).
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.tensorrt.state import Fake

#: engine-blob precision → the DataType word the 11.x inspector prints
_DATA_TYPE_WORDS = {"FP32": "Float", "FP16": "Half", "Int8": "Int8", "Int64": "Int64"}
_FORMAT_WORDS = {"FP32": "FP32", "FP16": "FP16", "Int8": "Int8", "Int64": "Int64"}
_DT_WORDS = {"FLOAT": "Float", "HALF": "Half", "INT8": "Int8", "INT32": "Int32", "INT64": "Int64"}


def _layer_tensor(name: str, precision: str, major: int) -> dict[str, Any]:
    fmt = f"Row major linear {_FORMAT_WORDS.get(precision, precision)} format (kLINEAR)"
    if major >= 11:
        word = _DATA_TYPE_WORDS.get(precision, precision)
        return {"Name": name, "Dimensions": [-1], "Format": fmt, "DataType": word}
    return {"Name": name, "Dimensions": [-1], "Format/Datatype": fmt}


def io_tensors(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The 11.x ``"I/O Tensors"`` objects of an engine body."""
    entries: list[dict[str, Any]] = []
    for mode, specs in (("Input", body["inputs"]), ("Output", body["outputs"])):
        for spec in specs:
            word = str(_DT_WORDS.get(spec["dtype"], str(spec["dtype"]).title()))
            entry: dict[str, Any] = {
                "Name": spec["name"],
                "IOMode": mode,
                "DataType": word,
                "Dimensions": list(spec["shape"]),
                "Location": "Device",
                "IsShapeInferenceIO": False,
            }
            profile = body["profile"].get(spec["name"])
            if mode == "Input" and profile:
                lo, opt, hi = profile
                fmt = f"Row major linear {word.upper()} format (kLINEAR)"
                entry["ProfileInfo"] = [
                    {"MinShape": lo, "OptShape": opt, "MaxShape": hi, "Format": fmt}
                ]
            entries.append(entry)
    return entries


def engine_information(body: dict[str, Any], major: int) -> str:
    """``get_engine_information(LayerInformationFormat.JSON)`` of an engine body."""
    if body["verbosity"] != "DETAILED":
        return json.dumps({"Layers": [layer[0] for layer in body["layers"]]})
    layers = [
        {
            "Name": name,
            "LayerType": "CaskConvolution" if op == "Conv" else op,
            "Inputs": [_layer_tensor(f"{name}_in", precision, major)],
            "Outputs": [_layer_tensor(f"{name}_out", precision, major)],
            "TacticName": "fake_tactic",
        }
        for name, op, precision in body["layers"]
    ]
    if major >= 11:
        return json.dumps({"Layers": layers, "I/O Tensors": io_tensors(body)})
    names = [t["name"] for t in body["inputs"] + body["outputs"]]
    return json.dumps({"Layers": layers, "Bindings": names})


def install_inspector(fk: Fake) -> None:
    """EngineInspector."""
    rec, major = fk.rec, fk.major

    class EngineInspector:
        def __init__(self, engine: Any) -> None:
            self.engine = engine
            self.execution_context = None

        def get_engine_information(self, format: Any) -> str:
            rec.record("get_engine_information", format.name)
            return engine_information(self.engine.body, major)

        def get_layer_information(self, layer_index: int, format: Any) -> str:
            return json.dumps(
                json.loads(self.get_engine_information(format))["Layers"][layer_index]
            )

    fk.mod.EngineInspector = EngineInspector  # type: ignore[attr-defined]
