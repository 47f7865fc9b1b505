"""ONNX operators as PyTorch calls, traced by torch.export into the ATen graph archfit
partitions: `TORCH`, by op type. Tensor, elementwise and reduction ops are here; windowed and
detection ops in onnx_nn.py; the context each op sees and the numpy shape ops in onnx_static.py."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from .onnx_nn import conv, conv_transpose, layer_norm, nms, pad, pool, resize
from .onnx_static import DTYPES, Node, axis_of, clamp, tensor

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
        i = np.where(i < 0, i + x.shape[axis_of(axis, x.dim())], i)
    i = tensor(i)
    if axis == 0 and x.dim() == 2 and x.is_floating_point():
        return F.embedding(i, x)  # aten.embedding: backends map it to their gather, archfit checks the ids
    if i.dim() == 0:
        return x.select(axis, int(i)) if isinstance(n.raw[1], np.ndarray) else torch.index_select(
            x, axis, i.reshape(1)).squeeze(axis)
    axis = axis_of(axis, x.dim())
    out = torch.index_select(x, axis, i.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(i.shape) + tuple(x.shape[axis + 1:]))


def _slice(n: Node, x, *_):
    x = tensor(x)
    starts, ends = n.ints(1, "starts"), n.ints(2, "ends")
    axes = n.ints(3, "axes") or list(range(len(starts)))
    steps = n.ints(4) or [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = axis_of(a, x.dim())
        dim = x.shape[a]
        s, e = clamp(s, dim, st), clamp(e, dim, st)
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


def _each_axis(method: str):
    """amax/amin/prod take one axis at a time: applied from the last axis down, so the indices
    of the ones still to go are unchanged."""
    def run(x: torch.Tensor, axes, keep: bool) -> torch.Tensor:
        for a in sorted((axis_of(a, x.dim()) for a in axes), reverse=True):
            x = getattr(x, method)(a, keepdim=keep)
        return x
    return run


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
    for a in sorted(axis_of(a, x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(n: Node, x, *_):
    x = tensor(x)
    axes = n.ints(1, "axes")
    if axes is None:
        return x.squeeze()
    for a in sorted((axis_of(a, x.dim()) for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _topk(n: Node, x, k):
    values, idx = torch.topk(tensor(x), int(n.const(1).reshape(-1)[0]), dim=n.attr("axis", -1),
                             largest=bool(n.attr("largest", 1)), sorted=bool(n.attr("sorted", 1)))
    return values, idx


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
    "Conv": conv, "ConvTranspose": conv_transpose, "Gemm": _gemm,
    "MaxPool": pool("max"), "AveragePool": pool("avg"),
    "GlobalAveragePool": lambda n, x: tensor(x).mean(dim=tuple(range(2, tensor(x).dim())), keepdim=True),
    "GlobalMaxPool": lambda n, x: _each_axis("amax")(tensor(x), list(range(2, tensor(x).dim())), True),
    "BatchNormalization": lambda n, x, s, b, m, v: F.batch_norm(tensor(x), tensor(m), tensor(v), tensor(s),
                                                                tensor(b), False, 0.0, n.attr("epsilon", 1e-5)),
    "InstanceNormalization": lambda n, x, s, b: F.instance_norm(tensor(x), weight=tensor(s), bias=tensor(b),
                                                                eps=n.attr("epsilon", 1e-5)),
    "LayerNormalization": layer_norm,
    "ReduceMean": _reduce(lambda x, a, k: x.mean(dim=a, keepdim=k)),
    "ReduceSum": _reduce(lambda x, a, k: x.sum(dim=a, keepdim=k)),
    "ReduceMax": _reduce(_each_axis("amax")), "ReduceMin": _reduce(_each_axis("amin")),
    "ReduceProd": _reduce(_each_axis("prod")),
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
    "Pad": pad, "Resize": resize, "TopK": _topk, "CumSum": _cumsum,
    "Einsum": lambda n, *xs: torch.einsum(n.attr("equation").decode() if isinstance(n.attr("equation"), bytes)
                                          else n.attr("equation"), *[tensor(x) for x in xs]),
    "NonMaxSuppression": nms,
    "NonZero": lambda n, x: torch.nonzero(tensor(x)).t(),
}
