"""Frontends: models from other frameworks become the one internal graph (a torch module that
torch.export captures into ATen), so partitioning, buckets, validation and packaging are
written once. Each frontend also keeps the source framework's own run as the reference that
validation compares with, and names every node as the user knows it.

Design notes (measured here, Keras 3.15 / TensorFlow 2.21 / onnx2torch 1.5.15 / tf2onnx 1.17):
- ONNX -> torch: archfit's own importer (frontends/onnx.py). onnx2torch's modules convert, but
  torch.export fails on its shape handling (Squeeze/Reshape take axes and shapes as tensors:
  GuardOnDataDependentSymNode on a Keras ResNet's Squeeze); folding shape subgraphs in numpy at
  the example shapes removes the problem at its root and lets us name each node.
- TensorFlow/Keras -> ONNX: tf2onnx via tf.function, the path Keras's model.export takes, in
  its large-model mode (weights kept out of the graph it deep-copies per optimizer pass: 122 ->
  80 s on a Keras BERT-base), with the batch-norm folding that mode skips done by the importer.
  OpenVINO reads TF directly, but only for OpenVINO: it would not give ONNX Runtime, the
  partitioner or the packager the graph. tf2onnx leaves TF ops it cannot convert (Erfc, from
  Keras's exact GELU) in the graph, which ONNX Runtime then refuses; the importer maps them.
- MXNet -> torch: archfit reads the symbol JSON and params file itself (frontends/mxnet.py):
  MXNet 1.9 needs numpy<1.24 and cannot be installed beside archfit.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.module import CallAdapter
from .tensorflow import is_keras_file

FRAMEWORKS = ("pytorch", "onnx", "tensorflow", "mxnet")


@dataclass(frozen=True)
class Imported:
    """A model made ready for the pipeline."""

    module: torch.nn.Module  # what torch.export captures
    inputs: Any  # example inputs, as torch tensors, structured for module
    name: str
    framework: str  # one of FRAMEWORKS
    input_names: tuple[str, ...] = ()
    outputs_as: str = "list"  # several outputs come back as the source framework gives them: "list" or "dict"
    id_inputs: tuple[str, ...] = ()  # token ids the source framework takes as floats (MXNet): cast on call
    # the source framework's own outputs (flat, numpy) for a feed {input name: array}
    reference: Callable[[dict[str, np.ndarray]], list[np.ndarray]] | None = None
    text: Any = None  # a directory's text front (text/io.py TextIO), attached to what is compiled
    image: Any = None  # an image directory's front (text/image.py ImageIO), likewise

    @property
    def foreign(self) -> bool:
        return self.framework != "pytorch"

    def io(self) -> "FrameworkIO":
        """How the compiled module takes the source framework's inputs and gives outputs back."""
        return FrameworkIO(self.framework, tuple(self.input_names), self.outputs_as, tuple(self.id_inputs))


def _is_onnx(model: Any) -> bool:
    if isinstance(model, (str, os.PathLike)):
        return str(model).endswith(".onnx")
    return type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx")


