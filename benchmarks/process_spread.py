"""How much an arm's speed moves from one fresh process to the next, and whether it moves with
the host: the arms of one model timed interleaved in several fresh processes, beside two probes
that use no model, a gather of random rows from a 1 GiB table (memory latency) and a 256x512x512
fp32 matmul (the cores).

    .venv/bin/python benchmarks/process_spread.py dlrm --processes 5
    .venv/bin/python benchmarks/process_spread.py dlrm --batch 1024 --arms "archfit openvino fp32,torch.compile (Inductor)"

Per process: each arm's median over its rounds. Over every round of every process: each arm's
round medians correlated (Pearson, on logs) with the other arms' and the probes'. Arms that move
together from process to process, probes with them, are moved by the host, not by their own
code. Writes benchmarks/results/spread-MODEL.json."""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from fresh import scratch_dir  # noqa: E402 - benchmarks/ is on sys.path when run as a script
from peers import RESULTS, _batch, _model_and_inputs

DEFAULT_ARMS = {"dlrm": ["archfit openvino fp32", "OpenVINO direct", "ONNX Runtime direct", "torch.compile (Inductor)"]}
PROBES = ("probe: gather 1 GiB", "probe: matmul fp32")


def _probes() -> dict:
    table = torch.randn(2**24, 16)  # 1 GiB of 16-float rows, like DLRM's embedding rows
    rows = torch.randint(0, table.shape[0], (2**17,))  # 8 MiB of random rows a call: long enough to time
    a, b = torch.randn(256, 512), torch.randn(512, 512)
    return {PROBES[0]: lambda: table.index_select(0, rows), PROBES[1]: lambda: a @ b}


def one_process(model: str, arms: list[str], rounds: int, burst: float, batch: int | None) -> dict:
    """Each arm's and probe's round medians (ms), timed interleaved as the peers table times them."""
    from archfit.cli import bench

    net, inputs, _ = _model_and_inputs(model)
    inputs = _batch(inputs, batch) if batch else inputs
    builders = bench.arms(net, inputs)
    probes = {name: ("fp32", lambda fn=fn: fn) for name, fn in _probes().items()}
    timed = bench.run_arms({a: builders[a] for a in arms} | probes, rounds, burst)
    failed = [f"{r.name}: {r.error}" for r in timed if r.error]
    if failed:
        sys.exit("process_spread: an arm failed to build: " + "; ".join(failed))
    return {r.name: r.rounds_ms for r in timed}


def _pearson(x: list[float], y: list[float]) -> float:
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    return statistics.correlation(lx, ly)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--arms", help="comma-separated arm names (archfit.cli.bench.arms)")
    p.add_argument("--processes", type=int, default=5)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--burst", type=float, default=0.25, help="seconds an arm a round")
    p.add_argument("--batch", type=int, help="the model's inputs at this batch (default: the peers table's)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    arms = args.arms.split(",") if args.arms else DEFAULT_ARMS[args.model]
    if args.child:
        Path(args.child).write_text(json.dumps(one_process(args.model, arms, args.rounds, args.burst, args.batch)))
        return
    tmp = scratch_dir("archfit-spread-")
    runs = []
    for k in range(args.processes):
        out = tmp / f"{k}.json"
        batch = ["--batch", str(args.batch)] if args.batch else []
        subprocess.run([sys.executable, __file__, args.model, "--arms", ",".join(arms), "--rounds", str(args.rounds),
                        "--burst", str(args.burst), "--child", str(out), *batch], check=True, env=os.environ)
        runs.append(json.loads(out.read_text()))
        print(f"process {k + 1}: " + ", ".join(f"{a} {statistics.median(v):.3f}" for a, v in runs[-1].items()), flush=True)
    names = list(runs[0])
    pooled = {a: [x for run in runs for x in run[a]] for a in names}
    from archfit.cli.bench import cpu_model

    result = {"model": args.model, "batch": args.batch, "cpu": cpu_model(), "processes": args.processes, "rounds": args.rounds,
              "burst_s": args.burst, "runs": runs,
              "per_process_ms": {a: [statistics.median(run[a]) for run in runs] for a in names},
              "correlation": {a: {b: _pearson(pooled[a], pooled[b]) for b in names if b != a} for a in names}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"spread-{args.model}{f'-{args.batch}' if args.batch else ''}.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))


def markdown(result: dict) -> str:
    names = list(result["per_process_ms"])
    batch = f", batch {result['batch']}" if result.get("batch") else ""
    out = [f"{result['model']}{batch}, {result['cpu']}, {result['processes']} fresh processes x {result['rounds']} rounds "
           f"of {result['burst_s']:g} s an arm, interleaved", "",
           "| arm | " + " | ".join(f"process {k + 1} ms" for k in range(result["processes"])) + " | max/min |",
           "|---|" + "---:|" * (result["processes"] + 1)]
    for a in names:
        v = result["per_process_ms"][a]
        out.append(f"| {a} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {max(v) / min(v):.2f} |")
    out += ["", "Round medians correlated over every round (Pearson, logs):", "",
            "| arm | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for a in names:
        out.append(f"| {a} | " + " | ".join("" if b == a else f"{result['correlation'][a][b]:+.2f}" for b in names) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
