"""ONNX Runtime versions the quantizer runs on: 1.23 (the newest for Python 3.10, JetPack 6)
and 1.27+, which added the calibration-cache API.

ORT 1.27 added ``onnxruntime.quantization.calibrate.save_tensors_data`` /
``load_tensors_data`` and ``quantize_static(..., calibration_cache_path=...)``, which loads
precomputed ranges instead of calibrating. Older versions have neither, so here:

* the range cache is ORT's own JSON where ORT can write it, else our own JSON (calibration
  method + per tensor the ``TensorData`` fields, each with its numpy type); the format's name is
  part of the cache key (:func:`cache_format`), so one format never reads the other's file;
* Q/DQ insertion with precomputed ranges is ``quantize_static(calibration_cache_path=...)``
  where it exists, else the steps ORT 1.23's ``quantize_static`` takes once calibration is done
  (``onnxruntime/python/tools/quantization/quantize.py``), fed our ranges.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization import calibrate as _calibrate
from onnxruntime.quantization.calibrate import TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import load_model_with_shape_infer, update_opset_version
from onnxruntime.quantization.quantize import check_static_quant_arguments
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

__all__ = ["cache_format", "load_ranges", "quantize_with_ranges", "save_ranges"]

# ORT 1.27+'s own cache functions (looked up: older versions do not have them)
_ORT_SAVE: Callable[[TensorsData, Path], None] | None = getattr(
    _calibrate, "save_tensors_data", None
)
_ORT_LOAD: Callable[[Path], TensorsData] | None = getattr(_calibrate, "load_tensors_data", None)
#: ORT writes and reads the range cache itself (1.27+).
NATIVE_CACHE: bool = _ORT_SAVE is not None and _ORT_LOAD is not None
#: ``quantize_static`` takes precomputed ranges (1.27+).
NATIVE_QUANTIZE: bool = "calibration_cache_path" in inspect.signature(quantize_static).parameters

_OWN_FORMAT = "edge-agent-tensors-data"
_OWN_VERSION = 1
#: ``TensorData``'s allowed fields (ORT 1.23 ``TensorData._allowed``).
_FIELDS = ("lowest", "highest", "hist", "hist_edges", "bins", "avg", "std")


def cache_format() -> str:
    """Name of the range-cache format this ORT reads and writes (part of the cache key)."""
    return "ort-json" if NATIVE_CACHE else "own-json"


# --- range cache -------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    """A ``TensorData`` field as JSON that rebuilds the same numpy type (array, numpy scalar,
    or plain Python number; ORT's calibrators produce all three)."""
    if isinstance(value, np.ndarray):
        return {"kind": "ndarray", "dtype": str(value.dtype), "data": value.tolist()}
    if isinstance(value, np.generic):
        return {"kind": "scalar", "dtype": str(value.dtype), "data": value.item()}
    if isinstance(value, bool | int | float):
        return {"kind": "python", "data": value}
    raise TypeError(f"unexpected {type(value).__name__} in calibration ranges")


def _decode(item: Mapping[str, Any]) -> Any:
    kind, data = item["kind"], item["data"]
    if kind == "ndarray":
        return np.array(data, dtype=np.dtype(item["dtype"]))
    if kind == "scalar":
        return np.dtype(item["dtype"]).type(data)
    if kind == "python" and isinstance(data, bool | int | float):
        return data
    raise ValueError(f"unknown field kind {kind!r}")


def _own_payload(ranges: TensorsData) -> dict[str, Any]:
    method = ranges.calibration_method
    tensors: dict[str, dict[str, Any]] = {}
    for name, data in ranges.items():
        tensors[name] = {k: _encode(getattr(data, k)) for k in _FIELDS if hasattr(data, k)}
    return {
        "format": _OWN_FORMAT,
        "version": _OWN_VERSION,
        "calibration_method": method.name,
        "tensors": tensors,
    }


def _own_ranges(payload: Mapping[str, Any]) -> TensorsData:
    if payload.get("format") != _OWN_FORMAT or payload.get("version") != _OWN_VERSION:
        raise ValueError(f"not an {_OWN_FORMAT} v{_OWN_VERSION} file")
    method = CalibrationMethod[payload["calibration_method"]]
    tensors: dict[str, TensorData | tuple[Any, ...]] = {}
    for name, fields in payload["tensors"].items():
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"tensor {name!r}: unknown fields {sorted(unknown)}")
        tensors[name] = TensorData(**{k: _decode(v) for k, v in fields.items()})
    return TensorsData(method, tensors)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder + ``os.replace``
    (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".calibcache_", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def save_ranges(ranges: TensorsData, path: Path) -> None:
    """Save ``ranges`` atomically in :func:`cache_format` (ORT's ``save_tensors_data`` writes
    a temporary file and ``os.replace``s it too; the caller fsyncs the result)."""
    if NATIVE_CACHE and _ORT_SAVE is not None:
        _ORT_SAVE(ranges, path)
    else:
        _write_atomic(path, json.dumps(_own_payload(ranges)))


def load_ranges(path: Path) -> TensorsData:
    """Ranges saved by :func:`save_ranges` with the same ORT (raises on any other file)."""
    if NATIVE_CACHE and _ORT_LOAD is not None:
        return _ORT_LOAD(path)
    with path.open(encoding="utf-8") as f:
        return _own_ranges(json.load(f))


# --- Q/DQ insertion with precomputed ranges ----------------------------------------------


def _quantize_qdq_from_ranges(
    model_input: Path,
    model_output: Path,
    tensors_range: TensorsData,
    *,
    op_types: Sequence[str] | None,
    per_channel: bool,
    activation_type: QuantType,
    weight_type: QuantType,
    nodes_to_exclude: Sequence[str],
    extra_options: Mapping[str, Any],
    use_external_data_format: bool,
) -> None:
    """ORT 1.23 ``quantize_static`` (QDQ format, ``reduce_range=False``, no SmoothQuant) from
    the point where calibration has produced ``tensors_range``: the model is loaded with shape
    inference, its opset updated for ``weight_type``, and ``QDQQuantizer`` run with the same
    arguments. The calibration-only steps (temporary model copy, augmented model, Calib* options)
    have nothing to do here."""
    options = dict(extra_options)
    if options.get("SmoothQuant", False):
        # as ORT 1.27+: a range cache cannot drive the SmoothQuant transform
        raise ValueError("SmoothQuant needs a calibration run, not precomputed ranges")
    op_list = list(op_types or [])
    if not op_list:
        op_list = list(set(list(QLinearOpsRegistry.keys()) + list(QDQRegistry.keys())))
    model = load_model_with_shape_infer(model_input)
    model = update_opset_version(model, weight_type)
    check_static_quant_arguments(QuantFormat.QDQ, activation_type, weight_type)
    quantizer = QDQQuantizer(
        model,
        per_channel,
        False,  # reduce_range
        weight_type,
        activation_type,
        tensors_range,
        [],  # nodes_to_quantize: all
        list(nodes_to_exclude),
        op_list,
        options,
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(model_output), use_external_data_format)


def quantize_with_ranges(
    model_input: Path,
    model_output: Path,
    reader: CalibrationDataReader,
    *,
    ranges_path: Path,
    calibrate_method: CalibrationMethod,
    op_types: Sequence[str] | None,
    per_channel: bool,
    activation_type: QuantType,
    weight_type: QuantType,
    nodes_to_exclude: Sequence[str],
    extra_options: Mapping[str, Any],
    use_external_data_format: bool,
) -> None:
    """QDQ-quantize ``model_input`` into ``model_output`` with the ranges cached at
    ``ranges_path`` (saved by :func:`save_ranges`, computed with ``calibrate_method``)."""
    if NATIVE_QUANTIZE and NATIVE_CACHE:
        # ORT 1.27+ only: not in the parameters older type information knows
        cache_arg: dict[str, Any] = {"calibration_cache_path": str(ranges_path)}
        quantize_static(
            str(model_input),
            str(model_output),
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types else None,
            per_channel=per_channel,
            reduce_range=False,
            activation_type=activation_type,
            weight_type=weight_type,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=calibrate_method,
            extra_options=dict(extra_options),
            use_external_data_format=use_external_data_format,
            **cache_arg,
        )
        return
    ranges = load_ranges(ranges_path)
    if ranges.calibration_method != calibrate_method:  # as ORT 1.27+ checks
        raise ValueError(
            f"calibration cache {ranges_path} holds {ranges.calibration_method} ranges, "
            f"not {calibrate_method}"
        )
    _quantize_qdq_from_ranges(
        model_input,
        model_output,
        ranges,
        op_types=op_types,
        per_channel=per_channel,
        activation_type=activation_type,
        weight_type=weight_type,
        nodes_to_exclude=nodes_to_exclude,
        extra_options=extra_options,
        use_external_data_format=use_external_data_format,
    )
