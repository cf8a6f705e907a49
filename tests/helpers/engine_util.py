"""Shared set-up of the engine tests (prepare, calibration, quantize).

* :func:`noise_frames` — a folder of blurred-noise PNG frames (``f000.png``..), seeded.
* :func:`tiny_convnet` — the tiny convnet bundle, prepared for a profile, with a calibration set
  read from :func:`noise_frames` (a :data:`Tiny`).
* :func:`shape_range` / :data:`CPU_DYNAMIC_RANGE` — an input's (min, opt, max) shapes, and what
  the ``cpu`` profile gives a ``size: null`` image input.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agent.config.device import DeviceProfile
from agent.engine.bundle import ModelBundle, load_bundle
from agent.engine.calibration import CalibrationSet, load_calibration_set
from agent.engine.prepare import PreparedModel, prepare
from tests.helpers.onnx_models import convnet, make_bundle

Tiny = tuple[ModelBundle, PreparedModel, CalibrationSet]
Shape = tuple[int, ...]

#: (min, opt, max) of a ``size: null`` NCHW image input under the ``cpu`` profile.
CPU_DYNAMIC_RANGE: tuple[Shape, Shape, Shape] = (
    (1, 3, 224, 224),
    (1, 3, 256, 256),
    (4, 3, 640, 640),
)


def noise_frames(
    directory: Path, count: int, size_hw: tuple[int, int] = (40, 48), seed: int = 0
) -> Path:
    """Write ``count`` blurred uniform-noise BGR PNGs of ``size_hw`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        img = cv2.GaussianBlur(rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(directory / f"f{i:03d}.png"), img)
    return directory


def tiny_convnet(
    root: Path, profile: DeviceProfile, *, frames: int, count: int, heldout: int, seed: int = 0
) -> Tiny:
    """The 32x32 convnet bundle under ``root``, prepared for ``profile``, and its calibration set
    (``count`` calibration + ``heldout`` held-out of ``frames`` noise frames)."""
    bundle = load_bundle(make_bundle(root, convnet()))
    prepared = prepare(bundle, profile, root / "work")
    calib_dir = noise_frames(root / "calib", frames, seed=seed)
    calib = load_calibration_set(calib_dir, bundle, (32, 32), count, heldout)
    return bundle, prepared, calib


def shape_range(prepared: PreparedModel, name: str = "images") -> tuple[Shape, Shape, Shape]:
    """The (min, opt, max) shapes ``prepare`` set for input ``name``."""
    shapes = prepared.shapes[name]
    return shapes.min, shapes.opt, shapes.max
