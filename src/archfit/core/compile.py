"""Stage 4: cut the graph into target partitions and host code, compile each partition, and keep
a partition on the target only if its compiled run (boundary crossing included) beats PyTorch."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from torch import fx
from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

from ..errors import CompileError, first_line
from ..ops import op_name
from ..targets.base import Engine, Target
from . import cache
from .capture import Captured, bad_example_inputs
from .cost import is_compute
from .options import TraceOptions
from .quantize import digest
from .sets import input_sets
from .engines import PREFIX, EngineModule, engines_in, partition_module, put_partition
from .bisect_rejects import rejected_nodes
from .partition import PartitionPlan, drop_partitions, plan_partitions
from .support import Reason
from .threads import choose_host_threads
from .timing import interleaved_ms, median_seconds, pick

log = logging.getLogger("archfit.compile")
# Whole-model timings on this class of machine repeat within about 2%; a partition moves back to
# PyTorch only when PyTorch is faster by more than that, not on a coin toss between equals.
PAYOFF_NOISE = 0.02


@dataclass(frozen=True)
class PartitionTiming:
    compile_seconds: float
    compiled_ms: float  # engine run incl. crossing the boundary (tensor <-> backend)
    eager_ms: float  # the same subgraph run by PyTorch
    cached: bool = False  # engine loaded from the compile cache
    # the whole model with this partition on the target / in PyTorch: what the payoff decides on
    model_ms_on_target: float | None = None
    model_ms_in_pytorch: float | None = None
    # per_partition: the target this partition runs on (None: the plan's) and what was measured
    target: str | None = None
    measured: str = ""

    @property
    def pays_off(self) -> bool:
        if self.model_ms_on_target is not None and self.model_ms_in_pytorch is not None:
            return not _pytorch_wins(self.model_ms_on_target, self.model_ms_in_pytorch)
        return self.compiled_ms < self.eager_ms


@dataclass
class CompiledGraph:
    graph_module: fx.GraphModule  # host code calling EngineModules
    plan: PartitionPlan
    timings: dict[int, PartitionTiming]
    references: dict[int, fx.GraphModule] = field(repr=False)  # eager partitions, for validation
    boundary_inputs: dict[int, tuple[torch.Tensor, ...]] = field(repr=False)
    # PyTorch's threads for the host ops: True one thread, False its own, None not measured (see threads.py)
    one_thread: bool | None = None


def shared_copy(gm: torch.nn.Module) -> torch.nn.Module:
    """Deep copy of a module (a graph's, or a model's tree) that shares, not duplicates, weight tensors."""
    memo = {id(t): t for t in list(gm.parameters()) + list(gm.buffers())}
    for name, value in vars(gm).items():
        if isinstance(value, torch.Tensor):
            memo[id(value)] = value
    return copy.deepcopy(gm, memo)


def split(captured: Captured, plan: PartitionPlan) -> fx.GraphModule:
    """Host graph with one `target_i` submodule per partition; weights move into partitions."""
    gm = shared_copy(captured.graph_module)
    by_name = {n.name: n for n in gm.graph.nodes}
    groups = [dict.fromkeys(by_name[name] for name in p.nodes) for p in plan.partitions]
    owner = {n: i for i, g in enumerate(groups) for n in g}
    # Each partition gets its own get_attr for every weight it reads, so the backend sees
    # weights as constants (folded and pre-packed) instead of runtime inputs.
    for node in [n for n in gm.graph.nodes if n.op == "get_attr"]:
        users_by_part: dict[int, list[fx.Node]] = {}
        for u in list(node.users):
            if u in owner:
                users_by_part.setdefault(owner[u], []).append(u)
        for i, users in users_by_part.items():
            with gm.graph.inserting_after(node):
                clone = gm.graph.get_attr(node.target)
            clone.meta = dict(node.meta)
            for u in users:
                u.replace_input_with(node, clone)
            groups[i][clone] = None
        if not node.users:
            gm.graph.erase_node(node)
    if groups:
        gm = fuse_by_partitions(gm, groups, prefix=PREFIX, always_return_tuple=True)
    gm.recompile()
    return gm


def record_partition_inputs(gm: fx.GraphModule, count: int, inputs: Sequence[torch.Tensor]) -> dict[int, tuple]:
    seen: dict[int, tuple] = {}
    hooks = []
    for i in range(count):
        def hook(_mod, args, i=i):
            seen[i] = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
        hooks.append(partition_module(gm, i).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            gm(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def compile_partition(target: Target, sub: fx.GraphModule, args: tuple, precision: str, index: int,
                      use_cache: bool, calibration: Sequence[tuple] = (),
                      keep_float: Sequence[str] = (), float_precision: str | None = None) -> tuple[Engine, float, bool]:
    """(engine, seconds, came from the cache). int8: quantized by the target's quantizer on
    `calibration` (this partition's inputs per calibration set), the `keep_float` layers left float
    (in `float_precision`, when given: asked only then, so a target's quantize may not take it)."""
    t0 = time.perf_counter()
    keep = sorted(set(keep_float) & {n.name for n in sub.graph.nodes})
    floats = {"float_precision": float_precision} if float_precision else {}
    extra = f"int8 {digest(calibration)} {keep} {floats}" if precision == "int8" else ""
    key = cache.partition_key(target, sub, args, precision, extra) if use_cache and target.load else None
    if key is not None:
        engine = cache.get(key, target)
        if engine is not None:
            return engine, time.perf_counter() - t0, True
    try:
        engine = (target.quantize(sub, args, calibration, keep, **floats) if precision == "int8" else
                  target.compile(sub, args, precision))
    except Exception as e:  # noqa: BLE001 - any backend failure becomes one readable line
        msg = first_line(e)
        ops = sorted({op_name(n) for n in sub.graph.nodes if n.op == "call_function"})
        raise CompileError(
            f"{target.name} failed to compile partition {index} ({len(ops)} op kinds: "
            f"{', '.join(ops[:8])}{'...' if len(ops) > 8 else ''}): {type(e).__name__}: {msg}; "
            f"force the op at fault to the CPU with force_cpu=[...] or try another target"
        ) from e
    if key is not None:
        cache.put(key, engine)
    return engine, time.perf_counter() - t0, False


def check_outputs(index: int, target: str, got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> None:
    if len(got) != len(want) or any(tuple(g.shape) != tuple(w.shape) for g, w in zip(got, want)):
        raise CompileError(
            f"{target} engine for partition {index} returned shapes {[tuple(g.shape) for g in got]}, "
            f"expected {[tuple(w.shape) for w in want]}; this is a backend conversion bug: "
            f"force one of its ops to the CPU with force_cpu=[...]"
        )


def _in_context_losers(gm: fx.GraphModule, engine_mods: dict[int, EngineModule], references: dict[int, fx.GraphModule],
                       inputs: Sequence[torch.Tensor], timings: dict[int, PartitionTiming],
                       seconds: float = 0.3) -> dict[int, str]:
    """Partitions whose removal makes the whole model faster. Timing a partition alone misses
    what crossing its boundary really costs: the hand-off between the backend's threads and
    PyTorch's, cold caches, copies. So each is judged by the whole model, run both ways, and
    the ways are timed interleaved (core.timing): timed one after the other, a slow spell of the
    host lands on one side only; in the garden run it once dropped maxvit_t's onnxruntime
    partition (72 ms against 100 in PyTorch when interleaved), leaving the model at 0.63x eager.
    A partition that measured faster alone is dropped only if a second, longer timing agrees:
    the next garden run dropped r3d_18's openvino partition (190 ms against 330 in PyTorch when
    run again), and dropping a partition that pays costs far more than keeping one that ties."""
    def variant(in_pytorch: int | None):
        def run():
            for i, mod in engine_mods.items():
                put_partition(gm, i, references[i] if i == in_pytorch else mod)
            with torch.no_grad():
                gm(*inputs)
        return run

    ms = interleaved_ms({None: variant(None), **{i: variant(i) for i in engine_mods}}, seconds)
    losers = {}
    for i in engine_mods:
        on_target, in_pytorch, t = ms[None], ms[i], timings[i]
        if _pytorch_wins(on_target, in_pytorch) and not _pytorch_wins(t.compiled_ms, t.eager_ms, keep="pytorch"):
            again = interleaved_ms({None: variant(None), i: variant(i)}, 3 * seconds)  # the two disagree
            on_target, in_pytorch = again[None], again[i]
        timings[i] = replace(t, model_ms_on_target=on_target, model_ms_in_pytorch=in_pytorch)
        if _pytorch_wins(on_target, in_pytorch):
            losers[i] = (f"whole model {in_pytorch:.3f} ms with it in PyTorch vs {on_target:.3f} ms on the target "
                         f"(alone: compiled {t.compiled_ms:.3f} ms vs PyTorch {t.eager_ms:.3f} ms)")
    for i, mod in engine_mods.items():
        put_partition(gm, i, mod)
    return losers


def _pytorch_wins(on_target: float, in_pytorch: float, keep: str = "target") -> bool:
    """The payoff rule (timing.pick): the side that is not `keep` wins only by more than the noise."""
    return pick({"target": on_target, "pytorch": in_pytorch}, keep=keep, margin=PAYOFF_NOISE) == "pytorch"


def _calibration(gm: fx.GraphModule, count: int, sets: Sequence[Sequence[torch.Tensor]]) -> dict[int, list[tuple]]:
    """Each partition's inputs on every calibration input set (int8), by partition."""
    per: dict[int, list[tuple]] = {i: [] for i in range(count)}
    for flat in sets:
        for i, args in record_partition_inputs(gm, count, flat).items():
            per[i].append(args)
    return per


def _compile_partitions(captured: Captured, plan: PartitionPlan, gm: fx.GraphModule, boundary: dict,
                        references: dict, options: TraceOptions, engines: dict) -> PartitionPlan | None:
    """Compile the partitions not in `engines` yet (adding them); a re-plan without the nodes the
    backend rejects when one fails, else None."""
    target, precision, progress = options.target, options.precision, options.progress
    check_payoff = options.check_payoff and target.measure_payoff
    n = len(plan.partitions)
    calibration = {}
    if precision == "int8" and any(p.nodes not in engines for p in plan.partitions):
        calibration = _calibration(gm, n, input_sets(options.calibration, captured.in_spec, "calibration"))
    for i, part in enumerate(plan.partitions):
        sub, args = references[i], boundary[i]
        if part.nodes in engines:
            continue
        if progress is not None:
            progress(f"compiling partition {i + 1}/{n} on {target.name} ({part.compute_ops} ops)")
        try:
            engine, seconds, cached = compile_partition(target, sub, args, precision, i, options.cache,
                                                        calibration.get(i, ()), options.float_layers,
                                                        options.float_precision)
        except CompileError as e:
            if progress is not None:
                progress(f"partition {i + 1}/{n} failed on {target.name}: finding the nodes it rejects")
            return _without_rejected(captured, plan, target, sub, args, precision, e)
        with torch.no_grad():
            want = sub(*args)
            check_outputs(i, target.name, engine.run(args), want)
            eager = median_seconds(lambda: sub(*args)) if check_payoff else float("nan")
        compiled = median_seconds(lambda: engine.run(args)) if check_payoff else float("nan")
        engines[part.nodes] = (engine, PartitionTiming(seconds, compiled * 1e3, eager * 1e3, cached),
                               [t.dtype for t in want])
    return None


def compile_plan(captured: Captured, plan: PartitionPlan, options: TraceOptions) -> CompiledGraph:
    """Compile every partition; re-plan without the nodes the backend rejects and without the
    partitions that do not pay off, until stable. Engines are cached by the partition's node
    set, so re-planning never recompiles one. `options` resolved (TraceOptions.resolved)."""
    target, precision, progress = options.target, options.precision, options.progress
    check_payoff = options.check_payoff and target.measure_payoff
    engines: dict[tuple[str, ...], tuple[Engine, PartitionTiming, list[torch.dtype]]] = {}
    while True:
        gm = split(captured, plan)
        n = len(plan.partitions)
        try:
            boundary = record_partition_inputs(gm, n, captured.example_inputs)
        except Exception as e:  # noqa: BLE001 - export's fake tensors let an int64 input into a float linear
            raise bad_example_inputs(options.name or "the model", [(s.name, s.shape, s.dtype) for s in captured.inputs],
                                     e) from e
        references = {i: partition_module(gm, i) for i in range(n)}
        replanned = _compile_partitions(captured, plan, gm, boundary, references, options, engines)
        if replanned is not None:
            plan = replanned
            continue
        timings = {i: engines[p.nodes][1] for i, p in enumerate(plan.partitions)}
        engine_mods = {i: EngineModule(engines[p.nodes][0], i, target.name, engines[p.nodes][2], precision)
                       for i, p in enumerate(plan.partitions)}
        if check_payoff and n:
            if progress is not None:
                progress("timing each partition in the whole model, on the target and in PyTorch")
            losers = _in_context_losers(gm, engine_mods, references, captured.example_inputs, timings)
            if losers:
                plan = drop_partitions(captured.graph_module, plan, losers, Reason.NO_PAYOFF)
                continue
        for i, mod in engine_mods.items():
            put_partition(gm, i, mod)
        gm.delete_all_unused_submodules()  # weights now owned by engines need not stay in PyTorch
        give_cores_to_sole_engine(gm)
        # PyTorch's threads between engines: measured, see threads.py
        one_thread = choose_host_threads(gm, captured.example_inputs) if check_payoff else None
        return CompiledGraph(gm, plan, timings, references, boundary, one_thread)


def _without_rejected(captured: Captured, plan: PartitionPlan, target: Target, sub: fx.GraphModule,
                      args: tuple, precision: str, error: CompileError) -> PartitionPlan:
    """The plan with the nodes the backend rejects on the CPU, each named on stderr (never a
    silent fallback); `error` itself when bisection cannot pin the failure on some nodes."""
    found = rejected_nodes(target, sub, args, precision)
    names = {n.name for n in captured.graph_module.graph.nodes}
    found = [r for r in found if r.name in names]  # partition graphs keep the captured names
    compute = {n.name for n in sub.graph.nodes if is_compute(n)}
    if not found or compute <= {r.name for r in found}:
        raise error  # nothing to pin it on, or the backend takes none of it: a broken backend, not an op
    info = plan.table.by_name()
    table = plan.table
    for r in found:
        node = info[r.name]
        where = f" at {node.source}" if node.source else ""
        detail = f"{target.name} could not compile {node.op}{where}: {r.error}; it runs on the CPU"
        log.warning("archfit: %s (node %s)", detail, r.name)
        table = table.with_reason([r.name], Reason.COMPILE_FAILED, detail)
    return plan_partitions(captured.graph_module, table, plan.min_size)


def give_cores_to_sole_engine(gm: torch.nn.Module) -> None:
    """Engines keep their worker threads idle-waiting (not spinning) because PyTorch needs the
    cores for the host ops between engine calls. With one engine and no host compute there is
    nothing to share the cores with, so the engine may run as it would on its own."""
    engines = engines_in(gm)
    host_compute = any(is_compute(n) for n in gm.graph.nodes)
    if len(engines) == 1 and not host_compute:
        engines[0].engine.run_alone()


def share_cores(root: torch.nn.Module) -> None:
    """Undo give_cores_to_sole_engine for engines called from host Python that computes between
    their calls (a generation loop, a detector's NMS): spinning workers would take its cores."""
    for m in engines_in(root):
        m.engine.run_shared()
