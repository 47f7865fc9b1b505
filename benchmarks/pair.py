"""A few arms of the peers table in a process of their own: archfit on a target against that
engine's direct use (and, with --auto, archfit's target="auto"), without the table's other
engines and memory beside them. A check on a gap the table shows. Built and timed as the table
does (cli.bench.arms, run_arms: interleaved, one round at a time); each round's medians are
printed, and the verdict is the median over rounds of peer / arm (cli.bench.paired_ratio): both
arms met the same host within a round, and this VM's speed moves between rounds by more than
the gaps measured.

    .venv/bin/python benchmarks/pair.py resnet50 bf16 [--target openvino] [--auto] [--rounds 4] [--seconds 3]

Writes benchmarks/results/pair-MODEL-TARGET-PRECISION.json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DIRECT = {"openvino": "OpenVINO direct", "onnxruntime": "ONNX Runtime direct"}


def main() -> None:
    from archfit import zoo
    from archfit.cli import bench

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("precision", choices=("fp32", "bf16"))
    p.add_argument("--target", default="openvino", choices=tuple(DIRECT))
    p.add_argument("--auto", action="store_true", help='also time archfit target="auto" (per partition)')
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    torch.set_num_threads(2)
    model, inputs = zoo.build(args.model)
    model.eval()
    peer = DIRECT[args.target] + (" bf16" if args.precision == "bf16" and args.target == "openvino" else "")
    wanted = [f"archfit {args.target} {args.precision}", peer] + ([f"archfit auto {args.precision}"] if args.auto else [])
    every = bench.arms(model, inputs, targets=(args.target,), precisions=(args.precision,), auto=args.auto)
    missing = [n for n in wanted if n not in every]
    if missing:
        sys.exit(f"pair.py: no arm {', '.join(missing)} here (bf16 needs a CPU with bf16 units; "
                 f"onnxruntime refuses bf16)")
    results = bench.run_arms({n: every[n] for n in wanted}, args.rounds, args.seconds, log=print)
    by_name = {r.name: r for r in results}
    failed = [f"{r.name}: {r.error}" for r in results if r.error]
    if failed:
        sys.exit(f"pair.py: {'; '.join(failed)}")
    for n in range(args.rounds):
        print({r.name: round(r.rounds_ms[n], 3) for r in results}, flush=True)
    ahead = {name: bench.paired_ratio(by_name[peer], by_name[name]) - 1 for name in wanted if name != peer}
    print("median of round medians: " + ", ".join(f"{r.name} {r.p50:.3f} ms" for r in results))
    for name, a in ahead.items():
        print(f"{name} against {peer}, median of the rounds' ratios: ahead by {a:+.1%} (negative: behind)")
    out = ROOT / "benchmarks" / "results" / f"pair-{args.model}-{args.target}-{args.precision}.json"
    out.write_text(json.dumps({"model": args.model, "cpu": bench.cpu_model(), "peer": peer,
                               "rounds": [{r.name: r.rounds_ms[n] for r in results} for n in range(args.rounds)],
                               "p50": {r.name: r.p50 for r in results}, "ahead": ahead}, indent=1))


if __name__ == "__main__":
    main()
