"""TensorFlow/Keras and ONNX reference models (random weights, nothing downloaded): what the
frontends are tested and benchmarked on. TensorFlow is imported only when one is built."""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np


def _keras():
    from ..frontends.tensorflow import _tf

    _tf()  # imports TensorFlow the safe way (triton first), or says how to install it
    import keras

    keras.utils.set_random_seed(0)
    return keras


def keras_resnet50(tiny: bool = False) -> tuple[Any, np.ndarray]:
    """keras.applications.ResNet50 (weights=None), 224x224; tiny: the same blocks (conv, batch
    norm, residual add, max pool, global average pool, dense) at 32x32 with 8-16 channels."""
    keras = _keras()
    if not tiny:
        return keras.applications.ResNet50(weights=None), np.random.default_rng(0).random((1, 224, 224, 3), "float32")
    L = keras.layers
    x = inp = keras.Input((32, 32, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", name="conv1")(x)
    x = L.Activation("relu", name="relu1")(L.BatchNormalization(name="bn1")(x))
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    for i, width in enumerate((8, 16)):
        shortcut = L.Conv2D(width, 1, name=f"block{i}_proj")(x) if width != x.shape[-1] else x
        y = L.Conv2D(width, 3, padding="same", name=f"block{i}_conv1")(x)
        y = L.Activation("relu")(L.BatchNormalization(name=f"block{i}_bn1")(y))
        y = L.Conv2D(width, 3, padding="same", name=f"block{i}_conv2")(y)
        x = L.Activation("relu")(L.Add(name=f"block{i}_add")([shortcut, L.BatchNormalization(name=f"block{i}_bn2")(y)]))
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    out = L.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name="tiny_resnet"), np.random.default_rng(0).random((2, 32, 32, 3), "float32")


def keras_vgg16(tiny: bool = False) -> tuple[Any, np.ndarray]:
    keras = _keras()
    if not tiny:
        return keras.applications.VGG16(weights=None), np.random.default_rng(0).random((1, 224, 224, 3), "float32")
    return (keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10),
            np.random.default_rng(0).random((1, 32, 32, 3), "float32"))


