"""ONNX in: a ModelProto becomes a torch module whose forward runs each ONNX node as PyTorch
calls, so torch.export captures it into the same ATen graph the PyTorch path partitions,
compiles and packages (one internal graph; frontends leave no trace after capture).

Why an importer of our own rather than onnx2torch: onnx2torch keeps shape inputs (Reshape's
shape, Squeeze's axes, Slice's bounds) as tensors, which torch.export cannot turn into the
Python ints a fixed-shape graph needs (its issue #225); here they are folded in numpy at the
example shapes (onnx_ops.STATIC). Every ATen node keeps the ONNX node it came from
(`node.meta["custom"]`), so fit reports name the user's op and node."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.fx.traceback import annotate

from ..errors import ModelError, first_line
from .onnx_ops import TORCH
from .inputs import as_dict, as_torch, by_name
from .onnx_static import STATIC, Node, tensor

SOURCE_KEY = "archfit_source"  # node.meta["custom"] key: how the user's framework names the node
OP_KEY = "archfit_op"  # ... and its op type there
_SMALL = 64  # float initializers up to this many values fold like shape constants; larger ones are weights
_CONTROL = {"If"}  # run here when their condition is known at the example shapes


def read_onnx(model: Any) -> onnx.ModelProto:
    """A path, bytes or ModelProto, checked with onnx.checker."""
    where = "the ONNX model"
    if isinstance(model, (str, os.PathLike)):
        where = str(model)
        if not Path(model).is_file():
            raise ModelError(f"{where}: no such ONNX file; pass the path of a .onnx file")
        try:
            model = onnx.load(str(model))
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file
            raise ModelError(f"{where} is not a readable ONNX file ({first_line(e, 160)}); re-export it") from e
    elif isinstance(model, bytes):
        model = onnx.load_from_string(model)
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"expected an ONNX ModelProto or the path of a .onnx file, got {type(model).__name__}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{where} fails onnx.checker: {first_line(e, 200)}; re-export it with the framework's ONNX "
                         f"exporter (it is not a valid ONNX model)") from e
    return model


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
    return out


def _unmapped(graph: onnx.GraphProto) -> list[str]:
    missing = []
    for node in graph.node:
        if node.op_type not in TORCH and node.op_type not in STATIC and node.op_type not in _CONTROL:
            missing.append(f"{node.op_type} (node {node.name or node.output[0]!r})")
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                missing += _unmapped(a.g)
    return missing


# ops whose output size depends on values: they and everything after them run on the host
HOST_OPS = {"NonMaxSuppression", "NonZero"}


class OnnxGraph(torch.nn.Module):
    """Runs ONNX nodes as PyTorch calls: forward(**inputs) by ONNX input names; one output as a
    tensor, several as a dict by their ONNX names. `labels` gives each ONNX node the name its
    source framework uses (the TensorFlow op, the Keras layer), for reports."""

    def __init__(self, nodes: list, static: dict[str, np.ndarray], weights: dict[str, torch.Tensor],
                 input_names: list[str], output_names: list[str], framework: str, labels: dict):
        super().__init__()
        self.framework, self.labels = framework, labels
        self._static = static
        used = {i for n, _ in nodes for i in _inputs_deep(n)}
        self._weights: dict[str, str] = {}
        for k, (name, value) in enumerate(weights.items()):
            if name in used:  # parts share the tensors, not copies
                self.register_buffer(f"w{k}", value)
                self._weights[name] = f"w{k}"
        self.input_names, self.output_names = list(input_names), list(output_names)
        self._nodes = nodes

    def forward(self, **inputs):
        env = self._env(by_name(self.input_names, inputs, f"the {self.framework} model"))
        self._run(self._nodes, env)
        return self._outputs(env)

    def _outputs(self, env: dict[str, Any]):
        outs = [tensor(env[name]) for name in self.output_names]
        return outs[0] if len(outs) == 1 else dict(zip(self.output_names, outs))

    def _env(self, inputs: dict) -> dict[str, Any]:
        env: dict[str, Any] = dict(self._static)
        env.update({name: getattr(self, attr) for name, attr in self._weights.items()})
        env.update(inputs)
        return env

    def _run(self, nodes, env: dict[str, Any]) -> None:
        for proto, attrs in nodes:
            raw = [env[i] if i else None for i in proto.input]
            node = Node(proto, attrs, raw)
            label, op = self.labels.get(node.name, (f"{self.framework} {node.op} {node.name!r}", node.op))
            with annotate({SOURCE_KEY: label, OP_KEY: op}):
                out = self._one(node, raw, env)
            outs = out if isinstance(out, tuple) else (out,)
            for name, value in zip(proto.output, outs):
                if name:
                    env[name] = value

    def _one(self, node: Node, raw: list, env: dict[str, Any]):
        if node.op == "If":
            branch = "then_branch" if bool(np.asarray(node.const(0)).reshape(-1)[0]) else "else_branch"
            sub = node.attr(branch)
            scope = dict(env)
            self._run([(n, _attrs(n)) for n in sub.node], scope)
            outs = tuple(scope[o.name] for o in sub.output)
            return outs if len(outs) > 1 else outs[0]
        given = [v for v in raw if v is not None]
        shape_only = node.op in ("Shape", "Size")
        if node.op in STATIC and (shape_only or all(isinstance(v, np.ndarray) for v in given)):
            return np.asarray(STATIC[node.op](node, *raw))  # known at the example shapes: fold it
        try:
            return TORCH[node.op](node, *raw)
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - name the ONNX node, not the torch call inside it
            shapes = ", ".join(str(tuple(v.shape)) if hasattr(v, "shape") else "-" for v in raw)
            raise ModelError(f"ONNX node {node.name!r} ({node.op}) fails on inputs of shapes {shapes}: "
                             f"{first_line(e, 160)}") from e


def _inputs_deep(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, with those its subgraphs (If branches) read from the outer scope."""
    names = list(node.input)
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            names += [i for n in a.g.node for i in _inputs_deep(n)]
    return names


