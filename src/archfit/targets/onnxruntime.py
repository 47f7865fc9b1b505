"""ONNX Runtime, CPU execution provider. A node is supported when torch.onnx's exporter can
lower it: it has a torchlib ONNX function, or a decomposition into ops that do."""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
import weakref
import zipfile
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch import fx

from .base import (Engine, Target, export_partition, listed_or_decomposed, nothing_to_quantize, requires, thread_limit,
                   to_numpy)
from .lowering import avx512, linear_rows_unaliased, lower, stack_as_concat
from .registry import register_target


@lru_cache(maxsize=1)
def _registry():
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    return ONNXRegistry.from_torchlib()


@lru_cache(maxsize=None)
def _listed(op) -> bool:
    return _registry().is_registered(op)


@lru_cache(maxsize=1)
def _exporter_table() -> dict:
    """The decompositions torch.onnx's exporter applies before it looks ops up in torchlib: torch's
    default table and torch._decomp's wider one, minus ops torchlib implements. Judged against
    torch's default table alone, ops the exporter does turn into ONNX were sent to the host: VGG16's
    adaptive_avg_pool2d (decomposed to avg_pool2d by the wider table) split its one engine into two
    around a host op."""
    from torch.onnx._internal.exporter import _decomp

    return _decomp.create_onnx_friendly_decomposition_table(set(_decomp.get_onnx_implemented_overloads(_registry())))


supports = listed_or_decomposed(_listed, "torch.onnx's torchlib registry", _exporter_table)


def _session_options(spinning: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle ORT workers spin by default, stealing the cores PyTorch needs for the host regions
    # that run between engine calls, so they sleep instead, unless the engine runs alone
    # (OnnxRuntimeEngine.run_alone).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    if thread_limit():
        opts.intra_op_num_threads = thread_limit()
    return opts


# ONNX Runtime's graph optimizations that archfit turns off. SkipLayerNormFusion folds each
# residual Add and the LayerNormalization after it into one SkipLayerNormalization, whose CPU
# kernel is slower than the two it replaces: in ONNX Runtime 1.32's own per-node profile of
# BERT-base (seq 128), 6.9 ms for 25 of them against 2.0 ms for the Adds and LayerNormalizations,
# and whole calls 5.5% faster on BERT-base and 6.7% on DistilBERT without it (paired rounds,
# benchmarks/ort_forms.py). A session option: engines already in the cache get it too.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]

# Weights by content digest, shared by every session in this process that uses them: the engines
# of a model's shape buckets hold the same weights, which then exist once in memory.
_WEIGHTS: "weakref.WeakValueDictionary[str, np.ndarray]" = weakref.WeakValueDictionary()
MODEL = "model.onnx"
_MIN_SHARED_BYTES = 1024  # smaller constants stay inside the model


def externalize(proto) -> dict[str, bytes]:
    """Split an ONNX model into the graph and one part per weight, named by its SHA-256, so that
    identical weights (across shape buckets) are stored once in a file and once in memory."""
    from onnx import TensorProto
    from onnx.external_data_helper import set_external_data

    parts: dict[str, bytes] = {}
    for tensor in proto.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= _MIN_SHARED_BYTES:
            data = tensor.raw_data
            name = "w" + hashlib.sha256(data).hexdigest()[:40]
            parts[name] = data
            set_external_data(tensor, location=name)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
    parts[MODEL] = proto.SerializeToString()
    return parts


def _shared_array(name: str, data: bytes) -> np.ndarray:
    array = _WEIGHTS.get(name)
    if array is None:
        array = np.frombuffer(data, dtype=np.uint8).copy()  # owned, aligned, outlives `data`
        _WEIGHTS[name] = array
    return array


class OnnxRuntimeEngine(Engine):
    """An ONNX model whose large weights live outside it (see externalize), given as the parts
    dict or as a zip of those parts (the compile cache's form)."""

    def __init__(self, data: bytes | dict[str, bytes], options=None,
                 disabled_optimizers: Sequence[str] = DISABLED_OPTIMIZERS):
        self.disabled_optimizers = tuple(disabled_optimizers)  # kept for every session reopened
        parts = data if isinstance(data, dict) else _unzip(data)
        self.model = parts[MODEL]
        # Only the shared arrays are kept, not the bytes they came from: holding both would
        # cost every weight twice. serialize_parts rebuilds the bytes when a file is written.
        self._weights = {name: _shared_array(name, blob) for name, blob in parts.items() if name != MODEL}
        del parts, data
        self.spinning = False
        self._open(options if options is not None else _session_options())

    def _open(self, opts) -> None:
        import onnxruntime as ort

        if self._weights:
            names = list(self._weights)
            arrays = [self._weights[n] for n in names]
            opts.add_external_initializers_from_files_in_memory(names, arrays, [a.nbytes for a in arrays])
        self.session = None  # the old session's memory goes before the new one's comes
        self.session = ort.InferenceSession(self.model, sess_options=opts, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=list(self.disabled_optimizers))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run_alone(self) -> None:
        """The host runs no compute between this engine's calls: let idle workers spin, as ONNX
        Runtime does by default (measured on DLRM: 0.42 ms a call instead of 0.50 ms)."""
        self._open(_session_options(spinning=True))
        self.spinning = True

    def run_shared(self) -> None:
        """The host computes between this engine's calls after all (a generation loop): sleep."""
        if self.spinning:
            self._open(_session_options(spinning=False))
            self.spinning = False

    def serialize_parts(self) -> dict[str, bytes]:
        return {MODEL: self.model, **{name: a.tobytes() for name, a in self._weights.items()}}

    def serialize(self) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
            for name, blob in self.serialize_parts().items():
                z.writestr(name, blob)
        return buf.getvalue()

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feeds = {name: to_numpy(t) for name, t in zip(self.input_names, inputs)}
        return [torch.from_numpy(a) for a in self.session.run(None, feeds)]


def _unzip(data: bytes) -> dict[str, bytes]:
    if data[:2] != b"PK":  # a bare ONNX model (protobufs start with a field tag, never with 'PK')
        return {MODEL: data}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


@contextlib.contextmanager
def quiet():
    """torch.onnx and onnxscript print progress and optimizer notes; archfit reports instead."""
    names = ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)


