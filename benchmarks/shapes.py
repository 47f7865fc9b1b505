"""Detectors with trained weights, trained here: nothing can be downloaded on this machine, and
random weights score every box alike (SSD300: 200 boxes at 0.96-1.0), so bf16's rounding reorders
NMS near-ties and no precision question about a real detector can be asked of them. These are
trained from scratch on synthetic scenes (filled rectangles, ellipses and triangles of random
colours on a noisy gradient), the full-size architectures unchanged, their 80/91-class heads kept
(three classes used). A trained detector separates objects from background by wide margins, which
is what decides whether bf16 moves a box across NMS or the score threshold.

The first run trains and caches the weights (~/.cache/archfit-bench, keyed by model, steps and
RECIPE); later runs load them. On 2 cores: YOLOv5s 1,200 steps of 8 scenes at 320 px (~13 min;
fully convolutional, so the same weights run at 640); its detections on new scenes score
0.3-0.7 (the detector keeps boxes above 0.25). SSD300 700 steps of 4 (~36 min), still short of
converged (its loss was falling; VGG16 has no batch norm): its best boxes score 0.3-0.5 above a
tail of 0.03-0.1 near-ties, so its gate is asked above a score threshold (benchmarks/detection.py).

    .venv/bin/python benchmarks/shapes.py yolov5s      # train (or load) and print eager detections
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils import _pytree as pytree

KINDS = ("rectangle", "ellipse", "triangle")
CACHE = Path.home() / ".cache" / "archfit-bench"
STEPS = {"yolov5s": 1200, "ssd300_vgg16": 700}
RECIPE = 1  # part of the cache key: bump it when scenes, losses or optimisers change


def scene(size: int, g: torch.Generator, max_objects: int = 4, min_side: int = 24, max_side: int = 120):
    """One image (3, size, size) in [0, 1] with 1..max_objects shapes; their xyxy boxes (pixels)
    and labels (index into KINDS)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    c0, c1 = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
    t = (xx / size * torch.rand(1, generator=g) + yy / size * torch.rand(1, generator=g)) / 2
    img = c0 * (1 - t) + c1 * t + 0.08 * torch.randn(3, size, size, generator=g)
    boxes, labels = [], []
    for _ in range(int(torch.randint(1, max_objects + 1, (1,), generator=g))):
        w, h = torch.randint(min_side, max_side, (2,), generator=g).tolist()
        x0 = int(torch.randint(0, size - w, (1,), generator=g))
        y0 = int(torch.randint(0, size - h, (1,), generator=g))
        kind = int(torch.randint(0, len(KINDS), (1,), generator=g))
        u, v = (xx - x0) / w, (yy - y0) / h
        inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        if KINDS[kind] == "ellipse":
            inside &= (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25
        elif KINDS[kind] == "triangle":
            inside &= v >= 2 * (u - 0.5).abs()
        colour = torch.rand(3, 1, 1, generator=g)
        img = torch.where(inside, colour + 0.03 * torch.randn(3, size, size, generator=g), img)
        boxes.append([x0, y0, x0 + w, y0 + h])
        labels.append(kind)
    return img.clamp(0, 1), torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)


def example_scene(size: int) -> torch.Tensor:
    """The benchmark's image: a fixed scene with up to 8 shapes, not seen in training."""
    return scene(size, torch.Generator().manual_seed(7), max_objects=8)[0]


def _yolo_assign(boxes: torch.Tensor, labels: torch.Tensor, size: int):
    """YOLOv5's target assignment: each box goes to every anchor whose sides are within 4x of its
    own, at the cell holding its centre and the two neighbours nearest that centre. Returns indices
    into the network's flat (N, 5 + classes) output, with the box and label of each."""
    from archfit.zoo.yolo import ANCHORS, STRIDES

    anchors = torch.tensor(ANCHORS, dtype=torch.float32).view(3, 3, 2)
    idx, tb, tl, offset = [], [], [], 0
    for i, s in enumerate(STRIDES):
        n = size // s
        for b, label in zip(boxes.tolist(), labels.tolist()):
            cx, cy, w, h = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]
            gx, gy = cx / s, cy / s
            cells = {(int(gx), int(gy)), (int(gx) + (-1 if gx % 1 < 0.5 else 1), int(gy)),
                     (int(gx), int(gy) + (-1 if gy % 1 < 0.5 else 1))}
            for a in range(3):
                aw, ah = anchors[i, a].tolist()
                if max(w / aw, aw / w, h / ah, ah / h) >= 4:
                    continue
                for x, y in cells:
                    if 0 <= x < n and 0 <= y < n:
                        idx.append(offset + a * n * n + y * n + x)
                        tb.append(b)
                        tl.append(label)
        offset += 3 * n * n
    return torch.tensor(idx, dtype=torch.long), torch.tensor(tb).view(-1, 4), torch.tensor(tl, dtype=torch.long)


