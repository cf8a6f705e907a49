"""agent.vision.overlay: boxes and top-k drawn on a copy of the frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.vision.overlay import draw_overlay


@dataclass(frozen=True)
class _Box:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]


def test_draws_boxes_on_a_copy() -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    out = draw_overlay(image, [_Box("cat", 0, 0.9, (20.0, 40.0, 120.0, 200.0))])
    assert not image.any()  # the input is untouched
    assert out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[120, 20]) == (56, 56, 255)  # left edge, palette colour of class 0
    assert not out[120, 70].any()  # inside the box stays empty


def test_box_at_the_top_gets_its_label_inside() -> None:
    out = draw_overlay(np.zeros((100, 100, 3), np.uint8), [_Box("x", 1, 0.5, (10, 0, 60, 50))])
    assert out[1:20, 10:60].any()


def test_top_k_drawn_in_green() -> None:
    out = draw_overlay(np.zeros((100, 200, 3), np.uint8), [], [("dog", 0.8), ("cat", 0.1)])
    drawn = out[:40, :100]
    assert drawn[..., 1].any() and not drawn[..., 0].any() and not drawn[..., 2].any()


def test_nothing_to_draw_is_an_equal_copy() -> None:
    image = np.full((10, 10, 3), 7, np.uint8)
    out = draw_overlay(image, [])
    assert out is not image and np.array_equal(out, image)
