"""TensorFlow 2 / Keras 3 in: a keras.Model, a tf.function (or tf.Module whose __call__ is one)
with an input signature, or a SavedModel directory, converted to ONNX by tf2onnx (the path
Keras's own `model.export(format="onnx")` takes) and from there into the one ATen graph
(frontends/onnx.py). The TensorFlow model stays the reference validation compares with, and
each node keeps the TensorFlow op type and Keras layer it came from, for reports.

Measured before choosing (DESIGN notes in frontends/__init__.py): tf2onnx 1.17 converts Keras 3
functional models under TensorFlow 2.21 (ResNet50, VGG16, a BERT encoder) with Keras's numpy-2
patch applied; OpenVINO's own TF reader would bypass the one graph (no partitioning, buckets
or packaging shared with the other frontends)."""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, first_line
from .inputs import as_dict, by_name

_OPSET = 17
# Keras models with more weights than this convert with their weights as inputs (see
# TensorFlowSource._keras_to_onnx); ResNet50's 100 MB converts frozen, BERT-base's 440 MB not
_FROZEN_MAX_BYTES = 256 * 2**20


KERAS_FILES = (".keras", ".h5", ".hdf5")
_PACKAGES = ("keras", "tensorflow", "tf_keras")


def is_keras_file(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in KERAS_FILES


def is_tensorflow(model: Any) -> bool:
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        return (p.is_dir() and (p / "saved_model.pb").is_file()) or (p.is_file() and is_keras_file(p))
    tf = sys.modules.get("tensorflow")  # a TensorFlow object exists only once TensorFlow is imported
    if tf is not None and (isinstance(model, tf.Module) or hasattr(model, "get_concrete_function")):
        return True
    # a keras.Model subclass lives in the user's own module: its bases say what it is
    return any((c.__module__ or "").split(".")[0] in _PACKAGES for c in type(model).__mro__)


def _is_keras_model(model: Any) -> bool:
    return any(getattr(sys.modules.get(m), "Model", None) is not None and isinstance(model, sys.modules[m].Model)
               for m in ("keras", "tf_keras"))


def declared_inputs(model: Any) -> list | None:
    """A functional Keras model's input tensors; None for a subclass that declares none."""
    try:
        return list(model.inputs) or None
    except (AttributeError, ValueError):  # Keras 3: a subclass has no graph inputs
        return None


def load_keras_file(path: str | os.PathLike) -> Any:
    """A .keras (Keras 3's zip: config and weights; safe_mode, so no stored lambda runs) or legacy
    .h5 file as a keras.Model."""
    _tf()
    import keras

    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types; one line for the user
        raise ModelError(f"{path}: Keras could not load it ({first_line(e)}); a subclassed model's class must be "
                         f"imported first and registered with @keras.saving.register_keras_serializable(), or "
                         f"pass the model object itself") from e


def _tf():
    try:
        # triton (pulled in by torch.export) segfaults when its LLVM loads after TensorFlow's;
        # loaded first, both coexist (measured: keras + torch.export + XLA in one process)
        import importlib
        import importlib.util

        if sys.modules.get("tensorflow") is None and importlib.util.find_spec("triton") is not None:
            importlib.import_module("triton")
        import tensorflow as tf
    except ImportError as e:
        raise ModelError("this is a TensorFlow model but TensorFlow is not installed here: pip install "
                         "'archfit[tensorflow]' (compiled files run without it)") from e
    return tf


def _convert(tf, fn, signature) -> "Any":
    import tf2onnx
    from keras.src.export.tf2onnx_lib import patch_tf2onnx  # tf2onnx predates numpy 2; Keras ships the fix

    patch_tf2onnx()
    # tf2onnx logs ERROR for TF ops it passes through unconverted (Erfc): archfit maps those itself
    # and names any it cannot, so its log would only mislead
    log = logging.getLogger("tf2onnx")
    level, log.level = log.level, logging.CRITICAL
    try:
        # large_model=True would keep weights out of the copies tf2onnx makes per optimizer pass,
        # but peaked at 23 GB on a Keras BERT-base (measured); large Keras models convert with
        # their weights as inputs instead (TensorFlowSource._keras_to_onnx)
        proto = tf2onnx.convert.from_function(fn, input_signature=signature, opset=_OPSET)[0]
    except Exception as e:  # noqa: BLE001 - tf2onnx raises anything; say which op when it does
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        said = lines[-1][:200] if lines and lines[0].startswith("in user code") else first_line(e, 200)
        raise ModelError(f"tf2onnx could not convert the TensorFlow model: {said}; archfit reads "
                         f"TensorFlow through ONNX: export it with model.export(path, format='onnx') and pass the "
                         f".onnx file, or report the op") from e
    finally:
        log.setLevel(level)
    return proto


class TensorFlowSource:
    """The user's TensorFlow model: converted once per input signature, run as the reference."""

    framework = "TF"

    def __init__(self, model: Any, inputs: Any):
        tf = _tf()
        self.tf = tf
        self.name, self.layers, self.keras = type(model).__name__, [], None
        if is_keras_file(model):
            self.name, model = Path(model).stem, load_keras_file(model)
        if isinstance(model, (str, os.PathLike)):
            self.name = Path(model).name
            loaded = tf.saved_model.load(str(model))
            signature = loaded.signatures.get("serving_default") if hasattr(loaded, "signatures") else None
            if signature is None:
                raise ModelError(f"SavedModel {model} has no 'serving_default' signature; save it with "
                                 f"tf.saved_model.save(obj, path, signatures=obj.__call__.get_concrete_function(...))")
            self._loaded = loaded  # the signature holds weak references into it
            names = list(signature.structured_input_signature[1])
            self.call = lambda feed: signature(**{n: tf.convert_to_tensor(feed[n]) for n in names})
            self.input_names = names
            self.fixed_specs = [signature.structured_input_signature[1][n] for n in names]
        elif _is_keras_model(model) or (hasattr(model, "layers") and hasattr(model, "inputs")):
            self.layers = [layer.name for layer in model._flatten_layers(include_self=False)]
            declared = declared_inputs(model)
            if declared:  # functional: the Keras inputs' own shapes; dims left open (batch, sequence) stay open in ONNX
                self.input_names = [getattr(t, "name", f"input_{i}").split(":")[0] for i, t in enumerate(declared)]
                self.fixed_specs = [tf.TensorSpec(t.shape, t.dtype, name=n) for t, n in zip(declared, self.input_names)]
                self.call = lambda feed: model([tf.convert_to_tensor(feed[n]) for n in feed] if len(feed) > 1
                                               else tf.convert_to_tensor(next(iter(feed.values()))), training=False)
            else:  # a subclass: called as the example is given (one array, a list or a dict), at its shapes
                self.input_names, self.fixed_specs = None, None
                shape = "dict" if isinstance(inputs, dict) else "list" if isinstance(inputs, (list, tuple)) else "one"

                def call(feed, shape=shape):
                    ts = {n: tf.convert_to_tensor(v) for n, v in feed.items()}
                    given = ts if shape == "dict" else list(ts.values()) if shape == "list" else next(iter(ts.values()))
                    return model(given, training=False)
                self.call = call
            self.keras = model
        else:  # a tf.function or a tf.Module whose __call__ is one
            fn = model if hasattr(model, "get_concrete_function") else getattr(model, "__call__", None)
            specs = getattr(fn, "input_signature", None)
            if not specs:
                raise ModelError(f"{self.name}: a tf.function needs an input_signature (or pass a keras.Model or a "
                                 f"SavedModel directory): decorate it with @tf.function(input_signature=[...])")
            self.input_names = [s.name or f"input_{i}" for i, s in enumerate(specs)]
            self.call = lambda feed: fn(*[tf.convert_to_tensor(feed[n]) for n in self.input_names])
            self.fixed_specs = list(specs)
        self.feed = self._feed(inputs)
        if self.fixed_specs is None:
            self.fixed_specs = [tf.TensorSpec(v.shape, tf.as_dtype(v.dtype), name=n) for n, v in self.feed.items()]

    def _feed(self, inputs: Any) -> dict[str, np.ndarray]:
        if not self.input_names:  # a Keras model that declares no inputs: named as given, or by position
            count = len(inputs) if isinstance(inputs, (list, tuple)) else 1
            self.input_names = list(inputs) if isinstance(inputs, dict) else [f"input_{i}" for i in range(count)]
        feed = by_name(self.input_names, as_dict(self.input_names, inputs, self.name), self.name)
        return {n: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for n, v in feed.items()}

    def reference(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """TensorFlow's own outputs, flat in the ONNX graph's output order."""
        out = self.call(feed)
        self.outputs_as = "dict" if isinstance(out, dict) else "list"
        flat = [out[k] for k in sorted(out)] if isinstance(out, dict) else \
            list(out) if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(t.numpy() if hasattr(t, "numpy") else t) for t in flat]

    def to_onnx(self):
        tf, specs = self.tf, self.fixed_specs
        self.reference(self.feed)  # also learns whether the model answers with a dict
        weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in self.keras.weights) if self.keras is not None else 0
        if weight_bytes > _FROZEN_MAX_BYTES:
            return self._keras_to_onnx()
        fn = tf.function(lambda *xs: self.call(dict(zip(self.input_names, xs))))
        proto = _convert(tf, fn, specs)
        self.op_types, self.op_inputs = _op_types(fn.get_concrete_function(*specs).graph.as_graph_def())
        return proto

    def _keras_to_onnx(self):
        """A large Keras model converts with its weights as inputs (Keras 3's stateless_call), so
        tf2onnx never holds them: converting a frozen Keras BERT-base took 122 s and peaked at
        18 GB of memory, because tf2onnx deep-copies its graph, weights included, before each of
        its ~50 optimizer passes; this way, 35 s and 2.5 GB (measured). The weights go back in as
        initializers; what was computed from them alone (transposed kernels, batch-norm scales)
        the importer folds. The price: tf2onnx cannot move NHWC transposes through constants it
        does not see, so a convolutional model keeps a transpose pair around each convolution;
        models up to _FROZEN_MAX_BYTES of weights convert frozen, where it can."""
        from onnx import numpy_helper

        tf, model = self.tf, self.keras
        variables = list(model.trainable_variables) + list(model.non_trainable_variables)
        trainable = len(model.trainable_variables)
        count = len(self.fixed_specs)
        weight_specs = [tf.TensorSpec(v.shape, v.dtype, name=f"archfit_weight_{i}") for i, v in enumerate(variables)]

        def call(*args):
            xs, ws = list(args[:count]), list(args[count:])
            out, _ = model.stateless_call(ws[:trainable], ws[trainable:], xs if count > 1 else xs[0], training=False)
            return out

        fn = tf.function(call)
        specs = self.fixed_specs + weight_specs
        proto = _convert(tf, fn, specs)
        self.op_types, self.op_inputs = _op_types(fn.get_concrete_function(*specs).graph.as_graph_def())
        by_name = {spec.name: v for spec, v in zip(weight_specs, variables)}
        kept = []
        for given in proto.graph.input:
            key = given.name.split(":")[0]
            if key in by_name:
                proto.graph.initializer.append(numpy_helper.from_array(by_name[key].numpy(), given.name))
            else:
                kept.append(given)
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
        return proto

    def _computing(self, node, tf_name: str | None) -> str | None:
        """The TF op that computes a fused ONNX compute node (a Conv with its bias and a folded
        BatchNormalization), which tf2onnx names after another op or after none."""
        ops = _COMPUTE[node.op_type]
        found = _weights_of(node, ops, self.op_types)
        if found or not tf_name:
            return found
        # named after its last op (a Conv after its BiasAdd): the Conv2D in the same scope
        scope = tf_name.rsplit("/", 1)[0] + "/"
        found = next((n for n, t in self.op_types.items() if n.startswith(scope) and "/" not in n[len(scope):]
                      and t in ops), None)
        # named after a folded norm's Mul, in the norm's scope: the op upstream in TF's graph
        return found or _upstream(tf_name, ops, self.op_types, self.op_inputs)

    def labels(self, proto) -> dict[str, tuple[str, str]]:
        """ONNX node -> ('TF Conv2D 'model/conv1/Conv2D' (Keras layer conv1)', 'Conv2D')."""
        out = {}
        for node in proto.graph.node:
            name = node.name
            tf_name = _tf_op(name, self.op_types)
            op = self.op_types.get(tf_name, node.op_type) if tf_name else node.op_type
            if node.op_type in _COMPUTE and op not in _COMPUTE[node.op_type]:
                tf_name = self._computing(node, tf_name) or tf_name
                op = self.op_types.get(tf_name, op) if tf_name else op
            layer = _layer(tf_name or name, self.layers)
            label = f"TF {op} {tf_name or name!r}" + (f" (Keras layer {layer})" if layer else "")
            out[name] = (label, op)
        return out


