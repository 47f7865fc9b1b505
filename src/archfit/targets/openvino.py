"""OpenVINO on the CPU. Support rules are OpenVINO's own list of ATen ops its PyTorch frontend
lowers (the one its torch.compile backend partitions by), not a guess of ours."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import threading
from functools import lru_cache
from typing import Sequence

import torch
from torch import fx

from ..errors import ArtifactError
from .base import (Engine, Target, decompose_nodes, export_partition, listed_or_decomposed, nothing_to_quantize, requires, stream_count,
                   thread_limit, to_numpy)
from .lowering import Program, avx512, fold_batch_norms, gemm_clamped, gemv_relu_apart, index_as_gather, lower, stack_as_concat
from .registry import register_target

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8w": "f32"}  # int8w: int8 weights decompressed in f32 kernels


@lru_cache(maxsize=1)
def _op_support():
    from openvino.frontend.pytorch.torchdynamo.op_support import OperatorSupport

    return OperatorSupport(options={})


@lru_cache(maxsize=None)
def _listed(op) -> bool:
    node = fx.Graph().call_function(op)  # OperatorSupport judges fx nodes; a bare one suffices
    return _op_support().is_node_supported({}, node)


supports = listed_or_decomposed(_listed, "OpenVINO's op list")


class OpenVINOEngine(Engine):
    """Infer requests reused across calls (one per caller running at the same time: a single
    caller always reuses the same one); inputs are shared with torch, not copied. Callers on
    several threads run in parallel when the engine was loaded with several streams
    (ARCHFIT_STREAMS, set by `archfit serve --streams`), else OpenVINO runs them in turn."""

    def __init__(self, compiled_model, config: dict, model=None):
        self.compiled_model = compiled_model
        self.config = config
        self.model = model  # the ov.Model compiled (its constants are the compiled model's: no extra memory)
        self.idle = [compiled_model.create_infer_request()]
        self.lock = threading.Lock()
        self.port_dtypes = [_port_dtype(p) for p in compiled_model.inputs]

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        import openvino as ov

        arrays = [to_numpy(t) for t in inputs]
        with self.lock:
            request = self.idle.pop() if self.idle else self.compiled_model.create_infer_request()
        try:
            if all(a.ndim and a.dtype == d and a.flags.writeable for a, d in zip(arrays, self.port_dtypes)):
                # Why by hand: infer(list) dispatches each input through OpenVINO's Python
                # converters, half of a small engine's call (a 128x64 linear: 56 -> 29 us a call,
                # ad hoc); these inputs need none of them (their dtypes match, the memory is shared).
                for i, a in enumerate(arrays):
                    request.set_input_tensor(i, ov.Tensor(a, shared_memory=True))
                result = request.infer()
            else:  # scalars, read-only or other-typed arrays: OpenVINO's converters copy as needed
                result = request.infer(arrays, share_inputs=True)
            return [torch.from_numpy(a) for a in result.to_tuple()]  # copies: share_outputs is off
        finally:
            with self.lock:
                self.idle.append(request)

    def layers(self) -> list[tuple[str, str]]:
        """(layer type, kernel) of each layer OpenVINO's CPU plugin runs, after its own fusions:
        ("FullyConnected", "gemm_mlas_f32"), say."""
        return [(info["layerType"].astype(str), info["primitiveType"].astype(str))
                for info in (op.get_rt_info() for op in self.compiled_model.get_runtime_model().get_ordered_ops())]

    def serialize(self) -> bytes:
        """One JSON header line (the compile config, the IR's XML length), then the OpenVINO IR the
        engine was compiled from: XML, then weights. IR, not OpenVINO's compiled blob: a CPU blob
        loads only on the instruction set it was compiled on (OpenVINO refuses an AMX host's blob
        on an AVX-512 one), while compiling the IR at load takes the same time as importing a blob
        (BERT-base: 0.63-0.89 s against 0.67-0.95 s, ad hoc) and leaves as much resident (a 4-layer
        BERT: 391 against 387 MiB, the model kept or not). The config must go along: compiled
        without it, OpenVINO falls back to its default (bf16 on bf16 CPUs)."""
        if self.model is None:
            if self.origin is None:
                raise ArtifactError("an OpenVINO engine loaded from bytes cannot be saved again; save the module "
                                    "traced or loaded from a file")
            return self.origin()
        xml, weights = _ir(self.model)
        header = {IR_FORMAT: 1, "config": self.config, "xml": len(xml)}
        return json.dumps(header).encode() + b"\n" + xml + weights


IR_FORMAT = "archfit_openvino_ir"


def _ir(model) -> tuple[bytes, bytes]:
    import tempfile
    from pathlib import Path

    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:  # OpenVINO's serializer writes files only
        ov.serialize(model, str(Path(tmp) / "m.xml"), str(Path(tmp) / "m.bin"))
        return (Path(tmp) / "m.xml").read_bytes(), (Path(tmp) / "m.bin").read_bytes()


def _port_dtype(port):
    try:
        return port.get_element_type().to_dtype()
    except Exception:  # noqa: BLE001 - string and other types numpy has no dtype for: never the fast path
        return None


def load_engine(data: bytes) -> OpenVINOEngine:
    """An engine from serialize()'s bytes: the IR compiled for this CPU, or (files saved before
    archfit stored IR) OpenVINO's compiled blob imported, which loads only on the kind of CPU it
    was compiled on."""
    import numpy as np
    import openvino as ov

    cut = data.index(b"\n")
    header = json.loads(data[:cut])
    _warn_if_bf16_runs_fp32(header.get("config", header))
    if IR_FORMAT in header:
        config, xml_end = header["config"], cut + 1 + header["xml"]
        weights = ov.Tensor(np.frombuffer(memoryview(data)[xml_end:], dtype=np.uint8))  # copied once, kept by the model
        model = core().read_model(bytes(data[cut + 1:xml_end]), weights)
        return OpenVINOEngine(core().compile_model(model, "CPU", config | _sharing()), config, model)
    try:
        compiled = core().import_model(io.BytesIO(memoryview(data)[cut + 1:]), "CPU", header | _sharing())
    except RuntimeError as err:
        if "different runtime configuration" in str(err):
            raise ArtifactError(
                f"this OpenVINO engine was compiled for another kind of CPU ({_blob_isa(data[cut + 1:])}) "
                "and an OpenVINO blob loads only there: compile the model again here, or save it with this archfit "
                "(files now carry OpenVINO IR and load on any CPU)") from err
        raise
    return OpenVINOEngine(compiled, header)


@lru_cache(maxsize=None)
def _warn_bf16_once(hint: str) -> None:
    import warnings

    warnings.warn(f"this file's OpenVINO engines were compiled in {hint}, and this CPU has no bf16 units: OpenVINO "
                  "runs them in fp32 here (slower than where they were compiled, and not the numbers their gate "
                  "passed on); compile the model again on this machine for its best precision", stacklevel=3)


def _warn_if_bf16_runs_fp32(config: dict) -> None:
    """Tracing refuses bf16 where the CPU has no bf16 units; a file compiled in bf16 elsewhere
    loads, but OpenVINO quietly runs it in fp32: say so once a process."""
    if config.get("INFERENCE_PRECISION_HINT") == "bf16" and not bf16_units():
        _warn_bf16_once("bf16")


def _blob_isa(blob) -> str:
    """The instruction set a compiled blob names in its header (OpenVINO's CPU plugin: magic,
    version, length, then 'meta=...;isa=...')."""
    import struct

    (size,) = struct.unpack_from("<Q", blob, 12)
    return bytes(blob[20:20 + min(size, 400)]).decode(errors="replace").rpartition("isa=")[2] or "unknown"


def _sharing() -> dict:
    """This process's share of the machine (ARCHFIT_THREADS, ARCHFIT_STREAMS), applied when an
    engine is compiled or loaded and never stored with it. Processes sharing a machine (server
    replicas, test workers): OpenVINO pins its threads to cores by default, and on Linux every
    process pins to the same ones, so two processes would share one core."""
    limit = {"INFERENCE_NUM_THREADS": thread_limit(), "ENABLE_CPU_PINNING": False} if thread_limit() else {}
    if stream_count() > 1:  # a server running several batches at once: one stream (and its threads) each
        limit |= {"NUM_STREAMS": stream_count(), "ENABLE_CPU_PINNING": False}
    return limit


# Bumped when compile_partition rewrites graphs differently: engines in the compile cache (keyed by
# versions()) built the old way are then compiled again. 2: aten.stack as unsqueeze + cat; 3: the same
# in compile_dynamic too (a program rewrite, not a graph copy); the graph edited in place since
# (the same converted model: no bump); 4: x[:, i, j] as flatten + index_select; 5: stacked lookups of
# id columns look up the column split off (lowering.stack_as_concat); 6: fp32 linears handed over in
# the form that gets the faster kernel for their rows (lowering.gemv_relu_apart, gemm_clamped); 7:
# the same in compile_dynamic, by the most rows of the range.
LOWERING = 7


def versions() -> dict:
    import openvino

    return {"openvino": openvino.__version__, "archfit_lowering": LOWERING, "archfit_linear_edits": linear_edits()}


def linear_edits() -> bool:
    """Does this CPU take the fp32 linear edits (lowering.gemv_relu_apart, gemm_clamped)? They were
    measured on CPUs with AVX-512, where OpenVINO's oneDNN kernels are brgemm (lowering.avx512)."""
    return avx512()