def keras_bert(tiny: bool = False) -> tuple[Any, dict[str, np.ndarray]]:
    """A BERT encoder in Keras layers (token + position embeddings, post-norm blocks of masked
    multi-head attention and a GELU feed-forward, pooled [CLS]); BERT-base at seq 128, or 2
    layers of width 32. Sequence length and batch stay open, so buckets can be compiled."""
    keras = _keras()
    L = keras.layers
    layers, width, heads, ffn, vocab, seq = (2, 32, 2, 64, 100, 16) if tiny else (12, 768, 12, 3072, 30522, 128)
    PositionEmbedding, AttentionMask = _layers()
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    mask = keras.Input((None,), dtype="int32", name="attention_mask")
    positions = PositionEmbedding(512, width, name="position_embeddings")(ids)
    x = L.Add(name="embeddings")([L.Embedding(vocab, width, name="word_embeddings")(ids), positions])
    x = L.LayerNormalization(epsilon=1e-12, name="embeddings_norm")(x)
    attend = AttentionMask(name="attention_mask_2d")(mask)
    for i in range(layers):
        a = L.MultiHeadAttention(heads, width // heads, name=f"layer{i}_attention")(x, x, attention_mask=attend)
        x = L.LayerNormalization(epsilon=1e-12, name=f"layer{i}_attention_norm")(L.Add()([x, a]))
        f = L.Dense(ffn, activation="gelu", name=f"layer{i}_intermediate")(x)
        f = L.Dense(width, name=f"layer{i}_output")(f)
        x = L.LayerNormalization(epsilon=1e-12, name=f"layer{i}_output_norm")(L.Add()([x, f]))
    pooled = L.Dense(width, activation="tanh", name="pooler")(x[:, 0])
    model = keras.Model([ids, mask], [x, pooled], name="keras_bert")
    rng = np.random.default_rng(0)
    batch = 2 if tiny else 1
    inputs = {"input_ids": rng.integers(1, vocab, (batch, seq), dtype=np.int32),
              "attention_mask": np.ones((batch, seq), np.int32)}
    return model, inputs


def _layers():
    import keras

    class PositionEmbedding(keras.layers.Layer):
        """Learned positions 0..L-1 for a sequence of any length L."""

        def __init__(self, limit: int, width: int, **kw):
            super().__init__(**kw)
            self.table = self.add_weight(shape=(limit, width), initializer="random_normal", name="table")

        def call(self, ids):
            return keras.ops.take(self.table, keras.ops.arange(keras.ops.shape(ids)[1]), axis=0)[None]

    class AttentionMask(keras.layers.Layer):
        """[batch, length] 0/1 mask -> [batch, 1, length] boolean: padded keys are never attended."""

        def call(self, mask):
            return keras.ops.cast(mask, "bool")[:, None, :]

    return PositionEmbedding, AttentionMask


def tf_detector(tiny: bool = False):
    """An SSD/YOLO-style head in TensorFlow: conv features -> per-anchor boxes and class scores
    -> tf.image.combined_non_max_suppression, as a tf.Module with a serving signature."""
    from ..frontends.tensorflow import _tf

    tf = _tf()
    size, channels, classes = (64, 16, 3) if tiny else (320, 64, 20)

    class Detector(tf.Module):
        def __init__(self):
            super().__init__()
            g = tf.random.Generator.from_seed(0)
            self.w1 = tf.Variable(g.normal([3, 3, 3, channels]) * 0.3)
            self.w2 = tf.Variable(g.normal([3, 3, channels, channels]) * 0.1)
            self.head = tf.Variable(g.normal([1, 1, channels, 4 + classes]) * 0.3)

        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="image")])
        def __call__(self, image):
            f = tf.nn.relu(tf.nn.conv2d(image, self.w1, 2, "SAME"))
            f = tf.nn.relu(tf.nn.conv2d(f, self.w2, 2, "SAME"))
            f = tf.reshape(tf.nn.conv2d(f, self.head, 1, "SAME"), [1, -1, 4 + classes])
            centers, sizes = tf.sigmoid(f[..., :2]), tf.sigmoid(f[..., 2:4]) * 0.3
            boxes = tf.concat([centers - sizes / 2, centers + sizes / 2], axis=-1)[:, :, None, :]
            scores = tf.sigmoid(f[..., 4:])
            out = tf.image.combined_non_max_suppression(boxes, scores, 20, 50, 0.5, 0.3)
            return {"boxes": out.nmsed_boxes, "scores": out.nmsed_scores, "classes": out.nmsed_classes,
                    "count": out.valid_detections}

    return Detector(), np.random.default_rng(0).random((1, size, size, 3), "float32")


def onnx_from_torch(build, name: str, tiny: bool) -> tuple[str, Any]:
    """A PyTorch zoo model exported to an ONNX file (torch.onnx, dynamo exporter) in the temp dir:
    how an ONNX file from another team arrives. Returns (path, example inputs as numpy)."""
    import torch

    model, inputs = build(tiny)
    path = os.path.join(tempfile.gettempdir(), f"archfit-zoo-{name}{'-tiny' if tiny else ''}.onnx")
    if isinstance(inputs, dict):
        args, kwargs, names = (), dict(inputs), list(inputs)
    else:
        args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        kwargs, names = {}, [f"input{i}" if i else "input" for i in range(len(args))]
    if not os.path.isfile(path):
        torch.onnx.export(model.eval(), args, path, kwargs=kwargs, input_names=names, dynamo=True, verbose=False,
                          external_data=False)
    feed = dict(zip(names, [t.numpy() for t in list(args) + list(kwargs.values())]))
    return path, feed
