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
from typing import Sequence

import torch

from ..errors import ArchfitError, CompileError, first_line
from ..targets.base import Target
from ..targets.registry import list_targets
from .capture import Captured
from .compile import (PAYOFF_NOISE, PREFIX, CompiledGraph, EngineModule, _check_outputs, _compile_one,
                      hand_over_if_alone)
from .support import check_support
from .threads import ONE_THREAD, choose_host_threads, host_threads, one_thread_for
from .timing import settled_ms

log = logging.getLogger("archfit")


def mix_targets(captured: Captured, compiled: CompiledGraph, primary: Target, others: Sequence[Target],
                precision: str, force_cpu: Sequence[str] = (), use_cache: bool = True, progress=None,
                seconds: float = 1.0) -> CompiledGraph:
    # seconds: per candidate, as target="auto" takes: at 0.3 s a 240 ms detector (SSD300) got 6 calls
    # each, and its mix measured 4% slower than the plan's target alone in the benchmark
    gm, inputs = compiled.graph_module, captured.example_inputs
    timings, swapped = dict(compiled.timings), False
    tables = {t.name: check_support(captured, t, force_cpu).by_name() for t in others}
    for i, part in enumerate(compiled.plan.partitions):
        name = f"{PREFIX}{i}"
        candidates = {primary.name: getattr(gm, name)}
        notes = []
        for alt in others:
            if not all(tables[alt.name][n].supported for n in part.nodes if n in tables[alt.name]):
                notes.append(f"{alt.name}: does not take every op")
                continue
            if progress is not None:
                progress(f"partition {i + 1}/{len(compiled.plan.partitions)} on {alt.name} too")
            sub, args = compiled.references[i], compiled.boundary_inputs[i]
            try:
                engine, _seconds, _cached = _compile_one(alt, sub, args, precision, i, use_cache)
                with torch.no_grad():
                    want = sub(*args)
                    _check_outputs(i, alt.name, engine.run(args), want)
            except CompileError as e:  # that target is out for this partition, said in the report
                notes.append(f"{alt.name}: {first_line(e, 120)}")
                log.info("archfit: partition %d stays off %s: %s", i, alt.name, e)
                continue
            candidates[alt.name] = mod = EngineModule(engine, i, alt.name, [t.dtype for t in want])
            setattr(gm, name, mod)
            hand_over_if_alone(gm)  # the same thread hand-off as the engine it competes with

        def with_engine(mod):
            def run():
                setattr(gm, name, mod)
                with torch.no_grad(), host_threads(one_thread_for(gm)):
                    gm(*inputs)
            return run

        # a second look when the two fastest are close (settled_ms): one look of a second gave two answers
        # for one model (VGG16's target="auto", BENCHMARKS.md)
        ms = settled_ms({k: with_engine(m) for k, m in candidates.items()}, seconds) if len(candidates) > 1 else {}
        best = min(ms, key=ms.get) if ms else primary.name
        if best != primary.name and ms[best] >= ms[primary.name] * (1 - PAYOFF_NOISE):
            best = primary.name  # within noise: the plan's own target keeps it
        setattr(gm, name, candidates[best])
        swapped = swapped or best != primary.name
        measured = ", ".join([f"{k} {v:.3f} ms" for k, v in sorted(ms.items(), key=lambda kv: kv[1])] + notes)
        timings[i] = replace(timings[i], target=best, measured=measured)
    if swapped and hasattr(gm, ONE_THREAD):  # the host-thread choice was made around the old engines
        choose_host_threads(gm, inputs)
    return replace(compiled, timings=timings)


def other_targets(primary: Target, precision: str) -> list[Target]:
    """Every other real target usable here that computes in `precision`."""

    if primary.emulated:
        raise ArchfitError(f"per_partition mixes targets that run here; {primary.name} is an emulated accelerator "
                           f"profile: compile it without per_partition")
    return [t for t in list_targets() if not t.emulated and t.name != primary.name and t.unavailable() is None
            and precision in t.precisions and t.precision_unavailable(precision) is None]