def import_model(model: Any, example_inputs: Any, task: str | None = None, length: int | None = None,
                 batch: int | None = None) -> Imported:
    """PyTorch modules pass through; ONNX files/protos and TensorFlow/Keras models are imported;
    a Hugging Face or sentence-transformers directory is read for `task` (text/directory.py),
    its example inputs made by its tokenizer at `length` tokens unless given."""
    if isinstance(model, torch.nn.Module):
        refuse_quantized(model)
        return Imported(model, example_inputs, type(model).__name__, "pytorch")
    from ..text.directory import Directory, is_directory, read_directory

    if is_directory(model) or isinstance(model, Directory):
        d = model if isinstance(model, Directory) else read_directory(model, task, length, batch or 1)
        return Imported(d.module, d.inputs if example_inputs is None else example_inputs, d.name, "pytorch",
                        text=d.text, image=d.image)
    from ..errors import ModelError
    from .tensorflow import is_tensorflow

    if _is_onnx(model):
        from .onnx import OnnxModule, named_inputs, read_onnx

        proto = read_onnx(model)
        module = OnnxModule(proto)
        inputs = named_inputs(module, example_inputs, str(model) if isinstance(model, (str, os.PathLike)) else
                             "the ONNX model")
        name = Path(model).stem if isinstance(model, (str, os.PathLike)) else (proto.graph.name or "onnx")
        return Imported(module, inputs, name, "onnx", tuple(module.input_names), reference=_ort_reference(proto))
    if is_tensorflow(model):
        return _import_tensorflow(model, example_inputs)
    from .mxnet import MxnetModule, is_mxnet
    from .onnx import named_inputs

    if is_mxnet(model):
        module = MxnetModule(model)
        inputs = named_inputs(module, example_inputs, str(model))
        inputs |= {n: inputs[n].long() for n in module.id_inputs}
        return Imported(module, inputs, module.name, "mxnet", tuple(module.input_names), id_inputs=tuple(module.id_inputs))
    raise ModelError(f"archfit takes a torch.nn.Module, an ONNX model (.onnx path or ModelProto), a keras.Model, "
                     f"a tf.function with an input signature, a SavedModel directory or an MXNet NAME-symbol.json "
                     f"(with NAME-0000.params beside it); got {type(model).__name__}"
                     f"{' ' + repr(str(model)[:80]) if isinstance(model, (str, os.PathLike)) else ''}")


def _import_tensorflow(model: Any, example_inputs: Any) -> Imported:
    from .inputs import as_torch
    from .onnx import OnnxModule
    from .tensorflow import TensorFlowSource

    source = TensorFlowSource(model, example_inputs)
    proto = source.to_onnx()
    # tf2onnx names inputs after the specs, sometimes with ':0': rename to the model's names
    graph_inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    for given, name in zip(graph_inputs, source.input_names):
        if given.name != name:
            for node in proto.graph.node:
                node.input[:] = [name if i == given.name else i for i in node.input]
            given.name = name
    module = OnnxModule(proto, framework="TF", labels=source.labels(proto))
    inputs = {n: as_torch(v) for n, v in source.feed.items()}
    return Imported(module, inputs, source.name, "tensorflow", tuple(source.input_names),
                    outputs_as=source.outputs_as, reference=source.reference)


def refuse_quantized(model: torch.nn.Module) -> None:
    """A model torch already quantized (quantize_dynamic's Linear/LSTM, as easyocr does on the
    CPU; static quantized layers) holds packed int8 parameters that torch.export cannot capture:
    refused in one line naming those layers, before capture fails somewhere inside them."""
    from ..errors import ModelError

    found: list[tuple[str, str]] = []
    for name, m in model.named_modules():
        inside = any(name.startswith(f + ".") for f, _ in found)  # a quantized layer's own packed parameters
        if not inside and type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized",
                                                         "torch.ao.nn.intrinsic.quantized")):
            found.append((name or type(model).__name__, type(m).__name__))
    if found:
        listed = ", ".join(f"{n} ({kind})" for n, kind in found[:5]) + (f" and {len(found) - 5} more"
                                                                         if len(found) > 5 else "")
        raise ModelError(f"{type(model).__name__} has layers torch quantized already: {listed}; archfit quantizes "
                         f"float models itself: pass the model before quantize_dynamic/convert and "
                         f"precision='int8' (CLI --precision int8), which calibrates and gates on your inputs")


def _ort_reference(proto) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """ONNX Runtime on the user's own graph: the ONNX model's reference run."""
    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, feed)
    return run