@lru_cache(maxsize=1)
def core():
    import openvino as ov

    return ov.Core()


@lru_cache(maxsize=1)
def bf16_units() -> bool:
    """Does this CPU compute in bf16 (AVX512_BF16 or AMX)? Without, OpenVINO takes the bf16 hint
    and quietly runs fp32."""
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def precision_unavailable(precision: str) -> str | None:
    if precision == "bf16" and not bf16_units():
        return ("this CPU has no bf16 units (OpenVINO lists "
                f"{', '.join(core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}), so OpenVINO would run fp32; "
                "use fp32 here, or target inf1/inf2 to emulate Inferentia's bf16 numerics")
    return None


def _config(precision: str) -> dict:
    # OpenVINO defaults to bf16 on CPUs with bf16 units; fp32 must be asked for explicitly.
    return {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}


# The edits OpenVINO's converter takes (targets/lowering.py says why each), and those it takes in fp32.
REWRITES = ((torch.ops.aten.stack.default, stack_as_concat), (torch.ops.aten.index.Tensor, index_as_gather))
FP32_REWRITES = ((torch.ops.aten.relu.default, gemv_relu_apart), (torch.ops.aten.linear.default, gemm_clamped))


def _lower(ep: Program, precision: str) -> Program:
    return lower(ep, REWRITES + (FP32_REWRITES if precision == "fp32" and linear_edits() else ()))


