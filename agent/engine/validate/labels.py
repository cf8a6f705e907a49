"""The labelled held-out set a bundle may carry: ``<bundle>/heldout/labels.json`` + images.

``labels.json`` maps each image file (beside it) to its ground truth:

* classify — a class: ``{"000.jpg": 2, "001.jpg": "circle"}`` (an index into the bundle's labels
  or a label name);
* detect — a list of boxes in the image's own pixels: ``{"000.jpg": [{"label": 0 | "circle",
  "box": [x1, y1, x2, y2]}, ...]}`` (an extra ``"name"`` key is allowed and ignored).

The file comes with a model bundle, possibly pushed over the air, so it is read as hostile input:
its size, the number of entries and boxes are bounded before anything is built from it, every
key must be a plain image file name inside the folder, every label known and every box finite
and well formed. Errors are :class:`~agent.core.errors.ModelError` naming the file, the entry
and the fix.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.errors import ModelError
from agent.vision.letterbox import IMAGE_SUFFIXES

__all__ = [
    "HELDOUT_DIR",
    "LABELS_FILE",
    "MAX_BOXES_PER_IMAGE",
    "MAX_HELDOUT_IMAGES",
    "MAX_LABELS_BYTES",
    "FrameLabel",
    "HeldoutLabels",
    "check_boxes_inside",
    "heldout_images",
    "load_heldout_labels",
]

log = logging.getLogger(__name__)

HELDOUT_DIR = "heldout"
LABELS_FILE = "labels.json"
#: Bounds on a (hostile) labels.json: bytes, images, boxes per image.
MAX_LABELS_BYTES = 32 * 1024 * 1024
MAX_HELDOUT_IMAGES = 20000
MAX_BOXES_PER_IMAGE = 1000
#: How far (pixels) a labelled box may reach past the image border (rounding in exporters).
BOX_SLACK_PX = 2.0

_LAYOUT_FIX = (
    'write heldout/labels.json as {"000.jpg": 2, ...} (classify: class index or label name) or '
    '{"000.jpg": [{"label": 0, "box": [x1, y1, x2, y2]}, ...]} (detect: boxes in the image\'s '
    "pixels), with the images beside it (docs/validation.md)"
)


@dataclass(frozen=True)
class FrameLabel:
    """The ground truth of one held-out image: a class (classify) or boxes (detect)."""

    class_id: int | None = None
    boxes: np.ndarray | None = None  # N x 4 float64, x1 y1 x2 y2 in image pixels
    classes: np.ndarray | None = None  # N int64

    @property
    def box_count(self) -> int:
        return 0 if self.classes is None else len(self.classes)


@dataclass(frozen=True)
class HeldoutLabels:
    """A validated held-out set: image files (sorted by name) and their labels (None for a
    ``heldout/`` without ``labels.json``, or a raw model's: the images are held out unlabelled)."""

    directory: Path
    files: tuple[Path, ...]
    labels: tuple[FrameLabel, ...] | None
    labels_path: Path


def _error(path: Path, message: str, fix: str = _LAYOUT_FIX) -> ModelError:
    return ModelError(message, fix=fix, path=path)


def _read_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _error(path, f"cannot read the held-out labels: {exc}") from exc
    if size > MAX_LABELS_BYTES:
        raise _error(
            path,
            f"labels file is {size} bytes; at most {MAX_LABELS_BYTES} are read",
            fix=f"keep at most {MAX_HELDOUT_IMAGES} labelled images in heldout/",
        )
    try:
        return json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _error(path, f"labels file is not valid JSON: {exc}") from exc


def _class_id(value: Any, names: tuple[str, ...], path: Path, where: str) -> int:
    """A label (index or name) as a class index into ``names``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _error(path, f"{where}: label {value!r} is neither a class index nor a label name")
    if isinstance(value, str):
        if value not in names:
            raise _error(
                path,
                f"{where}: unknown label name {value!r} (the bundle's labels: "
                f"{', '.join(names) or 'none'})",
                fix="use one of the bundle's label names, or a class index",
            )
        return names.index(value)
    if value < 0 or (names and value >= len(names)):
        raise _error(
            path,
            f"{where}: class index {value} is out of range (the bundle has {len(names)} labels)",
            fix=f"use an index from 0 to {max(len(names) - 1, 0)}, or a label name",
        )
    return int(value)


def _box(value: Any, path: Path, where: str) -> list[float]:
    ok = isinstance(value, list) and len(value) == 4
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok:
        raise _error(path, f"{where}: box {value!r} is not a list of 4 numbers [x1, y1, x2, y2]")
    box = [float(v) for v in value]
    if not all(math.isfinite(v) for v in box):
        raise _error(path, f"{where}: box {value!r} is not finite")
    if not (box[0] < box[2] and box[1] < box[3]):
        raise _error(
            path,
            f"{where}: box {value!r} needs x1 < x2 and y1 < y2 (corners, not x, y, w, h)",
            fix="write boxes as [x1, y1, x2, y2]: top-left and bottom-right corners in pixels",
        )
    return box


def _detect_label(value: Any, names: tuple[str, ...], path: Path, name: str) -> FrameLabel:
    if not isinstance(value, list):
        raise _error(path, f"entry '{name}': expected a list of boxes, got {type(value).__name__}")
    if len(value) > MAX_BOXES_PER_IMAGE:
        raise _error(path, f"entry '{name}': {len(value)} boxes; at most {MAX_BOXES_PER_IMAGE}")
    boxes: list[list[float]] = []
    classes: list[int] = []
    for index, item in enumerate(value):
        where = f"entry '{name}' box {index}"
        if not isinstance(item, dict) or "label" not in item or "box" not in item:
            raise _error(path, f'{where}: expected {{"label": ..., "box": [x1, y1, x2, y2]}}')
        extra = set(item) - {"label", "box", "name"}
        if extra:
            raise _error(path, f"{where}: unknown keys {sorted(extra)} (label, box, name allowed)")
        classes.append(_class_id(item["label"], names, path, where))
        boxes.append(_box(item["box"], path, where))
    return FrameLabel(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
    )


def _image_path(directory: Path, name: Any, path: Path) -> Path:
    """The image a key names: a plain file name beside labels.json that exists."""
    plain = isinstance(name, str) and name not in ("", ".", "..")
    plain = plain and "/" not in name and "\\" not in name and "\0" not in name
    if not plain:
        raise _error(path, f"entry {name!r}: keys must be plain image file names in heldout/")
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise _error(
            path,
            f"entry '{name}': not an image name (expected {', '.join(IMAGE_SUFFIXES)})",
            fix="label JPEG/PNG/BMP images only",
        )
    image = directory / name
    if image.is_symlink() or not image.is_file():
        raise _error(
            path,
            f"entry '{name}': the image {image} does not exist (or is not a regular file)",
            fix="copy the image into heldout/ beside labels.json, or remove its entry",
        )
    return image


def load_heldout_labels(
    directory: Path, task: str, names: tuple[str, ...] | list[str]
) -> HeldoutLabels:
    """Read and check ``directory/labels.json`` against the bundle's ``task`` and label names."""
    directory = Path(directory)
    path = directory / LABELS_FILE
    if task not in ("classify", "detect"):
        raise _error(
            path,
            f"a labelled held-out set needs task classify or detect (this model is '{task}')",
            fix="remove heldout/labels.json; raw models are validated against float only",
        )
    if not path.is_file():
        raise _error(path, "heldout/ has no labels.json")
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise _error(path, "labels file must be a non-empty JSON object {image: label}")
    if len(data) > MAX_HELDOUT_IMAGES:
        raise _error(path, f"{len(data)} entries; at most {MAX_HELDOUT_IMAGES} images are read")
    names = tuple(names)
    files: list[Path] = []
    labels: list[FrameLabel] = []
    for name in sorted(data, key=str):
        files.append(_image_path(directory, name, path))
        value = data[name]
        if task == "classify":
            labels.append(FrameLabel(class_id=_class_id(value, names, path, f"entry '{name}'")))
        else:
            labels.append(_detect_label(value, names, path, name))
    _warn_unlabelled(directory, {p.name for p in files})
    return HeldoutLabels(directory, tuple(files), tuple(labels), path)


def heldout_images(directory: Path) -> HeldoutLabels:
    """The images of a ``heldout/`` folder without labels (sorted by name, regular files only,
    at most :data:`MAX_HELDOUT_IMAGES`): the gate compares on them without a task metric."""
    directory = Path(directory)
    try:
        files = sorted(
            (
                p
                for p in directory.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink()
            ),
            key=lambda p: p.name,
        )
    except OSError as exc:
        raise _error(directory, f"cannot list the held-out folder: {exc}") from exc
    if not files:
        raise _error(directory, "heldout/ holds no images (JPEG/PNG/BMP)")
    kept = tuple(files[:MAX_HELDOUT_IMAGES])
    return HeldoutLabels(directory, kept, None, directory / LABELS_FILE)


def _warn_unlabelled(directory: Path, labelled: set[str]) -> None:
    try:
        images = {p.name for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    except OSError:
        return
    unused = len(images - labelled)
    if unused:
        log.warning(
            "%d images in %s have no entry in labels.json and are not used", unused, directory
        )


def check_boxes_inside(label: FrameLabel, width: int, height: int, path: Path) -> None:
    """Boxes must lie in the image (with :data:`BOX_SLACK_PX` of slack); ModelError if not."""
    if label.boxes is None or not len(label.boxes):
        return
    b = label.boxes
    outside = (b[:, 0] < -BOX_SLACK_PX) | (b[:, 1] < -BOX_SLACK_PX)
    outside |= (b[:, 2] > width + BOX_SLACK_PX) | (b[:, 3] > height + BOX_SLACK_PX)
    if outside.any():
        index = int(np.argmax(outside))
        raise _error(
            path.parent / LABELS_FILE,
            f"entry '{path.name}' box {index} {b[index].round(2).tolist()} lies outside the "
            f"{width} x {height} image",
            fix="write boxes in the image's own pixels (not normalised, not model-input pixels)",
        )
