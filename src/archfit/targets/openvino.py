"""OpenVINO on the CPU. Support rules are OpenVINO's own list of ATen ops its PyTorch frontend
lowers (the one its torch.compile backend partitions by), not a guess of ours."""
from __future__ import annotations

import io
import json
import threading
from functools import lru_cache
from typing import Sequence

import torch
from torch import fx

from ..errors import ArtifactError
from .base import Engine, Target, export_partition, listed_or_decomposed, requires, stream_count, thread_limit, to_numpy
from .registry import register_target

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


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

    def __init__(self, compiled_model, config: dict, imported: bool = False):
        self.compiled_model = compiled_model
        self.config = config
        self.imported = imported  # OpenVINO cannot export an imported model again: see serialize
        self.idle = [compiled_model.create_infer_request()]
        self.lock = threading.Lock()

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with self.lock:
            request = self.idle.pop() if self.idle else self.compiled_model.create_infer_request()
        try:
            result = request.infer([to_numpy(t) for t in inputs], share_inputs=True)
            return [torch.from_numpy(a) for a in result.to_tuple()]
        finally:
            with self.lock:
                self.idle.append(request)

    def serialize(self) -> bytes:
        """One JSON line of the compile config, then OpenVINO's compiled blob. The config must go
        along: imported without it, OpenVINO falls back to its default (bf16 on bf16 CPUs).
        An imported engine's bytes are read again from where they were loaded."""
        if not self.imported:
            return json.dumps(self.config).encode() + b"\n" + self.compiled_model.export_model().getvalue()
        if self.origin is None:
            raise ArtifactError("an OpenVINO engine imported from bytes cannot be exported again; save the module "
                               "traced or loaded from a file")
        return self.origin()


def load_engine(data: bytes) -> OpenVINOEngine:
    cut = data.index(b"\n")
    config = json.loads(data[:cut])
    return OpenVINOEngine(core().import_model(io.BytesIO(memoryview(data)[cut + 1:]), "CPU", config | _sharing()),
                          config, imported=True)


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
# (the same converted model: no bump); 4: x[:, i, j] as flatten + index_select.
LOWERING = 4


def versions() -> dict:
    import openvino

    return {"openvino": openvino.__version__, "archfit_lowering": LOWERING}


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


