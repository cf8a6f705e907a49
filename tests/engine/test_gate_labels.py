"""The bundle's labelled held-out set: layout, loading, hostile inputs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.core.errors import CalibrationError, ModelError
from agent.engine.bundle import load_bundle
from agent.engine.calibration import HeldoutFrames, load_calibration_set
from agent.engine.validate.labels import MAX_BOXES_PER_IMAGE, load_heldout_labels
from tests.assets import CLS_BUNDLE, CLS_CALIB, DET_BUNDLE, DET_CALIB

NAMES = ("circle", "square", "triangle", "cross")


def _images(directory: Path, count: int, size: tuple[int, int] = (60, 80)) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"{i:03d}.png"
        cv2.imwrite(str(directory / name), np.full((*size, 3), 40 * i % 255, np.uint8))
        names.append(name)
    return names


def _write(directory: Path, data: object) -> Path:
    path = directory / "labels.json"
    path.write_text(json.dumps(data))
    return path


def test_classify_labels_by_index_and_name(tmp_path: Path) -> None:
    names = _images(tmp_path, 3)
    _write(tmp_path, {names[0]: 2, names[1]: "cross", names[2]: 0})
    held = load_heldout_labels(tmp_path, "classify", NAMES)
    assert [p.name for p in held.files] == names and held.labels is not None
    assert [lab.class_id for lab in held.labels] == [2, 3, 0]


def test_detect_labels_boxes_and_extra_name(tmp_path: Path) -> None:
    names = _images(tmp_path, 2)
    _write(
        tmp_path,
        {
            names[0]: [
                {"label": 1, "name": "square", "box": [1, 2, 30, 40]},
                {"label": "circle", "box": [5.5, 6, 7, 8]},
            ],
            names[1]: [],
        },
    )
    held = load_heldout_labels(tmp_path, "detect", NAMES)
    assert held.labels is not None
    first = held.labels[0]
    assert first.classes is not None and first.classes.tolist() == [1, 0]
    assert first.boxes is not None and first.boxes.shape == (2, 4)
    assert held.labels[1].box_count == 0


@pytest.mark.parametrize(
    ("task", "entry", "match"),
    [
        ("classify", {"000.png": 7}, r"'000\.png'.*class index 7 is out of range"),
        ("classify", {"000.png": "hexagon"}, r"unknown label name 'hexagon'"),
        ("classify", {"000.png": True}, r"neither a class index nor a label name"),
        ("classify", {"missing.png": 0}, r"'missing\.png'.*does not exist"),
        ("classify", {"../000.png": 0}, r"plain image file names"),
        ("classify", {"notes.txt": 0}, r"not an image name"),
        ("detect", {"000.png": [{"label": 0, "box": [10, 10, 5, 20]}]}, r"x1 < x2 and y1 < y2"),
        ("detect", {"000.png": [{"label": 0, "box": [0, 0, 1e400, 3]}]}, r"not finite"),
        ("detect", {"000.png": [{"label": 0, "box": [0, 0, 3]}]}, r"list of 4 numbers"),
        ("detect", {"000.png": [{"label": 0, "bbox": [0, 0, 3, 3]}]}, r"box 0: expected"),
        ("detect", {"000.png": [{"label": 0, "box": [0, 0, 3, 3], "x": 1}]}, r"unknown keys"),
        ("detect", {"000.png": 3}, r"expected a list of boxes"),
        ("raw", {"000.png": 0}, r"classify or detect"),
    ],
)
def test_hostile_labels_name_file_entry_and_fix(
    tmp_path: Path, task: str, entry: dict[str, object], match: str
) -> None:
    _images(tmp_path, 1)
    (tmp_path / "notes.txt").write_text("x")
    # json.dumps writes 1e400 as Infinity, which Python's json reads back as inf
    _write(tmp_path, entry)
    with pytest.raises(ModelError, match=match) as info:
        load_heldout_labels(tmp_path, task, NAMES)
    assert info.value.path is not None and info.value.path.endswith("labels.json")
    assert info.value.fix


def test_bounds_and_malformed_json(tmp_path: Path) -> None:
    _images(tmp_path, 1)
    (tmp_path / "labels.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelError, match=r"not valid JSON|non-empty JSON object"):
        load_heldout_labels(tmp_path, "classify", NAMES)
    (tmp_path / "labels.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_heldout_labels(tmp_path, "classify", NAMES)
    _write(tmp_path, {})
    with pytest.raises(ModelError, match="non-empty"):
        load_heldout_labels(tmp_path, "classify", NAMES)
    many = [{"label": 0, "box": [0, 0, 1, 1]}] * (MAX_BOXES_PER_IMAGE + 1)
    _write(tmp_path, {"000.png": many})
    with pytest.raises(ModelError, match="at most"):
        load_heldout_labels(tmp_path, "detect", NAMES)


def _det_bundle(tmp_path: Path, labels: Mapping[str, object], count: int = 4) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(DET_BUNDLE, bundle, ignore=shutil.ignore_patterns("heldout"))
    _images(bundle / "heldout", count, size=(90, 160))
    _write(bundle / "heldout", labels)
    return bundle


def test_calibration_set_uses_the_bundle_heldout_lazily(tmp_path: Path) -> None:
    labels = {f"{i:03d}.png": [{"label": i % 4, "box": [10, 10, 50, 60]}] for i in range(4)}
    bundle = load_bundle(_det_bundle(tmp_path, labels))
    assert bundle.heldout_dir == bundle.directory / "heldout"
    cs = load_calibration_set(DET_CALIB, bundle, (256, 256), 64, 3)
    # every calibration-folder frame may calibrate; the gate takes the first 3 labelled images
    assert len(cs.calib) == 64 and cs.heldout_files == ("000.png", "001.png", "002.png")
    assert cs.heldout_labelled and isinstance(cs.heldout, HeldoutFrames)
    assert cs.heldout[0].shape == (1, 3, 256, 256) and cs.heldout_frames[1].shape == (90, 160, 3)
    assert cs.heldout[0] is not cs.heldout[0]  # read on demand, not kept
    frames = list(cs.heldout.gate_frames("images"))
    assert frames[2].label is not None and frames[2].label.classes is not None
    assert frames[2].label.classes.tolist() == [2] and frames[2].letterbox is not None


def test_boxes_outside_the_image_and_unreadable_images_are_refused(tmp_path: Path) -> None:
    labels = {"000.png": [{"label": 0, "box": [10, 10, 400, 60]}]}
    bundle = load_bundle(_det_bundle(tmp_path, labels, count=1))
    with pytest.raises(ModelError, match=r"'000\.png' box 0 .* outside the 160 x 90 image"):
        load_calibration_set(DET_CALIB, bundle, (256, 256), 64, 8)
    heldout = bundle.directory / "heldout"
    _write(heldout, {"000.png": []})
    (heldout / "000.png").write_bytes(b"not an image")
    with pytest.raises(CalibrationError, match=r"000\.png"):
        load_calibration_set(DET_CALIB, bundle, (256, 256), 64, 8)


def test_heldout_symlink_leaving_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(CLS_BUNDLE, bundle, ignore=shutil.ignore_patterns("heldout"))
    (bundle / "heldout").symlink_to(CLS_BUNDLE / "heldout")
    with pytest.raises(ModelError, match="not a folder inside it"):
        load_bundle(bundle)


def test_bundled_models_carry_their_labelled_heldout() -> None:
    for path, count in ((CLS_BUNDLE, 600), (DET_BUNDLE, 120)):
        bundle = load_bundle(path)
        assert bundle.heldout_dir is not None
        held = load_heldout_labels(bundle.heldout_dir, bundle.config.task, bundle.labels)
        assert len(held.files) == count


def test_heldout_without_labels_is_used_unlabelled(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(CLS_BUNDLE, bundle, ignore=shutil.ignore_patterns("heldout"))
    _images(bundle / "heldout", 5, size=(64, 64))
    cs = load_calibration_set(CLS_CALIB, load_bundle(bundle), (64, 64), 64, 600)
    assert len(cs.calib) == 64 and len(cs.heldout) == 5 and not cs.heldout_labelled
    assert isinstance(cs.heldout, HeldoutFrames) and cs.heldout.labels is None
