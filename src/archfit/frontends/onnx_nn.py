"""ONNX's windowed and detection ops as PyTorch calls: convolution, pooling (with ONNX's
asymmetric and SAME pads), pad, resize, layer norm, and NonMaxSuppression (its output size
depends on the scores, so the importer runs it and what follows on the host)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from .onnx_static import Node, axis_of, tensor


def _pads(n: Node, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads [begin_0, begin_1, ..., end_0, end_1, ...], from auto_pad when set."""
    spatial = len(kernel)
    auto = n.attr("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(spatial):
            size = x.shape[2 + i]
            out = math.ceil(size / strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, big = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else big)
            ends.append(big if auto == "SAME_UPPER" else small)
        return begins + ends
    if auto == "VALID":
        return [0] * (2 * spatial)
    return list(n.attr("pads", [0] * (2 * spatial)))


def _torch_pad_order(pads: list[int]) -> list[int]:
    """ONNX [b0, b1, e0, e1] -> F.pad's last-dim-first [b1, e1, b0, e0]."""
    half = len(pads) // 2
    out = []
    for i in reversed(range(half)):
        out += [pads[i], pads[i + half]]
    return out


def _symmetric(x: torch.Tensor, pads: list[int], fill: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Pads torch's conv/pool take (one per side pair); asymmetric ones are applied with F.pad first."""
    half = len(pads) // 2
    if pads[:half] == pads[half:]:
        return x, pads[:half]
    return F.pad(x, _torch_pad_order(pads), value=fill), [0] * half


def conv(n: Node, x, w, b=None):
    x, w = tensor(x), tensor(w)
    spatial = w.dim() - 2
    strides = n.attr("strides", [1] * spatial)
    dilations = n.attr("dilations", [1] * spatial)
    kernel = n.attr("kernel_shape", list(w.shape[2:]))
    x, padding = _symmetric(x, _pads(n, x, kernel, strides, dilations))
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return conv(x, w, None if b is None else tensor(b), strides, padding, dilations, n.attr("group", 1))


def conv_transpose(n: Node, x, w, b=None):
    x, w = tensor(x), tensor(w)
    spatial = w.dim() - 2
    pads = list(n.attr("pads", [0] * (2 * spatial)))
    if pads[:spatial] != pads[spatial:] or n.attr("output_shape") is not None:
        raise ModelError(f"ONNX node {n.name!r} (ConvTranspose): asymmetric pads or output_shape are not mapped yet")
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    return conv(x, w, None if b is None else tensor(b), n.attr("strides", [1] * spatial), pads[:spatial],
                n.attr("output_padding", [0] * spatial), n.attr("group", 1), n.attr("dilations", [1] * spatial))


def pool(kind: str):
    def run(n: Node, x):
        x = tensor(x)
        kernel = n.attr("kernel_shape")
        spatial = len(kernel)
        strides = n.attr("strides", [1] * spatial)
        dilations = n.attr("dilations", [1] * spatial)
        pads = _pads(n, x, kernel, strides, dilations)
        ceil = bool(n.attr("ceil_mode", 0))
        if kind == "max":
            x, padding = _symmetric(x, pads, float("-inf"))
            pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
            return pool(x, kernel, strides, padding, dilations, ceil_mode=ceil)
        include = bool(n.attr("count_include_pad", 0))
        if pads[:spatial] != pads[spatial:] and not include:
            raise ModelError(f"ONNX node {n.name!r} (AveragePool): asymmetric pads that exclude padding from the "
                             f"average are not mapped yet")
        x, padding = _symmetric(x, pads)
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
        return pool(x, kernel, strides, padding, ceil_mode=ceil, count_include_pad=include)
    return run


def pad(n: Node, x, pads=None, value=None, axes=None):
    x = tensor(x)
    pads = n.ints(1, "pads")
    axes = n.ints(3) or list(range(x.dim()))
    full = [0] * (2 * x.dim())
    for k, a in enumerate(axes):
        a = axis_of(a, x.dim())
        full[a], full[a + x.dim()] = pads[k], pads[k + len(axes)]
    mode = n.attr("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    fill = float(np.asarray(n.const(2)).reshape(-1)[0]) if len(n.raw) > 2 and n.raw[2] is not None else \
        n.attr("value", 0.0)
    order = _torch_pad_order(full)
    while len(order) > 2 and order[-2:] == [0, 0]:
        order = order[:-2]  # torch pads only the trailing dims it is given
    return F.pad(x, order, mode={"edge": "replicate"}.get(mode, mode), value=fill if mode == "constant" else None)


def resize(n: Node, x, roi=None, scales=None, sizes=None):
    x = tensor(x)
    mode = n.attr("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    coord = n.attr("coordinate_transformation_mode", b"half_pixel")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    if sizes is not None and len(n.raw) > 3:
        size = [int(s) for s in n.const(3)][2:]
    else:
        size = [int(math.floor(d * s)) for d, s in zip(x.shape[2:], n.const(2)[2:])]
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "linear":
        return F.interpolate(x, size=size, mode=("linear", "bilinear", "trilinear")[len(size) - 1],
                             align_corners=coord == "align_corners")
    raise ModelError(f"ONNX node {n.name!r} (Resize): mode {mode!r} is not mapped yet (nearest, linear are)")


def nms(n: Node, boxes, scores, max_out=None, iou=None, score_threshold=None):
    """NonMaxSuppression: its output size depends on the scores, so it runs on the host."""
    from torchvision.ops import nms

    boxes, scores = tensor(boxes), tensor(scores)
    limit = int(n.const(2).reshape(-1)[0]) if max_out is not None else 0
    iou = float(n.const(3).reshape(-1)[0]) if iou is not None else 0.0
    floor = float(n.const(4).reshape(-1)[0]) if score_threshold is not None else None
    if n.attr("center_point_box", 0):
        c, half = boxes[..., :2], boxes[..., 2:] / 2
        boxes = torch.cat([c - half, c + half], dim=-1)
    else:  # ONNX corners may come in either order
        boxes = torch.cat([torch.minimum(boxes[..., :2], boxes[..., 2:]),
                           torch.maximum(boxes[..., :2], boxes[..., 2:])], dim=-1)
        boxes = boxes[..., [1, 0, 3, 2]]  # [y1, x1, y2, x2] -> [x1, y1, x2, y2]
    picked = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            ids = torch.arange(s.shape[0])
            if floor is not None:
                keep = s > floor
                ids, s = ids[keep], s[keep]
            kept = ids[nms(boxes[b][ids], s, iou)][:limit]
            picked.append(torch.stack([torch.full_like(kept, b), torch.full_like(kept, c), kept], dim=1))
    return torch.cat(picked, dim=0)


def layer_norm(n: Node, x, scale, bias=None):
    x = tensor(x)
    axis = axis_of(n.attr("axis", -1), x.dim())
    return F.layer_norm(x, tuple(x.shape[axis:]), tensor(scale), None if bias is None else tensor(bias),
                        n.attr("epsilon", 1e-5))