def compile_partition(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], precision: str) -> OpenVINOEngine:
    import openvino as ov

    model = _converted_as_captured(gm, precision) or ov.convert_model(_lower(export_partition(gm, example_inputs),
                                                                                precision))
    # Fixed shapes: the whole point of compiling per shape bucket is to let the backend specialise.
    model.reshape({i: ov.PartialShape(list(t.shape)) for i, t in enumerate(example_inputs)})
    if precision == "int8w":
        model = _compress_weights(model)
    config = _config(precision)
    return OpenVINOEngine(core().compile_model(model, "CPU", config | _sharing()), config, model)


def compile_dynamic(ep: torch.export.ExportedProgram, shapes: Sequence[Sequence[int | tuple[int, int]]],
                    precision: str) -> OpenVINOEngine:
    """One engine for every size within the bounds (OpenVINO's bounded dynamic shapes): per
    input, each dim a fixed size or a (low, high) range."""
    import openvino as ov

    model = ov.convert_model(_lower(ep, precision))
    model.reshape({i: ov.PartialShape([ov.Dimension(*d) if isinstance(d, tuple) else ov.Dimension(d) for d in shape])
                   for i, shape in enumerate(shapes)})
    config = _config(precision)
    return OpenVINOEngine(core().compile_model(model, "CPU", config | _sharing()), config, model)


def _converted_as_captured(gm: fx.GraphModule, precision: str):
    """The partition converted by OpenVINO as its graph, with the ops the converter decomposes
    decomposed node by node (base.decompose_nodes), or None where that cannot be done. Converting
    an ExportedProgram instead traces the partition twice more (torch.export, then
    run_decompositions with OpenVINO's table), 85% of converting a tiny BERT or ResNet partition
    (1.16 s against 0.15 s, ad hoc), for the same graph: the partition is functional ATen since
    capture. Views stay views: export_partition's reshapes are for re-tracing, and the converter
    has no rule for reshape."""
    import openvino as ov
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

    gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # edited below; the partition may still run in PyTorch
    flat = decompose_nodes(_lower(gm, precision), _converter_decompositions, _converter_keeps())
    if flat is None:
        return None
    try:
        return ov.convert_model(TorchFXPythonDecoder(flat, dynamic_shapes=False))
    except Exception:  # noqa: BLE001 - an op only the whole-program decomposition gives a convertible form: that way
        return None


def _compress_weights(model):
    """int8 weights by NNCF's data-free weight compression (per output channel, asymmetric: what
    optimum-intel's --weight-format int8 does); OpenVINO's CPU plugin decompresses them inside its
    matmul kernels, so a layer bound by reading its weights reads a quarter of the bytes."""
    import nncf

    with _quiet_nncf():
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


