"""Frames too small to mean anything are refused, by name, wherever an image is preprocessed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config.model import InputSpec
from agent.core.errors import CalibrationError, ModelError
from agent.engine.bundle import load_bundle
from agent.engine.calibration import load_calibration_set
from agent.vision.letterbox import (
    MIN_FRAME_SIDE,
    InvalidFrame,
    load_image_or_npy,
    preprocess,
    validate_frame,
)
from tests.helpers.onnx_models import convnet, make_bundle


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_minimum_is_documented_value() -> None:
    assert MIN_FRAME_SIDE == 8
    doc = (Path(__file__).parents[2] / "docs" / "model-yaml.md").read_text(encoding="utf-8")
    assert "8 × 8 pixels" in doc and "MIN_FRAME_SIDE" in doc


@pytest.mark.parametrize(("h", "w"), [(1, 1), (7, 640), (480, 7), (1, 1000)])
def test_too_small_frames_are_refused(h: int, w: int) -> None:
    with pytest.raises(InvalidFrame) as info:
        validate_frame(_noise(h, w), what="cam0 frame")
    err = info.value
    assert isinstance(err, ModelError) and err.exit_code == 2
    assert f"cam0 frame is {w} x {h} pixels" in err.message
    assert str(MIN_FRAME_SIDE) in err.message and err.fix and "full-size image" in err.fix
    with pytest.raises(InvalidFrame, match="too small"):
        preprocess(_noise(h, w), InputSpec(name="x", resize="stretch"), (32, 32))


@pytest.mark.parametrize(("h", "w"), [(8, 8), (8, 300), (300, 8)])
def test_smallest_accepted_frames_preprocess(h: int, w: int) -> None:
    frame = _noise(h, w)
    assert validate_frame(frame) is frame
    tensor, info = preprocess(frame, InputSpec(name="x"), (32, 32))
    assert tensor.shape == (1, 3, 32, 32) and (info.src_w, info.src_h) == (w, h)


def test_gray_one_pixel_image_file_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    assert cv2.imwrite(str(path), np.full((1, 1), 128, np.uint8))
    with pytest.raises(InvalidFrame) as info:
        load_image_or_npy(path)
    assert str(path) in str(info.value) and "1 x 1 pixels" in str(info.value)


def test_calibration_refuses_a_tiny_file_by_name(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path, convnet()))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(6):
        assert cv2.imwrite(str(calib / f"{i:03d}.png"), _noise(32, 32, seed=i))
    good = load_calibration_set(calib, bundle, (32, 32), count=4, heldout=2)
    assert len(good.calib) == 4 and len(good.heldout) == 2
    assert cv2.imwrite(str(calib / "002.png"), _noise(1, 1))  # replace one with a 1x1 image
    with pytest.raises(CalibrationError) as info:
        load_calibration_set(calib, bundle, (32, 32), count=4, heldout=2)
    text = str(info.value)
    assert "002.png" in text and "1 x 1 pixels" in text and "fix:" in text
    assert info.value.exit_code == 2
