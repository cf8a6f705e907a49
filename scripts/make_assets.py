#!/usr/bin/env python3
"""Train and export the small test models, and write the sample video, held-out and calib sets.

Everything is made from ``agent.vision.synthetic`` (rendered shapes on noisy backgrounds) with fixed
seeds, so a rerun gives the same data; training runs on CPU with torch's deterministic
algorithms and a fixed thread count.

Outputs (paths relative to ``--out``, which defaults to the repository root):

    agent/data/models/shapes-det/{model.onnx,labels.txt,metrics.json}  YOLOv8-layout detector
    agent/data/models/shapes-cls/{model.onnx,labels.txt,metrics.json}  4-class classifier
    agent/data/samples/shapes.mp4                                     10 s, 15 fps, 640x360
    agent/data/heldout/shapes-det/  64 JPEG scenes + labels.json
    agent/data/heldout/shapes-cls/  200 JPEG patches + labels.json
    agent/data/calib/shapes-det/, agent/data/calib/shapes-cls/  96 JPEG calibration frames each
    agent/data/README.md            how they were made, specs and the held-out metrics

The metrics are measured with ONNX Runtime on the exported ONNX files, on the held-out images
as written to disk. Needs torch (``pip install -r scripts/requirements-assets.txt``); the
agent and its tests do not.

    python scripts/make_assets.py            # full run, ~25 min on 2 CPU cores
    python scripts/make_assets.py --quick    # smoke run into a temporary directory
"""

# pyright: reportMissingImports=false

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.vision.synthetic import LABELS, SceneAnimator, Shape, render_patch, render_scene  # noqa: E402

# Seeds: one stream per purpose, so the sets never share images.
SEED_DET_TRAIN = 1001
SEED_DET_HELDOUT = 2002
SEED_DET_CALIB = 3003
SEED_CLS_TRAIN = 4004
SEED_CLS_HELDOUT = 5005
SEED_CLS_CALIB = 6006
SEED_VIDEO = 7007
SEED_TORCH = 8008

DET_SIZE = 256  # training input, square letterbox
CLS_SIZE = 64
STRIDES = (8, 16, 32)
PAD_VALUE = 114
OPSET = 13
NUM_CLASSES = len(LABELS)

CONF_THRES_EVAL = 0.001
CONF_THRES_PR = 0.25
NMS_IOU = 0.5
MATCH_IOU = 0.5
MAX_DET = 100


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# =============================================================================== preprocessing


@dataclass(frozen=True)
class Letterbox:
    scale: float
    left: int
    top: int


def letterbox(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Ultralytics-style letterbox to ``size`` = (H, W): keep aspect, centre, pad with 114."""
    h0, w0 = img.shape[:2]
    th, tw = size
    r = min(th / h0, tw / w0)
    nw, nh = round(w0 * r), round(h0 * r)
    if (nw, nh) != (w0, h0):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (tw - nw) / 2.0, (th - nh) / 2.0
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = cv2.copyMakeBorder(
        img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    return out, Letterbox(r, left, top)


def to_nchw(images_bgr: list[np.ndarray]) -> np.ndarray:
    """BGR uint8 HxWx3 images (same size) -> RGB float32 NCHW in [0, 1]."""
    arr = np.stack([im[:, :, ::-1] for im in images_bgr]).astype(np.float32) / 255.0
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def jpeg_roundtrip(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    q = int(rng.integers(70, 96))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    assert ok
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert out is not None
    return np.asarray(out)


def read_bgr(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    return np.asarray(img)


# =============================================================================== models


def cbr(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ShapesClassifier(nn.Module):
    """64x64 -> 4 logits: Conv-BN-ReLU blocks 16-32-64, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            cbr(3, 16, s=2),  # 32
            cbr(16, 16),
            cbr(16, 32, s=2),  # 16
            cbr(32, 32),
            cbr(32, 64, s=2),  # 8
            cbr(64, 64),
        )
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class ShapesDetector(nn.Module):
    """Tiny anchor-free detector: stride-2 stages 16-32-64-96-96, top-down FPN, shared head.

    ``forward`` returns the raw per-level maps [B, 4 + C, H/s, W/s] (ltrb logits, class logits)
    for s in 8, 16, 32. :class:`DetectorExport` decodes them into the YOLOv8 output layout.
    """

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.stem = cbr(3, 16, s=2)  # /2
        self.c2 = nn.Sequential(cbr(16, 32, s=2), cbr(32, 32))  # /4
        self.c3 = nn.Sequential(cbr(32, 64, s=2), cbr(64, 64))  # /8
        self.c4 = nn.Sequential(cbr(64, 96, s=2), cbr(96, 96))  # /16
        self.c5 = cbr(96, 96, s=2)  # /32
        self.lat3 = cbr(64, hidden, k=1)
        self.lat4 = cbr(96, hidden, k=1)
        self.lat5 = cbr(96, hidden, k=1)
        self.head = cbr(hidden, hidden)
        self.pred = nn.Conv2d(hidden, 4 + NUM_CLASSES, 1)
        with torch.no_grad():  # start with low class scores (focal-loss prior, p = 0.01)
            self.pred.bias[4:].fill_(-math.log(99.0))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.c3(self.c2(self.stem(x)))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p5 = self.lat5(c5)
        p4 = self.lat4(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
        p3 = self.lat3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        return [self.pred(self.head(p)) for p in (p3, p4, p5)]


def ltrb_from_raw(reg: torch.Tensor, stride: float) -> torch.Tensor:
    return F.softplus(reg) * stride


class DetectorExport(nn.Module):
    """Wraps the detector with in-graph decoding: output [B, 4 + C, A], rows cx, cy, w, h
    (input pixels) then sigmoid class scores; anchors built from the runtime feature size."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.det = det

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for raw, s in zip(self.det(x), STRIDES, strict=True):
            h, w = raw.shape[2], raw.shape[3]
            ax = ((torch.arange(w, dtype=torch.float32) + 0.5) * s).view(1, 1, w)
            ay = ((torch.arange(h, dtype=torch.float32) + 0.5) * s).view(1, h, 1)
            ltrb = ltrb_from_raw(raw[:, :4], float(s))
            lft, top, rgt, bot = ltrb[:, 0], ltrb[:, 1], ltrb[:, 2], ltrb[:, 3]
            cx = ax + (rgt - lft) * 0.5
            cy = ay + (bot - top) * 0.5
            box = torch.stack([cx, cy, lft + rgt, top + bot], dim=1)
            scores = torch.sigmoid(raw[:, 4:])
            outs.append(torch.cat([box, scores], dim=1).flatten(2))
        return torch.cat(outs, dim=2)


def fuse_bn(module: nn.Module) -> nn.Module:
    """Fold every Conv2d+BatchNorm2d pair (inside our Sequential blocks) for export."""
    for name, child in module.named_children():
        if (
            isinstance(child, nn.Sequential)
            and len(child) >= 2
            and isinstance(child[0], nn.Conv2d)
            and isinstance(child[1], nn.BatchNorm2d)
        ):
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(child[0], child[1])
            rest = list(child)[2:]
            setattr(module, name, nn.Sequential(fused, *rest))
        else:
            fuse_bn(child)
    return module


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class Ema:
    """Exponential moving average of a model's weights (ramped decay, like YOLOv5/8)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, tau: float = 300.0) -> None:
        import copy

        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1.0 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1.0 - d)
            else:
                v.copy_(msd[k])


