"""What a target is: a name, support rules and a compile function (ExecuTorch-style split:
deciding which nodes go to a backend is separate from turning a subgraph into an engine)."""
from __future__ import annotations

import copy
import itertools
import json
import operator
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import import_module, resources
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import fx
from torch.utils import _pytree as pytree

from ..ops import op_name

if TYPE_CHECKING:
    from ..core.partition import PartitionPlan

# int8w: int8 weights (per output channel, asymmetric), float activations: the weight-only int8 of
# optimum's --weight-format int8, for layers whose time is reading their weights (a decode step)
PRECISIONS = ("fp32", "bf16", "int8", "int8w", "fp8")
LOSSY = ("int8", "int8w", "fp8")  # precisions judged by a task gate on a validation set, never elementwise
_TRACED: dict[tuple, "fx.GraphModule | None"] = {}  # (table, op, argument signature) -> its decomposition


def core_ops(node: fx.Node, table: Callable[[], dict] | None = None) -> tuple:
    """The core ATen ops `node` decomposes into under torch's default decomposition table, or
    under `table()` where a backend's exporter decomposes with its own (the node's own op when
    it has none).

    Backends publish support as lists of core ATen ops (OpenVINO's torch.compile list, ONNX's
    torchlib), while export keeps high-level ops (linear, layer_norm, sdpa) that backends lower
    better whole. Why per node and not `ExportedProgram.run_decompositions()`: that re-traces
    the whole program (a third of a capture); one op traced alone at its argument shapes gives
    the same ops in milliseconds, and repeats (every layer's linear) come from the cache."""
    traced = _traced(node, table or _default_table)
    if traced is None:
        return (node.target,)
    found = [n.target for n in traced.graph.nodes
             if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)]
    return tuple(dict.fromkeys(found)) or (node.target,)


def decompose_nodes(gm: fx.GraphModule, table: Callable[[], dict], keep: frozenset = frozenset()) -> fx.GraphModule | None:
    """`gm` with every node calling an op of `table()`, or a composite op (CompositeImplicitAutograd:
    one written in other ops) not in `keep`, replaced in place by that op's decomposition traced
    alone at the node's argument shapes (core_ops' way): the graph exporting the partition and
    `run_decompositions(table())` give, without those two traces of the whole program (a fifth
    of compiling a partition). None when a node's decomposition cannot be traced alone (symbolic
    sizes, no recorded values): the caller takes the whole-program way."""
    ops = table()
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "call_function" and
                 (n.target in ops or (_composite(n.target) and n.target not in keep))]:
        traced = _traced(node, table)
        leaves = pytree.tree_leaves((node.args, node.kwargs))
        # the traced graph's inputs are the node's tensor arguments, in order
        tensors = [leaf for leaf in leaves if isinstance(leaf, fx.Node) and isinstance(leaf.meta.get("val"), torch.Tensor)]
        if traced is None or len(tensors) != sum(n.op == "placeholder" for n in traced.graph.nodes):
            return None
        env = dict(zip([n for n in traced.graph.nodes if n.op == "placeholder"], tensors))
        with graph.inserting_before(node):
            for sub in traced.graph.nodes:
                if sub.op == "placeholder":
                    continue
                if sub.op == "output":
                    result = fx.node.map_arg(sub.args[0], env.__getitem__)
                    break
                if sub.op == "get_attr":  # a constant the decomposition made (a scalar tensor)
                    name = next(f"_decomposed_{i}" for i in itertools.count() if not hasattr(gm, f"_decomposed_{i}"))
                    setattr(gm, name, getattr(traced, sub.target))
                    env[sub] = graph.get_attr(name)
                    env[sub].meta = dict(sub.meta)
                else:
                    env[sub] = graph.node_copy(sub, env.__getitem__)
        if isinstance(result, fx.Node):
            node.replace_all_uses_with(result)
        else:  # several outputs (native_layer_norm's three), read by getitem nodes
            for user in list(node.users):
                if user.target is not operator.getitem:
                    return None
                user.replace_all_uses_with(result[user.args[1]])
                graph.erase_node(user)
        graph.erase_node(node)
    gm.recompile()
    return gm


