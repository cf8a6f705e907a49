"""tests/helpers/scenes.py: deterministic calibration and held-out folders, and the scorers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.vision.synthetic import Shape
from tests.assets import YOLOV8N_BUNDLE
from tests.helpers import scenes


def test_heldout_is_byte_identical_across_runs(tmp_path: Path) -> None:
    a = scenes.write_heldout(tmp_path / "a", "detect", 5, (160, 120))
    b = scenes.write_heldout(tmp_path / "b", "detect", 5, (160, 120))
    assert [p.path.read_bytes() for p in a] == [p.path.read_bytes() for p in b]
    other = scenes.write_heldout(tmp_path / "c", "detect", 5, (160, 120), seed=7)
    assert a[0].path.read_bytes() != other[0].path.read_bytes()


def test_detect_heldout_layout_has_boxes_in_image_pixels(tmp_path: Path) -> None:
    samples = scenes.write_heldout(tmp_path, "detect", 6, (200, 100))
    labels = json.loads((tmp_path / "heldout" / "labels.json").read_text(encoding="utf-8"))
    assert sorted(labels) == [f"{i:03d}.jpg" for i in range(6)]
    boxes = [obj for objs in labels.values() for obj in objs]
    assert boxes and sum(len(s.shapes) for s in samples) == len(boxes)
    for obj in boxes:
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 100
        assert isinstance(obj["label"], int) and obj["name"]


def test_classify_heldout_has_label_indices_and_raw_has_no_labels(tmp_path: Path) -> None:
    samples = scenes.write_heldout(tmp_path / "cls", "classify", 8, (48, 32))
    labels = json.loads((tmp_path / "cls" / "heldout" / "labels.json").read_text(encoding="utf-8"))
    assert labels == {s.path.name: s.label for s in samples}
    assert all(0 <= v < 4 for v in labels.values())
    scenes.write_heldout(tmp_path / "raw", "raw", 2, (64, 64))
    assert sorted(p.name for p in (tmp_path / "raw" / "heldout").iterdir()) == [
        "000.jpg",
        "001.jpg",
    ]


def test_calib_folder_has_n_images(tmp_path: Path) -> None:
    paths = scenes.write_calib(tmp_path / "calib", "classify", 4, (32, 32))
    assert [p.name for p in paths] == ["000.jpg", "001.jpg", "002.jpg", "003.jpg"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_stage_bundle_copies_and_adds_heldout_and_calib(tmp_path: Path) -> None:
    staged = scenes.stage_bundle(YOLOV8N_BUNDLE, tmp_path, heldout_n=3, calib_n=2)
    assert (staged.bundle / "model.onnx").stat().st_size == (
        YOLOV8N_BUNDLE / "model.onnx"
    ).stat().st_size
    assert len(list((staged.bundle / "heldout").glob("*.jpg"))) == 3
    assert staged.calib_dir is not None and len(list(staged.calib_dir.glob("*.jpg"))) == 2
    assert not (YOLOV8N_BUNDLE / "heldout").exists()


def _pred(
    boxes: list[list[float]], scores: list[float], classes: list[int]
) -> scenes.ImagePredictions:
    return scenes.ImagePredictions(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(classes, np.int64),
    )


def test_map50_scores_perfect_missing_and_wrong_class_predictions() -> None:
    truth = [[Shape(0, (10, 10, 50, 50)), Shape(1, (60, 60, 90, 90))]]
    perfect = [_pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.8], [0, 1])]
    assert scenes.map50(perfect, truth) == pytest.approx(1.0)
    half = [_pred([[10, 10, 50, 50]], [0.9], [0])]
    assert scenes.map50(half, truth) == pytest.approx(0.5)
    wrong = [_pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.8], [1, 0])]
    assert scenes.map50(wrong, truth) == pytest.approx(0.0)


def test_map50_ranks_a_false_positive_above_a_true_one() -> None:
    truth = [[Shape(0, (10, 10, 50, 50))]]
    preds = [_pred([[100, 100, 120, 120], [10, 10, 50, 50]], [0.9, 0.5], [0, 0])]
    assert scenes.map50(preds, truth) == pytest.approx(0.5)


def test_box_mask_and_mask_iou() -> None:
    mask = scenes.box_mask([Shape(0, (2, 2, 6, 4))], (8, 8))
    assert mask.sum() == 8 and mask[2:4, 2:6].all()
    assert scenes.mask_iou(mask.astype(np.float32), mask) == 1.0
    assert scenes.mask_iou(np.zeros((8, 8)), mask) == 0.0
