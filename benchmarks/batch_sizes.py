"""A partial batch on the engine that holds it (batch_sizes, #43): full-size BERT-base at one
length bucket of 128 with a dynamic batch of 4, compiled once with batch_sizes=(1, 2) and once
without, each called with 1, 2, 3 and 4 rows of 100 tokens; arms interleaved in one process
(archfit.cli.bench.run_arms). Without batch_sizes a call of fewer rows than 4 is padded to 4
(what a server's short queue pays); with them, 1 and 2 rows run on their own engines, 3 on the
4-row one. Random weights: speed only.

    .venv/bin/python benchmarks/batch_sizes.py [--rounds 5] [--target openvino]

Writes benchmarks/results/batch_sizes.json and prints the table for BENCHMARKS.md."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archfit  # noqa: E402
from archfit import Buckets, zoo  # noqa: E402
from archfit.cli.bench import cpu_model, run_arms  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _inputs(rows: int, length: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rows)
    return {"input_ids": torch.randint(1000, 20000, (rows, length), generator=g),
            "attention_mask": torch.ones(rows, length, dtype=torch.long)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target", default="openvino")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = zoo.build("bert-base")[0].eval()
    buckets = Buckets({"input_ids": 1, "attention_mask": 1}, sizes=(128,))
    files = {}
    for name, sizes in (("batch 4 only", ()), ("batch 4 + batch_sizes (1, 2)", (1, 2))):
        files[name] = archfit.trace(model, _inputs(4, 128), args.target, buckets=buckets, dynamic_batch=True,
                                    batch_sizes=sizes, check_payoff=False)
    arms = {}
    for rows in (1, 2, 3, 4):
        x = _inputs(rows, 100)
        for name, module in files.items():
            arms[f"{rows} row(s), {name}"] = (module.precision, lambda m=module, x=x: lambda: m(**x))
    results = {r.name: r for r in run_arms(arms, rounds=args.rounds, seconds_per_round=1.0)}
    rows_out = []
    for rows in (1, 2, 3, 4):
        only, both = (results[f"{rows} row(s), {name}"] for name in files)
        rows_out.append({"rows": rows, "batch4_ms": only.p50, "batch_sizes_ms": both.p50,
                         "speedup": only.p50 / both.p50, "rounds_ms": {"batch4": only.rounds_ms,
                                                                      "batch_sizes": both.rounds_ms}})
    RESULTS.mkdir(parents=True, exist_ok=True)
    precision = next(iter(files.values())).precision
    (RESULTS / "batch_sizes.json").write_text(json.dumps({"cpu": cpu_model(), "target": args.target,
                                                         "precision": precision, "rows": rows_out}, indent=1))
    print(f"BERT-base, bucket 128 (calls of 100 tokens), {args.target} {precision}, {cpu_model()}, "
          f"{torch.get_num_threads()} threads\n")
    print("| rows in the call | batch 4 only, p50 ms | + batch_sizes (1, 2), p50 ms | speedup |\n|---|---|---|---|")
    for r in rows_out:
        print(f"| {r['rows']} | {r['batch4_ms']:.1f} | {r['batch_sizes_ms']:.1f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