def _weights_of(node, ops: tuple[str, ...], op_types: dict[str, str]) -> str | None:
    """The TF op a fused node's weights came from: tf2onnx names a folded weight after it
    ('model/conv2d/convolution/merged_input')."""
    for given in node.input:
        name = given.split(":")[0]
        while "/" in name:
            if op_types.get(name) in ops:
                return name
            name = name.rsplit("/", 1)[0]
    return None


def _op_types(graph_def) -> tuple[dict[str, str], dict[str, list[str]]]:
    """TF node name -> op type, and -> its input nodes' names, including the nodes of called
    functions (a SavedModel's serving function calls the model's, which tf2onnx inlines under
    StatefulPartitionedCall/...)."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return ({n.name: n.op for n in nodes},
            {n.name: [i.lstrip("^").split(":")[0] for i in n.input] for n in nodes})


def _upstream(tf_name: str, ops: tuple[str, ...], op_types: dict[str, str], op_inputs: dict[str, list[str]],
              depth: int = 6) -> str | None:
    """The nearest node of one of `ops` feeding `tf_name` in TF's graph, within `depth` steps."""
    frontier, seen = [tf_name], {tf_name}
    for _ in range(depth):
        frontier = [i for n in frontier for i in op_inputs.get(n, ()) if i not in seen]
        seen.update(frontier)
        hit = next((n for n in frontier if op_types.get(n) in ops), None)
        if hit:
            return hit
    return None


