"""The context an ONNX op sees (`Node`), and the ONNX ops that compute shapes, run in numpy.

`STATIC` runs the ops that compute shapes (Shape, Gather, Concat, Slice, ...) on values known at
the example shapes: exporters from TensorFlow and PyTorch compute reshape targets from `Shape`
at run time, and a fixed-shape graph needs them as Python ints (onnx2torch keeps them as
tensors, which is why torch.export fails on its Reshape). The ops traced into the ATen graph are
in onnx_ops.py (tensor and elementwise ops) and onnx_nn.py (convolution, pooling, resize,
normalisation, NMS). Each op function takes the node's context and its inputs (None for an
omitted optional input) and returns one value or a tuple."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
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


def axis_of(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _np_slice(n: Node, x, starts=None, ends=None, axes=None, steps=None):
    starts, ends = n.ints(1, "starts"), n.ints(2, "ends")
    axes = n.ints(3, "axes") or list(range(len(starts)))
    steps = n.ints(4) or [1] * len(starts)
    index = [slice(None)] * np.ndim(x)
    for s, e, a, st in zip(starts, ends, axes, steps):
        dim = np.shape(x)[axis_of(a, np.ndim(x))]
        s, e = clamp(s, dim, st), clamp(e, dim, st)
        index[axis_of(a, np.ndim(x))] = slice(s, None if e < 0 else e, st)
    return np.asarray(x)[tuple(index)]


def clamp(v: int, dim: int, step: int) -> int:
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
    for a in sorted(axis_of(a, rank) for a in n.ints(1, "axes")):
        out = np.expand_dims(out, a)
    return out


def _np_squeeze(n: Node, x, *_):
    axes = n.ints(1, "axes")
    return np.squeeze(x, axis=None if axes is None else tuple(axis_of(a, np.ndim(x)) for a in axes))


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