def feed_of(names: tuple[str, ...], args: tuple, kwargs: dict, ids: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A call's inputs (a dict, arrays in input order, or keywords) as torch tensors by name."""
    from ..errors import InputError
    from .inputs import as_torch, by_name

    if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
        given = dict(args[0])
    else:
        if len(args) > len(names):
            raise InputError(f"called with {len(args)} inputs; the model takes {len(names)} "
                             f"({', '.join(map(repr, names))})")
        given = dict(zip(names, args)) | kwargs
    feed = {n: as_torch(v) for n, v in by_name(names, given, "the model", InputError).items()}
    return feed | {n: feed[n].long() for n in ids}


def give_back(framework: str, out, outputs_as: str = "list"):
    """Outputs in the caller's framework: numpy, or tf.Tensors when TensorFlow is already loaded;
    several as a list in the model's order (ONNX Runtime, Keras) or a dict (TF signatures)."""
    def one(t):
        array = t.detach().numpy() if isinstance(t, torch.Tensor) else t
        tf = sys.modules.get("tensorflow")  # None when absent, or when blocked as a fresh process may do
        if framework == "tensorflow" and tf is not None:
            return tf.convert_to_tensor(array)
        return array
    if isinstance(out, dict):
        return {k: one(v) for k, v in out.items()} if outputs_as == "dict" else [one(v) for v in out.values()]
    if isinstance(out, (list, tuple)):
        return [one(v) for v in out]
    return one(out)


@dataclass(frozen=True)
class FrameworkIO(CallAdapter):
    """A compiled module's calls in its source framework: inputs by name (numpy, tf.Tensors, in
    input order or as keywords), outputs given back as that framework's arrays; kept in the file."""

    framework: str
    inputs: tuple[str, ...]
    outputs: str = "list"  # several outputs as a "list" (ONNX Runtime, Keras) or a "dict" (TF signatures)
    id_inputs: tuple[str, ...] = ()

    def call(self, run, args: tuple, kwargs: dict):
        return give_back(self.framework, run(**feed_of(self.inputs, args, kwargs, self.id_inputs)), self.outputs)

    def to_dict(self) -> dict:
        return {"framework": self.framework, "inputs": list(self.inputs), "outputs": self.outputs,
                "ids": list(self.id_inputs)}

    @classmethod
    def from_dict(cls, value) -> "FrameworkIO | None":
        """From a file's manifest, checked as plain data; None when malformed."""
        if not (isinstance(value, dict) and value.get("framework") in FRAMEWORKS and isinstance(value.get("inputs"), list)
                and all(isinstance(n, str) for n in value["inputs"])):
            return None
        outputs, ids = value.get("outputs", "list"), value.get("ids", [])
        if outputs not in ("list", "dict") or not isinstance(ids, list) or not all(i in value["inputs"] for i in ids):
            return None
        return cls(value["framework"], tuple(value["inputs"]), outputs, tuple(ids))


def to_source_framework(module, imported: Imported, validate: bool):
    """The compiled module of an imported model, made the source framework's: checked against
    that framework's own outputs on the example inputs (never only against archfit's own import
    of it), then set to take and give back the caller's arrays."""
    if validate and imported.reference is not None:
        _check_against_source(module, imported)
    module.frontend = imported.io()
    return module


_LABELS = {"onnx": "ONNX Runtime on the ONNX file", "tensorflow": "TensorFlow itself"}


def _check_against_source(module, imported: Imported) -> None:
    import dataclasses

    from ..core.validate import InputCheck, compare_outputs, flat_outputs
    from ..errors import ValidationError

    feed = {n: t.numpy() for n, t in imported.inputs.items()}
    want = [torch.from_numpy(np.ascontiguousarray(w)) for w in imported.reference(feed)]
    with torch.no_grad():
        got = flat_outputs(module(**imported.inputs))
    names = list(getattr(imported.module, "output_names", [])) or [f"output {i}" for i in range(len(want))]
    label = _LABELS.get(imported.framework, imported.framework)
    # after NMS, boxes whose scores tie within rounding may come out in another order: compare as sets
    unordered = getattr(imported.module, "host_reason", None) is not None
    check = InputCheck(f"example inputs vs {label}", compare_outputs(names, got, want, module.precision,
                                                                     unordered=unordered))
    if not check.ok:
        bad = next(o for o in check.outputs if not o.ok)
        raise ValidationError(f"output {bad.output!r} of {imported.name} differs from {label}: max abs error "
                              f"{bad.max_abs:.3e} > tolerance {bad.tolerance:.3e} ({module.precision}); archfit's "
                              f"import of an op differs from the source framework: report it with the model")
    report = module.report
    if report is not None and getattr(report, "validation", None) is not None:
        validation = dataclasses.replace(report.validation, checks=report.validation.checks + (check,))
        module.report = dataclasses.replace(report, validation=validation)


def example_inputs_for(path: str, shapes: dict | None = None, batch: int = 1, length: int = 128) -> dict[str, torch.Tensor]:
    """Example inputs for a model file (ONNX, a SavedModel's serving signature, an MXNet symbol),
    from its declared inputs: open dims become `batch` (dim 0) or `length`, unless `shapes`
    ({name: (dims, dtype or None)}, the CLI's --shape) sets them; floats are standard normal,
    integers 1 (a valid token id and an all-ones mask), booleans True. For the CLI, where no
    example is given; --vary/--buckets then set the lengths compiled."""
    from ..errors import ModelError
    from .mxnet import MxnetModule, is_mxnet

    shapes = dict(shapes or {})
    specs: list[tuple[str, list, np.dtype]] = []
    if is_mxnet(path):  # the symbol carries no shapes: every input is given one
        module = MxnetModule(path)
        missing = [n for n in module.input_names if n not in shapes]
        if missing:
            raise ModelError(f"{path}: MXNet symbol files carry no input shapes; give each input one with --shape "
                             f"(missing: {', '.join(f'{n}=1x3x224x224' for n in missing)})")
        specs = [(n, shapes[n][0], np.dtype("int64" if n in module.id_inputs else "float32"))
                 for n in module.input_names]
    elif _is_onnx(path):
        from .onnx import read_onnx
        from .onnx_static import NP_DTYPES

        graph = read_onnx(path).graph
        known = {t.name for t in graph.initializer}
        for i in graph.input:
            if i.name in known:
                continue
            t = i.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            specs.append((i.name, dims, NP_DTYPES[t.elem_type]))
    elif is_keras_file(path):
        from .tensorflow import declared_inputs, load_keras_file

        declared = declared_inputs(load_keras_file(path))
        if declared is None:  # a subclass saved whole: its inputs are whatever it was called with
            if not shapes:
                raise ModelError(f"{path}: a subclassed Keras model declares no input shapes; give each input one "
                                 f"with --shape (input_0=1x3x224x224, ...)")
            specs = [(name, dims, np.dtype(dtype or "float32")) for name, (dims, dtype) in shapes.items()]
        else:
            specs = [(getattr(t, "name", f"input_{i}").split(":")[0], list(t.shape), np.dtype(str(t.dtype)))
                     for i, t in enumerate(declared)]
    else:
        from .tensorflow import _tf

        tf = _tf()
        signature = tf.saved_model.load(str(path)).signatures.get("serving_default")
        if signature is None:
            raise ModelError(f"SavedModel {path} has no 'serving_default' signature; save it with "
                             f"tf.saved_model.save(obj, path, signatures=...)")
        for name, spec in signature.structured_input_signature[1].items():
            specs.append((name, list(spec.shape.as_list()), np.dtype(spec.dtype.as_numpy_dtype)))
    unknown = sorted(set(shapes) - {name for name, _, _ in specs})
    if unknown:
        raise ModelError(f"--shape names {unknown[0]!r}, which {path} does not take; its inputs: "
                         f"{', '.join(name for name, _, _ in specs)}")
    rng = np.random.default_rng(0)
    out = {}
    for name, dims, dtype in specs:
        shape = [d if d else (batch if k == 0 else length) for k, d in enumerate(dims)]
        if name in shapes:
            shape, given = shapes[name]
            dtype = np.dtype(given) if given else dtype
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        else:
            value = np.ones(shape, dtype)
        out[name] = torch.from_numpy(value)
    return out


def is_model_file(spec: str) -> bool:
    """An ONNX file, a SavedModel directory or a Keras file (what the CLI takes besides the zoo and .py files)."""
    from .tensorflow import is_tensorflow

    from .mxnet import is_mxnet

    return _is_onnx(spec) or is_mxnet(spec) or is_keras_file(spec) or (os.path.isdir(spec) and is_tensorflow(spec))