class OnnxModule(OnnxGraph):
    """A whole ONNX model. When it holds ops whose output size depends on values (NMS), the
    nodes before them form `head`, a submodule archfit compiles, and the rest runs here on the
    host, the way a PyTorch detector's Python does (archfit.regions)."""

    def __init__(self, model: onnx.ModelProto, framework: str = "ONNX", labels: dict[str, tuple[str, str]] | None = None):
        graph = model.graph
        missing = _unmapped(graph)
        if missing:
            shown = ", ".join(dict.fromkeys(missing[:6]))
            raise ModelError(f"the ONNX graph holds {len(missing)} node(s) archfit cannot map to PyTorch: {shown}"
                             f"{', ...' if len(missing) > 6 else ''}; name them in an issue, or export the model "
                             f"without them")
        static: dict[str, np.ndarray] = {}
        weights: dict[str, torch.Tensor] = {}
        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype.kind == "f" and array.size > _SMALL:
                weights[init.name] = torch.from_numpy(array.copy())
            else:
                static[init.name] = array
        inputs = [i.name for i in graph.input if i.name not in static and i.name not in weights]
        outputs = [o.name for o in graph.output]
        nodes = _fold_constants([(n, _attrs(n)) for n in graph.node], weights, static, set(outputs))
        nodes = _fold_scale_shift(nodes, weights, static, outputs)
        head, tail = _split_host(nodes)
        super().__init__(tail if head else nodes, static, weights, inputs, outputs, framework, labels or {})
        self.declared = {i.name: [d.dim_value if d.HasField("dim_value") else None
                                  for d in i.type.tensor_type.shape.dim] for i in graph.input if i.name in inputs}
        self.host_reason: str | None = None
        if head:
            produced = {o for n, _ in head for o in n.output}
            wanted = [i for n, _ in tail for i in _inputs_deep(n)] + outputs
            head_outputs = list(dict.fromkeys(i for i in wanted if i in produced))
            self.head = OnnxGraph(head, static, weights, inputs, head_outputs, framework, self.labels)
            first = tail[0][0]
            label = self.labels.get(first.name, (f"{framework} {first.op_type} {first.name!r}",))[0]
            self.host_reason = f"{label} has an output size that depends on values"

    def forward(self, **inputs):
        for name, value in inputs.items():
            dims = self.declared.get(name)
            fixed = [(k, d) for k, d in enumerate(dims or []) if d is not None and k < value.dim() and value.shape[k] != d]
            if dims is not None and (len(dims) != value.dim() or fixed):
                k, d = fixed[0] if fixed else (None, None)
                what = f"dim {k} is {value.shape[k]}, the file fixes it at {d}" if fixed else \
                    f"rank is {value.dim()}, the file's is {len(dims)}"
                raise ModelError(f"ONNX input {name!r}: {what}; pass inputs of the declared shape "
                                 f"{['?' if x is None else x for x in dims]}, or export the model with that dim "
                                 f"dynamic (torch.onnx dynamic_shapes=, tf2onnx with None in the signature) to vary it")
        if self.host_reason is None:
            return super().forward(**inputs)
        if torch.compiler.is_exporting():  # say which node, rather than fail somewhere inside NMS
            from ..errors import CaptureError

            raise CaptureError(f"{self.host_reason}; it runs on the host", reason=self.host_reason)
        head = self.head(**inputs)
        env = self._env(inputs)
        env.update(head if isinstance(head, dict) else {self.head.output_names[0]: head})
        self._run(self._nodes, env)
        return self._outputs(env)


