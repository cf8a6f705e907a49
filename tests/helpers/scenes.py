"""Deterministic test data for the real-export fixture bundles (``tests/fixtures/models/``).

Calibration folders and labelled held-out folders are written at test time from
:mod:`agent.vision.synthetic` with fixed seeds, so a rerun gives byte-identical JPEGs. The held-out
layout is the bundle's ``heldout/`` (``labels.json`` beside the images):

* classify: ``{"000.jpg": 2, ...}`` (index into the bundle's labels)
* detect: ``{"000.jpg": [{"label": 0, "name": "circle", "box": [x1, y1, x2, y2]}, ...]}``
  (boxes in the image's own pixels)
* raw: images only, no ``labels.json``

The scoring helpers (:func:`map50`, :func:`box_mask`, :func:`mask_iou`) are shared by the asset
tests and ``scripts/make_real_assets.py``, which records the float metrics in each bundle's
``metrics.json`` from the same seeds; :func:`map50` is the agent's own
(:mod:`agent.engine.validate.meanap`). This module needs numpy and OpenCV only (no pydantic, no
torch), so the asset script can import it on a bare training machine.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from agent.engine.validate import meanap
from agent.vision.synthetic import LABELS, Shape, render_patch, render_scene

Task = Literal["classify", "detect", "raw"]
Image = npt.NDArray[np.uint8]

#: one seed stream per purpose; the asset script trains on other seeds (see make_real_assets.py)
SEEDS: dict[tuple[str, Task], int] = {
    ("heldout", "detect"): 31001,
    ("heldout", "classify"): 31002,
    ("heldout", "raw"): 31003,
    ("calib", "detect"): 32001,
    ("calib", "classify"): 32002,
    ("calib", "raw"): 32003,
}
JPEG_QUALITY = 90
HELDOUT_DIR = "heldout"
LABELS_JSON = "labels.json"


@dataclass(frozen=True)
class Sample:
    """One written image and its ground truth (class index, or shapes for scenes)."""

    path: Path
    label: int | None
    shapes: tuple[Shape, ...]


def _write_jpeg(path: Path, img: Image) -> None:
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def _shape_json(shape: Shape) -> dict[str, object]:
    return {
        "label": shape.label,
        "name": shape.name,
        "box": [round(float(v), 2) for v in shape.box],
    }


def render_set(
    task: Task, n: int, size_wh: tuple[int, int], seed: int
) -> list[tuple[Image, int | None, tuple[Shape, ...]]]:
    """``n`` images for ``task``: patches (classify) or scenes (detect, raw) of ``size_wh``."""
    rng = np.random.default_rng(seed)
    width, height = size_wh
    out: list[tuple[Image, int | None, tuple[Shape, ...]]] = []
    for _ in range(n):
        if task == "classify":
            patch, label = render_patch(rng, width)
            if height != width:
                patch = np.asarray(cv2.resize(patch, (width, height)), dtype=np.uint8)
            out.append((patch, label, ()))
        else:
            img, shapes = render_scene(rng, width, height)
            out.append((img, None, tuple(shapes)))
    return out


def write_images(
    folder: Path, task: Task, n: int, size_wh: tuple[int, int], seed: int
) -> list[Sample]:
    """Write ``n`` JPEGs ``000.jpg``.. into ``folder`` (created); return what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    for i, (img, label, shapes) in enumerate(render_set(task, n, size_wh, seed)):
        path = folder / f"{i:03d}.jpg"
        _write_jpeg(path, img)
        samples.append(Sample(path, label, shapes))
    return samples


def write_calib(
    folder: Path, task: Task, n: int, size_wh: tuple[int, int], seed: int | None = None
) -> list[Path]:
    """A calibration folder of ``n`` JPEG scenes (detect/raw) or patches (classify)."""
    seed = SEEDS[("calib", task)] if seed is None else seed
    return [s.path for s in write_images(folder, task, n, size_wh, seed)]


def write_heldout(
    bundle: Path, task: Task, n: int, size_wh: tuple[int, int], seed: int | None = None
) -> list[Sample]:
    """Write ``<bundle>/heldout/`` (images + ``labels.json`` for classify/detect)."""
    seed = SEEDS[("heldout", task)] if seed is None else seed
    folder = bundle / HELDOUT_DIR
    samples = write_images(folder, task, n, size_wh, seed)
    if task == "classify":
        labels: dict[str, object] = {s.path.name: s.label for s in samples}
    elif task == "detect":
        labels = {s.path.name: [_shape_json(sh) for sh in s.shapes] for s in samples}
    else:
        return samples
    (folder / LABELS_JSON).write_text(json.dumps(labels, indent=1), encoding="utf-8")
    return samples


