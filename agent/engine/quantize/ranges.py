"""Activation ranges: computed once per (prepared model, calibration set, method) and cached.

Ranges are ORT's own, computed in bounded memory. ORT's histogram calibrators fetch every
activation of every frame they are fed and keep them until ``collect_data`` returns; here:

* min/max comes from ORT's ``MinMaxCalibrater``, whose augmented model reduces each tensor to
  its min and max inside the graph, fed frame by frame (it keeps two scalars per tensor);
* entropy / percentile histograms are streamed (:mod:`agent.engine.quantize.stream`): a second
  pass runs the model once per tensor group per frame and adds each frame's histogram over the
  *final* range ``[-T, T]`` (T = max |min|, |max| from the first pass), which sums to exactly the
  histogram ORT builds when fed every frame at once; ORT's ``HistogramCollector`` then turns
  the histograms into ranges with its own code.

The result equals ORT's calibrator fed all frames in one ``collect_data`` call (which is what
``quantize_static`` does). Ranges are cached in ``cache_dir/calib/<key>.json`` as ORT's own
calibration-cache JSON on ORT 1.27+, else as our own JSON (:mod:`agent.engine.quantize.ortcompat`;
the format is part of the key) and Q/DQ insertion reads them from there. The ranges do not
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

import numpy as np
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import (
    HistogramCollector,
    TensorsData,
    create_calibrator,
)

from agent.core.errors import CalibrationError
from agent.core.fsutil import fsync_dir, fsync_file
from agent.core.progress import ProgressFn, no_progress
from agent.engine.onnxgraph import load_model
from agent.engine.prepare import PreparedModel
from agent.engine.quantize.memory import MemoryPlan, activation_bytes, plan_groups
from agent.engine.quantize.ortcompat import cache_format, load_ranges, save_ranges
from agent.engine.quantize.reader import FrameReader
from agent.engine.quantize.stream import stream

__all__ = ["cached_ranges_ok", "calibrate_ranges", "calibration_cache_key", "method_enum"]

log = logging.getLogger(__name__)
_CACHE_VERSION = "1"


def calibration_cache_key(
    model_sha256: str, calib_sha256: str, method: str, percentile: float
) -> str:
    """Cache key of activation ranges: model + calibration set + method (+ percentile) + the
    file format this ONNX Runtime reads (ORT's JSON or ours: never one read as the other)."""
    extra = f"{percentile:.6f}" if method == "percentile" else ""
    text = f"v{_CACHE_VERSION}\0{model_sha256}\0{calib_sha256}\0{method}\0{extra}"
    text += f"\0{cache_format()}"
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
        data = load_ranges(cache_path)
    except Exception as exc:  # corrupt / truncated / foreign JSON
        log.warning("calibration cache %s unreadable (%s); recalibrating", cache_path, exc)
        return False
    return data.calibration_method == method_enum(method) and bool(list(data.keys()))


def _minmax_ranges(model_path: Path, reader: FrameReader, tmp_dir: Path) -> TensorsData:
    """ORT's min/max of every float tensor, fed frame by frame (two scalars kept per tensor
    and frame: the augmented model reduces in the graph)."""
    calibrator = create_calibrator(
        model_path,
        None,  # every float tensor: the cache then serves every recipe and exclusion set
        augmented_model_path=str(tmp_dir / "augmented.onnx"),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={},
    )
    try:
        reader.rewind()
        calibrator.collect_data(reader)
        return calibrator.compute_data()
    finally:
        del calibrator


def _histogram_options(method: str, percentile: float) -> dict[str, Any]:
    """``HistogramCollector`` arguments exactly as ``create_calibrator`` sets them (the
    percentile calibrator runs one-sided: U8 recipes want the real range of post-ReLU tensors,
    symmetric recipes symmetrize later anyway)."""
    if method == "entropy":
        return {"num_bins": 128, "num_quantized_bins": 128, "percentile": 99.999}
    return {"num_bins": 2048, "num_quantized_bins": 2048, "percentile": percentile}


class _Histograms:
    """Per tensor: counts over the fixed final range, summed frame by frame."""

    def __init__(self, minmax: TensorsData, num_bins: int) -> None:
        self.num_bins = num_bins
        self.bounds: dict[str, tuple[np.float32, np.float32, np.ndarray]] = {}
        for name, data in minmax.items():
            low, high = (np.asarray(v, np.float32).reshape(-1)[0] for v in data.range_value)
            threshold = np.array(max(abs(low), abs(high)), dtype=np.float32)
            self.bounds[name] = (low, high, threshold)
        self.counts: dict[str, np.ndarray] = {}
        self.edges: dict[str, np.ndarray] = {}

    def fold(self, tensors: Any) -> None:
        for name, value in tensors.items():
            threshold = self.bounds[name][2]
            flat = np.asarray(value).reshape(-1)
            # the 0-d float32 bounds exactly as ORT passes them (the bin edges' dtype follows)
            bounds: Any = (-threshold, threshold)
            hist, edges = np.histogram(flat, self.num_bins, range=bounds)
            if name in self.counts:
                self.counts[name] += hist
            else:
                self.counts[name], self.edges[name] = hist, edges

    def collector(self, method: str, options: dict[str, Any]) -> HistogramCollector:
        collector = HistogramCollector(method=method, symmetric=False, scenario="same", **options)
        collector.histogram_dict = {
            name: (self.counts[name], self.edges[name], low, high, threshold)
            for name, (low, high, threshold) in self.bounds.items()
            if name in self.counts
        }
        return collector


def _histogram_ranges(
    prepared: PreparedModel,
    reader: FrameReader,
    minmax: TensorsData,
    *,
    method: str,
    percentile: float,
    budget_mib: int,
    tmp_dir: Path,
) -> TensorsData:
    """Entropy / percentile ranges from histograms streamed group by group, frame by frame."""
    model = load_model(prepared.path)
    order = [o for node in model.graph.node for o in node.output]
    names = [n.name for n in model.graph.input if n.name in minmax]
    names += [n for n in order if n in minmax]
    first = next(iter(reader.feeds()))
    sizes = activation_bytes(model, names, next(iter(first.values())).shape)
    plan = MemoryPlan.of(budget_mib, model.ByteSize(), max(sizes.values(), default=0), copies=2)
    groups = plan_groups(names, sizes, plan.group_bytes)
    options = _histogram_options(method, percentile)
    histograms = _Histograms(minmax, options["num_bins"])
    stream(model, groups, reader.feeds, histograms.fold, tmp_dir)
    del model
    ranges = histograms.collector(method, options).compute_collection_result()
    return TensorsData(method_enum(method), ranges)


def calibrate_ranges(
    prepared: PreparedModel,
    reader: FrameReader,
    *,
    method: str,
    percentile: float,
    cache_path: Path,
    tmp_dir: Path,
    budget_mib: int,
    progress: ProgressFn = no_progress,
) -> int:
    """Compute ranges of every float tensor (bounded memory, see the module docstring) and
    save them in the calibration cache; returns how many tensors got a range."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the collectors print() progress
            ranges = _minmax_ranges(prepared.path, reader, tmp_dir)
            if method != "minmax":
                progress("calibrate", 0.5, f"streaming {method} histograms")
                ranges = _histogram_ranges(
                    prepared,
                    reader,
                    ranges,
                    method=method,
                    percentile=percentile,
                    budget_mib=budget_mib,
                    tmp_dir=tmp_dir,
                )
    except MemoryError:
        raise
    except Exception as exc:
        raise CalibrationError(
            f"calibration run failed: {type(exc).__name__}: {exc}",
            fix="check that the calibration frames match the model input (size, layout) and "
            "that the model runs in ONNX Runtime on this host",
            path=prepared.source,
        ) from exc
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    save_ranges(ranges, cache_path)  # tmp file + os.replace
    _fsync_file(cache_path)
    return len(list(ranges.keys()))
