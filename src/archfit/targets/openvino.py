"""OpenVINO on the CPU. Support rules are OpenVINO's own list of ATen ops its PyTorch frontend
lowers (the one its torch.compile backend partitions by), not a guess of ours."""
from __future__ import annotations

import contextlib
import copy
import io
from functools import lru_cache
from typing import Sequence

import torch
from torch import fx

from .base import Target, decompose_nodes, export_partition, listed_or_decomposed, nothing_to_quantize, requires, to_numpy
from .lowering import Program, avx512, fold_batch_norms, gemm_clamped, gemv_relu_apart, index_as_gather, lower, stack_as_concat
from .openvino_engine import OpenVINOEngine, bf16_units, core, load_engine
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
    return OpenVINOEngine.compile(model, config)


def compile_dynamic(ep: torch.export.ExportedProgram, shapes: Sequence[Sequence[int | tuple[int, int]]],
                    precision: str) -> OpenVINOEngine:
    """One engine for every size within the bounds (OpenVINO's bounded dynamic shapes): per
    input, each dim a fixed size or a (low, high) range."""
    import openvino as ov

    model = ov.convert_model(_lower(ep, precision))
    model.reshape({i: ov.PartialShape([ov.Dimension(*d) if isinstance(d, tuple) else ov.Dimension(d) for d in shape])
                   for i, shape in enumerate(shapes)})
    config = _config(precision)
    return OpenVINOEngine.compile(model, config)


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
    return OpenVINOEngine.compile(quantized, config)


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
