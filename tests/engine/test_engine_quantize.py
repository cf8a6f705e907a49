"""Calibration sets, recipes, calibration cache, mixed precision, and real-model agreement."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.config.device import DeviceProfile
from agent.core.errors import CalibrationError, ModelError
from agent.engine.bundle import load_bundle
from agent.engine.calibration import CalibrationSet, load_calibration_set
from agent.engine.prepare import PreparedModel, prepare
from agent.engine.quantize.entry import quantize
from agent.engine.quantize.placement import float_tail
from agent.engine.quantize.probe import channel_error, find_outliers
from agent.engine.quantize.reader import FrameReader
from agent.engine.quantize.recipes import RECIPES
from tests.assets import CALIB, MODELS
from tests.helpers.engine_util import Tiny, noise_frames, tiny_convnet
from tests.helpers.onnx_models import make_bundle


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"images": x})[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, cpu_profile: DeviceProfile) -> Tiny:
    return tiny_convnet(tmp_path_factory.mktemp("tiny"), cpu_profile, frames=12, count=8, heldout=4)


# --------------------------------------------------------------------------- calibration set


def test_calibration_set_split_and_hash(tiny: Tiny, tmp_path: Path) -> None:
    bundle, _, calib = tiny
    assert len(calib.calib) == 8 and len(calib.heldout) == 4 and len(calib.heldout_frames) == 4
    assert calib.calib[0].shape == (1, 3, 32, 32) and calib.calib[0].dtype == np.float32
    assert calib.calib_files == tuple(f"f{i:03d}.png" for i in range(8))
    assert calib.heldout_files == tuple(f"f{i:03d}.png" for i in range(8, 12))
    assert not set(calib.calib_files) & set(calib.heldout_files)
    assert calib.heldout_frames[0].shape == (40, 48, 3)
    # same files -> same hash; one changed byte -> different hash
    d = noise_frames(tmp_path / "c", 12)
    first = load_calibration_set(d, bundle, (32, 32), 8, 4)
    assert first.sha256 == calib.sha256
    cv2.imwrite(str(d / "f003.png"), np.zeros((40, 48, 3), np.uint8))
    assert load_calibration_set(d, bundle, (32, 32), 8, 4).sha256 != calib.sha256


def test_calibration_npy_raw_and_preprocessed(tiny: Tiny, tmp_path: Path) -> None:
    bundle = tiny[0]
    d = tmp_path / "npy"
    d.mkdir()
    rng = np.random.default_rng(5)
    for i in range(5):
        np.save(d / f"a{i}.npy", rng.random((3, 32, 32), dtype=np.float32))
    raw = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.save(d / "z_raw.npy", raw)
    cs = load_calibration_set(d, bundle, (32, 32), 8, 1)
    assert len(cs.calib) == 5 and cs.calib[0].shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(cs.heldout_frames[0], raw)
    np.save(d / "a9.npy", rng.random((3, 16, 16), dtype=np.float32))
    with pytest.raises(CalibrationError, match=r"a9\.npy.*shape"):
        load_calibration_set(d, bundle, (32, 32), 8, 1)


def test_calibration_folder_errors(tiny: Tiny, tmp_path: Path) -> None:
    bundle = tiny[0]
    with pytest.raises(CalibrationError, match="does not exist") as info:
        load_calibration_set(tmp_path / "missing", bundle, (32, 32), 8, 4)
    assert "calib/README.md" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here")
    with pytest.raises(CalibrationError, match="no calibration frames") as info:
        load_calibration_set(empty, bundle, (32, 32), 8, 4)
    assert str(empty) in str(info.value) and "JPEGs from this device" in str(info.value)
    few = noise_frames(tmp_path / "few", 5)
    with pytest.raises(CalibrationError, match="only 5 frames") as info:
        load_calibration_set(few, bundle, (32, 32), 8, 4)
    assert "add at least" in str(info.value)
    bad = noise_frames(tmp_path / "bad", 10)
    (bad / "f005.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(
        CalibrationError, match=r"unreadable (calibration|frame) file f005\.png"
    ) as info:
        load_calibration_set(bad, bundle, (32, 32), 8, 2)
    assert str(bad) in str(info.value)


def test_frame_reader_batches_and_rewinds() -> None:
    tensors = [np.full((1, 3, 4, 4), i, np.float32) for i in range(5)]
    reader = FrameReader("x", tensors, batch=2)
    batches = list(iter(reader.get_next, None))
    assert len(batches) == len(reader) == 3
    assert batches[0]["x"].shape == (2, 3, 4, 4)
    assert batches[2]["x"][:, 0, 0, 0].tolist() == [4.0, 0.0]  # wraps around
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next() is not None and reader.calls == 4


# --------------------------------------------------------------------------- recipes


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_recipes_shape_the_graph(tiny: Tiny, tmp_path: Path) -> None:
    _, prepared, calib = tiny
    cache = tmp_path / "cache"
    graphs = {}
    for recipe in ("tensorrt", "onnxruntime"):
        q = quantize(
            prepared,
            calib,
            recipe=recipe,
            method="minmax",
            work_dir=tmp_path / recipe,
            cache_dir=cache,
            auto_exclude=False,
        )
        assert q.path.is_file() and q.recipe == recipe and q.calib_sha256 == calib.sha256
        graphs[recipe] = onnx.load(str(q.path))

    trt = graphs["tensorrt"]
    inits = _inits(trt)
    q_nodes = [n for n in trt.graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes
    for node in q_nodes:  # symmetric S8 activations
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    weight_dq = [
        n
        for n in trt.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].startswith(("w1", "w2"))
    ]
    assert len(weight_dq) == 2
    for node in weight_dq:  # per-channel symmetric S8 weights
        assert inits[node.input[0]].dtype == np.int8
        assert inits[node.input[1]].shape == (8,)
        assert any(a.name == "axis" and a.i == 0 for a in node.attribute)
        assert not inits[node.input[2]].any()
    # TensorRT fuses activations itself: Relu stays explicit
    assert [n.name for n in trt.graph.node if n.op_type == "Relu"] == ["relu1", "relu2"]

    ort_graph = graphs["onnxruntime"]
    inits = _inits(ort_graph)
    acts = [n for n in ort_graph.graph.node if n.op_type == "QuantizeLinear"]
    assert acts and all(inits[n.input[2]].dtype == np.uint8 for n in acts)
    assert any(inits[n.input[2]].item() != 128 for n in acts)  # asymmetric
    wdq = [
        n
        for n in ort_graph.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].startswith("w1")
    ]
    assert inits[wdq[0].input[0]].dtype == np.int8 and inits[wdq[0].input[1]].shape == (8,)
    assert set(RECIPES) == {"tensorrt", "onnxruntime"}


def test_calibration_cache_hit_skips_recalibration(tiny: Tiny, tmp_path: Path) -> None:
    _, prepared, calib = tiny
    cache = tmp_path / "cache"
    first = quantize(
        prepared,
        calib,
        recipe="onnxruntime",
        method="entropy",
        work_dir=tmp_path / "a",
        cache_dir=cache,
        auto_exclude=False,
    )
    assert first.report["calibration_cache_hit"] is False
    assert first.report["reader_batches"] == len(calib.calib)
    files = list((cache / "calib").glob("*.json"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    os.utime(files[0], ns=(mtime - 10**9, mtime - 10**9))
    stamp = files[0].stat().st_mtime_ns
    events: list[tuple[str, float, str]] = []
    again = quantize(
        prepared,
        calib,
        recipe="tensorrt",
        method="entropy",
        work_dir=tmp_path / "b",
        cache_dir=cache,
        auto_exclude=False,
        progress=lambda s, f, m: events.append((s, f, m)),
    )
    assert again.report["calibration_cache_hit"] is True
    assert again.report["reader_batches"] == 0
    assert files[0].stat().st_mtime_ns == stamp
    assert ("calibrate", 1.0) in [(s, f) for s, f, _ in events]
    # another method is another key
    other = quantize(
        prepared,
        calib,
        recipe="onnxruntime",
        method="minmax",
        work_dir=tmp_path / "c",
        cache_dir=cache,
        auto_exclude=False,
    )
    assert other.report["calibration_cache_hit"] is False
    assert len(list((cache / "calib").glob("*.json"))) == 2


def test_keep_float_node_stays_float(tiny: Tiny, tmp_path: Path) -> None:
    _, prepared, calib = tiny
    q = quantize(
        prepared,
        calib,
        recipe="tensorrt",
        method="minmax",
        keep_float=["conv2"],
        work_dir=tmp_path,
        cache_dir=tmp_path,
    )
    assert "conv2" in q.excluded_nodes
    graph = onnx.load(str(q.path)).graph
    conv2 = next(n for n in graph.node if n.name == "conv2")
    assert conv2.input[1] == "w2"  # the float weight, no DequantizeLinear in front
    assert _inits(onnx.load(str(q.path)))["w2"].dtype == np.float32
    conv1 = next(n for n in graph.node if n.name == "conv1")
    assert conv1.input[1].endswith("DequantizeLinear_Output")
    with pytest.raises(ModelError, match=r"conv_2.*conv2"):
        quantize(
            prepared,
            calib,
            recipe="tensorrt",
            method="minmax",
            keep_float=["conv_2"],
            work_dir=tmp_path,
            cache_dir=tmp_path,
        )


def test_unknown_recipe(tiny: Tiny, tmp_path: Path) -> None:
    _, prepared, calib = tiny
    with pytest.raises(ModelError, match="unknown quantization recipe"):
        quantize(prepared, calib, recipe="tflite", method="minmax", work_dir=tmp_path)


def yolo_like() -> onnx.ModelProto:
    """Box coordinates (0..~300 px) and sigmoid scores concatenated into one output: one
    shared INT8 scale wipes the scores out unless the Concat stays float."""
    rng = np.random.default_rng(7)

    def init(name: str, arr: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(arr.astype(np.float32), name)

    inits = [
        init("w0", rng.standard_normal((8, 3, 3, 3)) * 0.4),
        init("wb", np.abs(rng.standard_normal((4, 8, 1, 1))) * 0.3),
        init("wc", rng.standard_normal((4, 8, 1, 1)) * 0.5),
        init("stride", np.array(100.0)),
        numpy_helper.from_array(np.array([1, 8, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["images", "w0"], ["c0"], name="stem", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c0"], ["r0"], name="stem_act"),
        helper.make_node("Conv", ["r0", "wb"], ["b"], name="box_conv"),
        helper.make_node("Mul", ["b", "stride"], ["boxes"], name="box_scale"),
        helper.make_node("Conv", ["r0", "wc"], ["cl"], name="cls_conv"),
        helper.make_node("Sigmoid", ["cl"], ["scores"], name="cls_act"),
        helper.make_node("Concat", ["boxes", "scores"], ["cat"], name="head_concat", axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["output0"], name="head_reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 8, 256])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # opset 17's IR (ONNX 1.12); onnx's newer default is too new for ORT 1.23
    return model


def _yolo_setup(
    tmp_path: Path, profile: DeviceProfile
) -> tuple[PreparedModel, CalibrationSet, np.ndarray]:
    """The yolo-like bundle prepared and calibrated, and its float output on a held-out frame."""
    bundle = load_bundle(make_bundle(tmp_path, yolo_like()))
    prepared = prepare(bundle, profile, tmp_path / "w")
    calib = load_calibration_set(noise_frames(tmp_path / "calib", 10), bundle, (32, 32), 8, 2)
    return prepared, calib, _run(prepared.path, calib.heldout[0])


def test_float_tail_keeps_the_decode_head_float(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    assert float_tail(yolo_like()) == ["box_scale", "cls_act", "head_concat", "head_reshape"]
    prepared, calib, ref = _yolo_setup(tmp_path, cpu_profile)
    q = quantize(
        prepared,
        calib,
        recipe="onnxruntime",
        method="minmax",
        work_dir=tmp_path / "q",
        cache_dir=tmp_path,
        auto_exclude=False,
    )
    assert set(q.report["float_tail"]) <= set(q.excluded_nodes)
    out = _run(q.path, calib.heldout[0])
    assert channel_error(ref[:, 4:], out[:, 4:]) < 0.05  # scores survive: no shared scale


def test_auto_exclusion_keeps_the_destructive_concat_float(
    tmp_path: Path, cpu_profile: DeviceProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the float-tail rule the Concat of pixel boxes and 0..1 scores gets one scale and
    # the scores are destroyed; the per-node error pass must find it and keep it float.
    monkeypatch.setitem(
        RECIPES, "no-tail", dataclasses.replace(RECIPES["onnxruntime"], keep_tail_float=False)
    )
    prepared, calib, ref = _yolo_setup(tmp_path, cpu_profile)
    naive = quantize(
        prepared,
        calib,
        recipe="no-tail",
        method="minmax",
        work_dir=tmp_path / "n",
        cache_dir=tmp_path,
        auto_exclude=False,
    )
    out = _run(naive.path, calib.heldout[0])
    assert channel_error(ref[:, 4:], out[:, 4:]) > 0.2  # the scores are destroyed

    q = quantize(
        prepared,
        calib,
        recipe="no-tail",
        method="minmax",
        work_dir=tmp_path / "q",
        cache_dir=tmp_path,
    )
    assert "head_concat" in q.auto_excluded and "head_concat" in q.excluded_nodes
    assert q.report["node_error_before"]["head_concat"] > 0.2
    out = _run(q.path, calib.heldout[0])
    assert channel_error(ref[:, 4:], out[:, 4:]) < 0.05
    assert np.abs(out[:, 4:] - ref[:, 4:]).max() < 0.05


def test_find_outliers() -> None:
    errors = {f"n{i}": 1e-3 * (1 + i % 3) for i in range(20)}
    assert find_outliers(errors) == []
    errors["bad"] = 0.4
    errors["meh"] = 0.04  # above the spread but below the absolute floor
    assert find_outliers(errors) == ["bad"]


# --------------------------------------------------------------------------- real models


def test_real_classifier_int8_agrees_with_float(tmp_path: Path, cpu_profile: DeviceProfile) -> None:
    bundle = load_bundle(MODELS / "shapes-cls")
    prepared = prepare(bundle, cpu_profile, tmp_path / "w")
    calib = load_calibration_set(CALIB / "shapes-cls", bundle, (64, 64), 32, 32)
    assert len(calib.heldout) == 32 and len(calib.heldout_frames) == 32
    q = quantize(
        prepared,
        calib,
        recipe="onnxruntime",
        method="entropy",
        work_dir=tmp_path / "q",
        cache_dir=tmp_path,
    )
    x = np.concatenate(calib.heldout)
    ref = _run(prepared.path, x)
    int8 = _run(q.path, x)
    agreement = float(np.mean(ref.argmax(1) == int8.argmax(1)))
    assert agreement >= bundle.config.tolerance.top1_agreement_min
    assert q.report["qdq_nodes"]["QuantizeLinear"] > 5


def _anchor_agreement(float_path: Path, int8_path: Path, tensors: list[np.ndarray]) -> float:
    """Fraction of the float model's confident anchors (score > 0.5) that the INT8 model keeps:
    same class, score > 0.25, box within 10% of its size."""
    hits = total = 0
    for t in tensors:
        ref, out = _run(float_path, t)[0], _run(int8_path, t)[0]
        keep = ref[4:].max(0) > 0.5
        total += int(keep.sum())
        same_class = ref[4:, keep].argmax(0) == out[4:, keep].argmax(0)
        size = np.maximum(ref[2:4, keep].max(0), 8)
        close_box = np.abs(ref[:4, keep] - out[:4, keep]).max(0) < 0.1 * size
        hits += int(np.sum(same_class & close_box & (out[4:, keep].max(0) > 0.25)))
    assert total > 0
    return hits / total


def test_real_detector_int8_keeps_scores_and_boxes(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    bundle = load_bundle(MODELS / "shapes-det")
    prepared = prepare(bundle, cpu_profile, tmp_path / "w", static=True)
    calib = load_calibration_set(CALIB / "shapes-det", bundle, (256, 256), 16, 8)
    q = quantize(
        prepared,
        calib,
        recipe="onnxruntime",
        method="minmax",
        work_dir=tmp_path / "q",
        cache_dir=tmp_path,
    )
    assert _anchor_agreement(prepared.path, q.path, list(calib.heldout)) >= 0.95
    # TensorRT's symmetric S8 recipe would wipe out the sigmoid scores concatenated with pixel
    # boxes under one scale; the decode head is the float tail, so those Concats stay float.
    trt = quantize(
        prepared,
        calib,
        recipe="tensorrt",
        method="minmax",
        work_dir=tmp_path / "t",
        cache_dir=tmp_path,
    )
    model = onnx.load(str(prepared.path))
    producer = next(n for n in model.graph.node if "output0" in n.output)
    assert producer.name in trt.excluded_nodes
    assert _anchor_agreement(prepared.path, trt.path, list(calib.heldout)) >= 0.95


def test_frame_reader_strided_range() -> None:
    tensors = [np.full((1, 3, 4, 4), i, np.float32) for i in range(10)]
    reader = FrameReader("images", tensors, batch=2)
    reader.set_range(1, 3)  # batches 1 and 2: tensors 2..5
    fed = []
    while (feed := reader.get_next()) is not None:
        fed.append(feed["images"][:, 0, 0, 0].tolist())
    assert fed == [[2.0, 3.0], [4.0, 5.0]]
    reader.rewind()
    assert sum(1 for _ in iter(reader.get_next, None)) == 5