def cosine_lr(it: int, total: int, base: float, warmup: int) -> float:
    if it < warmup:
        return base * (it + 1) / warmup
    p = (it - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * p)))


# =============================================================================== classifier


def make_cls_data(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs = np.empty((n, CLS_SIZE, CLS_SIZE, 3), dtype=np.uint8)
    ys = np.empty(n, dtype=np.int64)
    for i in range(n):
        size = int(rng.integers(40, 129))
        img, label = render_patch(rng, size)
        if rng.random() < 0.5:
            img = jpeg_roundtrip(rng, img)
        xs[i] = cv2.resize(img, (CLS_SIZE, CLS_SIZE), interpolation=cv2.INTER_LINEAR)
        ys[i] = label
    t = torch.from_numpy(np.ascontiguousarray(xs[..., ::-1].transpose(0, 3, 1, 2)))
    return t, torch.from_numpy(ys)


def augment_dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(3)
    k = int(torch.randint(0, 4, (1,), generator=g).item())
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def train_classifier(n_train: int, iters: int, batch: int) -> tuple[ShapesClassifier, float]:
    log(f"classifier: rendering {n_train} training patches")
    xs, ys = make_cls_data(np.random.default_rng(SEED_CLS_TRAIN), n_train)
    model = ShapesClassifier()
    log(f"classifier: {n_params(model)} parameters, {iters} iterations of batch {batch}")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    g = torch.Generator().manual_seed(SEED_TORCH)
    t0 = time.perf_counter()
    model.train()
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(it, iters, 3e-3, min(100, iters // 10 + 1))
        idx = torch.randint(0, n_train, (batch,), generator=g)
        x = augment_dihedral(xs[idx].float() / 255.0, g)
        loss = F.cross_entropy(model(x), ys[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 200 == 0 or it == iters - 1:
            log(f"classifier: iter {it:5d}/{iters}  loss {loss.item():.4f}")
    return model.eval(), time.perf_counter() - t0


# =============================================================================== detector data


def make_det_data(
    rng: np.random.Generator, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Letterboxed training scenes: images uint8 [N,3,S,S] RGB, boxes [N,M,4], labels [N,M]."""
    max_m = 5
    xs = np.empty((n, DET_SIZE, DET_SIZE, 3), dtype=np.uint8)
    boxes = np.zeros((n, max_m, 4), dtype=np.float32)
    labels = np.full((n, max_m), -1, dtype=np.int64)
    for i in range(n):
        if rng.random() < 0.7:
            w, h = 640, 360
        else:  # other aspect ratios, so the letterbox padding and scale vary
            w, h = int(rng.integers(240, 641)), int(rng.integers(240, 481))
        img, shapes = render_scene(rng, w, h, n_shapes=(1, max_m))
        if rng.random() < 0.5:
            img = jpeg_roundtrip(rng, img)
        lb_img, lb = letterbox(img, (DET_SIZE, DET_SIZE))
        xs[i] = lb_img
        for j, s in enumerate(shapes):
            x1, y1, x2, y2 = s.box
            boxes[i, j] = (
                x1 * lb.scale + lb.left,
                y1 * lb.scale + lb.top,
                x2 * lb.scale + lb.left,
                y2 * lb.scale + lb.top,
            )
            labels[i, j] = s.label
        if i % 1000 == 0:
            log(f"detector: rendered {i}/{n} scenes")
    t = torch.from_numpy(np.ascontiguousarray(xs[..., ::-1].transpose(0, 3, 1, 2)))
    return t, torch.from_numpy(boxes), torch.from_numpy(labels)


def flip_batch(
    x: torch.Tensor, boxes: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal / vertical flips of a square batch (per batch, boxes follow)."""
    size = x.shape[-1]
    boxes = boxes.clone()
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(3)
        boxes[..., [0, 2]] = size - boxes[..., [2, 0]]
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(2)
        boxes[..., [1, 3]] = size - boxes[..., [3, 1]]
    return x, boxes


@dataclass
class Anchors:
    points: torch.Tensor  # [A, 2] x, y centres in input pixels
    strides: torch.Tensor  # [A]
    lo: torch.Tensor  # [A] smallest object side (max of w, h) this level learns
    hi: torch.Tensor  # [A] largest


# object-size ranges per level on max(w, h) in input pixels; they overlap on purpose
LEVEL_RANGES = ((0.0, 48.0), (32.0, 96.0), (80.0, 1e9))
CENTER_RADIUS = 1.5  # in strides


def make_anchors(h: int, w: int) -> Anchors:
    pts, st, lo, hi = [], [], [], []
    for s, (a, b) in zip(STRIDES, LEVEL_RANGES, strict=True):
        gh, gw = math.ceil(h / s), math.ceil(w / s)
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        p = torch.stack([(xs.flatten() + 0.5) * s, (ys.flatten() + 0.5) * s], dim=1)
        pts.append(p.float())
        st.append(torch.full((p.shape[0],), float(s)))
        lo.append(torch.full((p.shape[0],), a))
        hi.append(torch.full((p.shape[0],), b))
    return Anchors(torch.cat(pts), torch.cat(st), torch.cat(lo), torch.cat(hi))


def box_iou_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned IoU and GIoU of xyxy boxes [K, 4]."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    cw = torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0])
    ch = torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])
    hull = cw * ch + 1e-7
    return iou, iou - (hull - union) / hull


def det_loss(
    raws: list[torch.Tensor], gt_boxes: torch.Tensor, gt_labels: torch.Tensor, anc: Anchors
) -> tuple[torch.Tensor, dict[str, float]]:
    """FCOS-style assignment (inside box, centre radius, size range per level) with quality
    focal loss on IoU-valued class targets and a GIoU box loss."""
    reg = torch.cat([r[:, :4].flatten(2) for r in raws], dim=2).transpose(1, 2)  # [B,A,4]
    cls = torch.cat([r[:, 4:].flatten(2) for r in raws], dim=2).transpose(1, 2)  # [B,A,C]
    ltrb = F.softplus(reg) * anc.strides[None, :, None]
    ax, ay = anc.points[:, 0], anc.points[:, 1]
    pred = torch.stack(
        [ax - ltrb[..., 0], ay - ltrb[..., 1], ax + ltrb[..., 2], ay + ltrb[..., 3]], dim=-1
    )
    with torch.no_grad():
        valid = gt_labels >= 0  # [B,M]
        g = gt_boxes[:, None, :, :]  # [B,1,M,4]
        axm, aym = ax[None, :, None], ay[None, :, None]
        inside = (axm > g[..., 0]) & (axm < g[..., 2]) & (aym > g[..., 1]) & (aym < g[..., 3])
        gcx, gcy = (g[..., 0] + g[..., 2]) / 2, (g[..., 1] + g[..., 3]) / 2
        rad = CENTER_RADIUS * anc.strides[None, :, None]
        center = ((axm - gcx).abs() < rad) & ((aym - gcy).abs() < rad)
        side = torch.maximum(g[..., 2] - g[..., 0], g[..., 3] - g[..., 1])
        in_range = (side >= anc.lo[None, :, None]) & (side <= anc.hi[None, :, None])
        cand = inside & center & in_range & valid[:, None, :]
        # every object gets at least its nearest anchor on a level whose range fits it
        d2 = (axm - gcx) ** 2 + (aym - gcy) ** 2 + (~in_range).float() * 1e9
        near = d2.argmin(dim=1)  # [B,M]
        bi, mi = valid.nonzero(as_tuple=True)
        cand[bi, near[bi, mi], mi] = True
        area = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
        cost = torch.where(cand, area.expand_as(cand), torch.full_like(area, 1e12).expand_as(cand))
        best = cost.argmin(dim=2)  # [B,A] smallest object wins an ambiguous anchor
        pos = cand.any(dim=2)
        tbox = torch.gather(gt_boxes, 1, best[..., None].expand(-1, -1, 4))  # [B,A,4]
        tlab = torch.gather(gt_labels, 1, best)  # [B,A]
    n_pos = max(int(pos.sum().item()), 1)
    iou, giou = box_iou_giou(pred[pos], tbox[pos])
    target = torch.zeros_like(cls)
    target[pos, tlab[pos]] = iou.detach().clamp(min=0.0)
    p = torch.sigmoid(cls)
    qfl = F.binary_cross_entropy_with_logits(cls, target, reduction="none")
    qfl = (qfl * (p - target).abs().pow(2.0)).sum() / n_pos
    box = (1.0 - giou).sum() / n_pos
    loss = qfl + 2.0 * box
    return loss, {"qfl": qfl.item(), "giou": box.item(), "iou": iou.mean().item()}


def train_detector(n_train: int, iters: int, batch: int) -> tuple[ShapesDetector, float]:
    log(f"detector: rendering {n_train} training scenes (letterboxed to {DET_SIZE})")
    xs, boxes, labels = make_det_data(np.random.default_rng(SEED_DET_TRAIN), n_train)
    model = ShapesDetector().to(memory_format=torch.channels_last)
    ema = Ema(model)
    anc = make_anchors(DET_SIZE, DET_SIZE)
    log(f"detector: {n_params(model)} parameters, {anc.points.shape[0]} anchors, "
        f"{iters} iterations of batch {batch}")  # fmt: skip
    base_lr = 2e-3
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=base_lr,
    )
    g = torch.Generator().manual_seed(SEED_TORCH + 1)
    t0 = time.perf_counter()
    model.train()
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(it, iters, base_lr, min(200, iters // 10 + 1))
        idx = torch.randint(0, n_train, (batch,), generator=g)
        x = xs[idx].float().div_(255.0)
        x, bx = flip_batch(x, boxes[idx], g)
        x = x.contiguous(memory_format=torch.channels_last)
        loss, parts = det_loss(model(x), bx, labels[idx], anc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update(model)
        if it % 100 == 0 or it == iters - 1:
            el = time.perf_counter() - t0
            log(f"detector: iter {it:5d}/{iters}  loss {loss.item():.4f}  qfl {parts['qfl']:.4f}"
                f"  giou {parts['giou']:.4f}  iou {parts['iou']:.3f}  {el:.0f}s")  # fmt: skip
    return ema.model.eval().to(memory_format=torch.contiguous_format), time.perf_counter() - t0


# =============================================================================== export


def export_onnx(
    model: nn.Module,
    path: Path,
    sample: torch.Tensor,
    output_name: str,
    dynamic_axes: dict[str, dict[int, str]],
    *,
    static_output_dims: dict[int, int] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=["images"],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    m.producer_name = "edge-agent scripts/make_assets.py"
    m.doc_string = f"trained on agent.vision.synthetic shapes; labels: {', '.join(LABELS)}"
    set_output_dims(m, static_output_dims or {})
    onnx.save(m, str(path))
    ops = sorted({n.op_type for n in m.graph.node})
    assert "BatchNormalization" not in ops, ops
    log(f"exported {path} ({path.stat().st_size / 1024:.0f} KiB), ops: {', '.join(ops)}")


def set_output_dims(m: onnx.ModelProto, dims: dict[int, int]) -> None:
    """Pin output dims that shape inference leaves symbolic (the detector's 4 + C rows)."""
    shape = m.graph.output[0].type.tensor_type.shape
    for i, v in dims.items():
        shape.dim[i].Clear()
        shape.dim[i].dim_value = v
    onnx.checker.check_model(m, full_check=True)


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(sess: ort.InferenceSession, output: str, x: np.ndarray) -> np.ndarray:
    return np.asarray(sess.run([output], {"images": x})[0])


# =============================================================================== evaluation


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a [N,4] against b [M,4] -> [N,M]."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    iw, ih = np.clip(iw, 0, None), np.clip(ih, 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float) -> np.ndarray:
    """Greedy NMS; returns kept indices in descending score order."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = iou_matrix(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_thres]
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    out: np.ndarray, lb: Letterbox, orig_hw: tuple[int, int], conf_thres: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's [4+C, A] output -> boxes (orig pixels, xyxy), scores, classes after
    class-aware NMS (best class per anchor, IoU 0.5, at most 100)."""
    pred = out.T  # [A, 4+C]
    cls_scores = pred[:, 4:]
    cls = cls_scores.argmax(axis=1)
    conf = cls_scores[np.arange(pred.shape[0]), cls]
    m = conf > conf_thres
    xywh, conf, cls = pred[m, :4], conf[m], cls[m]
    xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    offset = cls[:, None].astype(np.float32) * 4096.0  # class-aware NMS via coordinate offset
    keep = nms(xyxy + offset, conf, NMS_IOU)[:MAX_DET]
    xyxy, conf, cls = xyxy[keep], conf[keep], cls[keep]
    xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - lb.left) / lb.scale
    xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - lb.top) / lb.scale
    h, w = orig_hw
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
    return xyxy, conf, cls


def match(
    dets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    gts: list[tuple[np.ndarray, np.ndarray]],
    cls_id: int,
    min_conf: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """VOC-style greedy matching for one class: (scores sorted desc, tp flags, n_gt)."""
    recs: list[tuple[float, int, int]] = []  # score, image, det index
    for i, (_, sc, cl) in enumerate(dets):
        for j in np.nonzero((cl == cls_id) & (sc >= min_conf))[0]:
            recs.append((float(sc[j]), i, int(j)))
    recs.sort(key=lambda r: -r[0])
    used = [np.zeros(int((g_cls == cls_id).sum()), dtype=bool) for _, g_cls in gts]
    n_gt = sum(u.size for u in used)
    tp = np.zeros(len(recs), dtype=bool)
    for k, (_, i, j) in enumerate(recs):
        g_box, g_cls = gts[i]
        gb = g_box[g_cls == cls_id]
        if gb.shape[0] == 0:
            continue
        ious = iou_matrix(dets[i][0][j : j + 1], gb)[0]
        best = int(ious.argmax())
        if ious[best] >= MATCH_IOU and not used[i][best]:
            used[i][best] = True
            tp[k] = True
    return np.asarray([r[0] for r in recs], dtype=np.float64), tp, n_gt


def average_precision(tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP (VOC 2010+) from tp flags sorted by descending score."""
    if n_gt == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, tp.size + 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def evaluate_detector(onnx_path: Path, heldout_dir: Path) -> dict[str, Any]:
    sess = ort_session(onnx_path)
    ann: dict[str, list[dict[str, Any]]] = json.loads((heldout_dir / "labels.json").read_text())
    dets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    gts: list[tuple[np.ndarray, np.ndarray]] = []
    t_inf = 0.0
    for name in sorted(ann):
        img = read_bgr(heldout_dir / name)
        lb_img, lb = letterbox(img, (DET_SIZE, DET_SIZE))
        t0 = time.perf_counter()
        out = ort_run(sess, "output0", to_nchw([lb_img]))
        t_inf += time.perf_counter() - t0
        dets.append(postprocess(out[0], lb, (img.shape[0], img.shape[1]), CONF_THRES_EVAL))
        objs = ann[name]
        gts.append(
            (
                np.asarray([o["box"] for o in objs], dtype=np.float32).reshape(-1, 4),
                np.asarray([o["label"] for o in objs], dtype=np.int64),
            )
        )
    per_class: dict[str, dict[str, float]] = {}
    aps: list[float] = []
    tp_pr = fp_pr = n_gt_all = 0
    for c, name in enumerate(LABELS):
        _, tp, n_gt = match(dets, gts, c, 0.0)
        ap = average_precision(tp, n_gt)
        _, tp25, _ = match(dets, gts, c, CONF_THRES_PR)
        tp_c, fp_c = int(tp25.sum()), int((~tp25).sum())
        per_class[name] = {
            "ap50": round(ap, 4),
            "precision": round(tp_c / max(tp_c + fp_c, 1), 4),
            "recall": round(tp_c / max(n_gt, 1), 4),
            "instances": n_gt,
        }
        if not math.isnan(ap):
            aps.append(ap)
        tp_pr, fp_pr, n_gt_all = tp_pr + tp_c, fp_pr + fp_c, n_gt_all + n_gt
    return {
        "images": len(ann),
        "instances": n_gt_all,
        "mAP50": round(float(np.mean(aps)), 4),
        "precision": round(tp_pr / max(tp_pr + fp_pr, 1), 4),
        "recall": round(tp_pr / max(n_gt_all, 1), 4),
        "conf_threshold_pr": CONF_THRES_PR,
        "conf_threshold_map": CONF_THRES_EVAL,
        "nms_iou": NMS_IOU,
        "match_iou": MATCH_IOU,
        "per_class": per_class,
        "ort_ms_per_image": round(1000.0 * t_inf / max(len(ann), 1), 2),
    }


def evaluate_classifier(onnx_path: Path, heldout_dir: Path) -> dict[str, Any]:
    sess = ort_session(onnx_path)
    ann: dict[str, int] = json.loads((heldout_dir / "labels.json").read_text())
    names = sorted(ann)
    batch = [
        cv2.resize(read_bgr(heldout_dir / n), (CLS_SIZE, CLS_SIZE), interpolation=cv2.INTER_LINEAR)
        for n in names
    ]
    logits = ort_run(sess, "logits", to_nchw(batch))
    pred = logits.argmax(axis=1)
    truth = np.asarray([ann[n] for n in names])
    per_class = {
        LABELS[c]: round(float((pred[truth == c] == c).mean()), 4)
        for c in range(NUM_CLASSES)
        if (truth == c).any()
    }
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for t, p in zip(truth, pred, strict=True):
        confusion[t, p] += 1
    return {
        "images": len(names),
        "top1": round(float((pred == truth).mean()), 4),
        "per_class_top1": per_class,
        "confusion": confusion.tolist(),
    }


def check_detector_onnx(model: nn.Module, onnx_path: Path) -> dict[str, Any]:
    """Run the ONNX at several input sizes; compare with torch; check the anchor count."""
    sess = ort_session(onnx_path)
    g = torch.Generator().manual_seed(0)
    shapes: dict[str, list[int]] = {}
    max_diff = 0.0
    for n, h, w in ((1, 256, 256), (2, 320, 320), (1, 384, 640)):
        x = torch.rand(n, 3, h, w, generator=g)
        out = ort_run(sess, "output0", x.numpy())
        a = sum(math.ceil(h / s) * math.ceil(w / s) for s in STRIDES)
        assert out.shape == (n, 4 + NUM_CLASSES, a), (out.shape, a)
        with torch.no_grad():
            ref = model(x).numpy()
        max_diff = max(max_diff, float(np.abs(ref - out).max()))
        shapes[f"{h}x{w}"] = list(out.shape)
    log(f"detector ONNX output shapes {shapes}; max |torch - ort| {max_diff:.2e}")
    assert max_diff < 1e-2, max_diff
    return {"output_shapes": shapes, "max_abs_diff_vs_torch": max_diff}


# =============================================================================== files


def write_jpeg(path: Path, img: np.ndarray, quality: int = 90) -> None:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())


def clean_dir(d: Path, patterns: tuple[str, ...]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for pat in patterns:
        for f in d.glob(pat):
            f.unlink()


def box_json(s: Shape) -> dict[str, Any]:
    return {"label": s.label, "name": LABELS[s.label], "box": [round(v, 2) for v in s.box]}


def write_det_set(d: Path, seed: int, n: int, with_labels: bool) -> None:
    clean_dir(d, ("*.jpg", "labels.json"))
    rng = np.random.default_rng(seed)
    ann: dict[str, list[dict[str, Any]]] = {}
    for i in range(n):
        img, shapes = render_scene(rng, 640, 360)
        name = f"{i:03d}.jpg"
        write_jpeg(d / name, img, 90)
        ann[name] = [box_json(s) for s in shapes]
    if with_labels:
        (d / "labels.json").write_text(json.dumps(ann, indent=1) + "\n")


def write_cls_set(d: Path, seed: int, n: int, with_labels: bool) -> None:
    clean_dir(d, ("*.jpg", "*.png", "labels.json"))
    rng = np.random.default_rng(seed)
    ann: dict[str, int] = {}
    for i in range(n):
        size = int(rng.integers(48, 113))
        img, label = render_patch(rng, size)
        name = f"{i:03d}.jpg"
        write_jpeg(d / name, img, 95)
        ann[name] = label
    if with_labels:
        (d / "labels.json").write_text(json.dumps(ann, indent=1) + "\n")


def write_video(path: Path, seconds: float, fps: int) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = 640, 360
    n = round(seconds * fps)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened(), "cv2.VideoWriter could not open mp4v"
    anim = SceneAnimator(SEED_VIDEO, w, h, n_shapes=5)
    for _ in range(n):
        frame, _ = anim.next_frame()
        writer.write(frame)
    writer.release()
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), "cv2.VideoCapture cannot read the sample video back"
    reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    read = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (h, w, 3)
        read += 1
    cap.release()
    assert read == n, (read, n)
    log(f"video {path}: {read} frames read back (reported {reported}), "
        f"{path.stat().st_size / 1024:.0f} KiB")  # fmt: skip
    return {"frames": n, "fps": fps, "width": w, "height": h, "seed": SEED_VIDEO}


def rel(p: Path, root: Path) -> str:
    return str(p.relative_to(root))


def kib(p: Path) -> str:
    return f"{p.stat().st_size / 1024:.0f} KiB"


def dir_kib(d: Path) -> str:
    return f"{sum(f.stat().st_size for f in d.iterdir() if f.is_file()) / 1024:.0f} KiB"


def md_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = ("", "")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_readme(root: Path, info: dict[str, Any]) -> None:
    det, cls = info["det"], info["cls"]
    dm, cm = det["metrics"], cls["metrics"]
    data = root / "agent" / "data"
    labels = ", ".join(f"{i} `{n}`" for i, n in enumerate(LABELS))
    det_spec = md_table([
        ("input", "`images` float32 `[batch, 3, height, width]`; all three axes dynamic "
                  "(use multiples of 32); trained at 256×256"),
        ("output", "`output0` float32 `[batch, 8, A]`, A = Σ over strides 8, 16, 32 of "
                   "(H/s)·(W/s): 1344 at 256×256, 2100 at 320×320"),
        ("rows 0–3", "cx, cy, w, h in input pixels (of the letterboxed image)"),
        ("rows 4–7", f"class scores, already sigmoid-ed (0–1): {', '.join(LABELS)}"),
        ("post-processing", "not in the graph: per anchor take the best class, threshold, "
                            "class-aware NMS (IoU 0.5), undo the letterbox"),
        ("architecture", "Conv-BN-ReLU stride-2 stages 16-32-64-96-96 (two convs per stage up "
                         "to /16), top-down FPN (64 ch) on strides 8/16/32, one shared 3×3 head "
                         "+ 1×1 predictor; anchor-free (one point per cell, like YOLOv8/FCOS); "
                         "box = ltrb distances (softplus × stride), decoded in the graph from "
                         "a grid built with Shape/Range ops"),
        ("training", f"{det['iters']} iterations × batch {det['batch']} from {det['n_train']} "
                     "rendered scenes (70 % 640×360, the rest 240–640 × 240–480; half "
                     "JPEG-compressed), random flips; FCOS-style assignment (inside the box, "
                     f"within {CENTER_RADIUS} strides of its centre, size range per level), "
                     "quality focal loss on IoU targets + GIoU box loss; AdamW, cosine LR, EMA "
                     "weights; "
                     "BN folded at export"),
        ("parameters", f"{det['params']:,}"),
        ("file", f"{det['size']}, opset {OPSET}, ops: {', '.join(det['ops'])}"),
    ])  # fmt: skip
    det_metrics = md_table(
        [
            (f"mAP@0.5 (VOC all-point AP, mean of 4 classes, conf ≥ {CONF_THRES_EVAL})",
             f"**{dm['mAP50']:.3f}**"),
            (f"precision at conf {CONF_THRES_PR}, IoU {MATCH_IOU}", f"**{dm['precision']:.3f}**"),
            (f"recall at conf {CONF_THRES_PR}, IoU {MATCH_IOU}", f"**{dm['recall']:.3f}**"),
            ("ONNX Runtime CPU latency (2 threads, batch 1)", f"{dm['ort_ms_per_image']:.1f} ms"),
        ],
        ("metric", "value"),
    )  # fmt: skip
    det_classes = md_table(
        [
            (n, str(v["instances"]), f"{v['ap50']:.3f}", f"{v['precision']:.3f}",
             f"{v['recall']:.3f}")
            for n, v in dm["per_class"].items()
        ],
        ("class", "instances", "AP@0.5", "P@0.25", "R@0.25"),
    )  # fmt: skip
    cls_spec = md_table([
        ("input", "`images` float32 `[batch, 3, 64, 64]`, batch axis dynamic (`batch`)"),
        ("output", "`logits` float32 `[batch, 4]`, raw logits (no softmax)"),
        ("architecture", "Conv-BN-ReLU ×6 (16, 16, 32, 32, 64, 64 channels; stride 2 at the "
                         "1st, 3rd and 5th), global average pool, linear 64→4"),
        ("training", f"{cls['iters']} iterations × batch {cls['batch']} from {cls['n_train']} "
                     "rendered patches (40–128 px, stretched to 64; half JPEG-compressed), "
                     "random flips and 90° rotations, label smoothing 0.05, AdamW, cosine LR; "
                     "BN folded at export"),
        ("parameters", f"{cls['params']:,}"),
        ("file", f"{cls['size']}, opset {OPSET}, ops: {', '.join(cls['ops'])}"),
    ])  # fmt: skip
    cls_per_class = ", ".join(f"{k} {v:.3f}" for k, v in cm["per_class_top1"].items())
    files = md_table(
        [
            ("`samples/shapes.mp4`",
             f"{info['video']['frames']} frames, {info['video']['fps']} fps, 640×360, mp4v; "
             f"`SceneAnimator(seed={SEED_VIDEO}, n_shapes=5)`: drifting, spinning, bouncing "
             "shapes; reads back with `cv2.VideoCapture`", info["video_size"]),
            ("`heldout/shapes-det/`", "see above", info["heldout_det_size"]),
            ("`heldout/shapes-cls/`", "see above", info["heldout_cls_size"]),
            ("`calib/shapes-det/`",
             f"96 JPEG 640×360 scenes (seed {SEED_DET_CALIB}) for INT8 calibration",
             info["calib_det_size"]),
            ("`calib/shapes-cls/`",
             f"96 JPEG patches of 48–112 px (seed {SEED_CLS_CALIB}) for INT8 calibration",
             info["calib_cls_size"]),
            ("`models/*/metrics.json`", "the numbers on this page, machine-readable", ""),
        ],
        ("path", "what", "size"),
    )  # fmt: skip
    text = f"""# Test assets: shapes models, sample video, held-out and calibration sets

Small **trained** models and data made from `agent/vision/synthetic.py` (coloured circles, squares,
triangles and crosses on noisy gradient / blotch / stripe backgrounds with clutter lines), so
the agent's pipeline, engine builds, INT8 calibration and tests run on real models without any
download. Everything here is regenerated, deterministically (fixed seeds, CPU, deterministic
torch algorithms), by:

```
python3 -m venv .venv-assets
.venv-assets/bin/pip install -r scripts/requirements-assets.txt
.venv-assets/bin/python scripts/make_assets.py    # --quick [--out DIR]: smoke run
```

Made with torch {info["torch"]}, onnx {info["onnx"]}, onnxruntime {info["ort"]},
OpenCV {info["cv2"]}, Python {info["python"]}, {info["cpus"]} CPU threads.
Training time: detector **{det["train_s"] / 60:.1f} min**, classifier
**{cls["train_s"] / 60:.1f} min** (whole script {info["total_s"] / 60:.1f} min).

Labels of both models, by index (also each model's `labels.txt`): {labels}.

## Preprocessing (both models)

BGR frame → RGB, float32, × 1/255 (mean 0, std 1), NCHW. The classifier stretches the patch
to 64×64 (`cv2.resize`, `INTER_LINEAR`); the detector letterboxes to its input size (keep the
aspect ratio, resize with `INTER_LINEAR`, centre, pad with 114; Ultralytics' rounding).

## `models/shapes-det/model.onnx`: detector, YOLOv8 output layout

{det_spec}

Held-out set `heldout/shapes-det/`: {dm["images"]} JPEG 640×360 scenes (quality 90, seed
{SEED_DET_HELDOUT}) with {dm["instances"]} objects; `labels.json` maps each file to a list of
`{{label, name, box: [x1, y1, x2, y2]}}` in original image pixels. Measured with ONNX Runtime
on the exported file at 256×256, letterboxed as above, boxes mapped back to the original
image, best class per anchor, class-aware NMS at IoU {NMS_IOU}, at most {MAX_DET} boxes:

{det_metrics}

{det_classes}

## `models/shapes-cls/model.onnx`: classifier

{cls_spec}

Held-out set `heldout/shapes-cls/`: {cm["images"]} JPEG patches of 48–112 px (quality 95,
seed {SEED_CLS_HELDOUT}); `labels.json` maps each file to its label index. ONNX Runtime
top-1 accuracy: **{cm["top1"]:.4f}** (per class: {cls_per_class}).

## Other files

{files}

The seeds never overlap: training {SEED_DET_TRAIN} / {SEED_CLS_TRAIN} (detector /
classifier), held-out {SEED_DET_HELDOUT} / {SEED_CLS_HELDOUT}, calibration
{SEED_DET_CALIB} / {SEED_CLS_CALIB}, video {SEED_VIDEO}.
"""
    (data / "README.md").write_text(text)


# =============================================================================== main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output root (default: repo root)")
    ap.add_argument("--quick", action="store_true", help="tiny data and few iterations")
    ap.add_argument("--det-iters", type=int, default=None)
    ap.add_argument("--cls-iters", type=int, default=None)
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="assets-quick-")) if args.quick else REPO
    root: Path = args.out.resolve()
    log(f"writing assets under {root}{' (quick)' if args.quick else ''}")

    torch.manual_seed(SEED_TORCH)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    cv2.setNumThreads(1)
    t_start = time.perf_counter()

    det_n, det_iters, det_batch = (256, 30, 16) if args.quick else (8000, 2600, 32)
    cls_n, cls_iters, cls_batch = (512, 30, 64) if args.quick else (12000, 1500, 128)
    det_iters = args.det_iters or det_iters
    cls_iters = args.cls_iters or cls_iters
    # 96 calibration frames: the profiles calibrate on 64 and hold the last 32 out for the gate.
    n_heldout_det, n_heldout_cls, n_calib = (16, 40, 8) if args.quick else (64, 200, 96)

    data = root / "agent" / "data"
    det_dir, cls_dir = data / "models" / "shapes-det", data / "models" / "shapes-cls"
    ho_det, ho_cls = data / "heldout" / "shapes-det", data / "heldout" / "shapes-cls"
    cal_det, cal_cls = data / "calib" / "shapes-det", data / "calib" / "shapes-cls"

    # ---- data that does not depend on the models
    log("writing held-out and calibration sets")
    write_det_set(ho_det, SEED_DET_HELDOUT, n_heldout_det, with_labels=True)
    write_cls_set(ho_cls, SEED_CLS_HELDOUT, n_heldout_cls, with_labels=True)
    write_det_set(cal_det, SEED_DET_CALIB, n_calib, with_labels=False)
    write_cls_set(cal_cls, SEED_CLS_CALIB, n_calib, with_labels=False)
    video = write_video(data / "samples" / "shapes.mp4", 10.0, 15)

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "ort": ort.__version__,
        "cv2": cv2.__version__,
        "python": platform.python_version(),
        "cpus": torch.get_num_threads(),
        "video": video,
    }

    # ---- classifier
    cls_model, cls_s = train_classifier(cls_n, cls_iters, cls_batch)
    cls_params = n_params(cls_model)
    cls_onnx = cls_dir / "model.onnx"
    export_onnx(
        fuse_bn(cls_model),
        cls_onnx,
        torch.zeros(1, 3, CLS_SIZE, CLS_SIZE),
        "logits",
        {"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    (cls_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    cls_metrics = evaluate_classifier(cls_onnx, ho_cls)
    log(f"classifier held-out top-1 (ONNX Runtime): {cls_metrics['top1']:.4f}")

    # ---- detector
    det_model, det_s = train_detector(det_n, det_iters, det_batch)
    det_params = n_params(det_model)
    det_onnx = det_dir / "model.onnx"
    export_model = DetectorExport(fuse_bn(det_model)).eval()
    export_onnx(
        export_model,
        det_onnx,
        torch.zeros(1, 3, DET_SIZE, DET_SIZE),
        "output0",
        {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}},
        static_output_dims={1: 4 + NUM_CLASSES},
    )
    (det_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    det_check = check_detector_onnx(export_model, det_onnx)
    det_metrics = evaluate_detector(det_onnx, ho_det)
    log(f"detector held-out (ONNX Runtime): mAP@0.5 {det_metrics['mAP50']:.4f}  "
        f"P {det_metrics['precision']:.4f}  R {det_metrics['recall']:.4f} @ conf 0.25")  # fmt: skip

    def ops_of(p: Path) -> list[str]:
        return sorted({n.op_type for n in onnx.load(str(p)).graph.node})

    common = {"generator": "agent/vision/synthetic.py", "script": "scripts/make_assets.py",
              "quick": args.quick, "labels": list(LABELS), "opset": OPSET,
              "preprocess": {"color": "RGB", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0],
                             "std": [1.0, 1.0, 1.0], "layout": "NCHW"}}  # fmt: skip
    det_json = {
        **common,
        "model": "shapes-det",
        "task": "detect",
        "input": {"name": "images", "shape": ["batch", 3, "height", "width"],
                  "train_size": [DET_SIZE, DET_SIZE], "resize": "letterbox", "pad_value": 114},
        "output": {"name": "output0", "shape": ["batch", 4 + NUM_CLASSES, "anchors"],
                   "layout": "yolov8", "boxes": "cx,cy,w,h input pixels",
                   "scores": "sigmoid", "strides": list(STRIDES)},
        "parameters": det_params,
        "file_bytes": det_onnx.stat().st_size,
        "train": {"seconds": round(det_s, 1), "iterations": det_iters, "batch": det_batch,
                  "train_images": det_n, "seed": SEED_DET_TRAIN},
        "heldout": {"dir": "agent/data/heldout/shapes-det", "seed": SEED_DET_HELDOUT,
                    **det_metrics},
        "onnx_check": det_check,
    }  # fmt: skip
    cls_json = {
        **common,
        "model": "shapes-cls",
        "task": "classify",
        "input": {"name": "images", "shape": ["batch", 3, CLS_SIZE, CLS_SIZE],
                  "resize": "stretch", "interpolation": "linear"},
        "output": {"name": "logits", "shape": ["batch", NUM_CLASSES], "activation": "none"},
        "parameters": cls_params,
        "file_bytes": cls_onnx.stat().st_size,
        "train": {"seconds": round(cls_s, 1), "iterations": cls_iters, "batch": cls_batch,
                  "train_images": cls_n, "seed": SEED_CLS_TRAIN},
        "heldout": {"dir": "agent/data/heldout/shapes-cls", "seed": SEED_CLS_HELDOUT,
                    **cls_metrics},
    }  # fmt: skip
    (det_dir / "metrics.json").write_text(json.dumps(det_json, indent=2) + "\n")
    (cls_dir / "metrics.json").write_text(json.dumps(cls_json, indent=2) + "\n")

    info.update(
        det={"metrics": det_metrics, "train_s": det_s, "iters": det_iters, "batch": det_batch,
             "n_train": det_n, "params": det_params, "size": kib(det_onnx),
             "ops": ops_of(det_onnx)},
        cls={"metrics": cls_metrics, "train_s": cls_s, "iters": cls_iters, "batch": cls_batch,
             "n_train": cls_n, "params": cls_params, "size": kib(cls_onnx),
             "ops": ops_of(cls_onnx)},
        video_size=kib(data / "samples" / "shapes.mp4"),
        heldout_det_size=dir_kib(ho_det),
        heldout_cls_size=dir_kib(ho_cls),
        calib_det_size=dir_kib(cal_det),
        calib_cls_size=dir_kib(cal_cls),
        total_s=time.perf_counter() - t_start,
    )  # fmt: skip
    write_readme(root, info)

    total = 0
    for p in sorted(data.rglob("*")):
        if p.is_file() and (p.suffix != ".jpg" or p.parent.name == "samples"):
            log(f"  {rel(p, root):50s} {p.stat().st_size / 1024:8.1f} KiB")
        if p.is_file():
            total += p.stat().st_size
    minutes = (time.perf_counter() - t_start) / 60
    log(f"total {total / 1024 / 1024:.2f} MiB; done in {minutes:.1f} min")
    if not args.quick and (cls_metrics["top1"] < 0.97 or det_metrics["mAP50"] < 0.8):
        log("WARNING: below the target accuracy (classifier 0.97 / detector mAP@0.5 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