# ONNX compute ops and the TensorFlow ops they come from
_COMPUTE = {"Conv": ("Conv2D", "Conv3D", "Conv1D", "DepthwiseConv2dNative"), "ConvTranspose": ("Conv2DBackpropInput",),
            "MatMul": ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum"), "Gemm": ("MatMul",)}
_SUFFIX = re.compile(r"(__\d+|_[A-Z][A-Za-z]*__\d+|:\d+)$")


def _tf_op(onnx_name: str, op_types: dict[str, str]) -> str | None:
    """The TensorFlow op an ONNX node came from: tf2onnx keeps TF names, adding suffixes to the
    nodes it inserts (transposes for NHWC, squeezes)."""
    name = onnx_name
    while name.startswith("StatefulPartitionedCall/"):
        name = name[len("StatefulPartitionedCall/"):]
    for _ in range(3):
        if name in op_types:
            return name
        stripped = _SUFFIX.sub("", name)
        if stripped == name:
            break
        name = stripped
    return None


def _layer(tf_name: str, layers: list[str]) -> str | None:
    """The Keras layer whose scope holds a TF op ('functional/conv1_1/convolution' -> conv1)."""
    parts = tf_name.split("/")
    for part in parts[1:-1] or parts[:1]:
        for layer in layers:
            if part == layer or re.fullmatch(re.escape(layer) + r"_\d+", part):
                return layer
    return None