def _fold_constants(nodes: list, weights: dict, static: dict, outputs: set[str]) -> list:
    """Nodes computed from weights and constants alone (a Keras model converted with its weights
    as inputs transposes its kernels and computes its batch-norm scales in the graph) run once,
    here; their results become weights. The graph every target sees is then the model's compute."""
    kept = []
    for proto, attrs in nodes:
        given = [i for i in proto.input if i]
        constant = given and all(i in weights or i in static for i in given)
        if not constant or proto.op_type in HOST_OPS or proto.op_type in _CONTROL or \
                any(o in outputs for o in proto.output):
            kept.append((proto, attrs))
            continue
        raw = [weights.get(i, static.get(i)) if i else None for i in proto.input]
        node = Node(proto, attrs, raw)
        try:
            with torch.no_grad():
                if proto.op_type in STATIC and all(isinstance(v, np.ndarray) for v in raw if v is not None):
                    out = STATIC[proto.op_type](node, *raw)
                else:
                    out = TORCH[proto.op_type](node, *[torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray)
                                                       else v for v in raw])
        except Exception:  # noqa: BLE001 - not foldable here: it runs in the graph, where errors are named
            kept.append((proto, attrs))
            continue
        for name, value in zip(proto.output, out if isinstance(out, tuple) else (out,)):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > _SMALL:
                weights[name] = value.contiguous()
            else:
                static[name] = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return kept


def _fold_scale_shift(nodes: list, weights: dict, static: dict, outputs: list[str]) -> list:
    """Conv -> Mul(per-channel constant) -> Add(per-channel constant), an inference batch norm as
    tf2onnx leaves it when it keeps weights out of its graph (large-model mode, which archfit
    uses: frontends/tensorflow.py), folded into the convolution's weight and bias, as tf2onnx
    folds it otherwise. Done on the weights, once, so every target gets the one convolution."""
    readers: dict[str, int] = {}
    for proto, _ in nodes:
        for name in _inputs_deep(proto):
            readers[name] = readers.get(name, 0) + 1
    for name in outputs:
        readers[name] = readers.get(name, 0) + 1
    producer = {o: i for i, (proto, _) in enumerate(nodes) for o in proto.output}
    dropped: set[int] = set()

    def constant(name: str):
        value = weights.get(name)
        return value.numpy() if value is not None else static.get(name)

    for i, (proto, attrs) in enumerate(nodes):
        if proto.op_type not in ("Mul", "Add") or len(proto.input) != 2:
            continue
        source = next((k for k, name in enumerate(proto.input) if name in producer), None)
        if source is None:
            continue
        j = producer[proto.input[source]]
        conv, conv_attrs = nodes[j]
        other = constant(proto.input[1 - source])
        if j in dropped or conv.op_type != "Conv" or readers.get(proto.input[source]) != 1 or other is None:
            continue
        w = constant(conv.input[1])
        b = constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if w is None or (len(conv.input) > 2 and conv.input[2] and b is None):
            continue
        channels = w.shape[0]
        per_channel = other.size == channels and other.reshape(-1).shape[0] == channels and (
            other.ndim == 0 or other.shape[-(w.ndim - 1):] == (channels,) + (1,) * (w.ndim - 2)
            or other.shape == (channels,) + (1,) * (w.ndim - 2))
        if not per_channel or other.dtype != w.dtype:
            continue
        scale = other.reshape(-1)
        b = np.zeros(channels, w.dtype) if b is None else b
        if proto.op_type == "Mul":
            w, b = w * scale.reshape((channels,) + (1,) * (w.ndim - 1)), b * scale
        else:
            b = b + scale
        prefix = f"{conv.name or conv.output[0]}_folded"
        weights[f"{prefix}_w{i}"] = torch.from_numpy(np.ascontiguousarray(w))
        weights[f"{prefix}_b{i}"] = torch.from_numpy(np.ascontiguousarray(b))
        folded = onnx.NodeProto()
        folded.CopyFrom(conv)
        del folded.input[:]
        folded.input.extend([conv.input[0], f"{prefix}_w{i}", f"{prefix}_b{i}"])
        del folded.output[:]
        folded.output.extend(proto.output)
        nodes[i] = (folded, conv_attrs)  # the conv now computes what the Mul/Add did, in its place
        dropped.add(j)
        producer.update({o: i for o in proto.output})
    return [n for k, n in enumerate(nodes) if k not in dropped]


def _split_host(nodes: list) -> tuple[list, list]:
    """(nodes before any value-dependent op, that op and every node depending on it)."""
    host_values: set[str] = set()
    head, tail = [], []
    for proto, attrs in nodes:
        if proto.op_type in HOST_OPS or any(i in host_values for i in _inputs_deep(proto)):
            tail.append((proto, attrs))
            host_values.update(proto.output)
        else:
            head.append((proto, attrs))
    return (head, tail) if tail else ([], [])


def named_inputs(module: torch.nn.Module, example_inputs: Any, what: str) -> dict[str, torch.Tensor]:
    """Example inputs (a dict by input name, a sequence in input order, or one array) as torch
    tensors by the imported module's `input_names`."""
    names = module.input_names
    return {n: as_torch(v) for n, v in by_name(names, as_dict(names, example_inputs, what), what).items()}
