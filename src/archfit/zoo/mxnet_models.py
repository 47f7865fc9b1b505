"""MXNet reference models as the two files `HybridBlock.export()` leaves, written without MXNet:
ResNet-18/50 v1 with Gluon's model-zoo layout and names, and a BERT-style encoder, random
weights. archfit's MXNet reader is tested against files MXNet itself wrote (tests/data/mxnet,
tools/mxnet_fixtures.py); these full-size files are for fit tables and benchmarks, where MXNet
(retired, numpy<1.24) cannot be installed beside archfit."""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

_CODES = {np.dtype(np.float32): 0, np.dtype(np.int64): 6}


class SymbolWriter:
    """Builds an MXNet symbol graph (JSON) and its parameters, node by node."""

    def __init__(self, seed: int = 0):
        self.nodes: list[dict] = []
        self.params: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)

    def var(self, name: str, value: np.ndarray | None = None, aux: bool = False) -> int:
        self.nodes.append({"op": "null", "name": name, "inputs": []})
        if value is not None:
            self.params[("aux:" if aux else "arg:") + name] = value.astype(np.float32)
        return len(self.nodes) - 1

    def op(self, op: str, name: str, inputs: list[int], **attrs) -> int:
        node = {"op": op, "name": name, "inputs": [[i, 0, 0] for i in inputs]}
        if attrs:
            node["attrs"] = {k: str(v) for k, v in attrs.items()}
        self.nodes.append(node)
        return len(self.nodes) - 1

    def weight(self, name: str, shape: tuple, scale: float | None = None) -> int:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale = scale if scale is not None else (2.0 / fan_in) ** 0.5
        return self.var(name, self.rng.standard_normal(shape) * scale)

    def conv(self, name: str, x: int, channels_in: int, channels: int, kernel: int, stride: int = 1) -> int:
        w = self.weight(f"{name}_weight", (channels, channels_in, kernel, kernel))
        pad = kernel // 2
        return self.op("Convolution", f"{name}_fwd", [x, w], kernel=(kernel, kernel), stride=(stride, stride),
                       pad=(pad, pad), num_filter=channels, no_bias=True, dilate=(1, 1), num_group=1, layout="NCHW")

    def batch_norm(self, name: str, x: int, channels: int) -> int:
        ins = [x, self.var(f"{name}_gamma", self.rng.uniform(0.5, 1.5, channels)),
               self.var(f"{name}_beta", self.rng.uniform(-0.1, 0.1, channels)),
               self.var(f"{name}_running_mean", self.rng.uniform(-0.1, 0.1, channels), aux=True),
               self.var(f"{name}_running_var", self.rng.uniform(0.5, 1.5, channels), aux=True)]
        return self.op("BatchNorm", f"{name}_fwd", ins, axis=1, eps=1e-5, fix_gamma=False, momentum=0.9)

    def dense(self, name: str, x: int, units_in: int, units: int, flatten: bool = True) -> int:
        w = self.weight(f"{name}_weight", (units, units_in))
        b = self.var(f"{name}_bias", np.zeros(units))
        return self.op("FullyConnected", f"{name}_fwd", [x, w, b], num_hidden=units, flatten=flatten, no_bias=False)

    def save(self, prefix: Path, heads: list[int]) -> Path:
        arg_nodes = [i for i, n in enumerate(self.nodes) if n["op"] == "null"]
        symbol = {"nodes": self.nodes, "arg_nodes": arg_nodes, "heads": [[h, 0, 0] for h in heads],
                  "attrs": {"mxnet_version": ["int", 10901]}}
        Path(f"{prefix}-symbol.json").write_text(json.dumps(symbol))
        write_params(Path(f"{prefix}-0000.params"), self.params)
        return Path(f"{prefix}-symbol.json")


