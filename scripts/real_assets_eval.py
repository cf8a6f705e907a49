#!/usr/bin/env python3
"""Measure the real-export fixture bundles with ONNX Runtime and write their metadata files.

Needs numpy, OpenCV and onnxruntime only (no torch), so it also runs in the repo venv:

    python scripts/real_assets_eval.py                       # every bundle in tests/fixtures/models
    python scripts/real_assets_eval.py yolov8n-shapes --no-write   # print, write nothing

Each bundle's float metric is measured on the held-out set that ``tests/helpers/scenes.py``
writes (same seeds, count and size as recorded in ``metrics.json``), so the asset tests can check
the same figure; latency is ONNX Runtime CPU, 1 thread, batch 1, median of 30 runs.
"""

# pyright: reportMissingImports=false

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.vision.decode import decode_yolov8  # noqa: E402
from agent.vision.synthetic import LABELS  # noqa: E402
from tests.helpers import scenes  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import real_assets_docs as docs  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "models"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAP_CONF, MAP_IOU = 0.001, 0.6


@dataclass(frozen=True)
class Spec:
    """How one fixture bundle is fed and scored."""

    name: str
    task: scenes.Task
    size_hw: tuple[int, int]
    heldout_n: int
    heldout_wh: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "stretch"


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("yolov8n-shapes", "detect", (320, 320), 100, (320, 240), resize="letterbox"),
        Spec("yolo11n-shapes", "detect", (320, 320), 100, (320, 240), resize="letterbox"),
        Spec(
            "mobilenetv3-shapes",
            "classify",
            (128, 160),
            200,
            (160, 128),
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        Spec("resnet-shapes", "classify", (128, 160), 200, (160, 128), IMAGENET_MEAN, IMAGENET_STD),
        Spec("dbnet-shapes", "raw", (640, 640), 16, (640, 640), IMAGENET_MEAN, IMAGENET_STD),
        Spec("anon-dims", "classify", (64, 80), 200, (80, 64)),
    )
}


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def letterbox(img: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, float, float, float]:
    """Ultralytics-style letterbox (pad 114); returns canvas, ratio, pad_x, pad_y."""
    h, w = size_hw
    r = min(h / img.shape[0], w / img.shape[1])
    nw, nh = round(img.shape[1] * r), round(img.shape[0] * r)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    left, top = round((w - nw) / 2 - 0.1), round((h - nh) / 2 - 0.1)
    canvas = np.full((h, w, 3), 114, np.uint8)
    canvas[top : top + nh, left : left + nw] = img
    return canvas, r, float(left), float(top)


def to_input(img: np.ndarray, spec: Spec) -> np.ndarray:
    rgb = img[..., ::-1].astype(np.float32) / 255.0
    rgb = (rgb - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read {path}")
    return img


def run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def predict_detect(sess: ort.InferenceSession, path: Path, spec: Spec) -> scenes.ImagePredictions:
    canvas, r, px, py = letterbox(read(path), spec.size_hw)
    out = run(sess, to_input(canvas, spec))
    det = decode_yolov8(out, conf=MAP_CONF, iou=MAP_IOU, max_det=100)[0]
    boxes = det.boxes.astype(np.float32).copy()
    boxes[:, 0::2] = (boxes[:, 0::2] - px) / r
    boxes[:, 1::2] = (boxes[:, 1::2] - py) / r
    return scenes.ImagePredictions(
        boxes, det.scores.astype(np.float32), det.class_ids.astype(np.int64)
    )


def score(onnx_path: Path, spec: Spec, samples: list[scenes.Sample]) -> dict[str, Any]:
    """The float task metric on held-out samples: mAP50, top-1 or mean mask IoU."""
    sess = session(onnx_path, threads=2)
    h, w = spec.size_hw
    if spec.task == "detect":
        preds = [predict_detect(sess, s.path, spec) for s in samples]
        value = scenes.map50(preds, [s.shapes for s in samples])
        return {"metric": "mAP50", "value": round(value, 4), "conf": MAP_CONF, "nms_iou": MAP_IOU}
    if spec.task == "classify":
        hits = 0
        for s in samples:
            img = cv2.resize(read(s.path), (w, h), interpolation=cv2.INTER_LINEAR)
            logits = run(sess, to_input(img, spec))
            hits += int(np.argmax(logits[0]) == s.label)
        return {"metric": "top1", "value": round(hits / len(samples), 4)}
    ious = []
    for s in samples:
        prob = run(sess, to_input(read(s.path), spec))[0, 0]
        ious.append(scenes.mask_iou(prob, scenes.box_mask(s.shapes, spec.heldout_wh)))
    return {"metric": "mask_iou", "value": round(float(np.mean(ious)), 4), "threshold": 0.5}


def latency_ms(onnx_path: Path, spec: Spec, runs: int = 30) -> float:
    sess = session(onnx_path, threads=1)
    x = np.random.default_rng(0).random((1, 3, *spec.size_hw), dtype=np.float32)
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 2)


def measure(bundle: Path, spec: Spec) -> dict[str, Any]:
    onnx_path = bundle / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        samples = scenes.write_heldout(Path(tmp), spec.task, spec.heldout_n, spec.heldout_wh)
        result = score(onnx_path, spec, samples)
    result["heldout"] = {
        "task": spec.task,
        "n": spec.heldout_n,
        "size_wh": list(spec.heldout_wh),
        "seed": scenes.SEEDS[("heldout", spec.task)],
        "writer": "tests/helpers/scenes.py write_heldout",
    }
    result["ort_cpu_1thread_ms"] = latency_ms(onnx_path, spec)
    result["measured_on"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    result["onnxruntime"] = ort.__version__
    result["file_bytes"] = onnx_path.stat().st_size
    return result


def update_metrics(bundle: Path, spec: Spec, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure and merge into ``metrics.json`` (training facts in ``extra`` are kept)."""
    path = bundle / "metrics.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    data.update(extra or {})
    data["float"] = measure(bundle, spec)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("names", nargs="*", help=f"bundles (default: all of {', '.join(SPECS)})")
    ap.add_argument("--root", type=Path, default=FIXTURES)
    ap.add_argument("--no-write", action="store_true", help="print the figures, change nothing")
    args = ap.parse_args(argv)
    for name in args.names or [n for n in SPECS if (args.root / n).is_dir()]:
        bundle, spec = args.root / name, SPECS[name]
        if args.no_write:
            print(name, json.dumps(measure(bundle, spec)))
        else:
            data = update_metrics(bundle, spec)
            docs.write_readme(bundle, spec, data)
            print(name, json.dumps(data["float"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["LABELS", "SPECS", "Spec", "measure", "update_metrics"]
