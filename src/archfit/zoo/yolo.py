"""YOLO v3, v4 and v5s, written out from their papers and reference configs (no installable
package provides them under a license archfit can depend on). Each returns decoded boxes
(B, N, 5 + classes): xywh in pixels, objectness and class probabilities, i.e. everything up to
the data-dependent score filter and NMS, which `Detector` adds: the zoo's entries are the whole
detectors. `width` scales channels and `depth` the repeats of each stage's blocks (tiny variants:
1/8 of the channels, one block a stage: the same structure, a fraction of the nodes to export)."""
from __future__ import annotations

import torch
import torchvision
from torch import nn

# (w, h) anchors in pixels per output stride 8, 16, 32 (the COCO anchors all three share)
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
STRIDES = (8, 16, 32)


class Mish(nn.Module):
    def forward(self, x):
        return x * torch.tanh(nn.functional.softplus(x))


def _act(kind: str) -> nn.Module:
    return {"leaky": nn.LeakyReLU(0.1), "mish": Mish(), "silu": nn.SiLU()}[kind]


class Conv(nn.Sequential):
    """conv (no bias) + batch norm + activation, the building block of every YOLO."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, act: str = "leaky", p: int | None = None):
        super().__init__(nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False), nn.BatchNorm2d(c2), _act(act))


class Residual(nn.Module):
    def __init__(self, c: int, hidden: int, act: str):
        super().__init__()
        self.body = nn.Sequential(Conv(c, hidden, 1, act=act), Conv(hidden, c, 3, act=act))

    def forward(self, x):
        return x + self.body(x)


class Decode(nn.Module):
    """Per-scale 1x1 output convs and the box decoding of YOLOv3/v4 (exp) or v5 (squared sigmoid)."""

    def __init__(self, channels: tuple[int, int, int], classes: int, size: int, v5: bool):
        super().__init__()
        self.no, self.v5 = 5 + classes, v5
        self.convs = nn.ModuleList(nn.Conv2d(c, 3 * self.no, 1) for c in channels)
        for i, s in enumerate(STRIDES):
            n = size // s
            gy, gx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            self.register_buffer(f"grid{i}", torch.stack((gx, gy), -1).view(1, 1, n, n, 2).float())
            self.register_buffer(f"anchor{i}", torch.tensor(ANCHORS[i], dtype=torch.float32).view(1, 3, 1, 1, 2))

    def forward(self, feats):
        out = []
        for i, (conv, f) in enumerate(zip(self.convs, feats)):
            b, _, h, w = f.shape
            p = conv(f).view(b, 3, self.no, h, w).permute(0, 1, 3, 4, 2)
            grid, anchor, s = getattr(self, f"grid{i}"), getattr(self, f"anchor{i}"), STRIDES[i]
            if self.v5:
                y = p.sigmoid()
                xy = (y[..., :2] * 2 - 0.5 + grid) * s
                wh = (y[..., 2:4] * 2) ** 2 * anchor
                rest = y[..., 4:]
            else:
                xy = (p[..., :2].sigmoid() + grid) * s
                wh = p[..., 2:4].exp() * anchor
                rest = p[..., 4:].sigmoid()
            out.append(torch.cat((xy, wh, rest), -1).view(b, -1, self.no))
        return torch.cat(out, 1)


def _c(width: float, c: int) -> int:
    return max(8, int(c * width))


def _d(depth: float, n: int) -> int:
    return max(1, round(n * depth))


# ---- YOLOv3: Darknet-53 + three-scale FPN head --------------------------------------------------

class Darknet53(nn.Module):
    def __init__(self, width: float, act: str = "leaky", depth: float = 1.0):
        super().__init__()
        c = lambda n: _c(width, n)  # noqa: E731
        self.stem = Conv(3, c(32), 3, act=act)
        stages, cin = [], c(32)
        for cout, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
            layers = [Conv(cin, c(cout), 3, 2, act=act)] + [Residual(c(cout), c(cout // 2), act) for _ in range(_d(depth, n))]
            stages.append(nn.Sequential(*layers))
            cin = c(cout)
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        x, feats = self.stem(x), []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[2], feats[3], feats[4]  # strides 8, 16, 32


def _five(c1: int, c: int, act: str = "leaky") -> nn.Sequential:
    """The 1x1/3x3/1x1/3x3/1x1 stack every YOLOv3/v4 head level uses."""
    return nn.Sequential(Conv(c1, c, 1, act=act), Conv(c, 2 * c, 3, act=act), Conv(2 * c, c, 1, act=act),
                         Conv(c, 2 * c, 3, act=act), Conv(2 * c, c, 1, act=act))


class YOLOv3(nn.Module):
    def __init__(self, classes: int = 80, size: int = 416, width: float = 1.0, depth: float = 1.0):
        super().__init__()
        c = lambda n: _c(width, n)  # noqa: E731
        self.backbone = Darknet53(width, depth=depth)
        self.h5, self.h4, self.h3 = _five(c(1024), c(512)), _five(c(512) + c(256), c(256)), _five(c(256) + c(128), c(128))
        self.r5, self.r4 = Conv(c(512), c(256), 1), Conv(c(256), c(128), 1)
        self.o5, self.o4, self.o3 = Conv(c(512), c(1024), 3), Conv(c(256), c(512), 3), Conv(c(128), c(256), 3)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decode = Decode((c(256), c(512), c(1024)), classes, size, v5=False)

    def forward(self, x):
        c3, c4, c5 = self.backbone(x)
        p5 = self.h5(c5)
        p4 = self.h4(torch.cat((self.up(self.r5(p5)), c4), 1))
        p3 = self.h3(torch.cat((self.up(self.r4(p4)), c3), 1))
        return self.decode((self.o3(p3), self.o4(p4), self.o5(p5)))


# ---- YOLOv4: CSPDarknet53 (Mish) + SPP + PANet ---------------------------------------------------

class CSPStage(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, first: bool):
        super().__init__()
        hidden = cout if first else cout // 2
        self.down = Conv(cin, cout, 3, 2, act="mish")
        self.split1, self.split2 = Conv(cout, hidden, 1, act="mish"), Conv(cout, hidden, 1, act="mish")
        self.blocks = nn.Sequential(*[Residual(hidden, cout // 2 if first else hidden, "mish") for _ in range(n)],
                                    Conv(hidden, hidden, 1, act="mish"))
        self.merge = Conv(2 * hidden, cout, 1, act="mish")

    def forward(self, x):
        x = self.down(x)
        return self.merge(torch.cat((self.blocks(self.split2(x)), self.split1(x)), 1))


class SPP(nn.Module):
    def forward(self, x):
        return torch.cat([nn.functional.max_pool2d(x, k, 1, k // 2) for k in (13, 9, 5)] + [x], 1)


class YOLOv4(nn.Module):
    def __init__(self, classes: int = 80, size: int = 608, width: float = 1.0, depth: float = 1.0):
        super().__init__()
        c = lambda n: _c(width, n)  # noqa: E731
        self.stem = Conv(3, c(32), 3, act="mish")
        stages, cin = [], c(32)
        for i, (cout, n) in enumerate(((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))):
            stages.append(CSPStage(cin, c(cout), _d(depth, n), first=i == 0))
            cin = c(cout)
        self.stages = nn.ModuleList(stages)
        self.pre_spp = nn.Sequential(Conv(c(1024), c(512), 1), Conv(c(512), c(1024), 3), Conv(c(1024), c(512), 1), SPP())
        self.post_spp = nn.Sequential(Conv(4 * c(512), c(512), 1), Conv(c(512), c(1024), 3), Conv(c(1024), c(512), 1))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.l5, self.l4c = Conv(c(512), c(256), 1), Conv(c(512), c(256), 1)
        self.h4 = _five(2 * c(256), c(256))
        self.l4, self.l3c = Conv(c(256), c(128), 1), Conv(c(256), c(128), 1)
        self.h3 = _five(2 * c(128), c(128))
        self.d3, self.n4 = Conv(c(128), c(256), 3, 2), _five(2 * c(256), c(256))
        self.d4, self.n5 = Conv(c(256), c(512), 3, 2), _five(2 * c(512), c(512))
        self.o3, self.o4, self.o5 = Conv(c(128), c(256), 3), Conv(c(256), c(512), 3), Conv(c(512), c(1024), 3)
        self.decode = Decode((c(256), c(512), c(1024)), classes, size, v5=False)

    def forward(self, x):
        x, feats = self.stem(x), []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        c3, c4, c5 = feats[2], feats[3], feats[4]
        p5 = self.post_spp(self.pre_spp(c5))
        p4 = self.h4(torch.cat((self.l4c(c4), self.up(self.l5(p5))), 1))
        p3 = self.h3(torch.cat((self.l3c(c3), self.up(self.l4(p4))), 1))
        n4 = self.n4(torch.cat((self.d3(p3), p4), 1))
        n5 = self.n5(torch.cat((self.d4(n4), p5), 1))
        return self.decode((self.o3(p3), self.o4(n4), self.o5(n5)))


# ---- YOLOv5s (v6.0): CSP C3 blocks, SPPF, PANet, SiLU; depth 0.33, width 0.50 -------------------

class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 1, act="silu"), Conv(c, c, 3, act="silu"), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    def __init__(self, c1: int, c2: int, n: int, shortcut: bool = True):
        super().__init__()
        h = c2 // 2
        self.cv1, self.cv2, self.cv3 = Conv(c1, h, 1, act="silu"), Conv(c1, h, 1, act="silu"), Conv(2 * h, c2, 1, act="silu")
        self.m = nn.Sequential(*[Bottleneck(h, shortcut) for _ in range(n)])

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        h = c1 // 2
        self.cv1, self.cv2, self.pool = Conv(c1, h, 1, act="silu"), Conv(4 * h, c2, 1, act="silu"), nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat((x, y1, y2, self.pool(y2)), 1))


class YOLOv5(nn.Module):
    def __init__(self, classes: int = 80, size: int = 640, width: float = 0.5, depth: float = 0.33):
        super().__init__()
        c = lambda n: _c(width, n)  # noqa: E731
        d = lambda n: _d(depth, n)  # noqa: E731
        self.b1 = nn.Sequential(Conv(3, c(64), 6, 2, act="silu", p=2), Conv(c(64), c(128), 3, 2, act="silu"),
                                C3(c(128), c(128), d(3)), Conv(c(128), c(256), 3, 2, act="silu"), C3(c(256), c(256), d(6)))
        self.b2 = nn.Sequential(Conv(c(256), c(512), 3, 2, act="silu"), C3(c(512), c(512), d(9)))
        self.b3 = nn.Sequential(Conv(c(512), c(1024), 3, 2, act="silu"), C3(c(1024), c(1024), d(3)), SPPF(c(1024), c(1024)))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.l10 = Conv(c(1024), c(512), 1, act="silu")
        self.c13 = C3(c(1024), c(512), d(3), False)
        self.l14 = Conv(c(512), c(256), 1, act="silu")
        self.c17 = C3(c(512), c(256), d(3), False)
        self.d18, self.c20 = Conv(c(256), c(256), 3, 2, act="silu"), C3(c(512), c(512), d(3), False)
        self.d21, self.c23 = Conv(c(512), c(512), 3, 2, act="silu"), C3(c(1024), c(1024), d(3), False)
        self.decode = Decode((c(256), c(512), c(1024)), classes, size, v5=True)

    def forward(self, x):
        p3 = self.b1(x)
        p4 = self.b2(p3)
        x10 = self.l10(self.b3(p4))
        x14 = self.l14(self.c13(torch.cat((self.up(x10), p4), 1)))
        o3 = self.c17(torch.cat((self.up(x14), p3), 1))
        o4 = self.c20(torch.cat((self.d18(o3), x14), 1))
        o5 = self.c23(torch.cat((self.d21(o4), x10), 1))
        return self.decode((o3, o4, o5))


class Detector(nn.Module):
    """A YOLO network followed by its post-processing, as in the reference repositories'
    non_max_suppression: objectness and class-score filter, xywh -> xyxy, class-aware NMS,
    at most max_det boxes per image. Returns one dict (boxes, scores, labels) per image; the
    filter and NMS have data-dependent output sizes and run on the host."""

    def __init__(self, net: nn.Module, conf: float = 0.25, iou: float = 0.45, max_det: int = 300):
        super().__init__()
        self.net, self.conf, self.iou, self.max_det = net, conf, iou, max_det

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for p in self.net(images):
            p = p[p[:, 4] > self.conf]
            scores, labels = (p[:, 5:] * p[:, 4:5]).max(1)
            keep = scores > self.conf
            p, scores, labels = p[keep], scores[keep], labels[keep]
            xy, half = p[:, :2], p[:, 2:4] / 2
            boxes = torch.cat((xy - half, xy + half), 1)
            i = torchvision.ops.batched_nms(boxes, scores, labels, self.iou)[: self.max_det]
            out.append({"boxes": boxes[i], "scores": scores[i], "labels": labels[i]})
        return out


def _build(cls, size: int, tiny: bool, **kw):
    if tiny:
        kw = kw | {"width": kw.get("width", 1.0) / 8, "depth": kw.get("depth", 1.0) / 8}
        size = 128
    net = cls(classes=3 if tiny else 80, size=size, **kw)
    # Batch-norm statistics measured on random images, as training would have set them: with the
    # defaults (mean 0, variance 1) random activations fade with depth to the head's bias, every
    # anchor scores alike, and NMS among equal scores is a coin toss.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batch
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)))
    net.eval()
    return Detector(net), (torch.rand(1, 3, size, size),)


def yolov3(tiny: bool):
    return _build(YOLOv3, 416, tiny)


def yolov4(tiny: bool):
    return _build(YOLOv4, 608, tiny)


def yolov5s(tiny: bool):
    return _build(YOLOv5, 640, tiny, width=0.5, depth=0.33)
