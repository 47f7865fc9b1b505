"""Two changes of the house issue to the compile path, measured on full-size models:

1. Support rules judge a high-level op by its core-ATen decomposition. Before: one
   `ExportedProgram.run_decompositions()` of the whole program; now: `targets.base.core_ops`, the
   op alone at its argument shapes, cached. Timed: both ways over every node a support rule asks
   about (those not on OpenVINO's list), same captured program, alternating, fresh cache per round.
2. Partitions export with `reshape` where the capture wrote `view`. Timed: the compiled model's
   run with and without that rewrite (openvino, one partition), interleaved.

    .venv/bin/python benchmarks/capture_costs.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import archfit
import archfit.targets.base as base
import archfit.targets.onnxruntime as ort_target
import archfit.targets.openvino as ov_target
from archfit import zoo
from archfit.core.capture import _export, normalize_inputs
from archfit.targets.openvino import _listed


def decomposition(name: str, rounds: int) -> dict:
    model, inputs = zoo.build(name)
    model.eval()
    args, kwargs = normalize_inputs(inputs)
    ep = _export(model, args, kwargs)
    gm = ep.module()
    asked = [n for n in gm.graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
             and not _listed(n.target)]
    whole, per_node = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        ep.run_decompositions()
        whole.append(time.perf_counter() - t)
        base._DECOMPOSED.clear()
        t = time.perf_counter()
        for n in asked:
            base.core_ops(n)
        per_node.append(time.perf_counter() - t)
    return {"nodes asked": len(asked), "whole program s": statistics.median(whole),
            "per node s": statistics.median(per_node)}


def _view_export(gm, example_inputs):  # the export before the change
    return torch.export.export(gm, tuple(example_inputs), strict=False)


def _use(fn) -> None:
    base.export_partition = ov_target.export_partition = ort_target.export_partition = fn


def reshape_runtime(name: str, rounds: int) -> dict:
    model, inputs = zoo.build(name)
    args, kwargs = normalize_inputs(inputs)
    analysis = archfit.analyze(model, inputs, targets=["openvino"])
    now = base.export_partition
    mods = {}
    for label, fn in (("reshape (now)", now), ("view (before)", _view_export)):
        _use(fn)
        mods[label] = analysis.compile("openvino", cache=False, check_payoff=False, validate=False)
    _use(now)
    times = {k: [] for k in mods}
    with torch.no_grad():
        for m in mods.values():
            m(*args, **kwargs)
        for _ in range(rounds * 5):
            for k, m in mods.items():
                t = time.perf_counter()
                m(*args, **kwargs)
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    rounds = ap.parse_args().rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | nodes a rule asks about | whole-program decomposition s | per-node s |")
    print("|---|---:|---:|---:|")
    for name in ("bert-base", "resnet50", "marian-en-de"):
        r = decomposition(name, rounds)
        print(f"| {name} | {r['nodes asked']} | {r['whole program s']:.2f} | {r['per node s']:.3f} |", flush=True)
    print()
    print("| model | compiled, partitions exported with reshape: p50 ms | with view (before): p50 ms |")
    print("|---|---:|---:|")
    for name in ("bert-base", "resnet50"):
        r = reshape_runtime(name, rounds)
        print(f"| {name} | {r['reshape (now)']:.2f} | {r['view (before)']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