def precision_unavailable(precision: str) -> str | None:
    # ORT's CPU provider has no fast bf16 matmul/conv kernels: emulating bf16's rounding ran at
    # 0.30-0.39x the best bf16 peer on every model (BENCHMARKS.md, before this refusal), slower
    # than ORT's own fp32. A precision that loses to the target's fp32 is a trap, so not offered.
    if precision == "bf16":
        from .openvino import bf16_units

        faster = ("target='openvino' computes in bf16 on this CPU" if bf16_units() else
                  "target='openvino' computes in bf16 on CPUs with bf16 units (this one has none: use fp32 here)")
        return (f"ONNX Runtime's CPU provider has no bf16 matmul/convolution kernels, so bf16 would run slower than "
                f"its fp32; {faster}, and inf1/inf2 emulate Inferentia's bf16 numerics")
    return None


# Opset 23 has ONNX's own `Attention` op, and torch.onnx lowers scaled_dot_product_attention to it
# there; at the default opset the exporter spells attention out (MatMul, Softmax and an IsNaN/Where
# guard per layer), which ONNX Runtime runs ~6% slower on BERT-base (benchmarks/ort_forms.py).
OPSET = 23
# Compile-cache key (versions()): engines exported before are built again. 1: opset 23; 2: stacked
# lookups of id columns look up the column split off (lowering.stack_as_concat); 3: fp32 linears
# whose rows alias in MLAS's kernel padded (lowering.linear_rows_unaliased).
LOWERING = 3
# The edits ONNX Runtime's exporter takes (targets/lowering.py says why; index_as_gather is not one).
# stack_as_concat changes only the stacked lookups here: torchlib lowers any other aten.stack to the
# same Unsqueeze + Concat.
REWRITES = ((torch.ops.aten.stack.default, stack_as_concat),)
LINEAR_EDITS = ((torch.ops.aten.linear.default, linear_rows_unaliased),)