def quantize_partition(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor],
                       calibration: Sequence[Sequence[torch.Tensor]], keep_float: Sequence[str] = (),
                       float_precision: str | None = None) -> OpenVINOEngine:
    """Post-training int8 by NNCF, the quantizer OpenVINO's own tools use (it places FakeQuantize
    where the CPU plugin fuses them into int8 kernels), calibrated on `calibration` (this
    partition's inputs on each calibration input set). `keep_float`: graph node names left
    unquantized; OpenVINO names each converted op after its graph node ('linear_3/aten.linear...'),
    kept through its own decomposition and batch-norm folding by _keeping_names and
    fold_batch_norms. Every op kept: the partition is compiled in float.
    Transformer graphs (softmax or attention) take NNCF's transformer scheme. The ops left in
    float run in bf16 where the CPU has bf16 units, as OpenVINO runs them by default, or in
    `float_precision` when given."""
    import re

    import nncf
    import openvino as ov

    default = float_precision or ("bf16" if bf16_units() else "fp32")
    if nothing_to_quantize(gm, keep_float):  # ignoring by name misses the ops conversion names itself
        return compile_partition(gm, example_inputs, default)
    model = ov.convert_model(_keeping_names(lower(export_partition(fold_batch_norms(gm), example_inputs), REWRITES)))
    model.reshape({i: ov.PartialShape(list(t.shape)) for i, t in enumerate(example_inputs)})
    ops = {n.target.overloadpacket for n in gm.graph.nodes if isinstance(n.target, torch._ops.OpOverload)}
    transformer = bool(ops & {torch.ops.aten._softmax, torch.ops.aten.softmax, torch.ops.aten.scaled_dot_product_attention})
    dataset = nncf.Dataset(list(calibration), lambda item: tuple(to_numpy(t) for t in item))
    ignored = nncf.IgnoredScope(patterns=[f"^{re.escape(name)}/" for name in keep_float], validate=False)
    with _quiet_nncf():
        quantized = nncf.quantize(model, dataset, subset_size=len(calibration), ignored_scope=ignored,
                                  model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    config = _config(default)
    return OpenVINOEngine(core().compile_model(quantized, "CPU", config | _sharing()), config, quantized)


def _keeping_names(ep: torch.export.ExportedProgram):
    """What ov.convert_model(ep) converts, with the graph's node names kept: OpenVINO's converter
    first decomposes the program with its own table, and the new nodes get new names (conv2d_5
    becomes convolution_5), after which NNCF cannot find by name the layers accuracy control keeps
    in float. The same decomposition run here, each new node named after the node it came from
    (torch's from_node provenance), handed to the converter as its decoder."""
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

    gm = ep.run_decompositions(_converter_table()).module()
    named = set()
    for node in gm.graph.nodes:
        origin = _origin(node)
        if node.op == "call_function" and origin is not None and origin not in named:
            if origin != node.name:
                node._rename(origin)
            named.add(origin)
    gm.recompile()
    return TorchFXPythonDecoder(gm)


@lru_cache(maxsize=1)
def _converter_table():
    """OpenVINO's decomposition table for an ExportedProgram (TorchFXPythonDecoder.from_exported_program's)."""
    from openvino.frontend.pytorch.torchdynamo.export_decompositions import ops_to_not_decompose
    from torch.export.decomp_utils import CustomDecompTable

    table = CustomDecompTable()
    for op in ops_to_not_decompose():
        if op in table:
            table.pop(op)
    return table


@lru_cache(maxsize=1)
def _converter_decompositions() -> dict:
    return dict(_converter_table().items())


@lru_cache(maxsize=1)
def _converter_keeps() -> frozenset:
    """The composite ops OpenVINO's converter takes whole (linear, scaled_dot_product_attention)."""
    from openvino.frontend.pytorch.torchdynamo.export_decompositions import ops_to_not_decompose
    from torch.export.decomp_utils import PRESERVED_ATEN_CIA_OPS

    return frozenset(ops_to_not_decompose()) | PRESERVED_ATEN_CIA_OPS


def _origin(node) -> str | None:
    """The name of the node `node` was made from before any decomposition, or None."""
    source = node.meta.get("from_node")
    name = None
    while source:
        last = source[-1] if isinstance(source, list) else source
        name, source = getattr(last, "name", None), getattr(last, "from_node", None)
    return name


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs its progress bars and statistics; archfit reports what was quantized instead."""
    import logging

    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


unavailable = requires("openvino")


TARGET = register_target(Target(
    "openvino", backend="openvino", device="CPU", supports=supports, compile=compile_partition, load=load_engine,
    precision_unavailable=precision_unavailable, precisions=("fp32", "bf16", "int8", "int8w"), quantize=quantize_partition,
    description="OpenVINO CPU plugin; bf16 runs on AVX512-BF16/AMX units where present; int8 and int8w "
                "(int8 weights) by NNCF",
    unavailable=unavailable, versions=versions, compile_dynamic=compile_dynamic))
