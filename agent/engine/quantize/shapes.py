"""ONNX Runtime's quantization pre-processing tools used while preparing a model: shape
inference (symbolic first, ONNX's own when symbolic inference gives up, as it does on some
real YOLO exports) and pinning a named dynamic dimension."""

from __future__ import annotations

import logging
from pathlib import Path

from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

from agent.engine.onnxgraph import GraphProto, load_model, save_model

__all__ = ["fix_dim_param", "infer_shapes"]

log = logging.getLogger(__name__)


def fix_dim_param(graph: GraphProto, name: str, value: int) -> None:
    """Replace the dynamic dimension ``name`` by ``value`` everywhere in ``graph``."""
    make_dim_param_fixed(graph, name, value)


def _first_line(exc: Exception) -> str:
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    return reason.rstrip(": ")


def infer_shapes(src: Path, dst: Path, large: bool, notes: list[str]) -> None:
    """Write ``src`` with inferred shapes to ``dst``, falling back from symbolic to ONNX shape
    inference and then to no inference; what happened is appended to ``notes``."""
    common = {
        "skip_optimization": True,  # keep node names: model.yaml keep_float refers to them
        "save_as_external_data": large,
        "all_tensors_to_one_file": True,
        "external_data_location": dst.name + ".data",
    }
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False, **common)
        notes.append("shape inference: symbolic (onnxruntime) + onnx")
        return
    except Exception as exc:  # AssertionError on Concat, ImportError without sympy, ...
        reason = _first_line(exc)
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, **common)
        notes.append(
            f"symbolic shape inference failed ({reason}); fell back to onnx.shape_inference"
        )
        return
    except Exception as exc:
        second = f"{type(exc).__name__}: {exc}"
    # Last resort: ship the model without inferred shapes; calibration still works, a few
    # tensors may stay unquantized because their type is unknown.
    save_model(load_model(src), dst)
    notes.append(
        f"symbolic shape inference failed ({reason}) and onnx.shape_inference failed "
        f"({second}); continuing without inferred shapes"
    )