def linear_edits() -> bool:
    """Does this CPU take the linear edit (lowering.linear_rows_unaliased)? It was measured against
    MLAS's AVX-512 kernel, 12 rows at a time; the AVX2 one takes 6 (lowering.avx512)."""
    return avx512()


@lru_cache(maxsize=None)
def _torchlib_registry(opset: int):
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=opset)


def onnx_export(ep: torch.export.ExportedProgram):
    """torch.onnx.export(ep, dynamo=True, optimize=True, opset_version=OPSET), with the table of
    ATen-to-ONNX functions built once per process. Why by hand: torch.onnx.export rebuilds that
    table from onnxscript's torchlib on every call, a third to a half of exporting a small
    partition; the exporter only reads it, and the files are byte-identical
    (`benchmarks/onnx_export.py`, `benchmarks/compile_time.py`)."""
    from torch.onnx._internal.exporter import _core

    return _core.export(ep, registry=_torchlib_registry(OPSET), dynamic_shapes={}, optimize=True, verbose=False,
                        opset_version=OPSET)


def compile_partition(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], precision: str) -> OnnxRuntimeEngine:
    with quiet():
        program = onnx_export(lower(export_partition(gm, example_inputs, contiguous_reshapes=True),
                                    REWRITES + (LINEAR_EDITS if linear_edits() else ())))
    return OnnxRuntimeEngine(externalize(program.model_proto))


def _fx_names(node) -> str | None:
    """The graph node an exported ONNX node came from: torch.onnx records its name scopes, the
    last being the node's own name (a linear's MatMul and Add both say 'linear_3')."""
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-1] if scopes else None
    return None


def quantize_partition(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor],
                       calibration: Sequence[Sequence[torch.Tensor]], keep_float: Sequence[str] = (),
                       float_precision: str | None = None) -> OnnxRuntimeEngine:
    """Post-training int8 by ONNX Runtime's own quantizer (quantize_static: QDQ, int8 weights per
    output channel, uint8 activations, min-max calibration on `calibration`), the form its CPU
    provider fuses into int8 kernels. `keep_float`: graph node names whose ONNX nodes stay float
    (in fp32, whatever `float_precision` says: this provider's float kernels are fp32)."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if nothing_to_quantize(gm, keep_float):
        return compile_partition(gm, example_inputs, "fp32")
    with quiet():
        proto = onnx_export(lower(export_partition(gm, example_inputs, contiguous_reshapes=True), REWRITES)).model_proto
    names = [i.name for i in proto.graph.input]
    keep = set(keep_float)
    weights = {t.name for t in proto.graph.initializer}
    # weight layers only: a MatMul of two activations (attention's scores and context) quantized per
    # tensor took all-MiniLM-L6-v2's embeddings to a mean cosine of 0.36 with fp32 (ONNX Runtime's
    # quantize_static on the whole model, benchmarks/quantization.py); NNCF keeps them apart too
    exclude = [n.name for n in proto.graph.node if _fx_names(n) in keep
               or (n.op_type == "MatMul" and not weights & set(n.input))]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {n: to_numpy(t) for n, t in zip(names, item)}

    # quantize_static warns, on the root logger, that shape inference could run first; its pass
    # (quant_pre_process) optimizes too, which renames the nodes keep_float names
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp, quiet(), contextlib.ExitStack() as restore:
        restore.callback(root.setLevel, level)
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src, save_as_external_data=True, location="model.weights")
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv", "ConvTranspose"],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        quantized = onnx.load(dst)
    return OnnxRuntimeEngine(externalize(quantized))


def versions() -> dict:
    import onnx
    import onnxruntime
    import onnxscript

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
            "archfit_lowering": LOWERING, "archfit_linear_edits": linear_edits()}


unavailable = requires("onnxruntime", "onnxscript")


TARGET = register_target(Target(
    "onnxruntime", backend="onnxruntime", device="CPU", supports=supports, compile=compile_partition,
    load=OnnxRuntimeEngine, description="ONNX Runtime CPU execution provider, via torch.onnx (dynamo exporter); "
                                        "int8 by its own quantizer",
    unavailable=unavailable, versions=versions, precision_unavailable=precision_unavailable,
    precisions=("fp32", "bf16", "int8"), quantize=quantize_partition))
