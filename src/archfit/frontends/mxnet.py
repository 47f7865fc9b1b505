"""MXNet 1.x in, without MXNet: the two files `HybridBlock.export()` writes (NAME-symbol.json,
NAME-0000.params) read as data and run as PyTorch calls, node by node, so torch.export captures
them into the one ATen graph. MXNet is retired (2023) and installs only beside numpy<1.24, so
archfit reads its formats itself: the symbol is JSON, the params file a flat binary list of
arrays (read with bounds checks; nothing in either file is ever run as code)."""
from __future__ import annotations

import ast
import json
import math
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.fx.traceback import annotate

from ..core.source import OP_KEY, SOURCE_KEY
from ..errors import ModelError, first_line
from .inputs import by_name
from .onnx_static import tensor

_LIST_MAGIC = 0x112  # kMXAPINDArrayListMagic
_ARRAY_MAGICS = (0xF993FAC9, 0xF993FACA)  # NDArray V2, V3 (numpy shape semantics)
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}


class _Reader:
    def __init__(self, data: bytes, path: str):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ModelError(f"{self.path} is truncated at byte {self.pos}; export the model again with "
                             f"HybridBlock.export()")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def array(self, dtype, shape) -> np.ndarray:
        count = math.prod(shape)
        size = count * np.dtype(dtype).itemsize
        if count < 0 or self.pos + size > len(self.data):
            raise ModelError(f"{self.path}: an array of shape {shape} runs past the end of the file; export the "
                             f"model again")
        out = np.frombuffer(self.data, dtype, count, self.pos).reshape(shape).copy()
        self.pos += size
        return out


def read_params(path: str | Path) -> dict[str, np.ndarray]:
    """NAME-0000.params -> {parameter name: array} ('arg:'/'aux:' prefixes dropped)."""
    r = _Reader(Path(path).read_bytes(), str(path))
    if r.take("<Q") != _LIST_MAGIC:
        raise ModelError(f"{path} is not an MXNet params file (wrong magic number); pass the NAME-0000.params "
                         f"that HybridBlock.export() wrote")
    r.take("<Q")  # reserved
    count = r.take("<Q")
    if count > len(r.data) // 16:
        raise ModelError(f"{path} claims {count} arrays, more than its size can hold; the file is damaged")
    arrays = []
    for _ in range(count):
        magic = r.take("<I")
        if magic not in _ARRAY_MAGICS:
            raise ModelError(f"{path}: array #{len(arrays)} has an unknown format (magic {magic:#x}); save it with "
                             f"MXNet >= 1.0 (HybridBlock.export)")
        if r.take("<i") != 0:
            raise ModelError(f"{path}: array #{len(arrays)} is sparse; archfit reads dense parameters only")
        ndim = r.take("<i")
        if not 0 <= ndim <= 32:
            raise ModelError(f"{path}: array #{len(arrays)} has {ndim} dims; the file is damaged")
        shape = tuple(r.take(f"<{ndim}q")) if ndim > 1 else ((r.take("<q"),) if ndim == 1 else ())
        r.take("<ii")  # the context it was saved from
        flag = r.take("<i")
        if flag not in _DTYPES:
            raise ModelError(f"{path}: array #{len(arrays)} has MXNet dtype code {flag}, which archfit does not read")
        arrays.append(r.array(_DTYPES[flag], shape))
    names = []
    for _ in range(r.take("<Q")):
        length = r.take("<Q")
        names.append(r.array(np.uint8, (length,)).tobytes().decode("utf-8", "replace"))
    if len(names) != len(arrays):
        raise ModelError(f"{path} holds {len(arrays)} arrays but {len(names)} names; the file is damaged")
    return {n.split(":", 1)[1] if n.startswith(("arg:", "aux:")) else n: a for n, a in zip(names, arrays)}


def params_path(symbol: Path) -> Path:
    """NAME-symbol.json -> NAME-EPOCH.params beside it (the latest epoch)."""
    stem = symbol.name[: -len("-symbol.json")]
    found = sorted(symbol.parent.glob(f"{stem}-[0-9][0-9][0-9][0-9].params"))
    if not found:
        raise ModelError(f"{symbol} has no params file beside it (expected {stem}-0000.params, as "
                         f"HybridBlock.export() writes); put the two files side by side")
    return found[-1]


