"""Activation ranges: computed once per (prepared model, calibration set, method) and cached.

Ranges come from ``onnxruntime.quantization.calibrate.create_calibrator`` and are cached as
ORT's own calibration-cache JSON (``cache_dir/calib/<key>.json``); ``quantize_static(...,
calibration_cache_path=...)`` loads them and skips calibration on a hit. The ranges do not
depend on the recipe or on excluded nodes (every float tensor is calibrated), so one cache
serves both recipes and the re-quantization done by the mixed-precision pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import (
    create_calibrator,
    load_tensors_data,
    save_tensors_data,
)

from agent.core.errors import CalibrationError
from agent.core.fsutil import fsync_dir, fsync_file
from agent.engine.prepare import PreparedModel
from agent.engine.quantize.reader import CALIB_CHUNK, Chunk, FrameReader

__all__ = ["cached_ranges_ok", "calibrate_ranges", "calibration_cache_key", "method_enum"]

log = logging.getLogger(__name__)
_CACHE_VERSION = "1"


def calibration_cache_key(
    model_sha256: str, calib_sha256: str, method: str, percentile: float
) -> str:
    """Cache key of activation ranges: model + calibration set + method (+ percentile)."""
    extra = f"{percentile:.6f}" if method == "percentile" else ""
    text = f"v{_CACHE_VERSION}\0{model_sha256}\0{calib_sha256}\0{method}\0{extra}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def method_enum(method: str) -> CalibrationMethod:
    """ORT's calibration method for a ``build.calibration.method`` name."""
    table = {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in table:
        raise ValueError(f"calibration method '{method}' is not one of {sorted(table)}")
    return table[method]


def _fsync_file(path: Path) -> None:
    """Make ``path`` and its directory entry durable (best effort)."""
    with contextlib.suppress(OSError):
        fsync_file(path)
        fsync_dir(path.parent)


def cached_ranges_ok(cache_path: Path, method: str) -> bool:
    """Whether ``cache_path`` holds readable ranges computed with ``method``."""
    if not cache_path.is_file():
        return False
    try:
        data = load_tensors_data(cache_path)
    except Exception as exc:  # corrupt / truncated / foreign JSON
        log.warning("calibration cache %s unreadable (%s); recalibrating", cache_path, exc)
        return False
    return data.calibration_method == method_enum(method) and bool(list(data.keys()))


def calibrate_ranges(
    prepared: PreparedModel,
    reader: FrameReader,
    *,
    method: str,
    percentile: float,
    cache_path: Path,
    tmp_dir: Path,
) -> int:
    """Compute ranges of every float tensor and save them as ORT's calibration cache."""
    options: dict[str, Any] = {}
    if method == "percentile":
        # The calibrator defaults to symmetric ranges for percentile; U8 recipes want the real
        # one-sided range of post-ReLU tensors, symmetric recipes symmetrize later anyway.
        options = {"percentile": percentile, "symmetric": False}
    calibrator = create_calibrator(
        prepared.path,
        None,  # every float tensor: the cache then serves every recipe and exclusion set
        augmented_model_path=str(tmp_dir / "augmented.onnx"),
        calibrate_method=method_enum(method),
        extra_options=options,
    )
    try:
        reader.rewind()
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print() progress
            # Chunks bound memory: a calibrator holds every activation of the frames it is
            # fed until collect_data returns, then folds them into running ranges/histograms.
            chunks = -(-len(reader) // CALIB_CHUNK)
            for _ in range(chunks):
                calibrator.collect_data(Chunk(reader, CALIB_CHUNK))
            ranges = calibrator.compute_data()
    except Exception as exc:
        raise CalibrationError(
            f"calibration run failed: {type(exc).__name__}: {exc}",
            fix="check that the calibration frames match the model input (size, layout) and "
            "that the model runs in ONNX Runtime on this host",
            path=prepared.path,
        ) from exc
    finally:
        del calibrator
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_data(ranges, cache_path)  # tmp file + os.replace
    _fsync_file(cache_path)
    return len(list(ranges.keys()))