def _composite(op) -> bool:
    return isinstance(op, torch._ops.OpOverload) and torch._C._dispatch_has_kernel_for_dispatch_key(
        op.name(), "CompositeImplicitAutograd")


@lru_cache(maxsize=1)
def _default_table() -> dict:
    return dict(torch.export.default_decompositions().items())


def _traced(node: fx.Node, table: Callable[[], dict]) -> fx.GraphModule | None:
    """node's op traced alone at its recorded argument values under `table()` (cached per op and
    argument signature), or None where it cannot be: not an ATen op, an argument with no
    recorded value or a data-dependent size, or an op with no decomposition there."""
    if not isinstance(node.target, torch._ops.OpOverload):
        return None
    leaves, spec = pytree.tree_flatten((node.args, node.kwargs))
    values = [leaf.meta.get("val") if isinstance(leaf, fx.Node) else leaf for leaf in leaves]
    if any(isinstance(leaf, fx.Node) and value is None for leaf, value in zip(leaves, values)):
        return None
    key = (table, node.target,
           tuple((tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else repr(v) for v in values))
    if key not in _TRACED:
        if len(_TRACED) > 4096:
            _TRACED.clear()
        _TRACED[key] = _trace(node.target, values, spec, table())
    return _TRACED[key]


def _trace(op, values: list, spec, table: dict) -> fx.GraphModule | None:
    from torch.fx.experimental.proxy_tensor import make_fx

    tensors = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    static = all(isinstance(d, int) for i in tensors for d in (*values[i].shape, *values[i].stride()))
    if not static or any(isinstance(v, (fx.Node, torch.SymInt)) for v in values):
        return None

    def call(*ts):
        filled = list(values)
        for i, t in zip(tensors, ts):
            filled[i] = t
        args, kwargs = pytree.tree_unflatten(filled, spec)
        return op(*args, **kwargs)

    # empty tensors of the recorded shapes: make_fx fakes them, so nothing is computed
    inputs = [torch.empty_strided(tuple(values[i].shape), tuple(values[i].stride()), dtype=values[i].dtype)
              for i in tensors]
    try:
        return make_fx(call, decomposition_table=table, tracing_mode="fake")(*inputs)
    except Exception:  # noqa: BLE001 - no decomposition (custom ops, symbolic shapes): judge the op itself
        return None


class Engine:
    """A compiled subgraph at fixed shapes: flat tensors in, flat tensors out.

    `run` is the one method every backend writes. The others have defaults that mean "not
    offered": an engine that returns None from both serialize methods cannot be saved."""

    # Reads again the bytes this engine was loaded from (set by the file or cache loader), for
    # backends that cannot export an imported engine: holding those bytes instead would double
    # the resident memory of every loaded engine.
    origin: Callable[[], bytes] | None = None

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def serialize(self) -> bytes | None:
        """The whole engine as bytes, read back by its target's `load`."""
        return None

    def serialize_parts(self) -> dict[str, bytes] | None:
        """The engine as named parts (weights apart from the graph) so that parts shared by
        several engines are stored once; its target's `load` takes the dict back."""
        return None

    def run_alone(self) -> None:
        """No host compute runs between this engine's calls: its workers may spin."""

    def run_shared(self) -> None:
        """The host computes between this engine's calls: its workers must sleep when idle."""


@dataclass(frozen=True)
class ChipSpec:
    """An accelerator described for roofline latency estimates (the accelerator profiles)."""

    name: str
    cores: int
    core_tflops: dict  # precision -> dense TFLOPS of one core ({"bf16": 16.0})
    dram_gib_s: float  # per chip
    dram_gib: float
    host_link_gb_s: float  # host <-> device; an assumption, see `assumptions`
    source: str
    assumptions: str
    utilisation: float = 1.0  # calibrated share of peak reached on real models
    call_overhead_ms: float = 0.0  # calibrated fixed cost per device program call
    calibration_error: float | None = None  # rms log error of that fit against published latencies

    def calibrated(self) -> "ChipSpec":
        """This chip with utilisation and overhead from the shipped calibration, if present."""
        path = resources.files("archfit.targets") / "data" / "neuron_calibration.json"
        fit = json.loads(path.read_text()).get("chips", {}).get(self.name) if path.is_file() else None
        if not fit:
            return self
        return replace(self, utilisation=fit["utilisation"], call_overhead_ms=fit["call_overhead_ms"],
                       calibration_error=fit.get("rms_log_error"))


# A target's SDK may refuse partitions the partitioner made: plan -> {partition index: why}.
PartitionPolicy = Callable[["PartitionPlan"], dict[int, str]]


# A support rule returns None when the target lowers the node, else a short reason.
SupportRule = Callable[[fx.Node], "str | None"]
# compile(graph_module, example_inputs, precision) -> Engine. The graph module holds its
# weights as attributes, takes flat tensors and returns a tuple of tensors.
CompileFn = Callable[[fx.GraphModule, Sequence[torch.Tensor], str], Engine]
# quantize(graph_module, example_inputs, calibration, keep_float) -> an int8 Engine: calibration is
# the partition's inputs on each calibration input set, keep_float the graph node names to leave
# unquantized (the layers accuracy control returns to float). Accuracy control may also pass
# float_precision="fp32" (a keyword) when the target's default float for them missed the gate.
QuantizeFn = Callable[[fx.GraphModule, Sequence[torch.Tensor], Sequence[Sequence[torch.Tensor]], Sequence[str]],
                      Engine]


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # the library that runs it, e.g. "openvino"
    device: str  # where the compiled parts run, e.g. "CPU"
    description: str
    supports: SupportRule
    compile: CompileFn
    # dtypes the target can take and produce at a node; others fall back with a dtype reason
    dtypes: frozenset[torch.dtype] = field(
        default_factory=lambda: frozenset(
            {torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
             torch.uint8, torch.bool}
        )
    )
    precisions: tuple[str, ...] = ("fp32", "bf16")
    default_precision: str = "fp32"
    # post-training int8 ("int8" in precisions); None: the target offers no int8
    quantize: QuantizeFn | None = None
    # returns None when usable on this machine, else why not (missing package, ...)
    unavailable: Callable[[], "str | None"] = lambda: None
    # precision -> None when this machine computes in it, else why not (a backend that would
    # quietly run another precision must say so here)
    precision_unavailable: Callable[[str], "str | None"] = lambda precision: None
    emulated: bool = False  # runs on a CPU stand-in for hardware that is not here
    # Partitions this target's own SDK would not compile: plan -> {partition index: why}.
    policy: PartitionPolicy | None = None
    # Time partitions against PyTorch at compile time? Meaningless for emulated targets,
    # whose CPU stand-in says nothing about the chip's speed.
    measure_payoff: bool = True
    min_partition_size: int = 2  # compute ops; Neuron's minimum_segment_size default is 2 too
    chip: ChipSpec | None = None  # for roofline latency estimates
    # bytes from engine.serialize() -> Engine, without compiling again; None: cannot be saved
    load: "Callable[[bytes], Engine] | None" = None
    versions: Callable[[], dict] = lambda: {}  # backend package versions, for the cache key and files
    # (program exported with symbolic dims, per input each dim a size or a (low, high) range,
    # precision) -> one Engine taking any size within the bounds; None: fixed shapes only
    compile_dynamic: "Callable[[torch.export.ExportedProgram, Sequence, str], Engine] | None" = None

    def __repr__(self) -> str:
        return f"Target({self.name!r}, backend={self.backend!r}, device={self.device!r})"


def requires(*modules: str) -> Callable[[], "str | None"]:
    """A Target.unavailable that names the first of `modules` that does not import."""
    def unavailable() -> str | None:
        for name in modules:
            try:
                import_module(name)
            except ImportError as e:
                return f"{name} does not import ({e}); pip install {' '.join(modules)}"
        return None

    return unavailable


def export_partition(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor],
                     contiguous_reshapes: bool = False) -> torch.export.ExportedProgram:
    """Re-capture a partition (already ATen) as an ExportedProgram, the form backends convert.

    Views become reshapes first: the graph is functional (no aliasing to keep), and a view that
    was valid at capture may meet an input of other strides here (T5's attention: `clone` keeps
    a transposed layout, then `view` refuses it), where reshape copies when it must."""
    # on a copy of the graph: the partition's own module may still run in PyTorch, or be converted
    # again as it is (openvino's decomposed graph, which keeps views)
    gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (torch.ops.aten.view.default, torch.ops.aten.reshape.default):
            node.target = torch.ops.aten.reshape.default
            if contiguous_reshapes and isinstance(node.args[0], fx.Node):
                # torch.onnx decomposes reshapes back into views, traced with strides that may not
                # allow one (T5, Swin: "Cannot view a tensor with shape ... and strides ..."); a
                # contiguous copy first always allows it, and ONNX has no strides, so it costs nothing
                with gm.graph.inserting_before(node):
                    flat = gm.graph.call_function(torch.ops.aten.clone.default, (node.args[0],),
                                                  {"memory_format": torch.contiguous_format})
                node.args = (flat, *node.args[1:])
    gm.recompile()
    return torch.export.export(gm, tuple(example_inputs), strict=False)


