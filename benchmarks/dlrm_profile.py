"""Where DLRM's time goes in OpenVINO: archfit's graph (torch.export -> ATen -> OpenVINO) against
OpenVINO's own conversion of the model (TorchScript), per executed layer type, in fp32 and bf16.

    .venv/bin/python benchmarks/dlrm_profile.py [--calls 300]

Each engine is compiled with OpenVINO's PERF_COUNT on and run at DLRM's serving batch (128) on 2
threads; the per-layer times (OpenVINO's own counters, summed over calls, per call) are grouped
by layer type, with the runtime precision each layer ran in. Then the cost of one op forced to the
CPU mid-graph (the peers table's node), per component: each engine's time inside the call (its forward, timed)
and the rest (the host op and Python dispatch). Prints Markdown tables and writes
benchmarks/results/dlrm_profile.json."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def _profile(compiled, feeds, calls: int) -> dict:
    request = compiled.create_infer_request()
    for _ in range(20):
        request.infer(feeds, share_inputs=True)
    per_type: dict[str, float] = defaultdict(float)
    precisions: dict[str, set] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    wall = []
    for _ in range(calls):
        t0 = time.perf_counter()
        request.infer(feeds, share_inputs=True)
        wall.append(time.perf_counter() - t0)
        for p in request.get_profiling_info():
            if p.status.name != "EXECUTED":
                continue
            per_type[p.node_type] += p.real_time.total_seconds() * 1e3 / calls
    for p in request.get_profiling_info():
        if p.status.name == "EXECUTED":
            counts[p.node_type] += 1
            precisions[p.node_type].add(p.exec_type.split("_")[-1])
    return {"wall_ms": 1e3 * statistics.median(wall), "layers_ms": sum(per_type.values()),
            "by_type": {k: {"ms": v, "layers": counts[k], "ran_in": sorted(precisions[k])}
                        for k, v in sorted(per_type.items(), key=lambda kv: -kv[1])}}


def _archfit_model(model, inputs, precision: str):
    """The ov.Model archfit compiles for DLRM (one partition): capture, then the partition's export,
    as targets/openvino.compile_partition does it."""
    import openvino as ov

    from archfit.core.capture import capture
    from archfit.targets.base import export_partition
    from archfit.targets.openvino import _lower

    captured = capture(model, inputs)
    gm = captured.graph_module
    flat = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
    ep = _lower(export_partition(gm, [torch.zeros(v.shape, dtype=v.dtype) for v in flat]), precision)
    converted = ov.convert_model(ep)
    converted.reshape({i: ov.PartialShape(list(v.shape)) for i, v in enumerate(flat)})
    return converted


def _timed(forward, spans: list):
    def timed(*args):
        t0 = time.perf_counter()
        try:
            return forward(*args)
        finally:
            spans.append(time.perf_counter() - t0)
    return timed


def forced_components(model, inputs, calls: int) -> dict:
    """One op forced to the CPU mid-graph (the peers table's node), archfit openvino fp32: the
    module's call split into its engines' calls (timed inside the call) and the rest (the
    host op, Python dispatch between engines), against the fully compiled module's engine."""
    import archfit
    from archfit.core.engines import EngineModule
    from peers import _mid_graph_node  # noqa: E402 - benchmarks/ is on sys.path when run as a script

    node = _mid_graph_node(model, inputs)
    modules = {"fully compiled": archfit.trace(model, inputs, "openvino", precision="fp32", check_payoff=False),
               "1 op on the CPU": archfit.trace(model, inputs, "openvino", precision="fp32", force_cpu=(node,))}
    out = {"node": node}
    for label, m in modules.items():
        engines = [e for e in m.modules() if isinstance(e, EngineModule)]
        spans = {i: [] for i in range(len(engines))}
        for i, e in enumerate(engines):  # the forward itself, not hooks: a sole engine's call skips __call__
            e.forward = _timed(e.forward, spans[i])
        total = []
        with torch.no_grad():
            for _ in range(20):
                m(*inputs)
            for v in spans.values():
                v.clear()
            for _ in range(calls):
                t0 = time.perf_counter()
                m(*inputs)
                total.append(time.perf_counter() - t0)
        med = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
        per_engine = [med(v) for v in spans.values()]
        out[label] = {"total_ms": med(total), "engines_ms": per_engine,
                      "rest_ms": med(total) - sum(per_engine)}
    return out


def main() -> None:
    import openvino as ov

    from archfit import zoo

    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, inputs = zoo.build("dlrm")
    model.eval()
    feeds = [t.numpy() for t in inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = ov.convert_model(model, example_input=inputs)
    out = {}
    for precision, hint in (("fp32", "f32"), ("bf16", "bf16")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graphs = {"OpenVINO direct": direct, "archfit": _archfit_model(model, inputs, precision)}
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
        compiled = {k: ov.Core().compile_model(g, "CPU", config) for k, g in graphs.items()}
        out[precision] = {k: _profile(c, feeds, args.calls) for k, c in compiled.items()}
        del compiled
    out["forced"] = forced_components(model, inputs, args.calls)
    (ROOT / "benchmarks" / "results" / "dlrm_profile.json").write_text(json.dumps(out, indent=1))
    for precision, arms in ((p, out[p]) for p in ("fp32", "bf16")):
        types = sorted({t for a in arms.values() for t in a["by_type"]},
                       key=lambda t: -max(a["by_type"].get(t, {"ms": 0})["ms"] for a in arms.values()))
        print(f"\n{precision}: " + ", ".join(f"{k} {a['wall_ms']:.3f} ms a call ({a['layers_ms']:.3f} ms in layers)"
                                           for k, a in arms.items()))
        print("| layer type | " + " | ".join(f"{k}: ms (layers, ran in)" for k in arms) + " |")
        print("|---|" + "---|" * len(arms))
        for t in types:
            cells = []
            for a in arms.values():
                x = a["by_type"].get(t)
                cells.append(f"{x['ms']:.3f} ({x['layers']}, {'/'.join(x['ran_in'])})" if x else "-")
            print(f"| {t} | " + " | ".join(cells) + " |")
    f = out["forced"]
    print(f"\nOne op on the CPU (`{f['node']}`), archfit openvino fp32, medians of {args.calls} calls:")
    print("| module | call ms | engines ms | host op and dispatch ms |\n|---|---|---|---|")
    for label in ("fully compiled", "1 op on the CPU"):
        x = f[label]
        print(f"| {label} | {x['total_ms']:.3f} | {' + '.join(f'{e:.3f}' for e in x['engines_ms'])} | {x['rest_ms']:.3f} |")


if __name__ == "__main__":
    main()