@dataclass(frozen=True)
class HeldoutRecipe:
    """How a fixture bundle's held-out set is made (``metrics.json`` ``float.heldout``)."""

    task: Task
    n: int
    size_wh: tuple[int, int]
    seed: int
    metric: str
    value: float


def heldout_recipe(bundle: Path) -> HeldoutRecipe:
    """Read the held-out recipe and the recorded float metric from ``<bundle>/metrics.json``."""
    fl = json.loads((bundle / "metrics.json").read_text(encoding="utf-8"))["float"]
    ho = fl["heldout"]
    size = (int(ho["size_wh"][0]), int(ho["size_wh"][1]))
    return HeldoutRecipe(ho["task"], int(ho["n"]), size, int(ho["seed"]), fl["metric"], fl["value"])


@dataclass(frozen=True)
class StagedBundle:
    """A fixture bundle copied to a temp dir, with its held-out set and an optional calib folder."""

    bundle: Path
    calib_dir: Path | None
    samples: list[Sample]
    recipe: HeldoutRecipe


def stage_bundle(
    src: Path, root: Path, *, heldout_n: int | None = None, calib_n: int = 0
) -> StagedBundle:
    """Copy fixture bundle ``src`` to ``root/<name>``, write its ``heldout/`` from the recipe in
    ``metrics.json`` (``heldout_n`` images, default the recorded count: the recorded metric holds
    for that count) and, if ``calib_n``, ``root/calib-<name>/`` with that many calibration images
    of the same size."""
    recipe = heldout_recipe(src)
    bundle = root / src.name
    shutil.copytree(src, bundle, ignore=shutil.ignore_patterns(HELDOUT_DIR))
    n = recipe.n if heldout_n is None else heldout_n
    samples = write_heldout(bundle, recipe.task, n, recipe.size_wh, recipe.seed)
    calib_dir = None
    if calib_n:
        calib_dir = root / f"calib-{src.name}"
        write_calib(calib_dir, recipe.task, calib_n, recipe.size_wh)
    return StagedBundle(bundle, calib_dir, samples, recipe)


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ImagePredictions:
    """One image's detections in its own pixels: boxes [N, 4] x1y1x2y2, scores [N], classes [N]."""

    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int64]


def map50(
    preds: Sequence[ImagePredictions],
    truths: Sequence[Sequence[Shape]],
    num_classes: int = len(LABELS),
    iou: float = meanap.MAP_IOU,
) -> float:
    """Mean over classes ``< num_classes`` (with ground truth) of AP at IoU ``iou`` (greedy, best
    score first; :mod:`agent.engine.validate.meanap`); 0.0 when no class has ground truth."""
    scores: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    tps: list[np.ndarray] = []
    gt_classes: list[np.ndarray] = []
    for pred, truth in zip(preds, truths, strict=True):
        mine = (pred.classes >= 0) & (pred.classes < num_classes)
        kept = [s for s in truth if 0 <= s.label < num_classes]
        gt_boxes = np.array([s.box for s in kept], dtype=np.float32).reshape(-1, 4)
        gt_cls = np.array([s.label for s in kept], dtype=np.int64)
        box, score, cls = pred.boxes[mine], pred.scores[mine], pred.classes[mine]
        tps.append(meanap.match_frame(box, score, cls, gt_boxes, gt_cls, iou_min=iou))
        scores.append(score)
        classes.append(cls)
        gt_classes.append(gt_cls)
    value = float(meanap.map50(meanap.DetectionRecords.build(scores, classes, tps, gt_classes))[0])
    return 0.0 if np.isnan(value) else value


def box_mask(shapes: Sequence[Shape], size_wh: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """The dense target of the segmentation fixture: every shape's box filled, [H, W] bool."""
    width, height = size_wh
    mask = np.zeros((height, width), dtype=bool)
    for s in shapes:
        x1, y1, x2, y2 = (round(float(v)) for v in s.box)
        mask[max(y1, 0) : min(y2, height), max(x1, 0) : min(x2, width)] = True
    return mask


def mask_iou(prob: npt.ArrayLike, target: npt.NDArray[np.bool_], threshold: float = 0.5) -> float:
    """Intersection over union of ``prob > threshold`` against ``target`` (both [H, W])."""
    pred = np.asarray(prob) > threshold
    union = np.logical_or(pred, target).sum()
    return float(np.logical_and(pred, target).sum() / union) if union else 1.0
