#!/usr/bin/env python3
"""Render the labelled held-out sets the bundled models carry (``<bundle>/heldout/``).

Deterministic (fixed seeds, distinct from the training/calibration seeds in
``scripts/make_assets.py``); needs only numpy and OpenCV (no torch)::

    python scripts/make_heldout.py            # writes agent/data/models/*/heldout/
    python scripts/make_heldout.py --check    # verifies the files on disk are what it renders

* ``shapes-cls/heldout``: 600 patches (64 x 64, the model's input size, JPEG quality 80) — at
  least the 523 frames the gate needs so that a classifier whose true top-1 agreement is 0.98
  fails the 0.99 tolerance with >= 95 % probability (docs/validation.md derives the number);
* ``shapes-det/heldout``: 120 scenes (320 x 180, JPEG quality 75) with 1-4 shapes each (about
  300 boxes; box agreement is per box, and 103 boxes already catch a true agreement of 0.90
  against the 0.95 tolerance with >= 95 % probability).

The layout is the documented one: ``labels.json`` maps each image to a class index (classify) or
to a list of ``{"label": index, "name": str, "box": [x1, y1, x2, y2]}`` in image pixels (detect).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.vision.synthetic import LABELS, render_patch, render_scene  # noqa: E402

MODELS = ROOT / "agent" / "data" / "models"
SEED_CLS = 9109
SEED_DET = 9209
CLS_COUNT, CLS_SIZE, CLS_QUALITY = 600, 64, 80
DET_COUNT, DET_W, DET_H, DET_QUALITY = 120, 320, 180, 75


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def render_cls() -> dict[str, bytes]:
    """File name -> bytes of the classifier set (labels.json included)."""
    rng = np.random.default_rng(SEED_CLS)
    files: dict[str, bytes] = {}
    labels: dict[str, int] = {}
    for i in range(CLS_COUNT):
        img, label = render_patch(rng, CLS_SIZE)
        name = f"{i:03d}.jpg"
        files[name] = _jpeg(img, CLS_QUALITY)
        labels[name] = label
    files["labels.json"] = (json.dumps(labels, indent=0) + "\n").encode()
    return files


def render_det() -> dict[str, bytes]:
    """File name -> bytes of the detector set (labels.json included)."""
    rng = np.random.default_rng(SEED_DET)
    files: dict[str, bytes] = {}
    labels: dict[str, list[dict[str, object]]] = {}
    for i in range(DET_COUNT):
        img, shapes = render_scene(rng, DET_W, DET_H)
        name = f"{i:03d}.jpg"
        files[name] = _jpeg(img, DET_QUALITY)
        labels[name] = [
            {"label": s.label, "name": LABELS[s.label], "box": [round(v, 2) for v in s.box]}
            for s in shapes
        ]
    files["labels.json"] = (json.dumps(labels, indent=0) + "\n").encode()
    return files


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def _write(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        if old.is_file() and old.name not in files:
            old.unlink()
    for name, data in files.items():
        (directory / name).write_bytes(data)


def _on_disk(directory: Path) -> dict[str, bytes]:
    if not directory.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk")
    parser.add_argument("--models", type=Path, default=MODELS, help="bundles' parent folder")
    args = parser.parse_args(argv)
    status = 0
    for model, render in (("shapes-cls", render_cls), ("shapes-det", render_det)):
        files = render()
        target = args.models / model / "heldout"
        size_kib = sum(len(b) for b in files.values()) / 1024
        if args.check:
            same = _digest(_on_disk(target)) == _digest(files)
            print(f"{target}: {'up to date' if same else 'DIFFERS'} ({size_kib:.0f} KiB)")
            status |= 0 if same else 1
        else:
            _write(target, files)
            print(f"{target}: {len(files) - 1} images, {size_kib:.0f} KiB")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