def write_params(path: Path, params: dict[str, np.ndarray]) -> None:
    """MXNet's NDArray list format (V2 arrays, dense, CPU context), as NDArray::Save writes it."""
    out = [struct.pack("<QQQ", 0x112, 0, len(params))]
    for value in params.values():
        value = np.ascontiguousarray(value)
        out.append(struct.pack("<Iii", 0xF993FAC9, 0, value.ndim) + struct.pack(f"<{value.ndim}q", *value.shape))
        out.append(struct.pack("<iii", 1, 0, _CODES[value.dtype]) + value.tobytes())
    out.append(struct.pack("<Q", len(params)))
    for name in params:
        raw = name.encode()
        out.append(struct.pack("<Q", len(raw)) + raw)
    path.write_bytes(b"".join(out))


def _resnet(depth: int, tiny: bool) -> tuple[str, dict]:
    """Gluon's ResNetV1 (resnet18_v1: basic blocks; resnet50_v1: bottlenecks, stride in the first 1x1)."""
    g = SymbolWriter()
    size, classes = (32, 10) if tiny else (224, 1000)
    widths = (8, 8, 16, 16, 32) if tiny else (64, 64, 128, 256, 512)
    layers = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    bottleneck = depth >= 50
    p = f"resnetv1{depth}_"
    x = g.var("data")
    x = g.op("Activation", f"{p}relu0_fwd", [g.batch_norm(f"{p}batchnorm0", g.conv(f"{p}conv0", x, 3, widths[0], 7, 2),
                                                          widths[0])], act_type="relu")
    x = g.op("Pooling", f"{p}pool0_fwd", [x], kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max",
             pooling_convention="valid", global_pool=False)
    channels = widths[0]
    for stage, (count, width) in enumerate(zip(layers, widths[1:])):
        out = width * 4 if bottleneck else width
        for block in range(count):
            stride = 2 if block == 0 and stage > 0 else 1
            q = f"{p}stage{stage + 1}_block{block}_"
            if bottleneck:
                y = g.op("Activation", f"{q}relu0", [g.batch_norm(f"{q}bn0", g.conv(f"{q}conv0", x, channels, width, 1,
                                                                                   stride), width)], act_type="relu")
                y = g.op("Activation", f"{q}relu1", [g.batch_norm(f"{q}bn1", g.conv(f"{q}conv1", y, width, width, 3),
                                                                  width)], act_type="relu")
                y = g.batch_norm(f"{q}bn2", g.conv(f"{q}conv2", y, width, out, 1), out)
            else:
                y = g.op("Activation", f"{q}relu0", [g.batch_norm(f"{q}bn0", g.conv(f"{q}conv0", x, channels, width, 3,
                                                                                   stride), width)], act_type="relu")
                y = g.batch_norm(f"{q}bn1", g.conv(f"{q}conv1", y, width, width, 3), width)
            shortcut = x
            if stride != 1 or channels != out:
                shortcut = g.batch_norm(f"{q}bn_down", g.conv(f"{q}conv_down", x, channels, out, 1, stride), out)
            x = g.op("Activation", f"{q}relu_out", [g.op("elemwise_add", f"{q}add", [y, shortcut])], act_type="relu")
            channels = out
    x = g.op("Pooling", f"{p}pool1_fwd", [x], kernel=(1, 1), pool_type="avg", global_pool=True)
    x = g.dense(f"{p}dense0", g.op("Flatten", f"{p}flatten0", [x]), channels, classes)
    path = g.save(_prefix(f"resnet{depth}_v1", tiny), [x])
    return str(path), {"data": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}