def _value(text: str):
    """MXNet stores every attribute as a string: '(3, 3)', 'True', '1e-05', 'relu'."""
    try:
        return ast.literal_eval(text)  # literals only: never evaluates code
    except (ValueError, SyntaxError):
        return text


def _reshape(x: torch.Tensor, spec) -> torch.Tensor:
    """MXNet's Reshape codes: 0 copy a dim, -1 infer, -2 copy the rest, -3 merge two, -4 split one."""
    src, out, i, k = list(x.shape), [], 0, 0
    spec = list(spec)
    while k < len(spec):
        s = spec[k]
        if s == 0:
            out.append(src[i]); i += 1  # noqa: E702
        elif s == -1:
            out.append(-1); i += 1  # noqa: E702
        elif s == -2:
            out += src[i:]; i = len(src)  # noqa: E702
        elif s == -3:
            out.append(src[i] * src[i + 1]); i += 2  # noqa: E702
        elif s == -4:
            a, b = spec[k + 1], spec[k + 2]
            a, b = (src[i] // b, b) if a == -1 else (a, src[i] // a if b == -1 else b)
            out += [a, b]; i += 1; k += 2  # noqa: E702
        else:
            out.append(s); i += 1  # noqa: E702
        k += 1
    return x.reshape(out)


def _conv(a: dict, x, w, b=None):
    spatial = w.dim() - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return conv(x, w, b, a.get("stride", (1,) * spatial), a.get("pad", (0,) * spatial),
                a.get("dilate", (1,) * spatial), a.get("num_group", 1))


def _pool(a: dict, x):
    kind = a.get("pool_type", "max")
    spatial = x.dim() - 2
    if a.get("global_pool", False):
        dims = tuple(range(2, x.dim()))
        return x.amax(dims, keepdim=True) if kind == "max" else (
            x.mean(dims, keepdim=True) if kind == "avg" else x.sum(dims, keepdim=True))
    kernel, stride = a["kernel"], a.get("stride", (1,) * spatial)
    pad, ceil = a.get("pad", (0,) * spatial), a.get("pooling_convention", "valid") == "full"
    if kind == "max":
        return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1](x, kernel, stride, pad, ceil_mode=ceil)
    out = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1](
        x, kernel, stride, pad, ceil_mode=ceil, count_include_pad=a.get("count_include_pad", True))
    return out * math.prod(kernel) if kind == "sum" else out


def _batch_norm(a: dict, x, gamma, beta, mean, var):
    if a.get("fix_gamma", True):  # MXNet's default: gamma is treated as 1
        gamma = torch.ones_like(gamma)
    if a.get("axis", 1) != 1:
        raise ModelError(f"BatchNorm over axis {a['axis']} is not mapped yet (axis 1 is)")
    return F.batch_norm(x, mean, var, gamma, beta, False, 0.0, a.get("eps", 1e-3))


def _fc(a: dict, x, w, b=None):
    if a.get("flatten", True):
        x = x.flatten(1)
    return F.linear(x, w, b)


def _layer_norm(a: dict, x, gamma, beta):
    axis = a.get("axis", -1)
    if axis not in (-1, x.dim() - 1):
        raise ModelError(f"LayerNorm over axis {axis} is not mapped yet (the last axis is)")
    return F.layer_norm(x, (x.shape[-1],), gamma, beta, a.get("eps", 1e-5))


def _split(a: dict, x):
    parts = torch.chunk(x, a["num_outputs"], dim=a.get("axis", 1))
    return tuple(p.squeeze(a.get("axis", 1)) for p in parts) if a.get("squeeze_axis", False) else parts


def _leaky(a: dict, x, gamma=None):
    kind = a.get("act_type", "leaky")
    if kind == "gelu":
        return F.gelu(x)
    if kind == "elu":
        return F.elu(x, a.get("slope", 0.25))
    if kind == "selu":
        return F.selu(x)
    if kind == "prelu":
        return torch.where(x >= 0, x, x * gamma.reshape((1, -1) + (1,) * (x.dim() - 2)))
    return F.leaky_relu(x, a.get("slope", 0.25))


_ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softrelu": F.softplus,
                "softsign": F.softsign}


def _slice_axis(a: dict, x):
    axis, begin, end = a["axis"], a["begin"], a.get("end")
    return x.narrow(axis, begin % x.shape[axis], ((x.shape[axis] if end is None else end % (x.shape[axis] + 1)))
                    - begin % x.shape[axis])