def nothing_to_quantize(gm: fx.GraphModule, keep_float: Sequence[str]) -> bool:
    """Every op of a partition kept in float (accuracy control's last resort): a quantizer told to
    ignore them by name would still quantize the ops its converter made and named itself (a batch
    norm's Multiply), so the target compiles the partition in float instead."""
    return {n.name for n in gm.graph.nodes if n.op == "call_function"} <= set(keep_float)


def _env_count(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def thread_limit() -> int | None:
    """ARCHFIT_THREADS: threads each engine may use, read when an engine is compiled or loaded (set
    by `archfit serve --threads` so replicas on one machine share its cores instead of fighting)."""
    return _env_count("ARCHFIT_THREADS")


def stream_count() -> int:
    """ARCHFIT_STREAMS: engine calls a loaded engine runs at the same time, each on its share of
    the threads (set by `archfit serve --streams`; 1 otherwise: one call uses every thread)."""
    return _env_count("ARCHFIT_STREAMS") or 1


def to_numpy(t: torch.Tensor):
    """Zero-copy for contiguous CPU tensors (the common case at partition boundaries). Any other
    layout (an image made the usual way, torch.from_numpy(hwc).permute(2, 0, 1)[None]; a slice; an
    expanded tensor) is copied by numpy: torch's own copy runs on its OpenMP threads, which then
    spin on the cores the engine needs (MobileNetV2 on OpenVINO, 2 cores: 8.0 ms a call against
    4.3 contiguous; with numpy's single-threaded copy, 5.2 against 4.8; benchmarks/strided_inputs.py)."""
    a = t.detach().numpy()
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def listed_or_decomposed(is_listed: Callable[[object], bool], source: str,
                         table: Callable[[], dict] | None = None) -> SupportRule:
    """Support rule from a backend's published op list: a node is supported when its op is
    listed, or when every core ATen op it decomposes into is (see core_ops; `table`: the
    decomposition table the backend's exporter applies, when it is not torch's default)."""
    def rule(node: fx.Node) -> str | None:
        if not isinstance(node.target, torch._ops.OpOverload) or is_listed(node.target):
            return None
        missing = [op for op in core_ops(node, table) if not is_listed(op)]
        if not missing:
            return None
        if missing == [node.target]:
            return f"not in {source}"
        return f"not in {source}, nor is its decomposition's {', '.join(dict.fromkeys(map(op_name, missing)))}"

    return rule
