"""ONNX operators as PyTorch calls, for the ONNX importer (frontends/onnx.py).

Two tables. `TORCH` runs an op on tensors while torch.export traces, so it lands in the ATen
graph archfit partitions. `STATIC` runs the ops that compute shapes (Shape, Gather, Concat,
Slice, ...) in numpy on values known at the example shapes: exporters from TensorFlow and
PyTorch compute reshape targets from `Shape` at run time, and a fixed-shape graph needs them
as Python ints (onnx2torch keeps them as tensors, which is why torch.export fails on its
Reshape). Each function takes the node's context and its inputs (None for an omitted
optional input) and returns one value or a tuple."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto

from ..errors import ModelError

DTYPES = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16, TensorProto.INT64: torch.int64, TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16, TensorProto.INT8: torch.int8, TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}
NP_DTYPES = {k: torch.empty(0, dtype=v).numpy().dtype for k, v in DTYPES.items() if v is not torch.bfloat16}


class Node:
    """What an op function sees of its node: attributes, the node's name for errors, and the
    static (numpy) value of an input when it has one."""

    def __init__(self, proto, attrs: dict[str, Any], raw: list):
        self.proto, self.attrs, self.raw = proto, attrs, raw
        self.name = proto.name or proto.output[0]
        self.op = proto.op_type

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def ints(self, i: int, key: str | None = None, default=None) -> list[int] | None:
        """Integers given as input i (newer opsets) or as attribute `key` (older ones)."""
        if i < len(self.raw) and self.raw[i] is not None:
            return [int(v) for v in np.asarray(self.const(i)).reshape(-1)]
        return list(self.attrs[key]) if key and key in self.attrs else default

    def const(self, i: int) -> np.ndarray:
        value = self.raw[i]
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, torch.Tensor) and not torch.compiler.is_exporting():
            return value.detach().numpy()  # the host part of a model (after NMS) runs eagerly
        raise ModelError(f"ONNX node {self.name!r} ({self.op}): input {i} ({self.proto.input[i]!r}) is computed from "
                         f"tensor values, but archfit compiles at fixed shapes and needs it known at the example "
                         f"shapes; export the model with static shapes or fold that input")


def tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    value = np.asarray(value)
    return torch.as_tensor(value if value.flags.writeable else value.copy())  # folded constants are read-only


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------- static (numpy) ops

def _np_slice(n: Node, x, starts=None, ends=None, axes=None, steps=None):
    starts, ends = n.ints(1, "starts"), n.ints(2, "ends")
    axes = n.ints(3, "axes") or list(range(len(starts)))
    steps = n.ints(4) or [1] * len(starts)
    index = [slice(None)] * np.ndim(x)
    for s, e, a, st in zip(starts, ends, axes, steps):
        dim = np.shape(x)[_axis(a, np.ndim(x))]
        s, e = _clamp(s, dim, st), _clamp(e, dim, st)
        index[_axis(a, np.ndim(x))] = slice(s, None if e < 0 else e, st)
    return np.asarray(x)[tuple(index)]


def _clamp(v: int, dim: int, step: int) -> int:
    """ONNX Slice bounds: negative from the end, then clamped ([-1, dim-1] when stepping back)."""
    v = v + dim if v < 0 else v
    return max(-1, min(v, dim - 1)) if step < 0 else max(0, min(v, dim))


def _np_reshape(n: Node, x, shape):
    shape = [int(s) for s in np.asarray(n.const(1)).reshape(-1)]
    if not n.attr("allowzero", 0):
        shape = [np.shape(x)[i] if s == 0 else s for i, s in enumerate(shape)]
    return np.reshape(x, shape)


def _np_unsqueeze(n: Node, x, *_):
    out = np.asarray(x)
    rank = out.ndim + len(n.ints(1, "axes"))
    for a in sorted(_axis(a, rank) for a in n.ints(1, "axes")):
        out = np.expand_dims(out, a)
    return out


def _np_squeeze(n: Node, x, *_):
    axes = n.ints(1, "axes")
    return np.squeeze(x, axis=None if axes is None else tuple(_axis(a, np.ndim(x)) for a in axes))


def _np_div(n: Node, a, b):
    if np.issubdtype(np.asarray(a).dtype, np.integer):
        return np.trunc(np.asarray(a) / np.asarray(b)).astype(np.asarray(a).dtype)
    return np.asarray(a) / b


def _np_shape(n: Node, x):
    shape = np.asarray(tuple(x.shape) if isinstance(x, torch.Tensor) else np.shape(x), dtype=np.int64)
    start, end = n.attr("start", 0), n.attr("end", None)
    return shape[start:end]


def _np_reduce(fn):
    def run(n: Node, x, *_):
        axes = n.ints(1, "axes")
        keep = bool(n.attr("keepdims", 1))
        if not axes and n.attr("noop_with_empty_axes", 0):
            return np.asarray(x)
        return np.asarray(fn(x, axis=None if not axes else tuple(axes), keepdims=keep))
    return run


def _np_constant_of_shape(n: Node, shape):
    value = n.attr("value")
    fill = value.reshape(-1)[0] if value is not None else np.float32(0)
    return np.full([int(s) for s in np.asarray(shape).reshape(-1)], fill, dtype=np.asarray(fill).dtype)


def _np_cast(n: Node, x, *_):
    to = n.attr("to") if n.op == "Cast" else TensorProto.FLOAT
    if n.op == "CastLike":
        return np.asarray(x).astype(np.asarray(n.raw[1]).dtype)
    return np.asarray(x).astype(NP_DTYPES[to])


STATIC: dict[str, Callable] = {
    "Shape": _np_shape,
    "Size": lambda n, x: np.asarray(int(np.prod(x.shape if isinstance(x, torch.Tensor) else np.shape(x))), np.int64),
    "Constant": lambda n: n.attr("value"),
    "Identity": lambda n, x: x,
    "Gather": lambda n, x, i: np.take(x, np.where(np.asarray(i) < 0, np.asarray(i) + np.shape(x)[n.attr("axis", 0)],
                                                 i), axis=n.attr("axis", 0)),
    "Unsqueeze": _np_unsqueeze,
    "Squeeze": _np_squeeze,
    "Concat": lambda n, *xs: np.concatenate([np.atleast_1d(x) if np.ndim(x) == 0 else x for x in xs],
                                            axis=n.attr("axis")),
    "Slice": _np_slice,
    "Cast": _np_cast,
    "CastLike": _np_cast,
    "Reshape": _np_reshape,
    "Flatten": lambda n, x: np.reshape(x, (int(np.prod(np.shape(x)[:n.attr("axis", 1)])), -1)),
    "Transpose": lambda n, x: np.transpose(x, n.attr("perm")),
    "Expand": lambda n, x, s: np.broadcast_to(x, np.broadcast_shapes(np.shape(x), tuple(int(v) for v in s))).copy(),
    "Tile": lambda n, x, r: np.tile(x, [int(v) for v in r]),
    "ConstantOfShape": _np_constant_of_shape,
    "Range": lambda n, s, e, d: np.arange(s, e, d, dtype=np.asarray(s).dtype),
    "Add": lambda n, a, b: np.asarray(a + b), "Sub": lambda n, a, b: np.asarray(a - b),
    "Mul": lambda n, a, b: np.asarray(a * b), "Div": _np_div,
    "Mod": lambda n, a, b: np.asarray(np.fmod(a, b) if n.attr("fmod", 0) else np.mod(a, b)),
    "Neg": lambda n, x: -np.asarray(x), "Abs": lambda n, x: np.abs(x),
    "Floor": lambda n, x: np.floor(x), "Ceil": lambda n, x: np.ceil(x), "Sqrt": lambda n, x: np.sqrt(x),
    "Equal": lambda n, a, b: np.equal(a, b), "Less": lambda n, a, b: np.less(a, b),
    "Greater": lambda n, a, b: np.greater(a, b), "LessOrEqual": lambda n, a, b: np.less_equal(a, b),
    "GreaterOrEqual": lambda n, a, b: np.greater_equal(a, b), "Not": lambda n, x: np.logical_not(x),
    "And": lambda n, a, b: np.logical_and(a, b), "Or": lambda n, a, b: np.logical_or(a, b),
    "Where": lambda n, c, a, b: np.where(c, a, b),
    "Max": lambda n, *xs: np.asarray(np.maximum.reduce(np.broadcast_arrays(*xs))),
    "Min": lambda n, *xs: np.asarray(np.minimum.reduce(np.broadcast_arrays(*xs))),
    "ReduceProd": _np_reduce(np.prod), "ReduceSum": _np_reduce(np.sum), "ReduceMax": _np_reduce(np.max),
    "ReduceMin": _np_reduce(np.min),
}


# ---------------------------------------------------------------- traced (torch) ops

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


def _conv(n: Node, x, w, b=None):
    x, w = tensor(x), tensor(w)
    spatial = w.dim() - 2
    strides = n.attr("strides", [1] * spatial)
    dilations = n.attr("dilations", [1] * spatial)
    kernel = n.attr("kernel_shape", list(w.shape[2:]))
    x, padding = _symmetric(x, _pads(n, x, kernel, strides, dilations))
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return conv(x, w, None if b is None else tensor(b), strides, padding, dilations, n.attr("group", 1))


def _conv_transpose(n: Node, x, w, b=None):
    x, w = tensor(x), tensor(w)
    spatial = w.dim() - 2
    pads = list(n.attr("pads", [0] * (2 * spatial)))
    if pads[:spatial] != pads[spatial:] or n.attr("output_shape") is not None:
        raise ModelError(f"ONNX node {n.name!r} (ConvTranspose): asymmetric pads or output_shape are not mapped yet")
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    return conv(x, w, None if b is None else tensor(b), n.attr("strides", [1] * spatial), pads[:spatial],
                n.attr("output_padding", [0] * spatial), n.attr("group", 1), n.attr("dilations", [1] * spatial))


def _pool(kind: str):
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


def _gemm(n: Node, a, b, c=None):
    a, b = tensor(a), tensor(b)
    a = a.t() if n.attr("transA", 0) else a
    b = b.t() if n.attr("transB", 0) else b
    out = a @ b
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    out = out * alpha if alpha != 1.0 else out
    if c is not None:
        c = tensor(c)
        out = out + (c * beta if beta != 1.0 else c)
    return out


def _gather(n: Node, x, i):
    x, axis = tensor(x), n.attr("axis", 0)
    if isinstance(i, np.ndarray):
        i = np.where(i < 0, i + x.shape[_axis(axis, x.dim())], i)
    i = tensor(i)
    if axis == 0 and x.dim() == 2 and x.is_floating_point():
        return F.embedding(i, x)  # aten.embedding: backends map it to their gather, archfit checks the ids
    if i.dim() == 0:
        return x.select(axis, int(i)) if isinstance(n.raw[1], np.ndarray) else torch.index_select(
            x, axis, i.reshape(1)).squeeze(axis)
    axis = _axis(axis, x.dim())
    out = torch.index_select(x, axis, i.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(i.shape) + tuple(x.shape[axis + 1:]))


def _slice(n: Node, x, *_):
    x = tensor(x)
    starts, ends = n.ints(1, "starts"), n.ints(2, "ends")
    axes = n.ints(3, "axes") or list(range(len(starts)))
    steps = n.ints(4) or [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, x.dim())
        dim = x.shape[a]
        s, e = _clamp(s, dim, st), _clamp(e, dim, st)
        if st > 0:
            x = x.narrow(a, s, max(0, e - s)) if st == 1 else x[(slice(None),) * a + (slice(s, e, st),)]
        else:
            x = torch.index_select(x, a, torch.arange(s, e, st))
    return x


def _reshape(n: Node, x, shape):
    x = tensor(x)
    shape = [int(s) for s in n.const(1).reshape(-1)]
    if not n.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _reduce(fn):
    def run(n: Node, x, *_):
        x = tensor(x)
        axes = n.ints(1, "axes")
        keep = bool(n.attr("keepdims", 1))
        if not axes:
            if n.attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, axes, keep)
    return run


def _max_reduce(x, axes, keep):
    for a in sorted((_axis(a, x.dim()) for a in axes), reverse=True):
        x = x.amax(a, keepdim=keep)
    return x


def _min_reduce(x, axes, keep):
    for a in sorted((_axis(a, x.dim()) for a in axes), reverse=True):
        x = x.amin(a, keepdim=keep)
    return x


def _split(n: Node, x, split=None):
    x, axis = tensor(x), n.attr("axis", 0)
    sizes = n.ints(1, "split")
    if sizes is None:
        parts = n.attr("num_outputs", len(n.proto.output))
        size = math.ceil(x.shape[axis] / parts)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    return tuple(torch.split(x, sizes, dim=axis))


def _unsqueeze(n: Node, x, *_):
    x = tensor(x)
    axes = n.ints(1, "axes")
    for a in sorted(_axis(a, x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(n: Node, x, *_):
    x = tensor(x)
    axes = n.ints(1, "axes")
    if axes is None:
        return x.squeeze()
    for a in sorted((_axis(a, x.dim()) for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _pad(n: Node, x, pads=None, value=None, axes=None):
    x = tensor(x)
    pads = n.ints(1, "pads")
    axes = n.ints(3) or list(range(x.dim()))
    full = [0] * (2 * x.dim())
    for k, a in enumerate(axes):
        a = _axis(a, x.dim())
        full[a], full[a + x.dim()] = pads[k], pads[k + len(axes)]
    mode = n.attr("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    fill = float(np.asarray(n.const(2)).reshape(-1)[0]) if len(n.raw) > 2 and n.raw[2] is not None else \
        n.attr("value", 0.0)
    order = _torch_pad_order(full)
    while len(order) > 2 and order[-2:] == [0, 0]:
        order = order[:-2]  # torch pads only the trailing dims it is given
    return F.pad(x, order, mode={"edge": "replicate"}.get(mode, mode), value=fill if mode == "constant" else None)


def _resize(n: Node, x, roi=None, scales=None, sizes=None):
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


def _topk(n: Node, x, k):
    values, idx = torch.topk(tensor(x), int(n.const(1).reshape(-1)[0]), dim=n.attr("axis", -1),
                             largest=bool(n.attr("largest", 1)), sorted=bool(n.attr("sorted", 1)))
    return values, idx


def _nms(n: Node, boxes, scores, max_out=None, iou=None, score_threshold=None):
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


def _gather_nd(n: Node, x, i):
    x, i, b = tensor(x), tensor(i), n.attr("batch_dims", 0)
    if not b:
        return x[tuple(i[..., k] for k in range(i.shape[-1]))]
    batch = tuple(x.shape[:b])
    rows = math.prod(batch)
    x, i = x.reshape((rows,) + tuple(x.shape[b:])), i.reshape((rows,) + tuple(i.shape[b:]))
    row = torch.arange(rows).view((rows,) + (1,) * (i.dim() - 2))
    out = x[(row,) + tuple(i[..., k] for k in range(i.shape[-1]))]
    return out.reshape(batch + tuple(out.shape[1:]))


def _scatter_nd(n: Node, x, i, u):
    x, i, u = tensor(x), tensor(i), tensor(u)
    if n.attr("reduction", b"none") not in (b"none", "none"):
        raise ModelError(f"ONNX node {n.name!r} (ScatterND): reduction {n.attr('reduction')!r} is not mapped yet")
    return torch.index_put(x, tuple(i[..., k] for k in range(i.shape[-1])), u)


def _eye_like(n: Node, x):
    x = tensor(x)
    dtype = DTYPES[n.attr("dtype")] if n.attr("dtype") is not None else x.dtype
    k = n.attr("k", 0)
    rows, cols = x.shape
    return torch.ones(rows, cols, dtype=dtype).triu(k).tril(k) if k else torch.eye(rows, cols, dtype=dtype)


def _layer_norm(n: Node, x, scale, bias=None):
    x = tensor(x)
    axis = _axis(n.attr("axis", -1), x.dim())
    return F.layer_norm(x, tuple(x.shape[axis:]), tensor(scale), None if bias is None else tensor(bias),
                        n.attr("epsilon", 1e-5))


def _clip(n: Node, x, low=None, high=None):
    low = n.const(1).item() if low is not None else n.attr("min")
    high = n.const(2).item() if high is not None else n.attr("max")
    return torch.clamp(tensor(x), low, high)


def _cast(n: Node, x, *_):
    if n.op == "CastLike":
        return tensor(x).to(tensor(n.raw[1]).dtype)
    return tensor(x).to(DTYPES[n.attr("to")])


def _binary(fn):
    return lambda n, a, b: fn(tensor(a), tensor(b))


def _unary(fn):
    return lambda n, x: fn(tensor(x))


def _variadic(fn):
    def run(n: Node, *xs):
        out = tensor(xs[0])
        for x in xs[1:]:
            out = fn(out, tensor(x))
        return out
    return run


def _cumsum(n: Node, x, axis):
    x, axis = tensor(x), int(n.const(1).reshape(-1)[0])
    if n.attr("reverse", 0):
        x = x.flip(axis)
    out = torch.cumsum(x, axis)
    if n.attr("exclusive", 0):
        out = out - x
    return out.flip(axis) if n.attr("reverse", 0) else out


def _div(n: Node, a, b):
    a, b = tensor(a), tensor(b)
    if not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


TORCH: dict[str, Callable] = {
    "Identity": lambda n, x: tensor(x), "Dropout": lambda n, x, *_: tensor(x),
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _div,
    "Pow": _binary(torch.pow), "MatMul": _binary(torch.matmul),
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
    "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge),
    # ONNX And/Or/Xor take booleans only, where bitwise and logical agree; OpenVINO lowers the bitwise ones
    "And": _binary(torch.bitwise_and), "Or": _binary(torch.bitwise_or), "Xor": _binary(torch.bitwise_xor),
    "Not": _unary(torch.logical_not),
    "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum), "Sum": _variadic(torch.add),
    "Mean": lambda n, *xs: _variadic(torch.add)(n, *xs) / len(xs),
    "Where": lambda n, c, a, b: torch.where(tensor(c), tensor(a), tensor(b)),
    "Sqrt": _unary(torch.sqrt), "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Erf": _unary(torch.erf),
    # a TensorFlow op tf2onnx leaves as is (Keras GELU, 0.5 x erfc(-x/sqrt 2)); as 1 - erf, which
    # every target lowers (erfc has no OpenVINO lowering and would split each layer off the target)
    "Erfc": lambda n, x: 1 - torch.erf(tensor(x)),
    "Tanh": _unary(torch.tanh), "Sigmoid": _unary(torch.sigmoid), "Relu": _unary(torch.relu),
    "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "Round": _unary(torch.round),
    "Sign": _unary(torch.sign), "Sin": _unary(torch.sin), "Cos": _unary(torch.cos), "IsNaN": _unary(torch.isnan),
    "Softplus": _unary(F.softplus), "Mish": _unary(F.mish), "HardSwish": _unary(F.hardswish),
    "Gelu": lambda n, x: F.gelu(tensor(x), approximate=(n.attr("approximate", b"none") or b"none").decode()
                                if isinstance(n.attr("approximate", b"none"), bytes) else n.attr("approximate")),
    "LeakyRelu": lambda n, x: F.leaky_relu(tensor(x), n.attr("alpha", 0.01)),
    "Elu": lambda n, x: F.elu(tensor(x), n.attr("alpha", 1.0)),
    "Selu": lambda n, x: F.selu(tensor(x)),
    "HardSigmoid": lambda n, x: torch.clamp(tensor(x) * n.attr("alpha", 0.2) + n.attr("beta", 0.5), 0, 1),
    "PRelu": lambda n, x, s: torch.where(tensor(x) >= 0, tensor(x), tensor(x) * tensor(s)),
    "Clip": _clip, "Cast": _cast, "CastLike": _cast,
    "Softmax": lambda n, x: torch.softmax(tensor(x), n.attr("axis", -1)),
    "LogSoftmax": lambda n, x: torch.log_softmax(tensor(x), n.attr("axis", -1)),
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda n, x: tensor(x).mean(dim=tuple(range(2, tensor(x).dim())), keepdim=True),
    "GlobalMaxPool": lambda n, x: _max_reduce(tensor(x), list(range(2, tensor(x).dim())), True),
    "BatchNormalization": lambda n, x, s, b, m, v: F.batch_norm(tensor(x), tensor(m), tensor(v), tensor(s),
                                                                tensor(b), False, 0.0, n.attr("epsilon", 1e-5)),
    "InstanceNormalization": lambda n, x, s, b: F.instance_norm(tensor(x), weight=tensor(s), bias=tensor(b),
                                                                eps=n.attr("epsilon", 1e-5)),
    "LayerNormalization": _layer_norm,
    "ReduceMean": _reduce(lambda x, a, k: x.mean(dim=a, keepdim=k)),
    "ReduceSum": _reduce(lambda x, a, k: x.sum(dim=a, keepdim=k)),
    "ReduceMax": _reduce(_max_reduce), "ReduceMin": _reduce(_min_reduce),
    "ReduceProd": _reduce(lambda x, a, k: _prod(x, a, k)),
    "ReduceL2": _reduce(lambda x, a, k: torch.linalg.vector_norm(x, 2, dim=a, keepdim=k)),
    "ArgMax": lambda n, x: torch.argmax(tensor(x), n.attr("axis", 0), keepdim=bool(n.attr("keepdims", 1))),
    "ArgMin": lambda n, x: torch.argmin(tensor(x), n.attr("axis", 0), keepdim=bool(n.attr("keepdims", 1))),
    "Reshape": _reshape, "Flatten": lambda n, x: tensor(x).flatten(n.attr("axis", 1)).flatten(
        0, n.attr("axis", 1) - 1) if n.attr("axis", 1) > 0 else tensor(x).reshape(1, -1),
    "Transpose": lambda n, x: tensor(x).permute(n.attr("perm") or list(reversed(range(tensor(x).dim())))),
    "Concat": lambda n, *xs: torch.cat([tensor(x) for x in xs], dim=n.attr("axis")),
    "Split": _split, "Slice": _slice, "Gather": _gather,
    "GatherND": _gather_nd, "ScatterND": _scatter_nd, "EyeLike": _eye_like,
    "GatherElements": lambda n, x, i: torch.gather(tensor(x), n.attr("axis", 0), tensor(i)),
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Expand": lambda n, x, s: tensor(x).expand(torch.broadcast_shapes(tuple(tensor(x).shape),
                                                                      tuple(int(v) for v in n.const(1)))),
    "Tile": lambda n, x, r: tensor(x).repeat([int(v) for v in n.const(1)]),
    "Pad": _pad, "Resize": _resize, "TopK": _topk, "CumSum": _cumsum,
    "Einsum": lambda n, *xs: torch.einsum(n.attr("equation").decode() if isinstance(n.attr("equation"), bytes)
                                          else n.attr("equation"), *[tensor(x) for x in xs]),
    "NonMaxSuppression": _nms,
    "NonZero": lambda n, x: torch.nonzero(tensor(x)).t(),
}


def _prod(x: torch.Tensor, axes, keep: bool) -> torch.Tensor:
    for a in sorted((_axis(a, x.dim()) for a in axes), reverse=True):
        x = x.prod(a, keepdim=keep)
    return x