def _scalar(fn):
    return lambda a, x: fn(x, float(a["scalar"]))


def _binary(fn):
    return lambda a, x, y: fn(x, y)


OPS: dict[str, Callable] = {
    "Convolution": _conv, "BatchNorm": _batch_norm, "FullyConnected": _fc, "Pooling": _pool,
    "Activation": lambda a, x: _ACTIVATIONS[a["act_type"]](x), "LeakyReLU": _leaky,
    "LayerNorm": _layer_norm, "Embedding": lambda a, i, w: F.embedding(i.long(), w),
    "softmax": lambda a, x: torch.softmax(x, a.get("axis", -1)),
    "log_softmax": lambda a, x: torch.log_softmax(x, a.get("axis", -1)),
    "SoftmaxActivation": lambda a, x: torch.softmax(x, 1 if a.get("mode") == "channel" else -1),
    "SoftmaxOutput": lambda a, x, *_: torch.softmax(x, -1),
    "Flatten": lambda a, x: x.flatten(1), "flatten": lambda a, x: x.flatten(1),
    "Reshape": lambda a, x: _reshape(x, a["shape"]), "reshape": lambda a, x: _reshape(x, a["shape"]),
    "transpose": lambda a, x: x.permute(a.get("axes") or tuple(reversed(range(x.dim())))),
    "SwapAxis": lambda a, x: x.transpose(a.get("dim1", 0), a.get("dim2", 0)),
    "SliceChannel": _split, "split": _split,
    "batch_dot": lambda a, x, y: torch.matmul(x.transpose(-1, -2) if a.get("transpose_a") else x,
                                              y.transpose(-1, -2) if a.get("transpose_b") else y),
    "dot": lambda a, x, y: torch.matmul(x.t() if a.get("transpose_a") else x, y.t() if a.get("transpose_b") else y),
    "expand_dims": lambda a, x: x.unsqueeze(a["axis"]),
    "repeat": lambda a, x: torch.repeat_interleave(x, a["repeats"], dim=a.get("axis")),
    "slice_axis": _slice_axis,
    "Concat": lambda a, *xs: torch.cat(xs, dim=a.get("dim", 1)),
    "concat": lambda a, *xs: torch.cat(xs, dim=a.get("dim", 1)),
    "Dropout": lambda a, x: x, "_copy": lambda a, x: x, "identity": lambda a, x: x,
    "BlockGrad": lambda a, x: x, "stop_gradient": lambda a, x: x,
    "Cast": lambda a, x: x.to(getattr(torch, a["dtype"])),
    "clip": lambda a, x: torch.clamp(x, a["a_min"], a["a_max"]),
    "sqrt": lambda a, x: torch.sqrt(x), "exp": lambda a, x: torch.exp(x), "log": lambda a, x: torch.log(x),
    "tanh": lambda a, x: torch.tanh(x), "sigmoid": lambda a, x: torch.sigmoid(x), "relu": lambda a, x: torch.relu(x),
    "mean": lambda a, x: x.mean(dim=a.get("axis"), keepdim=a.get("keepdims", False)) if a.get("axis") is not None
    else x.mean(),
    "sum": lambda a, x: x.sum(dim=a.get("axis"), keepdim=a.get("keepdims", False)) if a.get("axis") is not None
    else x.sum(),
    "where": lambda a, c, x, y: torch.where(c != 0, x, y),
    "UpSampling": lambda a, x: F.interpolate(x, scale_factor=a["scale"], mode="nearest"),
    **{op: _binary(torch.add) for op in ("elemwise_add", "broadcast_add", "_plus", "_Plus", "broadcast_plus")},
    **{op: _binary(torch.sub) for op in ("elemwise_sub", "broadcast_sub", "_minus", "_Minus", "broadcast_minus")},
    **{op: _binary(torch.mul) for op in ("elemwise_mul", "broadcast_mul", "_mul", "_Mul")},
    **{op: _binary(torch.div) for op in ("elemwise_div", "broadcast_div", "_div", "_Div")},
    "_mul_scalar": _scalar(torch.mul), "_plus_scalar": _scalar(torch.add), "_minus_scalar": _scalar(torch.sub),
    "_div_scalar": _scalar(torch.div), "_power_scalar": _scalar(torch.pow),
    "_rminus_scalar": _scalar(lambda x, s: s - x), "_rdiv_scalar": _scalar(lambda x, s: s / x),
}