def _encoder(tiny: bool) -> tuple[str, dict]:
    """The BERT-style encoder of tools/mxnet_fixtures.py (GluonNLP's layout): word + position
    embeddings, post-norm blocks of masked attention over batch*heads, GELU feed-forward, pooler."""
    layers, width, heads, ffn, vocab, length = (2, 32, 2, 64, 100, 16) if tiny else (12, 768, 12, 3072, 30522, 128)
    g = SymbolWriter()
    ids, mask = g.var("data0"), g.var("data1")
    p = "encoder_"
    x = g.op("Embedding", f"{p}embedding0_fwd", [ids, g.weight(f"{p}embedding0_weight", (vocab, width), 0.02)],
             input_dim=vocab, output_dim=width, dtype="float32", sparse_grad=False)
    x = g.op("broadcast_add", f"{p}pos_add", [x, g.weight(f"{p}position_weight", (1, length, width), 0.02)])

    def norm(name, y):
        return g.op("LayerNorm", f"{name}_fwd", [y, g.var(f"{name}_gamma", np.ones(width)),
                                                 g.var(f"{name}_beta", np.zeros(width))], axis=-1, eps=1e-12)

    x = norm(f"{p}layernorm0", x)
    bias = g.op("expand_dims", f"{p}mask_expand", [mask], axis=1)
    bias = g.op("Reshape", f"{p}mask_heads", [g.op("repeat", f"{p}mask_repeat", [bias], repeats=heads, axis=1)],
                shape=(-3, 0))
    bias = g.op("_mul_scalar", f"{p}mask_scale", [g.op("_rminus_scalar", f"{p}mask_invert", [bias], scalar=1)],
                scalar=-10000.0)
    bias = g.op("expand_dims", f"{p}mask_bias", [bias], axis=1)
    for i in range(layers):
        q = f"{p}block{i}_"
        qkv = g.dense(f"{q}qkv", x, width, 3 * width, flatten=False)
        split = g.op("SliceChannel", f"{q}split", [qkv], num_outputs=3, axis=-1)

        def heads_of(k, tag):
            node = {"op": "Reshape", "name": f"{q}{tag}_reshape", "inputs": [[split, k, 0]],
                    "attrs": {"shape": str((0, 0, heads, -1))}}
            g.nodes.append(node)
            t = g.op("transpose", f"{q}{tag}_transpose", [len(g.nodes) - 1], axes=(0, 2, 1, 3))
            return g.op("Reshape", f"{q}{tag}_merge", [t], shape=(-3, 0, 0))

        scores = g.op("batch_dot", f"{q}scores", [heads_of(0, "q"), heads_of(1, "k")], transpose_b=True)
        scores = g.op("_mul_scalar", f"{q}scale", [scores], scalar=float(1 / np.sqrt(width // heads)))
        attn = g.op("softmax", f"{q}softmax", [g.op("broadcast_add", f"{q}masked", [scores, bias])], axis=-1)
        out = g.op("batch_dot", f"{q}context", [attn, heads_of(2, "v")])
        out = g.op("transpose", f"{q}context_t", [g.op("Reshape", f"{q}context_split", [out],
                                                        shape=(-4, -1, heads, 0, 0))], axes=(0, 2, 1, 3))
        out = g.dense(f"{q}proj", g.op("Reshape", f"{q}context_merge", [out], shape=(0, 0, -3)), width, width, False)
        x = norm(f"{q}layernorm0", g.op("elemwise_add", f"{q}add0", [x, out]))
        f = g.op("LeakyReLU", f"{q}gelu", [g.dense(f"{q}ffn1", x, width, ffn, False)], act_type="gelu")
        x = norm(f"{q}layernorm1", g.op("elemwise_add", f"{q}add1", [x, g.dense(f"{q}ffn2", f, ffn, width, False)]))
    first = g.op("Reshape", f"{p}first", [g.op("slice_axis", f"{p}slice", [x], axis=1, begin=0, end=1)], shape=(0, -1))
    pooled = g.op("Activation", f"{p}pooler_tanh", [g.dense(f"{p}pooler", first, width, width, False)], act_type="tanh")
    path = g.save(_prefix("bert_encoder", tiny), [x, pooled])
    rng = np.random.default_rng(0)
    batch = 2 if tiny else 1
    return str(path), {"data0": rng.integers(1, vocab, (batch, length)).astype(np.float32),
                       "data1": np.ones((batch, length), np.float32)}


def _prefix(name: str, tiny: bool) -> Path:
    folder = Path(tempfile.gettempdir()) / f"archfit-zoo-mxnet-{os.getuid() if hasattr(os, 'getuid') else 0}"
    folder.mkdir(exist_ok=True)
    return folder / f"{name}{'-tiny' if tiny else ''}"


def resnet18(tiny: bool = False):
    return _resnet(18, tiny)


def resnet50(tiny: bool = False):
    return _resnet(50, tiny)


def bert_encoder(tiny: bool = False):
    return _encoder(tiny)
