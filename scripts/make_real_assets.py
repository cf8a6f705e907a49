#!/usr/bin/env python3
"""Make the real-export bundles in ``tests/fixtures/models/`` by frameworks' own exporters.

Each bundle is trained on ``agent.vision.synthetic`` data (fixed seeds) and exported by the
framework's own exporter; nothing downloads weights or data (YOLO models start from the YAML):

    yolov8n-shapes      Ultralytics YOLOv8n (trainer + exporter), ONNX with dynamic batch/H/W
    yolo11n-shapes      Ultralytics YOLO11n, ONNX static 1x3x320x320
    mobilenetv3-shapes  torchvision MobileNetV3-Small x0.75, torch.onnx.export, H/W share dim "?",
                        BatchNormalization unfused
    resnet-shapes       ResNet-18 layout at 1/4 width from torchvision BasicBlocks, same export
    dbnet-shapes        DBNet-like segmenter, output [N, 1, 640, 640] probability map, BN unfused
    anon-dims           small CNN classifier; input batch dim_value -1, H and W anonymous

Then ``scripts/real_assets_eval.py`` measures each with ONNX Runtime on the held-out set that
``tests/helpers/scenes.py`` writes and fills ``metrics.json``. Needs the asset venv
(``pip install -r scripts/requirements-real-assets.txt``); the agent and tests never import torch.

    python scripts/make_real_assets.py                          # all, CPU (hours on 2 cores)
    python scripts/make_real_assets.py --device 0 --yolo-time 0.09 --only yolov8n-shapes
    python scripts/make_real_assets.py --quick --out /tmp/x     # smoke run, tiny data, 1 epoch
"""

# pyright: reportMissingImports=false

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

# Ultralytics reads these at import: settings in a temp dir, no network checks/events/autoinstall.
_YOLO_HOME = Path(tempfile.mkdtemp(prefix="yolo-config-"))
os.environ.setdefault("YOLO_CONFIG_DIR", str(_YOLO_HOME))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import real_assets_docs as docs  # noqa: E402
import real_assets_eval as rae  # noqa: E402
import real_assets_nets as nets  # noqa: E402

from agent.vision.synthetic import LABELS, render_patch, render_scene  # noqa: E402
from tests.helpers import scenes  # noqa: E402

SEED_YOLO_TRAIN, SEED_YOLO_VAL = 41000, 41900
SEED_CLS_TRAIN, SEED_SEG_TRAIN, SEED_ANON_TRAIN = 42000, 43000, 44000
CHUNK = 100
YOLO_IMGSZ = 320


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- data


def _yolo_chunk(job: tuple[Path, int, int, int]) -> int:
    """Write ``count`` scenes of seed ``seed`` as YOLO images/labels into ``root``."""
    root, seed, start, count = job
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = (320, 320) if (start + i) % 2 else (384, 288)
        img, shapes = render_scene(rng, w, h)
        stem = f"{start + i:05d}"
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        rows = [
            f"{s.label} {(s.box[0] + s.box[2]) / 2 / w:.6f} {(s.box[1] + s.box[3]) / 2 / h:.6f} "
            f"{(s.box[2] - s.box[0]) / w:.6f} {(s.box[3] - s.box[1]) / h:.6f}"
            for s in shapes
        ]
        (root / "labels" / f"{stem}.txt").write_text("\n".join(rows) + "\n")
    return count