def _yolo_loss(out: torch.Tensor, truth: list, size: int) -> torch.Tensor:
    """CIoU box loss and BCE on objectness (target: the IoU reached) and classes, on the decoded
    output the zoo's YOLOv5 returns (probabilities, boxes in pixels)."""
    bce = nn.functional.binary_cross_entropy
    loss = out.new_zeros(())
    for p, (boxes, labels) in zip(out, truth):
        idx, tb, tl = _yolo_assign(boxes, labels, size)
        obj = torch.zeros(p.shape[0])
        if len(idx):
            q = p[idx]
            xyxy = torch.cat((q[:, :2] - q[:, 2:4] / 2, q[:, :2] + q[:, 2:4] / 2), 1)
            obj[idx] = torchvision.ops.box_iou(xyxy, tb).diagonal().detach().clamp(0)
            cls = torch.zeros(len(idx), q.shape[1] - 5)
            cls[torch.arange(len(idx)), tl] = 1
            loss = loss + 0.4 * torchvision.ops.complete_box_iou_loss(xyxy, tb, reduction="mean") \
                + 4 * bce(q[:, 5:].clamp(1e-6, 1 - 1e-6), cls)
        loss = loss + 32 * bce(p[:, 4].clamp(1e-6, 1 - 1e-6), obj)
    return loss / len(truth)


def _train_yolov5s(steps: int, log) -> dict:
    from archfit.zoo.yolo import YOLOv5

    size = 320  # a quarter of the work of 640; the grid buffers are the only size-bound state
    net = YOLOv5(classes=80, size=size, width=0.5).train()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    g, t0 = torch.Generator().manual_seed(1), time.time()
    for step in range(steps):
        batch = [scene(size, g) for _ in range(8)]
        loss = _yolo_loss(net(torch.stack([b[0] for b in batch])), [b[1:] for b in batch], size)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"yolov5s step {step}/{steps}: loss {loss.item():.3f}, {time.time() - t0:.0f} s")
    return {k: v for k, v in net.state_dict().items() if ".grid" not in k}


def _train_ssd300(steps: int, log) -> dict:
    ssd = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).train()
    opt = torch.optim.AdamW(ssd.parameters(), lr=1e-4, weight_decay=5e-4)
    g, t0 = torch.Generator().manual_seed(1), time.time()
    for step in range(steps):
        batch = [scene(300, g) for _ in range(4)]
        losses = ssd([b[0] for b in batch], [{"boxes": b[1], "labels": b[2] + 1} for b in batch])  # 0: background
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(ssd.parameters(), 10.0)  # VGG16 has no batch norm: early steps spike
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"ssd300_vgg16 step {step}/{steps}: loss {loss.item():.3f}, {time.time() - t0:.0f} s")
    return ssd.state_dict()


def weights(name: str, steps: int | None = None, log=print) -> dict:
    """The trained state dict, from the cache or trained now (seeded: the same run gives the same
    weights up to the CPU's float summation order)."""
    steps = steps or STEPS[name]
    path = CACHE / f"{name}-shapes-{steps}-r{RECIPE}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    log(f"training {name} on synthetic shapes ({steps} steps; cached at {path})")
    torch.manual_seed(0)
    state = {"yolov5s": _train_yolov5s, "ssd300_vgg16": _train_ssd300}[name](steps, log)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return state


def trained(name: str, steps: int | None = None, log=print):
    """(model, example inputs) as zoo.build(name) gives them, with weights trained on shapes and a
    shapes scene as the example image."""
    from archfit import zoo

    model, example = zoo.build(name)
    net = getattr(model, "net", model)  # YOLO: the network inside the zoo's Detector
    missing, unexpected = net.load_state_dict(weights(name, steps, log), strict=False)
    assert not unexpected and all(".grid" in k for k in missing), (missing, unexpected)
    # the zoo's input structure (YOLO: a batch tensor; torchvision: a list of 3-d images), a scene in it
    return model.eval(), pytree.tree_map(lambda t: example_scene(t.shape[-1]).view(t.shape), example)


def main() -> None:
    torch.set_num_threads(2)
    name = sys.argv[1] if len(sys.argv) > 1 else "yolov5s"
    model, inputs = trained(name)
    with torch.no_grad():
        out = model(*inputs)[0]
    print(f"{name}: {len(out['boxes'])} detections, scores {[round(s, 2) for s in out['scores'].tolist()]}, "
          f"labels {out['labels'].tolist()}")


if __name__ == "__main__":
    main()