class MxnetModule(torch.nn.Module):
    """forward(**inputs) runs the symbol; inputs by the symbol's variable names ('data', or
    'data0', 'data1', ...); one output as a tensor, several as a tuple (MXNet's order)."""

    def __init__(self, symbol_path: str | Path):
        super().__init__()
        symbol_path = Path(symbol_path)
        if not symbol_path.is_file():
            raise ModelError(f"{symbol_path}: no such MXNet symbol file; pass the NAME-symbol.json HybridBlock.export() "
                             f"wrote")
        try:
            graph = json.loads(symbol_path.read_text())
            nodes = graph["nodes"]
            heads = [(int(h[0]), int(h[1])) for h in graph["heads"]]
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ModelError(f"{symbol_path} is not an MXNet symbol file ({first_line(e, 120)}); pass the "
                             f"NAME-symbol.json HybridBlock.export() wrote") from e
        params = read_params(params_path(symbol_path))
        self.name = symbol_path.name[: -len("-symbol.json")]
        missing = [f"{n.get('op')} (node {n.get('name')!r})" for n in nodes if n.get("op") not in OPS and n.get("op")
                   != "null"]
        if missing:
            raise ModelError(f"{symbol_path} holds {len(missing)} node(s) archfit cannot map to PyTorch: "
                             f"{', '.join(dict.fromkeys(missing[:6]))}; name them in an issue")
        self._nodes: list[tuple[str, str, dict, list[tuple[int, int]]]] = []
        self._params: dict[int, str] = {}
        self.input_names: list[str] = []
        for i, n in enumerate(nodes):
            attrs = {k: _value(v) for k, v in (n.get("attrs") or n.get("param") or {}).items()}
            inputs = [(int(e[0]), int(e[1])) for e in n.get("inputs", [])]
            if any(j >= i for j, _ in inputs):
                raise ModelError(f"{symbol_path}: node {n.get('name')!r} reads a later node; the file is damaged")
            self._nodes.append((n["op"], str(n["name"]), attrs, inputs))
            if n["op"] == "null":
                if n["name"] in params:
                    self._params[i] = f"p{i}"
                    self.register_buffer(f"p{i}", torch.from_numpy(params[n["name"]]))
                else:
                    self.input_names.append(str(n["name"]))
        self._heads = heads
        # MXNet feeds token ids as float32; inputs read only as Embedding ids are taken as int64
        # (the validation's random inputs are then drawn as ids, within the table)
        readers: dict[int, set] = {}
        for op, _name, _attrs, edges in self._nodes:
            for pos, (j, _k) in enumerate(edges):
                readers.setdefault(j, set()).add((op, pos))
        self.id_inputs = [self._nodes[i][1] for i in range(len(self._nodes)) if self._nodes[i][0] == "null"
                          and i not in self._params and readers.get(i) == {("Embedding", 0)}]
        self.output_names = [f"{self._nodes[h][1]}_output{k}" if k else f"{self._nodes[h][1]}_output"
                             for h, k in heads]

    def forward(self, **inputs):
        inputs = by_name(self.input_names, inputs, "the MXNet model")
        values: dict[int, tuple] = {}
        for i, (op, name, attrs, edges) in enumerate(self._nodes):
            if op == "null":
                values[i] = (getattr(self, self._params[i]) if i in self._params else tensor(inputs[name]),)
                continue
            args = [values[j][k] for j, k in edges]
            with annotate({SOURCE_KEY: f"MXNet {op} {name!r}", OP_KEY: op}):
                try:
                    out = OPS[op](attrs, *args)
                except ModelError:
                    raise
                except Exception as e:  # noqa: BLE001 - name the MXNet node, not the torch call
                    shapes = ", ".join(str(tuple(a.shape)) for a in args)
                    raise ModelError(f"MXNet node {name!r} ({op}) fails on inputs of shapes {shapes}: "
                                     f"{first_line(e, 160)}") from e
            values[i] = out if isinstance(out, tuple) else (out,)
        outs = [values[h][k] for h, k in self._heads]
        return outs[0] if len(outs) == 1 else tuple(outs)


def is_mxnet(model: Any) -> bool:
    return isinstance(model, (str, Path)) and str(model).endswith("-symbol.json")
