"""Vectorised decoding: softmax top-k, box IoU, class-aware NMS and YOLOv8 layout."""

from __future__ import annotations

import numpy as np
import pytest

from agent.vision.decode import Detections, box_iou, decode_yolov8, nms, softmax_topk


def test_softmax_topk_batch_and_single() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 0.0], [5.0, 1.0, 1.0, 6.0]], np.float32)
    ids, probs = softmax_topk(logits, 2)
    assert ids.tolist() == [[1, 2], [3, 0]]
    assert probs.shape == (2, 2)
    assert np.all(np.diff(probs, axis=1) <= 0)
    full = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(probs[0], full[[1, 2]], rtol=1e-6)
    one_ids, one_probs = softmax_topk(logits[1], 10)  # k clipped to C
    assert one_ids.tolist() == [3, 0, 1, 2] or one_ids.tolist() == [3, 0, 2, 1]
    assert one_probs.sum() == pytest.approx(1.0, abs=1e-6)


def test_softmax_is_stable_for_large_logits() -> None:
    ids, probs = softmax_topk(np.array([1000.0, 1001.0, -1000.0]), 1)
    assert ids.tolist() == [1]
    assert np.isfinite(probs).all()


def test_topk_of_probabilities_keeps_them_as_they_are() -> None:
    probs_in = np.array([[0.1, 0.7, 0.2, 0.0], [0.05, 0.05, 0.3, 0.6]], np.float32)
    ids, probs = softmax_topk(probs_in, 2, apply_softmax=False)
    assert ids.tolist() == [[1, 2], [3, 2]]
    np.testing.assert_array_equal(probs, np.array([[0.7, 0.2], [0.6, 0.3]], np.float32))
    _, doubled = softmax_topk(probs_in, 2)  # a second softmax flattens them
    assert doubled[0, 0] < 0.4
    assert probs_in[0, 1] == np.float32(0.7)  # the input is not modified


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0], rtol=1e-6)
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])


def test_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    keep = nms(boxes, scores, 0.5, class_ids=classes)
    assert keep.tolist() == [0, 2, 3]  # box 1 suppressed by 0; box 2 is another class
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]  # class-agnostic
    assert nms(boxes, scores, 0.5, class_ids=classes, max_det=2).tolist() == [0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0


def _yolo(boxes_cxcywh: list[list[float]], cls_scores: list[list[float]], anchors: int = 16):
    out = np.zeros((4 + len(cls_scores[0]), anchors), np.float32)
    for i, (box, sc) in enumerate(zip(boxes_cxcywh, cls_scores, strict=True)):
        out[:4, i] = box
        out[4:, i] = sc
    return out


def test_decode_yolov8_single_and_batch() -> None:
    one = _yolo(
        [[50, 50, 20, 20], [51, 50, 20, 20], [50, 50, 20, 20], [200, 100, 40, 10]],
        [[0.9, 0.1, 0.0], [0.8, 0.0, 0.0], [0.0, 0.0, 0.7], [0.1, 0.95, 0.0]],
    )
    (dets,) = decode_yolov8(one, conf=0.25, iou=0.5, max_det=10)
    assert isinstance(dets, Detections)
    assert dets.class_ids.tolist() == [1, 0, 2]
    np.testing.assert_allclose(dets.boxes[0], [180, 95, 220, 105])
    np.testing.assert_allclose(dets.scores, [0.95, 0.9, 0.7], rtol=1e-6)
    batch = np.stack([one, np.zeros_like(one)])
    results = decode_yolov8(batch, conf=0.25, iou=0.5, max_det=2)
    assert len(results) == 2
    assert len(results[0]) == 2
    assert len(results[1]) == 0
    js = results[0].to_json(("circle", "square", "triangle"))
    assert js[0]["label"] == "square"
    with pytest.raises(ValueError, match="YOLOv8"):
        decode_yolov8(np.zeros((2, 3, 4, 5)))


def test_decode_many_candidates_is_fast_enough() -> None:
    rng = np.random.default_rng(0)
    anchors = 8400
    out = np.zeros((1, 84, anchors), np.float32)
    out[0, :2] = rng.uniform(0, 640, (2, anchors))
    out[0, 2:4] = rng.uniform(5, 60, (2, anchors))
    out[0, 4:] = rng.uniform(0, 0.3, (80, anchors))
    (dets,) = decode_yolov8(out, conf=0.25, iou=0.45, max_det=300)
    assert 0 < len(dets) <= 300
    assert (dets.scores[:-1] >= dets.scores[1:]).all()