def write_yolo_dataset(root: Path, n_train: int, n_val: int, workers: int) -> Path:
    jobs: list[tuple[Path, int, int, int]] = []
    for split, seed0, n in (("train", SEED_YOLO_TRAIN, n_train), ("val", SEED_YOLO_VAL, n_val)):
        d = root / split
        (d / "images").mkdir(parents=True)
        (d / "labels").mkdir(parents=True)
        jobs += [
            (d, seed0 + k, k * CHUNK, min(CHUNK, n - k * CHUNK)) for k in range(-(-n // CHUNK))
        ]
    with Pool(workers) as pool:
        pool.map(_yolo_chunk, jobs)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(LABELS))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: train/images\nval: val/images\nnames:\n{names}\n")
    return data


def _render_chunk(job: tuple[str, int, int, tuple[int, int]]) -> list[tuple[np.ndarray, Any]]:
    kind, seed, count, (w, h) = job
    rng = np.random.default_rng(seed)
    if kind == "patch":
        out: list[tuple[np.ndarray, Any]] = []
        for _ in range(count):
            img, label = render_patch(rng, w)
            out.append((cv2.resize(img, (w, h)) if h != w else img, label))
        return out
    return [render_scene(rng, w, h) for _ in range(count)]


def render_many(kind: str, seed0: int, n: int, size_wh: tuple[int, int], workers: int) -> list[Any]:
    jobs = [(kind, seed0 + k, min(CHUNK, n - k * CHUNK), size_wh) for k in range(-(-n // CHUNK))]
    with Pool(workers) as pool:
        return [item for chunk in pool.map(_render_chunk, jobs) for item in chunk]


# --------------------------------------------------------------------------- ultralytics


def _offline_font() -> None:
    """Ultralytics' dataset check wants Arial.ttf in its config dir and downloads it otherwise:
    put matplotlib's DejaVuSans there under that name so nothing is fetched."""
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    target = Path(os.environ["YOLO_CONFIG_DIR"])
    target.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copy(font, target / name)


def train_yolo(arch: str, args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    from ultralytics import YOLO
    from ultralytics import __version__ as ul_version

    _offline_font()
    data = write_yolo_dataset(work / "data", args.yolo_images, args.yolo_images // 10, args.workers)
    model = YOLO(f"{arch}.yaml")
    t0 = time.time()
    extra = {"time": args.yolo_time} if args.yolo_time else {}
    model.train(
        data=str(data), epochs=args.yolo_epochs, imgsz=YOLO_IMGSZ, batch=args.yolo_batch,
        device=args.device, workers=args.workers, amp=False, plots=False, pretrained=False,
        project=str(work / "runs"), name=arch, exist_ok=True, seed=0, deterministic=True,
        cache="ram", verbose=False, patience=1000, **extra,
    )  # fmt: skip
    seconds = round(time.time() - t0, 1)
    trainer = model.trainer
    best = YOLO(str(trainer.best))
    dynamic = arch == "yolov8n"
    onnx_file = best.export(
        format="onnx", imgsz=YOLO_IMGSZ, dynamic=dynamic, simplify=True, device="cpu", batch=1
    )
    info = {
        "framework": f"ultralytics {ul_version}, torch {torch.__version__}",
        "model_yaml": f"{arch}.yaml (no pretrained weights)",
        "train": {
            "seconds": seconds, "device": _device_name(args.device),
            "epochs": int(trainer.epoch) + 1, "images": args.yolo_images,
            "imgsz": YOLO_IMGSZ, "batch": args.yolo_batch, "amp": False,
            "val_mAP50_ultralytics": round(float(trainer.metrics.get("metrics/mAP50(B)", 0)), 4),
        },
        "export": f"YOLO.export(format='onnx', imgsz={YOLO_IMGSZ}, dynamic={dynamic}, "
        "simplify=True)",
        "parameters": sum(p.numel() for p in best.model.parameters()),
    }  # fmt: skip
    return Path(onnx_file), info


# --------------------------------------------------------------------------- torch models


def _device_name(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return f"cuda {torch.cuda.get_device_name(0)}"
    return f"cpu {platform.machine()} x{os.cpu_count()}"


def _torch_device(device: str) -> str:
    return "cpu" if device == "cpu" else f"cuda:{device}" if device.isdigit() else device


def train_classifier_bundle(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    spec = rae.SPECS[name]
    h, w = spec.size_hw
    arch = {"mobilenetv3-shapes": "mobilenetv3", "resnet-shapes": "resnet", "anon-dims": "smallcnn"}
    data = render_many("patch", SEED_ANON_TRAIN if name == "anon-dims" else SEED_CLS_TRAIN,
                       args.cls_images, (w, h), args.workers)  # fmt: skip
    x = nets.to_tensor([d[0] for d in data], spec.mean, spec.std)
    y = torch.tensor([d[1] for d in data], dtype=torch.long)
    torch.manual_seed(0)
    model = nets.make_classifier(arch[name], len(LABELS))
    res = nets.train_classifier(
        model, x, y, epochs=args.cls_epochs, device=_torch_device(args.device)
    )
    sample = torch.zeros(1, 3, h, w)
    if name == "anon-dims":
        nets.export_anonymous(model, out / "model.onnx", sample)
        export = "torch.onnx.export (TorchScript), then input dims edited with onnx: "
        export += "batch -1, H/W anonymous"
    else:
        axes = {"x": {0: "N", 2: "?", 3: "?"}, "logits": {0: "N"}}
        nets.export_preserve_bn(
            model, out / "model.onnx", sample, output="logits", dynamic_axes=axes
        )
        export = "torch.onnx.export (TorchScript), TrainingMode.PRESERVE, dynamic_axes N/?/?"
    return _torch_info(model, res, args, export, f"{arch[name]}")


def train_dbnet_bundle(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    spec = rae.SPECS["dbnet-shapes"]
    h, w = spec.size_hw
    data = render_many("scene", SEED_SEG_TRAIN, args.seg_images, (w, h), args.workers)
    x = nets.to_tensor([d[0] for d in data], spec.mean, spec.std)
    masks = np.stack([scenes.box_mask(d[1], (w, h)) for d in data]).astype(np.float32)
    torch.manual_seed(0)
    model = nets.TinyDB()
    res = nets.train_segmenter(model, x, torch.from_numpy(masks)[:, None], epochs=args.seg_epochs,
                               device=_torch_device(args.device))  # fmt: skip
    axes = {"x": {0: "N"}, "maps": {0: "N"}}
    nets.export_preserve_bn(
        model, out / "model.onnx", torch.zeros(1, 3, h, w), output="maps", dynamic_axes=axes
    )
    return _torch_info(
        model,
        res,
        args,
        "torch.onnx.export (TorchScript), TrainingMode.PRESERVE, batch N",
        "TinyDB",
    )


def _torch_info(model: torch.nn.Module, res: nets.TrainResult, args: argparse.Namespace,
                export: str, arch: str) -> dict[str, Any]:  # fmt: skip
    import torchvision

    return {
        "framework": f"torch {torch.__version__}, torchvision {torchvision.__version__}",
        "architecture": arch,
        "train": {"seconds": res.seconds, "device": _device_name(args.device), "epochs": res.epochs,
                  "images": res.images, "final_loss": res.final_loss},
        "export": f"{export}, opset {nets.OPSET}",
        "parameters": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip


# --------------------------------------------------------------------------- bundles


def make_bundle(name: str, args: argparse.Namespace) -> None:
    out = args.out / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log(f"{name}: training on {args.device}")
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        if name in ("yolov8n-shapes", "yolo11n-shapes"):
            onnx_file, info = train_yolo(name.split("-", maxsplit=1)[0], args, Path(tmp))
            shutil.copy(onnx_file, out / "model.onnx")
        elif name == "dbnet-shapes":
            info = train_dbnet_bundle(args, out)
        else:
            info = train_classifier_bundle(name, args, out)
    docs.write_static_files(out, rae.SPECS[name])
    info["script"] = "scripts/make_real_assets.py"
    info["quick"] = bool(args.quick)
    data = rae.update_metrics(out, rae.SPECS[name], info)
    docs.write_readme(out, rae.SPECS[name], data)
    log(f"{name}: {json.dumps(data['float'])}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=rae.FIXTURES)
    ap.add_argument("--device", default="cpu", help="'cpu' (default) or a CUDA index such as 0")
    ap.add_argument("--only", default=",".join(rae.SPECS), help="comma-separated bundle names")
    ap.add_argument("--quick", action="store_true", help="tiny data and one epoch (smoke run)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--yolo-images", type=int, default=3000)
    ap.add_argument("--yolo-epochs", type=int, default=60)
    ap.add_argument("--yolo-time", type=float, default=0.0, help="hours; overrides --yolo-epochs")
    ap.add_argument("--yolo-batch", type=int, default=32)
    ap.add_argument("--cls-images", type=int, default=6000)
    ap.add_argument("--cls-epochs", type=int, default=12)
    ap.add_argument("--seg-images", type=int, default=1200)
    ap.add_argument("--seg-epochs", type=int, default=12)
    args = ap.parse_args(argv)
    if args.quick:
        args.yolo_images, args.yolo_epochs, args.yolo_time, args.yolo_batch = 40, 1, 0.0, 8
        args.cls_images, args.cls_epochs, args.seg_images, args.seg_epochs = 256, 1, 16, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.use_deterministic_algorithms(False)
    for name in args.only.split(","):
        if name not in rae.SPECS:
            raise SystemExit(f"unknown bundle {name!r}; choose from {', '.join(rae.SPECS)}")
        make_bundle(name, args)
    shutil.rmtree(_YOLO_HOME, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
