"""agent.vision.jpeg: encoding, and fitting a JPEG under a byte budget."""

from __future__ import annotations

import cv2
import numpy as np

from agent.vision.jpeg import Jpeg, as_uint8, encode_jpeg, encode_jpeg_within


def _noise(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_encode_jpeg_round_trips() -> None:
    image = np.full((48, 64, 3), 128, np.uint8)
    data = encode_jpeg(image, 90)
    assert data is not None and data[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded.shape == (48, 64, 3)
    assert abs(int(decoded.mean()) - 128) <= 2


def test_encode_jpeg_lower_quality_is_smaller() -> None:
    image = _noise(120, 160)
    high, low = encode_jpeg(image, 95), encode_jpeg(image, 30)
    assert high is not None and low is not None and len(low) < len(high)


def test_encode_jpeg_grey() -> None:
    assert encode_jpeg(np.zeros((16, 16), np.uint8), 80) is not None


def test_as_uint8_clips() -> None:
    out = as_uint8(np.array([[-5.0, 100.4, 300.0]]))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 100, 255]]
    same = np.zeros((2, 2), np.uint8)
    assert as_uint8(same) is same


def test_within_keeps_size_when_it_fits() -> None:
    jpeg = encode_jpeg_within(np.zeros((64, 96, 3), np.uint8), max_bytes=1 << 20, quality=80)
    assert isinstance(jpeg, Jpeg) and (jpeg.width, jpeg.height) == (96, 64)


def test_within_halves_until_it_fits() -> None:
    image = _noise(256, 320)
    full = encode_jpeg(image, 30)
    assert full is not None
    jpeg = encode_jpeg_within(image, max_bytes=len(full) // 3, quality=85)
    assert jpeg is not None and len(jpeg.data) <= len(full) // 3
    assert jpeg.width < 320 and jpeg.width * 256 == jpeg.height * 320


def test_within_gives_up_below_32_pixels() -> None:
    assert encode_jpeg_within(_noise(64, 64), max_bytes=10, quality=85) is None


def test_within_accepts_float_frames() -> None:
    jpeg = encode_jpeg_within(np.full((32, 32, 3), 400.0), max_bytes=1 << 20, quality=80)
    assert jpeg is not None
