"""per_partition=True: each partition may run on another real target when the whole model
measures faster with it there.

Which backend wins differs by subgraph, not only by model (ONNX Runtime's embedding-bag and small
MLP kernels against OpenVINO's fused attention, say), so after the plan's own target compiled
every partition, each partition is compiled on every other real target that supports all of its
nodes, and the whole model is timed with each candidate engine in place, interleaved; a candidate
replaces the engine only when it is faster by more than the payoff noise. The report shows each
partition's target and what was measured; a saved file records every engine's target."""
from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ..errors import ArchfitError, CompileError, first_line
from ..targets.base import Target
from ..targets.registry import list_targets
from .capture import Captured
from .compile import PAYOFF_NOISE, CompiledGraph, check_outputs, compile_partition, give_cores_to_sole_engine
from .engines import EngineModule, partition_module, put_partition
from .options import TraceOptions
from .support import check_support
from .threads import choose_host_threads, host_threads
from .timing import fastest

log = logging.getLogger("archfit")


def mix_targets(captured: Captured, compiled: CompiledGraph, options: TraceOptions,
                seconds: float = 1.0) -> CompiledGraph:
    """`compiled` with each partition's engine on the real target the whole model measures fastest
    with (`options` resolved: its target is the plan's)."""
    # seconds: per candidate, as target="auto" takes: at 0.3 s a 240 ms detector (SSD300) got 6 calls
    # each, and its mix measured 4% slower than the plan's target alone in the benchmark
    primary, precision, progress = options.target, options.precision, options.progress
    others = other_targets(primary, precision)
    gm, inputs = compiled.graph_module, captured.example_inputs
    timings, swapped, one_thread = dict(compiled.timings), False, compiled.one_thread
    tables = {t.name: check_support(captured, t, options.force_cpu).by_name() for t in others}
    for i, part in enumerate(compiled.plan.partitions):
        candidates = {primary.name: partition_module(gm, i)}
        notes = []
        for alt in others:
            if not all(tables[alt.name][n].supported for n in part.nodes if n in tables[alt.name]):
                notes.append(f"{alt.name}: does not take every op")
                continue
            if progress is not None:
                progress(f"partition {i + 1}/{len(compiled.plan.partitions)} on {alt.name} too")
            sub, args = compiled.references[i], compiled.boundary_inputs[i]
            try:
                engine, _seconds, _cached = compile_partition(alt, sub, args, precision, i, options.cache)
                with torch.no_grad():
                    want = sub(*args)
                    check_outputs(i, alt.name, engine.run(args), want)
            except CompileError as e:  # that target is out for this partition, said in the report
                notes.append(f"{alt.name}: {first_line(e, 120)}")
                log.info("archfit: partition %d stays off %s: %s", i, alt.name, e)
                continue
            candidates[alt.name] = mod = EngineModule(engine, i, alt.name, [t.dtype for t in want], precision)
            put_partition(gm, i, mod)
            give_cores_to_sole_engine(gm)  # the same thread hand-off as the engine it competes with

        def with_engine(mod, i=i):
            def run():
                put_partition(gm, i, mod)
                with torch.no_grad(), host_threads(one_thread is True):
                    gm(*inputs)
            return run

        # a second look when the two fastest are close (settle): one look of a second gave two answers
        # for one model (VGG16's target="auto", BENCHMARKS.md); within noise the plan's own target keeps it
        ms, best = {}, primary.name
        if len(candidates) > 1:
            chosen = fastest({k: with_engine(m) for k, m in candidates.items()}, seconds, keep=primary.name,
                             margin=PAYOFF_NOISE, settle=True)
            ms, best = chosen.ms, chosen.best
        put_partition(gm, i, candidates[best])
        swapped = swapped or best != primary.name
        measured = ", ".join([f"{k} {v:.3f} ms" for k, v in sorted(ms.items(), key=lambda kv: kv[1])] + notes)
        timings[i] = replace(timings[i], target=best, measured=measured)
    if swapped and one_thread is not None:  # the host-thread choice was made around the old engines
        one_thread = choose_host_threads(gm, inputs)
    return replace(compiled, timings=timings, one_thread=one_thread)


def other_targets(primary: Target, precision: str) -> list[Target]:
    """Every other real target usable here that computes in `precision`."""

    if primary.emulated:
        raise ArchfitError(f"per_partition mixes targets that run here; {primary.name} is an emulated accelerator "
                           f"profile: compile it without per_partition")
    return [t for t in list_targets() if not t.emulated and t.name != primary.name and t.unavailable() is None
            and precision in t.precisions and t.precision_unavailable(precision) is None]
