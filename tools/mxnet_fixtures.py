"""Writes tests/data/mxnet/: tiny MXNet models as `HybridBlock.export()` leaves them
(NAME-symbol.json, NAME-0000.params) with MXNet's own outputs on fixed inputs (NAME-io.npz), the
reference archfit's MXNet frontend is tested against. archfit itself never imports MXNet.

MXNet 1.9.1 (retired in 2023) installs on Python 3.11 only beside numpy<1.24, so this runs in an
environment of its own, once:

    python3 -m venv /tmp/mxnet-env
    /tmp/mxnet-env/bin/pip install mxnet==1.9.1 "numpy<1.24" requests
    /tmp/mxnet-env/bin/python tools/mxnet_fixtures.py tests/data/mxnet
"""
import os
import sys

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn
from mxnet.gluon.model_zoo.vision.resnet import BasicBlockV1, ResNetV1


class Encoder(HybridBlock):
    """A BERT-style encoder as GluonNLP wrote them: word + learned position embeddings, post-norm
    blocks of masked multi-head self-attention (batch_dot over batch*heads) and a GELU
    feed-forward, a tanh pooler over the first token."""

    def __init__(self, vocab=100, width=32, heads=2, ffn=64, layers=2, length=16, **kw):
        super().__init__(**kw)
        self.heads, self.width = heads, width
        with self.name_scope():
            self.word = nn.Embedding(vocab, width)
            self.position = self.params.get("position_weight", shape=(1, length, width))
            self.embed_norm = nn.LayerNorm(epsilon=1e-12)
            self.blocks = nn.HybridSequential()
            for _ in range(layers):
                self.blocks.add(_Block(width, heads, ffn))
            self.pooler = nn.Dense(width, activation="tanh", flatten=False)

    def hybrid_forward(self, F, ids, mask, position):
        x = self.embed_norm(F.broadcast_add(self.word(ids), position))
        # (batch, length) 0/1 -> additive (batch*heads, 1, length): padded keys get -1e4
        bias = F.reshape(F.repeat(F.expand_dims(mask, axis=1), repeats=self.heads, axis=1), shape=(-3, 0))
        bias = F.expand_dims((1 - bias) * -10000.0, axis=1)
        for block in self.blocks:
            x = block(x, bias)
        first = F.reshape(F.slice_axis(x, axis=1, begin=0, end=1), shape=(0, -1))
        return x, self.pooler(first)


class _Block(HybridBlock):
    def __init__(self, width, heads, ffn, **kw):
        super().__init__(**kw)
        self.heads, self.scale = heads, 1.0 / np.sqrt(width // heads)
        with self.name_scope():
            self.qkv = nn.Dense(3 * width, flatten=False)
            self.proj = nn.Dense(width, flatten=False)
            self.norm1 = nn.LayerNorm(epsilon=1e-12)
            self.ffn1 = nn.Dense(ffn, flatten=False)
            self.act = nn.GELU()
            self.ffn2 = nn.Dense(width, flatten=False)
            self.norm2 = nn.LayerNorm(epsilon=1e-12)

    def hybrid_forward(self, F, x, bias):
        q, k, v = F.split(self.qkv(x), num_outputs=3, axis=-1)

        def heads(t):  # (batch, length, width) -> (batch*heads, length, width/heads)
            t = F.transpose(F.reshape(t, shape=(0, 0, self.heads, -1)), axes=(0, 2, 1, 3))
            return F.reshape(t, shape=(-3, 0, 0))

        scores = F.batch_dot(heads(q), heads(k), transpose_b=True) * self.scale
        attn = F.softmax(F.broadcast_add(scores, bias), axis=-1)
        out = F.batch_dot(attn, heads(v))  # (batch*heads, length, d)
        out = F.transpose(F.reshape(out, shape=(-4, -1, self.heads, 0, 0)), axes=(0, 2, 1, 3))
        x = self.norm1(x + self.proj(F.reshape(out, shape=(0, 0, -3))))
        return self.norm2(x + self.ffn2(self.act(self.ffn1(x))))


def export(block, name, inputs, out_dir):
    block.initialize(mx.init.Normal(0.2))
    block.hybridize()
    outs = block(*[mx.nd.array(v, dtype=v.dtype) for v in inputs.values()])
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    for _ in range(2):  # batch norm keeps running statistics: give them non-trivial values
        for p in block.collect_params(".*running_(mean|var)").values():
            p.set_data(mx.nd.random.uniform(0.5, 1.5, shape=p.shape))
    outs = block(*[mx.nd.array(v, dtype=v.dtype) for v in inputs.values()])
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    block.export(os.path.join(out_dir, name))
    np.savez(os.path.join(out_dir, f"{name}-io.npz"), **{f"in:{k}": v for k, v in inputs.items()},
             **{f"out:{i}": o.asnumpy() for i, o in enumerate(outs)})
    print(f"{name}: {[o.shape for o in outs]}, mxnet {mx.__version__}")


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    mx.random.seed(0)
    rng = np.random.default_rng(0)
    resnet = ResNetV1(BasicBlockV1, [1, 1], [8, 8, 16], classes=10, thumbnail=True, prefix="resnet_")
    export(resnet, "tiny_resnet", {"data": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)}, out_dir)
    mask = np.ones((2, 16), np.float32)
    mask[1, 11:] = 0
    encoder = Encoder(prefix="encoder_")
    export(encoder, "tiny_encoder", {"data0": rng.integers(1, 100, (2, 16)).astype(np.float32), "data1": mask},
           out_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/mxnet")
