"""agent/pipeline/postprocess.py: top-k, YOLOv8 decode + class-aware NMS mapped back through the
letterbox, raw summaries, timings; and the bundled detector on a held-out image."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from agent.config.model import ModelBundleConfig
from agent.pipeline.frames import Frame
from agent.pipeline.postprocess import Postprocessor
from agent.vision.decode import box_iou
from agent.vision.letterbox import LetterboxInfo, load_image_or_npy, preprocess
from tests.assets import DATA

LABELS = ["circle", "square", "triangle", "cross"]


def _config(task: str, decode: str, **output: Any) -> ModelBundleConfig:
    return ModelBundleConfig.model_validate(
        {
            "name": "m",
            "version": 1,
            "task": task,
            "input": {"name": "images", "size": [640, 640]},
            "output": {"decode": decode, **output},
            "labels": LABELS,
        }
    )


def _frames(n: int, h: int = 720, w: int = 1280) -> list[Frame]:
    now = time.monotonic()
    return [
        Frame("cam0", 10 + i, np.zeros((h, w, 3), np.uint8), now - 0.05, 1_700_000_000.0 + i)
        for i in range(n)
    ]


LB_720P = LetterboxInfo(scale=0.5, pad_x=0.0, pad_y=140.0, src_w=1280, src_h=720)


# ------------------------------------------------------------------------------------ classify


def test_topk_labels_and_order_per_frame() -> None:
    post = Postprocessor(_config("classify", "softmax_topk", top_k=3))
    logits = np.array(
        [[0.1, 3.0, -1.0, 2.0], [5.0, 0.0, 1.0, 4.0], [0, 0, 0, 0]],  # 3rd row: padded batch
        dtype=np.float32,
    )
    results = post.process(_frames(2), {"logits": logits}, [LB_720P, LB_720P])
    assert [[lbl for lbl, _ in r.top_k] for r in results] == [
        ["square", "cross", "circle"],
        ["circle", "cross", "triangle"],
    ]
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose([p for _, p in results[0].top_k], expected[[1, 3, 0]], rtol=1e-5)
    assert results[0].task == "classify" and results[0].model == "m"
    assert (results[1].source, results[1].index) == ("cam0", 11)


def test_topk_accepts_nchw_logits_and_unlabelled_classes() -> None:
    post = Postprocessor(_config("classify", "softmax_topk", top_k=2), labels=["a", "b"])
    logits = np.array([0.0, 1.0, 9.0], np.float32).reshape(1, 3, 1, 1)
    (result,) = post.process(_frames(1), {"out": logits}, [LB_720P])
    assert [lbl for lbl, _ in result.top_k] == ["2", "b"]


# -------------------------------------------------------------------------------------- detect


def _yolo_output(anchors: list[tuple[float, float, float, float, int, float]], classes: int = 4):
    """[1, 4 + C, A] with one anchor per (cx, cy, w, h, class, score), others zero."""
    out = np.zeros((1, 4 + classes, max(len(anchors), 1) + 3), np.float32)
    for a, (cx, cy, w, h, cls, score) in enumerate(anchors):
        out[0, :4, a] = (cx, cy, w, h)
        out[0, 4 + cls, a] = score
    return out


def test_yolov8_boxes_map_back_through_the_letterbox_exactly() -> None:
    post = Postprocessor(_config("detect", "yolov8", conf_threshold=0.25, iou_threshold=0.5))
    # Source boxes (1280x720) → input (640x640, scale 0.5, 140 px top pad) → cx, cy, w, h.
    sources = [(100.0, 200.0, 300.0, 400.0, 1, 0.9), (640.0, 0.0, 1280.0, 720.0, 3, 0.6)]
    anchors = []
    for x1, y1, x2, y2, cls, score in sources:
        ix1, iy1, ix2, iy2 = x1 * 0.5, y1 * 0.5 + 140, x2 * 0.5, y2 * 0.5 + 140
        anchors.append(((ix1 + ix2) / 2, (iy1 + iy2) / 2, ix2 - ix1, iy2 - iy1, cls, score))
    anchors.append((320.0, 320.0, 10.0, 10.0, 0, 0.2))  # below the threshold
    (result,) = post.process(_frames(1), {"output0": _yolo_output(anchors)}, [LB_720P])
    assert [(d.label, d.class_id) for d in result.detections] == [("square", 1), ("cross", 3)]
    assert [d.box for d in result.detections] == [s[:4] for s in sources]
    assert [d.score for d in result.detections] == pytest.approx([0.9, 0.6])


def test_class_aware_nms_keeps_overlaps_of_different_classes() -> None:
    post = Postprocessor(_config("detect", "yolov8", iou_threshold=0.5))
    anchors = [
        (100.0, 100.0, 50.0, 50.0, 0, 0.9),
        (102.0, 101.0, 50.0, 50.0, 0, 0.8),  # same class, IoU ~0.9: suppressed
        (101.0, 100.0, 50.0, 50.0, 2, 0.7),  # other class, same place: kept
    ]
    identity = LetterboxInfo(1.0, 0.0, 0.0, 640, 640)
    (result,) = post.process(_frames(1, 640, 640), {"o": _yolo_output(anchors)}, [identity])
    assert [(d.class_id, round(d.score, 2)) for d in result.detections] == [(0, 0.9), (2, 0.7)]


def test_detect_batch_uses_each_frames_letterbox() -> None:
    post = Postprocessor(_config("detect", "yolov8"))
    out = np.concatenate([_yolo_output([(320.0, 320.0, 100.0, 100.0, 1, 0.9)])] * 2)
    other = LetterboxInfo(2.0, 10.0, 0.0, 300, 320)
    results = post.process(_frames(2), {"output0": out}, [LB_720P, other])
    assert results[0].detections[0].box == (540.0, 260.0, 740.0, 460.0)
    assert results[1].detections[0].box == (130.0, 135.0, 180.0, 185.0)


def test_real_detector_on_a_heldout_image_matches_its_labels() -> None:
    ort = pytest.importorskip("onnxruntime")
    from agent.engine.bundle import load_bundle

    bundle = load_bundle(DATA / "models" / "shapes-det")
    image_path = DATA / "heldout" / "shapes-det" / "000.jpg"
    truth = json.loads((image_path.parent / "labels.json").read_text())[image_path.name]
    image = load_image_or_npy(image_path)
    size = bundle.config.input.size
    assert size is not None
    tensor, info = preprocess(image, bundle.config.input, size)
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    outputs = dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {"images": tensor}),
            strict=True,
        )
    )
    frame = Frame("heldout", 0, image, time.monotonic(), time.time())
    (result,) = Postprocessor(bundle.config, bundle.labels).process([frame], outputs, [info])
    assert len(result.detections) == len(truth)
    for obj in truth:
        same = [d for d in result.detections if d.class_id == obj["label"]]
        assert same, f"no {obj['name']} detected"
        iou = box_iou([obj["box"]], [d.box for d in same])[0]
        assert float(iou.max()) >= 0.5, (obj, [d.box for d in same])
        assert same[int(iou.argmax())].label == obj["name"]


# ----------------------------------------------------------------------------- raw and timings


def test_raw_summary_per_frame() -> None:
    post = Postprocessor(_config("raw", "raw"))
    emb = np.stack([np.arange(8, dtype=np.float32), -np.ones(8, np.float32)])
    results = post.process(_frames(2), {"embedding": emb}, [LB_720P, LB_720P])
    first = results[0].raw
    assert first is not None
    stats = first["outputs"]["embedding"]
    assert stats["shape"] == [8] and stats["dtype"] == "float32"
    assert (stats["min"], stats["max"], stats["mean"], stats["argmax"]) == (0.0, 7.0, 3.5, 7)
    second = results[1].raw
    assert second is not None and second["outputs"]["embedding"]["std"] == 0.0


def test_timings_are_kept_and_completed() -> None:
    post = Postprocessor(_config("classify", "softmax_topk"))
    logits = np.zeros((2, 4), np.float32)
    frames = _frames(2)
    per_frame = [{"queue": 1.0, "preprocess": 2.0, "infer": 3.0}, {"queue": 4.0}]
    results = post.process(frames, {"l": logits}, [LB_720P] * 2, per_frame)
    assert results[0].timings_ms["infer"] == 3.0 and results[1].timings_ms["queue"] == 4.0
    for r, f in zip(results, frames, strict=True):
        assert r.timings_ms["postprocess"] >= 0.0
        assert r.timings_ms["total"] >= 50.0  # captured 50 ms ago
        assert r.wall_time == f.wall_time
    shared = post.process(frames, {"l": logits}, [LB_720P] * 2, {"infer": 7.0, "total": 9.0})
    assert [r.timings_ms["infer"] for r in shared] == [7.0, 7.0]
    assert shared[0].timings_ms["total"] == 9.0
    assert json.dumps(shared[0].to_json())


def test_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="cannot use"):
        Postprocessor(_config("classify", "yolov8"))
    post = Postprocessor(_config("detect", "yolov8", name="output0"))
    with pytest.raises(KeyError, match=r"output\.name"):
        post.process(_frames(1), {"other": np.zeros((1, 8, 4), np.float32)}, [LB_720P])
    with pytest.raises(ValueError, match="batch of at least 2"):
        post.process(_frames(2), {"output0": np.zeros((1, 8, 4), np.float32)}, [LB_720P] * 2)
    with pytest.raises(ValueError, match="letterbox"):
        post.process(_frames(2), {"output0": np.zeros((2, 8, 4), np.float32)}, [LB_720P])
    assert post.process([], {"output0": np.zeros((1, 8, 4), np.float32)}, []) == []
