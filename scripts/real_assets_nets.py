"""Torch side of ``scripts/make_real_assets.py``: networks, brief training, ``torch.onnx`` export.

* ``mobilenetv3-shapes`` / ``resnet-shapes``: torchvision MobileNetV3-Small and a narrow ResNet
  built from torchvision's ``BasicBlock``; exported with ``torch.onnx.export`` (TorchScript
  exporter) in ``TrainingMode.PRESERVE`` so BatchNormalization nodes stay unfused, and with H and W
  sharing the dim name ``?`` (as PaddlePaddle exports do), batch dynamic.
* ``dbnet-shapes``: a DBNet-like segmenter (conv+BN backbone, FPN top-down path, transposed-conv
  head) whose output is a sigmoid probability map ``[N, 1, 640, 640]``; BN unfused too.
* ``anon-dims``: a small CNN classifier; after export its input's batch dim is set to
  ``dim_value: -1`` and H, W made anonymous (neither dim_value nor dim_param).
"""

# pyright: reportMissingImports=false

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision.models import mobilenet_v3_small
from torchvision.models.resnet import BasicBlock

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 17


def cbr(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class NarrowResNet(nn.Module):
    """ResNet-18 layout (2-2-2-2 torchvision ``BasicBlock``s) at a quarter of the width."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [cbr(3, widths[0], 3, 2), nn.MaxPool2d(3, 2, 1)]
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != w:
                down = nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w))
            layers += [BasicBlock(cin, w, stride, down), BasicBlock(w, w)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class SmallCNN(nn.Module):
    """Four stride-2 conv+BN+ReLU stages, global average pool, linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            cbr(3, 16, 3, 2), cbr(16, 32, 3, 2), cbr(32, 64, 3, 2), cbr(64, 64, 3, 2)
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class TinyDB(nn.Module):
    """DBNet-like: backbone /2../32 with BN, FPN (lateral 1x1, top-down add), fused at /4,
    transposed convs back to full resolution, sigmoid probability map [N, 1, H, W]."""

    def __init__(self, widths: tuple[int, ...] = (16, 24, 48, 64, 96), inner: int = 32) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        cin = 3
        for w in widths:
            stages.append(nn.Sequential(cbr(cin, w, 3, 2), cbr(w, w)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList(nn.Conv2d(w, inner, 1) for w in widths[1:])
        self.smooth = nn.ModuleList(cbr(inner, inner // 2) for _ in widths[1:])
        fused = inner // 2 * len(widths[1:])
        self.head = nn.Sequential(
            cbr(fused, 32),
            nn.ConvTranspose2d(32, 16, 2, 2, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(16, 1, 2, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        lat = [lateral(f) for lateral, f in zip(self.lateral, feats[1:], strict=True)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], scale_factor=2.0, mode="nearest")
        size = lat[0].shape[-2:]
        outs = [
            F.interpolate(s(p), size=size, mode="nearest") if i else s(p)
            for i, (s, p) in enumerate(zip(self.smooth, lat, strict=True))
        ]
        return torch.sigmoid(self.head(torch.cat(outs, 1)))


def make_classifier(arch: str, num_classes: int) -> nn.Module:
    if arch == "mobilenetv3":
        return mobilenet_v3_small(num_classes=num_classes, width_mult=0.75)
    if arch == "resnet":
        return NarrowResNet(num_classes)
    if arch == "smallcnn":
        return SmallCNN(num_classes)
    raise ValueError(arch)


@dataclass(frozen=True)
class TrainResult:
    seconds: float
    epochs: int
    images: int
    final_loss: float


def to_tensor(
    images: list[np.ndarray], mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """BGR uint8 HxWx3 list -> normalised RGB float NCHW (``(x/255 - mean) / std``)."""
    arr = np.stack(images)[..., ::-1].astype(np.float32) / 255.0
    arr = (arr - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _train_loop(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch: int,
    lr: float,
    device: str,
) -> TrainResult:
    torch.manual_seed(0)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(0)
    t0, loss_val = time.time(), float("nan")
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(max(1, len(x) // batch)):
            idx = perm[i * batch : (i + 1) * batch]
            xb, yb = x[idx].to(device), y[idx].to(device)
            if torch.rand(1, generator=gen).item() < 0.5:
                xb = xb.flip(-1)
                yb = yb.flip(-1) if yb.ndim == 4 else yb
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_val = float(loss.detach())
    model.eval().cpu()
    return TrainResult(round(time.time() - t0, 1), epochs, len(x), round(loss_val, 4))


def train_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, device: str
) -> TrainResult:
    return _train_loop(
        model, x, y, F.cross_entropy, epochs=epochs, batch=128, lr=3e-3, device=device
    )


def seg_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft dice, as DBNet's probability-map loss (without the threshold branch)."""
    bce = F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), target)
    inter = (prob * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def train_segmenter(
    model: nn.Module, x: torch.Tensor, masks: torch.Tensor, *, epochs: int, device: str
) -> TrainResult:
    return _train_loop(model, x, masks, seg_loss, epochs=epochs, batch=16, lr=3e-3, device=device)


def export_preserve_bn(
    model: nn.Module,
    path: Path,
    sample: torch.Tensor,
    *,
    output: str,
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """TorchScript ``torch.onnx.export`` keeping BatchNormalization unfused (TrainingMode.PRESERVE
    with the model in eval mode skips the exporter's Conv+BN fusion)."""
    torch.onnx.export(
        model.eval(),
        (sample,),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=[output],
        dynamic_axes=dynamic_axes,
        opset_version=OPSET,
        training=torch.onnx.TrainingMode.PRESERVE,
    )
    bn = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    if bn == 0:
        raise RuntimeError(f"{path}: the exporter fused every BatchNormalization")


def export_anonymous(model: nn.Module, path: Path, sample: torch.Tensor) -> None:
    """Export with dynamic axes, then rewrite the input's dims: batch ``dim_value: -1``, H and W
    anonymous (what some exporters emit)."""
    torch.onnx.export(
        model.eval(),
        (sample,),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
        opset_version=OPSET,
    )
    m = onnx.load(str(path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = -1
    dims[2].Clear()
    dims[3].Clear()
    del m.graph.value_info[:]
    onnx.save(m, str(path))
