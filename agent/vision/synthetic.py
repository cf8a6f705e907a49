"""Deterministic synthetic scenes: coloured shapes on noisy, textured backgrounds.

This is the data generator behind the small test models shipped in ``agent/data/`` (see
``scripts/make_assets.py``) and behind the synthetic camera source. It uses numpy and OpenCV only.

Everything is driven by a caller-supplied :class:`numpy.random.Generator` (or a seed, for
:class:`SceneAnimator`): the same seed gives byte-identical images and boxes on every run.
Nothing happens at import time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "LABELS",
    "SceneAnimator",
    "Shape",
    "render_background",
    "render_patch",
    "render_scene",
]

LABELS: tuple[str, ...] = ("circle", "square", "triangle", "cross")
"""Class names; a :class:`Shape`'s ``label`` indexes this tuple."""

CIRCLE, SQUARE, TRIANGLE, CROSS = 0, 1, 2, 3

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_SCALE = 1 << _SHIFT


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its class index into :data:`LABELS` and its box in pixels."""

    label: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels

    @property
    def name(self) -> str:
        return LABELS[self.label]


# --------------------------------------------------------------------------- geometry


def _polygon(label: int, cx: float, cy: float, size: float, angle: float) -> FloatArray:
    """Vertices (N x 2, float32) of a polygonal shape whose unrotated extent is about ``size``."""
    if label == SQUARE:
        h = 0.5 * 0.78 * size
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif label == TRIANGLE:
        r = 0.58 * size
        pts = [
            (r * math.cos(a), r * math.sin(a))
            for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)
        ]
    elif label == CROSS:
        a = 0.5 * size  # arm reach
        w = size / 6.0  # half the arm width
        pts = [
            (-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
            (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w),
        ]  # fmt: skip
    else:
        raise ValueError(f"not a polygonal shape: {label}")
    c, s = math.cos(angle), math.sin(angle)
    return np.array([(cx + c * x - s * y, cy + s * x + c * y) for x, y in pts], dtype=np.float32)


def _extent(label: int, cx: float, cy: float, size: float, angle: float) -> FloatArray:
    """Tight box (x1, y1, x2, y2) of a shape before clipping to the image."""
    if label == CIRCLE:
        r = 0.5 * size
        return np.array([cx - r, cy - r, cx + r, cy + r], dtype=np.float32)
    pts = _polygon(label, cx, cy, size, angle)
    return np.array(
        [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], dtype=np.float32
    )


def _draw(
    img: Image,
    *,
    label: int,
    cx: float,
    cy: float,
    size: float,
    angle: float,
    color: tuple[int, int, int],
) -> tuple[float, float, float, float]:
    """Draw a filled shape in place; return its box clipped to the image (pixel-edge coords)."""
    if label == CIRCLE:
        center = (round(cx * _SCALE), round(cy * _SCALE))
        cv2.circle(img, center, round(0.5 * size * _SCALE), color, -1, cv2.LINE_AA, _SHIFT)
    else:
        pts = np.round(_polygon(label, cx, cy, size, angle) * _SCALE).astype(np.int32)
        cv2.fillPoly(img, [pts], color, cv2.LINE_AA, _SHIFT)
    x1, y1, x2, y2 = (float(v) for v in _extent(label, cx, cy, size, angle))
    h, w = img.shape[:2]
    # vertices sit on pixel centres; +0.5 turns them into pixel-edge coordinates
    return (
        max(0.0, x1 + 0.5),
        max(0.0, y1 + 0.5),
        min(float(w), x2 + 0.5),
        min(float(h), y2 + 0.5),
    )


def _overlap_min(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(small, 1e-6)


# --------------------------------------------------------------------------- appearance


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> FloatArray:
    """Low-frequency noise in [-1, 1]: random values on a coarse grid, upsampled (H x W)."""
    gw = max(2, width // cell + 2)
    gh = max(2, height // cell + 2)
    coarse = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    out = np.asarray(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC))
    return _clip(out.astype(np.float32), -1.0, 1.0)


def _clip(a: FloatArray, lo: float, hi: float) -> FloatArray:
    return np.minimum(np.maximum(a, np.float32(lo)), np.float32(hi))


def _to_u8(a: FloatArray) -> Image:
    return _clip(a, 0.0, 255.0).astype(np.uint8)


def _mean_color(region: Image) -> FloatArray:
    return np.asarray(region, dtype=np.float32).mean(axis=(0, 1), dtype=np.float32)


def _random_color(rng: np.random.Generator) -> FloatArray:
    return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def render_background(rng: np.random.Generator, width: int, height: int) -> Image:
    """A noise-free background: a gradient, blotches or a low-contrast texture (BGR uint8)."""
    kind = int(rng.integers(0, 3))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:  # linear gradient between two colours at a random angle
        c0, c1 = _random_color(rng), _random_color(rng)
        theta = float(rng.uniform(0.0, 2.0 * math.pi))
        proj = xs * math.cos(theta) + ys * math.sin(theta)
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
        img = c0[None, None, :] * (1.0 - t[..., None]) + c1[None, None, :] * t[..., None]
    elif kind == 1:  # a base colour with large soft blotches
        base = _random_color(rng)
        amp = float(rng.uniform(15.0, 45.0))
        cell = int(rng.integers(24, 96))
        blot = np.stack([_smooth_noise(rng, width, height, cell) for _ in range(3)], axis=-1)
        img = base[None, None, :] + amp * blot
    else:  # low-contrast stripes or checks on a base colour
        base = _random_color(rng)
        amp = float(rng.uniform(8.0, 25.0))
        period = float(rng.uniform(10.0, 40.0))
        theta = float(rng.uniform(0.0, math.pi))
        u = xs * math.cos(theta) + ys * math.sin(theta)
        pattern = np.sin(2.0 * math.pi * u / period)
        if rng.random() < 0.5:
            v = -xs * math.sin(theta) + ys * math.cos(theta)
            pattern = pattern * np.sin(2.0 * math.pi * v / period)
        tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
        img = base[None, None, :] + amp * pattern[..., None] * tint[None, None, :]
    return _to_u8(np.asarray(img, dtype=np.float32))


def _add_clutter(rng: np.random.Generator, img: Image, count: int) -> None:
    """Thin random lines and arcs: background distractors that are not shapes."""
    h, w = int(img.shape[0]), int(img.shape[1])
    for _ in range(count):
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        thickness = int(rng.integers(1, 3))
        if rng.random() < 0.5:
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p0, p1, color, thickness, cv2.LINE_AA)
        else:
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(8, max(9, w // 4))), int(rng.integers(8, max(9, h // 4))))
            start = float(rng.uniform(0.0, 360.0))
            cv2.ellipse(
                img, center, axes, float(rng.uniform(0, 180)), start, start + 120.0, color,
                thickness, cv2.LINE_AA,
            )  # fmt: skip


def _shape_color(rng: np.random.Generator, under: FloatArray) -> tuple[int, int, int]:
    """A colour that stands out from the mean background colour ``under``."""
    best = np.zeros(3, dtype=np.float32)
    best_d = -1.0
    for _ in range(12):
        c = _random_color(rng)
        d = float(np.abs(c - under).sum())
        if d > best_d:
            best, best_d = c, d
        if d >= 150.0:
            break
    b, g, r = (int(v) for v in best)
    return (b, g, r)


def _finish(rng: np.random.Generator, img: Image, sigma_range: tuple[float, float]) -> Image:
    """Optional slight blur, then additive Gaussian sensor noise."""
    if rng.random() < 0.3:
        img = np.asarray(cv2.GaussianBlur(img, (3, 3), 0), dtype=np.uint8)
    sigma = float(rng.uniform(*sigma_range))
    noise = rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    return _to_u8(img.astype(np.float32) + noise)


# --------------------------------------------------------------------------- public API


def render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    n_shapes: tuple[int, int] = (1, 4),
) -> tuple[Image, list[Shape]]:
    """One detector scene: a background with ``n_shapes[0]..n_shapes[1]`` shapes (inclusive).

    Shapes lie fully inside the image, have random class, size (about 8-30 % of the short
    side), colour and rotation, and overlap little (intersection over the smaller box at most
    0.15). Returns the BGR uint8 image (``height`` x ``width`` x 3) and the shapes' boxes.
    """
    if width < 32 or height < 32:
        raise ValueError("scene must be at least 32x32")
    img = render_background(rng, width, height)
    _add_clutter(rng, img, int(rng.integers(0, 3)))
    short = min(width, height)
    count = int(rng.integers(n_shapes[0], n_shapes[1] + 1))
    shapes: list[Shape] = []
    for _ in range(count):
        for _attempt in range(40):
            label = int(rng.integers(0, len(LABELS)))
            size = float(rng.uniform(0.08, 0.30)) * short
            angle = float(rng.uniform(0.0, 2.0 * math.pi))
            cx = float(rng.uniform(0.0, width))
            cy = float(rng.uniform(0.0, height))
            ext = _extent(label, cx, cy, size, angle)
            if ext[0] < 1 or ext[1] < 1 or ext[2] > width - 2 or ext[3] > height - 2:
                continue
            cand = (float(ext[0]), float(ext[1]), float(ext[2]), float(ext[3]))
            if any(_overlap_min(cand, s.box) > 0.15 for s in shapes):
                continue
            x1, y1, x2, y2 = (int(v) for v in cand)
            under = _mean_color(img[y1 : y2 + 1, x1 : x2 + 1])
            color = _shape_color(rng, under)
            box = _draw(img, label=label, cx=cx, cy=cy, size=size, angle=angle, color=color)
            shapes.append(Shape(label, box))
            break
    return _finish(rng, img, (1.5, 5.0)), shapes


def render_patch(rng: np.random.Generator, size: int) -> tuple[Image, int]:
    """A ``size`` x ``size`` classifier patch: one roughly centred shape; returns (BGR, label)."""
    if size < 16:
        raise ValueError("patch must be at least 16 pixels")
    img = render_background(rng, size, size)
    _add_clutter(rng, img, int(rng.integers(0, 2)))
    label = int(rng.integers(0, len(LABELS)))
    extent = float(rng.uniform(0.45, 0.8)) * size
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    cx = size / 2.0 + float(rng.uniform(-0.1, 0.1)) * size
    cy = size / 2.0 + float(rng.uniform(-0.1, 0.1)) * size
    m = max(1, int(size * 0.25))
    under = _mean_color(img[m : size - m, m : size - m])
    color = _shape_color(rng, under)
    _draw(img, label=label, cx=cx, cy=cy, size=extent, angle=angle, color=color)
    return _finish(rng, img, (2.0, 7.0)), label


@dataclass
class _Mover:
    label: int
    cx: float
    cy: float
    size: float
    angle: float
    vx: float
    vy: float
    spin: float
    color: tuple[int, int, int]


class SceneAnimator:
    """A seeded, frame-to-frame coherent scene of shapes that drift, spin and bounce.

    The background is drawn once; each frame adds the shapes at their current pose and fresh
    (seeded) sensor noise. ``next_frame()`` returns the frame and the shapes' boxes, then moves
    the shapes one step. Two animators built with the same arguments give identical frames.
    """

    def __init__(
        self,
        seed: int,
        width: int = 640,
        height: int = 360,
        n_shapes: int = 5,
        noise_sigma: float = 3.0,
    ) -> None:
        if width < 64 or height < 64:
            raise ValueError("animator needs at least 64x64")
        self.width = width
        self.height = height
        self.noise_sigma = noise_sigma
        self.frame_index = 0
        self._rng = np.random.default_rng(seed)
        rng = self._rng
        self._background = render_background(rng, width, height)
        short = min(width, height)
        self._movers: list[_Mover] = []
        for _ in range(n_shapes):
            label = int(rng.integers(0, len(LABELS)))
            size = float(rng.uniform(0.10, 0.25)) * short
            margin = 0.75 * size
            speed = float(rng.uniform(1.0, 4.0))
            heading = float(rng.uniform(0.0, 2.0 * math.pi))
            cx = float(rng.uniform(margin, width - margin))
            cy = float(rng.uniform(margin, height - margin))
            under = self._background[int(cy), int(cx)].astype(np.float32)
            self._movers.append(
                _Mover(
                    label=label,
                    cx=cx,
                    cy=cy,
                    size=size,
                    angle=float(rng.uniform(0.0, 2.0 * math.pi)),
                    vx=speed * math.cos(heading),
                    vy=speed * math.sin(heading),
                    spin=float(rng.uniform(-0.05, 0.05)),
                    color=_shape_color(rng, under),
                )
            )

    def next_frame(self) -> tuple[Image, list[Shape]]:
        """The current frame (BGR uint8, height x width x 3) and its boxes; then advance."""
        img: Image = np.array(self._background, dtype=np.uint8)
        shapes: list[Shape] = []
        for m in self._movers:
            box = _draw(
                img, label=m.label, cx=m.cx, cy=m.cy, size=m.size, angle=m.angle, color=m.color
            )
            shapes.append(Shape(m.label, box))
        noise = self._rng.normal(0.0, self.noise_sigma, size=img.shape).astype(np.float32)
        frame = _to_u8(img.astype(np.float32) + noise)
        self._step()
        self.frame_index += 1
        return frame, shapes

    def _step(self) -> None:
        for m in self._movers:
            m.cx += m.vx
            m.cy += m.vy
            m.angle = (m.angle + m.spin) % (2.0 * math.pi)
            x1, y1, x2, y2 = (float(v) for v in _extent(m.label, m.cx, m.cy, m.size, m.angle))
            if x1 < 1.0:
                m.cx += 1.0 - x1
                m.vx = abs(m.vx)
            elif x2 > self.width - 2.0:
                m.cx -= x2 - (self.width - 2.0)
                m.vx = -abs(m.vx)
            if y1 < 1.0:
                m.cy += 1.0 - y1
                m.vy = abs(m.vy)
            elif y2 > self.height - 2.0:
                m.cy -= y2 - (self.height - 2.0)
                m.vy = -abs(m.vy)