def _lower(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """ep with the edits below, in place, for forms OpenVINO's converter lowers to slow kernels.

    The graph is edited rather than re-traced (run_decompositions with a one-entry table did the
    same in one more trace of the whole program): the converter re-traces it with its own
    decompositions anyway, which fills in the new nodes' shapes. The signature and dynamic dims
    are kept, so fixed-shape and dynamic compiles share it; ep is each compile's own program."""
    graph = ep.graph_module.graph
    edited = [_stack_as_concat(graph, n) for n in list(graph.nodes) if n.target is torch.ops.aten.stack.default]
    edited += [_index_as_gather(graph, n) for n in list(graph.nodes) if n.target is torch.ops.aten.index.Tensor]
    if any(edited):
        ep.graph_module.recompile()
    return ep


def _replace(graph: fx.Graph, node: fx.Node, new: fx.Node) -> bool:
    new.meta = dict(node.meta)  # the old node's value and source line hold for its replacement
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return True


def _stack_as_concat(graph: fx.Graph, node: fx.Node) -> bool:
    """aten.stack written as cat of unsqueezed inputs (the same values).

    Why: OpenVINO's converter lowers aten.stack to concat + reshape, and that form matches its CPU
    plugin's DLRM "Interaction" fusion (concat -> reshape -> matmul(x, x^T) -> gather), a kernel
    that ran DLRM's feature interaction 3.5x slower in bf16 (0.28 vs 0.08 ms a call) and 1.5x in
    fp32 than the MatMul + Gather it replaces (benchmarks/dlrm_profile.py, AMD EPYC); OpenVINO's
    own conversion of the model (TorchScript) produces unsqueeze + concat, and so does this."""
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    with graph.inserting_before(node):
        parts = [graph.call_function(torch.ops.aten.unsqueeze.default, (t, dim)) for t in tensors]
        cat = graph.call_function(torch.ops.aten.cat.default, (parts, dim))
    return _replace(graph, node, cat)


def _index_as_gather(graph: fx.Graph, node: fx.Node) -> bool:
    """x[:, i, j] (1-D index tensors of one length on consecutive dims d..d+k-1, k >= 2) written as
    x.flatten(d, d+k-1).index_select(d, i * size_j + j): the same values.

    Why: OpenVINO lowers indexing on several dims as Transpose (those dims first) + GatherND +
    Transpose back; DLRM's pairwise-interaction pick `z[:, li, lj]` spent 0.107 ms of its 0.54 ms
    of layers in that first Transpose at batch 128 (fp32, AMD EPYC; ad hoc per-layer profile). A
    flatten is a free reshape and the pick one Gather. Other index forms are left as they are.
    Not done for ONNX Runtime: there the same rewrite made a DLRM call slower (0.54 vs 0.45 ms, ad hoc)."""
    x, indices = node.args
    where = [k for k, t in enumerate(indices) if t is not None]
    if (len(where) < 2 or where != list(range(where[0], where[-1] + 1)) or x.meta.get("val") is None
            or not all(isinstance(indices[k], fx.Node) for k in where)):
        return False
    shape = tuple(x.meta["val"].shape)
    vals = [indices[k].meta.get("val") for k in where]
    if (any(v is None or v.dim() != 1 or v.dtype not in (torch.int64, torch.int32) for v in vals)
            or len({v.shape[0] for v in vals}) != 1 or not all(isinstance(shape[k], int) for k in where)):
        return False
    d = where[0]
    with graph.inserting_before(node):
        flat = graph.call_function(torch.ops.aten.flatten.using_ints, (x, d, where[-1]))
        linear = None
        for k in where:  # row-major position in the flattened dims; negative indices count from the end
            i = graph.call_function(torch.ops.aten.remainder.Scalar, (indices[k], shape[k]))
            linear = i if linear is None else graph.call_function(
                torch.ops.aten.add.Tensor, (graph.call_function(torch.ops.aten.mul.Tensor, (linear, shape[k])), i))
        picked = graph.call_function(torch.ops.aten.index_select.default, (flat, d, linear))
    return _replace(graph, node, picked)


def compile_partition(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], precision: str) -> OpenVINOEngine:
    import openvino as ov

    model = ov.convert_model(_lower(export_partition(gm, example_inputs)))
    # Fixed shapes: the whole point of compiling per shape bucket is to let the backend specialise.
    model.reshape({i: ov.PartialShape(list(t.shape)) for i, t in enumerate(example_inputs)})
    config = _config(precision)
    return OpenVINOEngine(core().compile_model(model, "CPU", config | _sharing()), config)


def compile_dynamic(ep: torch.export.ExportedProgram, shapes: Sequence[Sequence[int | tuple[int, int]]],
                    precision: str) -> OpenVINOEngine:
    """One engine for every size within the bounds (OpenVINO's bounded dynamic shapes): per
    input, each dim a fixed size or a (low, high) range."""
    import openvino as ov

    model = ov.convert_model(_lower(ep))
    model.reshape({i: ov.PartialShape([ov.Dimension(*d) if isinstance(d, tuple) else ov.Dimension(d) for d in shape])
                   for i, shape in enumerate(shapes)})
    config = _config(precision)
    return OpenVINOEngine(core().compile_model(model, "CPU", config | _sharing()), config)


unavailable = requires("openvino")


TARGET = register_target(Target(
    "openvino", backend="openvino", device="CPU", supports=supports, compile=compile_partition, load=load_engine,
    precision_unavailable=precision_unavailable,
    description="OpenVINO CPU plugin; bf16 runs on AVX512-BF16/AMX units where present",
    unavailable=unavailable, versions=versions, compile_dynamic=compile_dynamic))
