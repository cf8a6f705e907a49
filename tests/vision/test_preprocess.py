"""CPU reference preprocessing: letterbox geometry, box mapping, colour/layout, frame checks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config.model import InputSpec
from agent.core.errors import ModelError
from agent.vision.letterbox import (
    InvalidFrame,
    LetterboxInfo,
    load_image_or_npy,
    preprocess,
    validate_frame,
)


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ultralytics_letterbox(img: np.ndarray, new: tuple[int, int], pad: int) -> np.ndarray:
    """Ultralytics' LetterBox (auto=False, scaleup=True, center=True), written out here."""
    shape = img.shape[:2]
    r = min(new[0] / shape[0], new[1] / shape[1])
    new_unpad = round(shape[1] * r), round(shape[0] * r)
    dw, dh = (new[1] - new_unpad[0]) / 2, (new[0] - new_unpad[1]) / 2
    if shape[::-1] != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad,) * 3)


@pytest.mark.parametrize(("h", "w"), [(480, 640), (640, 480), (256, 256), (100, 333), (37, 41)])
def test_letterbox_matches_ultralytics(h: int, w: int) -> None:
    frame = _frame(h, w)
    spec = InputSpec(name="images")
    tensor, info = preprocess(frame, spec, (256, 256))
    assert tensor.shape == (1, 3, 256, 256)
    assert tensor.dtype == np.float32
    expected = _ultralytics_letterbox(frame, (256, 256), 114)[:, :, ::-1]  # BGR -> RGB
    expected = expected.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    np.testing.assert_allclose(tensor, expected, atol=1e-6)
    assert info.src_w == w and info.src_h == h
    assert info.scale == pytest.approx(min(256 / h, 256 / w))


def test_letterbox_geometry_and_pad_value() -> None:
    frame = np.full((480, 640, 3), 200, np.uint8)
    tensor, info = preprocess(frame, InputSpec(name="x", pad_value=114), (256, 256))
    assert info.scale == pytest.approx(0.4)
    assert (info.pad_x, info.pad_y) == (0.0, 32.0)
    # rows above/below the image are the pad grey, the image rows are the frame value
    assert np.allclose(tensor[0, :, :32, :], 114 / 255)
    assert np.allclose(tensor[0, :, 32 + 192 :, :], 114 / 255)
    assert np.allclose(tensor[0, :, 32 : 32 + 192, :], 200 / 255)


def test_box_mapping_round_trip_and_clipping() -> None:
    info = LetterboxInfo(scale=0.4, pad_x=0.0, pad_y=32.0, src_w=640, src_h=480)
    src = np.array([[10, 20, 110, 220], [300, 0, 640, 480]], np.float32)
    back = info.to_source(info.to_input(src))
    np.testing.assert_allclose(back, src, atol=1e-4)
    # a box running into the pad is clipped to the frame
    outside = info.to_source([[-5, 0, 200, 300]])
    np.testing.assert_allclose(outside, [[0, 0, 500, 480]], atol=1e-3)
    unclipped = info.to_source([[-5, 0, 200, 300]], clip=False)
    np.testing.assert_allclose(unclipped, [[-12.5, -80, 500, 670]], atol=1e-3)


def test_box_mapping_of_a_drawn_rectangle() -> None:
    frame = np.zeros((300, 500, 3), np.uint8)
    cv2.rectangle(frame, (100, 50), (199, 149), (255, 255, 255), -1)
    tensor, info = preprocess(frame, InputSpec(name="x"), (256, 256))
    mask = tensor[0, 0] > 0.9
    ys, xs = np.nonzero(mask)
    box_in = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    box_src = info.to_source([box_in])[0]
    np.testing.assert_allclose(box_src, [100, 50, 200, 150], atol=2.5)


def test_stretch_maps_axes_independently() -> None:
    frame = _frame(100, 200)
    tensor, info = preprocess(frame, InputSpec(name="x", resize="stretch"), (64, 64))
    assert tensor.shape == (1, 3, 64, 64)
    assert info.scale == pytest.approx(64 / 200) and info.sy == pytest.approx(64 / 100)
    np.testing.assert_allclose(info.to_source([[0, 0, 64, 64]]), [[0, 0, 200, 100]], atol=1e-4)
    expected = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    np.testing.assert_allclose(tensor[0], expected.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_bgr_nhwc_mean_std_and_out_buffer() -> None:
    frame = _frame(64, 64)
    spec = InputSpec(
        name="x",
        layout="NHWC",
        color="bgr",
        resize="stretch",
        mean=(0.5, 0.25, 0.0),
        std=(0.5, 0.25, 2.0),
    )
    out = np.empty((64, 64, 3), np.float32)
    tensor, _ = preprocess(frame, spec, (64, 64), out=out)
    assert tensor.shape == (1, 64, 64, 3)
    assert np.shares_memory(tensor, out)
    expected = (frame / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(tensor[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        preprocess(frame, spec, (64, 64), out=np.empty((1, 3, 64, 64), np.float32))


def test_frame_conversions() -> None:
    gray = np.full((20, 30), 7, np.uint8)
    assert validate_frame(gray).shape == (20, 30, 3)
    assert validate_frame(gray[:, :, None]).shape == (20, 30, 3)
    bgra = np.zeros((20, 30, 4), np.uint8)
    bgra[..., 0] = 9
    bgr = validate_frame(bgra)
    assert bgr.shape == (20, 30, 3) and bgr[0, 0, 0] == 9


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (np.zeros((10, 10, 3), np.float32), "dtype"),
        (np.zeros((3, 10, 10, 2), np.uint8), "shape"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        ([[1, 2]], "numpy"),
    ],
)
def test_bad_frames_are_clear_errors(bad: object, needle: str) -> None:
    with pytest.raises(InvalidFrame, match=needle) as info:
        preprocess(bad, InputSpec(name="x"), (32, 32))  # type: ignore[arg-type]
    assert isinstance(info.value, ModelError) and isinstance(info.value, ValueError)
    assert info.value.fix


def test_load_image_or_npy(tmp_path: Path) -> None:
    frame = _frame(12, 16)
    cv2.imwrite(str(tmp_path / "a.png"), frame)
    np.testing.assert_array_equal(load_image_or_npy(tmp_path / "a.png"), frame)
    np.save(tmp_path / "b.npy", frame)
    np.testing.assert_array_equal(load_image_or_npy(tmp_path / "b.npy"), frame)
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InvalidFrame, match=r"c\.jpg"):
        load_image_or_npy(tmp_path / "c.jpg")
    (tmp_path / "d.npy").write_bytes(b"nope")
    with pytest.raises(InvalidFrame, match=r"d\.npy"):
        load_image_or_npy(tmp_path / "d.npy")
