"""The ONNX Runtime compatibility layer: the range cache in both formats (ORT 1.27+'s own JSON,
ours for older ORT) and Q/DQ insertion from cached ranges without ``calibration_cache_path``
(ORT 1.23), which must give the graph and the scales ``quantize_static`` gives.

On ORT 1.27+ the fallbacks are forced with ``monkeypatch``; on older ORT the native side of each
comparison is skipped (it does not exist there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import TensorData, TensorsData

from agent.config.device import DeviceProfile
from agent.engine.bundle import load_bundle
from agent.engine.calibration import load_calibration_set
from agent.engine.prepare import PreparedModel, prepare
from agent.engine.quantize import ortcompat
from agent.engine.quantize.ortcompat import load_ranges, save_ranges
from agent.engine.quantize.qdq import count_qdq, quantize_once
from agent.engine.quantize.ranges import cached_ranges_ok, calibrate_ranges, calibration_cache_key
from agent.engine.quantize.reader import FrameReader
from agent.engine.quantize.recipes import RECIPES
from tests.assets import CLS_BUNDLE, CLS_CALIB

_NATIVE = ortcompat.NATIVE_CACHE and ortcompat.NATIVE_QUANTIZE
needs_native = pytest.mark.skipif(
    not _NATIVE, reason="this ONNX Runtime has no calibration-cache API (added in 1.27)"
)


def _force_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ortcompat, "NATIVE_CACHE", False)
    monkeypatch.setattr(ortcompat, "NATIVE_QUANTIZE", False)


def _orts_kinds_of_ranges() -> TensorsData:
    """One tensor per shape of value ORT's calibrators produce (ORT 1.23 ``calibrate.py``):
    MinMax 0-d float32 arrays; entropy/percentile 4-tuples (lowest, highest, counts, edges or
    numpy int scalars); distribution ``TensorData`` with avg/std/hist/hist_edges."""
    rng = np.random.default_rng(7)
    edges = np.linspace(-2, 2, 9, dtype=np.float32)
    counts = rng.integers(0, 100, 8).astype(np.int64)
    data: dict[str, Any] = {
        "minmax": TensorData(lowest=np.array(-1.5, np.float32), highest=np.array(3.25, np.float32)),
        "entropy": (np.array(-0.75, np.float32), np.array(0.75, np.float32), counts, edges),
        "percentile": (
            np.array(-2.0, np.float32),
            np.array(2.0, np.float32),
            np.int64(5),
            np.int64(9),
        ),
        "distribution": TensorData(
            avg=np.array(0.125, np.float32),
            std=np.array(0.5, np.float32),
            hist=counts,
            hist_edges=edges,
            lowest=edges.min(),
            highest=edges.max(),
        ),
    }
    return TensorsData(CalibrationMethod.Percentile, data)


def _fields(data: TensorData) -> dict[str, Any]:
    names = ("lowest", "highest", "hist", "hist_edges", "bins", "avg", "std")
    return {k: getattr(data, k) for k in names if hasattr(data, k)}


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False])
def test_range_cache_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    if not native:
        _force_fallback(monkeypatch)
    ranges = _orts_kinds_of_ranges()
    path = tmp_path / "calib" / "ranges.json"
    save_ranges(ranges, path)
    assert [p.name for p in path.parent.iterdir()] == ["ranges.json"]  # no temporary left
    got = load_ranges(path)
    assert got.calibration_method == CalibrationMethod.Percentile
    assert set(got.keys()) == set(ranges.keys())
    for name, data in ranges.items():
        want, have = _fields(data), _fields(got[name])
        assert set(have) == set(want), name
        for key, value in want.items():
            np.testing.assert_array_equal(np.asarray(have[key]), np.asarray(value), err_msg=key)
            if not native:  # ours keeps the exact numpy type, which ORT's JSON does not
                assert type(have[key]) is type(value), (name, key)
                assert np.asarray(have[key]).dtype == np.asarray(value).dtype, (name, key)
    assert cached_ranges_ok(path, "percentile")
    assert not cached_ranges_ok(path, "minmax")


@needs_native
def test_formats_never_read_each_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = _orts_kinds_of_ranges()
    ort_file, own_file = tmp_path / "ort.json", tmp_path / "own.json"
    save_ranges(ranges, ort_file)
    ort_key = calibration_cache_key("m", "c", "percentile", 99.9)
    _force_fallback(monkeypatch)
    save_ranges(ranges, own_file)
    own_key = calibration_cache_key("m", "c", "percentile", 99.9)
    assert own_key != ort_key
    assert cached_ranges_ok(own_file, "percentile")
    assert not cached_ranges_ok(ort_file, "percentile")  # ORT's file, read as ours
    monkeypatch.setattr(ortcompat, "NATIVE_CACHE", True)
    assert not cached_ranges_ok(own_file, "percentile")  # ours, read by ORT


def test_unknown_fields_and_foreign_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force_fallback(monkeypatch)
    path = tmp_path / "r.json"
    path.write_text(
        '{"format": "edge-agent-tensors-data", "version": 1, "calibration_method": "MinMax",'
        ' "tensors": {"t": {"scale": {"kind": "python", "data": 1.0}}}}'
    )
    with pytest.raises(ValueError, match="unknown fields"):
        load_ranges(path)
    path.write_text('{"CLS": "TensorsData", "data": {}}')
    with pytest.raises(ValueError, match="edge-agent-tensors-data"):
        load_ranges(path)


# --------------------------------------------------------------------------- Q/DQ insertion


@pytest.fixture(scope="module")
def cls_ranges(
    tmp_path_factory: pytest.TempPathFactory, cpu_profile: DeviceProfile
) -> tuple[PreparedModel, FrameReader, TensorsData, Path]:
    """shapes-cls prepared, its entropy ranges computed once (in this ORT's cache format)."""
    root = tmp_path_factory.mktemp("compat")
    bundle = load_bundle(CLS_BUNDLE)
    prepared = prepare(bundle, cpu_profile, root / "w")
    calib = load_calibration_set(CLS_CALIB, bundle, (64, 64), 16, 4)
    reader = FrameReader(prepared.inputs[0].name, calib.calib)
    cache = root / "ranges.json"
    calibrate_ranges(
        prepared,
        reader,
        method="entropy",
        percentile=99.999,
        cache_path=cache,
        tmp_dir=root,
        budget_mib=256,
    )
    return prepared, reader, load_ranges(cache), root


def _qdq_params(path: Path) -> dict[str, np.ndarray]:
    """Every Q/DQ node's scale and zero point, by initializer name."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    params: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for name in node.input[1:]:
                params[name] = inits[name]
    return params


def _quantize(
    cls: tuple[PreparedModel, FrameReader, TensorsData, Path], recipe: str, tag: str
) -> Path:
    prepared, reader, ranges, root = cls
    cache = root / f"{tag}.json"
    save_ranges(ranges, cache)  # in the format the forced (or real) path reads
    out = root / f"{recipe}.{tag}.onnx"
    quantize_once(
        prepared,
        out,
        reader,
        recipe=RECIPES[recipe],
        method="entropy",
        exclude=["/fc/Gemm"] if recipe == "onnxruntime" else [],
        cache_path=cache,
    )
    return out


@needs_native
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_fallback_quantizes_as_quantize_static(
    cls_ranges: tuple[PreparedModel, FrameReader, TensorsData, Path],
    monkeypatch: pytest.MonkeyPatch,
    recipe: str,
) -> None:
    native = _quantize(cls_ranges, recipe, "native")
    _force_fallback(monkeypatch)
    fallback = _quantize(cls_ranges, recipe, "fallback")
    counts = count_qdq(native)
    assert counts["QuantizeLinear"] > 5 and counts["DequantizeLinear"] > 5
    assert count_qdq(fallback) == counts
    mine, theirs = _qdq_params(fallback), _qdq_params(native)
    assert set(mine) == set(theirs)
    for name, value in theirs.items():
        assert mine[name].dtype == value.dtype, name
        np.testing.assert_allclose(mine[name], value, rtol=1e-6, err_msg=name)


def test_fallback_quantizes_and_checks_the_method(
    cls_ranges: tuple[PreparedModel, FrameReader, TensorsData, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback on its own (the only path on ORT < 1.27): a Q/DQ graph from the cache, and
    a cache of another method refused as ORT 1.27+ refuses it."""
    _force_fallback(monkeypatch)
    out = _quantize(cls_ranges, "tensorrt", "alone")
    assert count_qdq(out)["QuantizeLinear"] > 5
    prepared, reader, _, root = cls_ranges
    with pytest.raises(ValueError, match="Entropy"):
        quantize_once(
            prepared,
            root / "wrong.onnx",
            reader,
            recipe=RECIPES["tensorrt"],
            method="minmax",
            exclude=[],
            cache_path=root / "alone.json",
        )
