"""Shape inference while preparing a model, with ONNX Runtime's quantization pre-processing
tool: symbolic first, ONNX's own when symbolic inference gives up (as it does on some real YOLO
exports). Dynamic axes are set by position in :mod:`agent.engine.pin`, never by name here."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from onnxruntime.quantization.shape_inference import quant_pre_process

from agent.engine.onnxgraph import external_locations, load_model, save_model

__all__ = ["infer_shapes"]

log = logging.getLogger(__name__)


def _first_line(exc: Exception) -> str:
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    return reason.rstrip(": ")


#: ONNX Runtime's symbolic shape inference saves its partial result under this name in the
#: process's working directory (with a uuid-named external-data file) when it gives up.
_SYMBOLIC_LEFTOVER = "sym_shape_infer_temp.onnx"


def _remove_symbolic_leftover() -> None:
    """Delete the debug model symbolic inference leaves in the working directory, and its data
    file (ONNX Runtime overwrites any file of that name, so whatever is there is its own)."""
    leftover = Path.cwd() / _SYMBOLIC_LEFTOVER
    if not leftover.is_file():
        return
    with contextlib.suppress(Exception):
        for location in external_locations(load_model(leftover, external_data=False)):
            data = leftover.parent / location
            if location and not Path(location).is_absolute() and data.parent == leftover.parent:
                data.unlink(missing_ok=True)
    leftover.unlink(missing_ok=True)


def _symbolic(src: Path, dst: Path, common: dict[str, Any]) -> None:
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False, **common)
    except Exception:
        _remove_symbolic_leftover()
        raise


def infer_shapes(src: Path, dst: Path, large: bool, notes: list[str]) -> None:
    """Write ``src`` with inferred shapes to ``dst``, falling back from symbolic to ONNX shape
    inference and then to no inference; what happened is appended to ``notes``."""
    common: dict[str, Any] = {
        "skip_optimization": True,  # keep node names: model.yaml keep_float refers to them
        "save_as_external_data": large,
        "all_tensors_to_one_file": True,
        "external_data_location": dst.name + ".data",
    }
    try:
        _symbolic(src, dst, common)
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
