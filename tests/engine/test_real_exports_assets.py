"""The real-export fixture bundles (tests/fixtures/models): they load, run in ONNX Runtime, have
the graph properties they exist for, and the float model reaches its recorded held-out metric
when scored through the agent's own preprocessing and decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agent.engine.bundle import ModelBundle, load_bundle
from agent.vision.decode import decode_yolov8
from agent.vision.letterbox import load_image_or_npy, preprocess
from tests.assets import (
    ANON_DIMS_BUNDLE,
    DBNET_BUNDLE,
    MOBILENETV3_BUNDLE,
    REAL_MODELS,
    REPO,
    RESNET_BUNDLE,
    YOLO11N_BUNDLE,
    YOLOV8N_BUNDLE,
)
from tests.helpers import scenes

BUNDLES = [
    YOLOV8N_BUNDLE,
    YOLO11N_BUNDLE,
    MOBILENETV3_BUNDLE,
    RESNET_BUNDLE,
    DBNET_BUNDLE,
    ANON_DIMS_BUNDLE,
]
IDS = [b.name for b in BUNDLES]
MARGIN = 0.02  # JPEG decoding and ORT versions may differ slightly from the recording machine


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _input_dims(path: Path) -> list[onnx.TensorShapeProto.Dimension]:
    return list(onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim)


def _op_count(path: Path, op: str) -> int:
    return sum(n.op_type == op for n in onnx.load(str(path)).graph.node)


def _run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


@pytest.mark.parametrize("src", BUNDLES, ids=IDS)
def test_bundle_loads_runs_and_documents_itself(src: Path) -> None:
    bundle = load_bundle(src)
    assert bundle.config.name == src.name
    assert bundle.onnx_path.stat().st_size < 16 * 1024 * 1024
    assert (src / "README.md").is_file()
    note = (src / "LICENSE-NOTE").read_text(encoding="utf-8")
    if src.name.startswith("yolo"):
        assert "AGPL-3.0" in note and "TEST ASSET ONLY" in note
    size = bundle.config.input.size
    assert size is not None
    out = _run(_session(bundle.onnx_path), np.zeros((1, 3, *size), np.float32))
    assert np.isfinite(out).all()
    if bundle.config.task == "classify":
        assert out.shape == (1, len(bundle.labels))


def test_ultralytics_exports_are_not_packaged() -> None:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'include = ["agent*"]' in text
    assert REAL_MODELS.is_relative_to(REPO / "tests")


def test_yolov8n_is_dynamic_in_batch_height_and_width() -> None:
    dims = _input_dims(YOLOV8N_BUNDLE / "model.onnx")
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert dims[1].dim_value == 3
    out = _run(_session(YOLOV8N_BUNDLE / "model.onnx"), np.zeros((2, 3, 256, 416), np.float32))
    assert out.shape == (2, 8, (32 * 52 + 16 * 26 + 8 * 13))


def test_yolo11n_is_static_320() -> None:
    dims = _input_dims(YOLO11N_BUNDLE / "model.onnx")
    assert [d.dim_value for d in dims] == [1, 3, 320, 320]
    assert all(not d.dim_param for d in dims)
    sess = _session(YOLO11N_BUNDLE / "model.onnx")
    assert _run(sess, np.zeros((1, 3, 320, 320), np.float32)).shape == (1, 8, 2100)
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        _run(sess, np.zeros((1, 3, 256, 256), np.float32))


@pytest.mark.parametrize("src", [MOBILENETV3_BUNDLE, RESNET_BUNDLE], ids=["mobilenetv3", "resnet"])
def test_classifier_shares_one_dim_name_for_h_and_w_and_keeps_batchnorm(src: Path) -> None:
    dims = _input_dims(src / "model.onnx")
    assert [d.dim_param for d in dims] == ["N", "", "?", "?"]
    assert _op_count(src / "model.onnx", "BatchNormalization") >= 16
    size = load_bundle(src).config.input.size
    assert size is not None and size[0] != size[1]  # a non-square pin shows a by-name pinning bug
    out = _run(_session(src / "model.onnx"), np.zeros((3, 3, *size), np.float32))
    assert out.shape == (3, 4)


def test_anon_dims_has_minus_one_batch_and_anonymous_h_w() -> None:
    dims = _input_dims(ANON_DIMS_BUNDLE / "model.onnx")
    assert dims[0].HasField("dim_value") and dims[0].dim_value == -1
    for d in dims[2:]:
        assert not d.HasField("dim_value") and not d.HasField("dim_param")
    out = _run(_session(ANON_DIMS_BUNDLE / "model.onnx"), np.zeros((3, 3, 64, 80), np.float32))
    assert out.shape == (3, 4)


def test_dbnet_outputs_a_dense_640_probability_map() -> None:
    dims = _input_dims(DBNET_BUNDLE / "model.onnx")
    assert [d.dim_value for d in dims[1:]] == [3, 640, 640] and dims[0].dim_param == "N"
    assert _op_count(DBNET_BUNDLE / "model.onnx", "BatchNormalization") > 0
    out = _run(_session(DBNET_BUNDLE / "model.onnx"), np.zeros((1, 3, 640, 640), np.float32))
    assert out.shape == (1, 1, 640, 640)
    assert out.min() >= 0.0 and out.max() <= 1.0


def _score(bundle: ModelBundle, samples: list[scenes.Sample]) -> float:
    """The float metric through the agent's own preprocess (model.yaml) and YOLOv8 decoding."""
    sess = _session(bundle.onnx_path)
    spec, size = bundle.config.input, bundle.config.input.size
    assert size is not None
    preds, hits, ious = [], 0, []
    for s in samples:
        x, info = preprocess(load_image_or_npy(s.path), spec, size)
        out = _run(sess, x)
        if bundle.config.task == "detect":
            det = decode_yolov8(out, conf=0.001, iou=0.6, max_det=100)[0]
            boxes = info.to_source(det.boxes, clip=True)
            preds.append(scenes.ImagePredictions(boxes, det.scores, det.class_ids.astype(np.int64)))
        elif bundle.config.task == "classify":
            hits += int(np.argmax(out[0]) == s.label)
        else:
            h, w = out.shape[-2:]
            ious.append(scenes.mask_iou(out[0, 0], scenes.box_mask(s.shapes, (w, h))))
    if bundle.config.task == "detect":
        return scenes.map50(preds, [s.shapes for s in samples], len(bundle.labels))
    if bundle.config.task == "classify":
        return hits / len(samples)
    return float(np.mean(ious))


@pytest.mark.parametrize("src", BUNDLES, ids=IDS)
def test_float_model_reaches_its_recorded_heldout_metric(src: Path, tmp_path: Path) -> None:
    staged = scenes.stage_bundle(src, tmp_path)
    bundle = load_bundle(staged.bundle)
    labels_json = staged.bundle / "heldout" / "labels.json"
    assert labels_json.is_file() == (bundle.config.task != "raw")
    if labels_json.is_file():
        assert len(json.loads(labels_json.read_text(encoding="utf-8"))) == staged.recipe.n
    value = _score(bundle, staged.samples)
    assert value >= staged.recipe.value - MARGIN, (src.name, staged.recipe.metric, value)
    floor = {"mAP50": 0.9, "top1": 0.9, "mask_iou": 0.8}[staged.recipe.metric]
    assert value >= floor
