"""Seq2seq generation benchmark: full-size MarianMT en-de (opus-mt-en-de config, random weights),
one process, arms interleaved over rounds on the same source sentences.

Arms: transformers' eager `generate` (its default dynamic key/value cache), and archfit's
compiled generation (encoder per source bucket, decoder step against a static cache) on each
target; greedy and beam search (4 beams). Every call generates exactly --new-tokens tokens per
sequence (min_new_tokens = max_new_tokens), so tokens/s compare like for like whatever the
random weights would emit; archfit's tokens are checked equal to eager's first.

    .venv/bin/python benchmarks/generation.py --rounds 3
writes benchmarks/results/generation.json and prints a Markdown table for BENCHMARKS.md."""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import archfit
from archfit import zoo
from archfit.cli.bench import run_arms

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="marian-en-de")
    p.add_argument("--targets", default="openvino:fp32,openvino:bf16,onnxruntime:fp32",
                   help="TARGET:PRECISION, comma-separated")
    p.add_argument("--source-len", type=int, default=24)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args()
    torch.set_num_threads(2)
    model = zoo.build(args.model)[0].model.eval()
    ids = torch.randint(4, model.config.vocab_size - 1, (1, args.source_len), generator=torch.Generator().manual_seed(0))
    n = args.new_tokens
    settings = {"greedy": {"num_beams": 1}, f"beam {args.beams}": {"num_beams": args.beams}}
    compiled = {}
    for spec in args.targets.split(","):
        target, precision = spec.split(":")
        t0 = time.perf_counter()
        compiled[f"{target} {precision}"] = archfit.trace_seq2seq(
            model, target, source_buckets=(16, 32, 64), num_beams=args.beams, max_new_tokens=n, precision=precision,
            progress=lambda m: print("  " + m, flush=True))
        print(f"compiled for {spec} in {time.perf_counter() - t0:.0f} s", flush=True)
    same = {}
    with torch.no_grad():
        for label, kw in settings.items():
            want = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            for target, module in compiled.items():
                same[f"{target} {label}"] = bool(torch.equal(module.generate(ids, max_new_tokens=n, min_new_tokens=n,
                                                                            **kw), want))
    print("same tokens as eager:", same, flush=True)

    def arm(gen, kw):
        return "fp32", lambda: (lambda: gen(ids, max_new_tokens=n, min_new_tokens=n, **kw))

    builders = {}
    for label, kw in settings.items():
        builders[f"eager transformers fp32 {label}"] = arm(model.generate, kw)
        for target, module in compiled.items():
            builders[f"archfit {target} {label}"] = arm(module.generate, kw)
    results = run_arms(builders, rounds=args.rounds, seconds_per_round=args.seconds, log=print)
    rows = []
    for r in results:
        label = next(lbl for lbl in settings if r.name.endswith(lbl))
        eager = next(x for x in results if x.name == f"eager transformers fp32 {label}")
        rows.append({"arm": r.name, "p50_ms": r.p50, "p90_ms": r.p90, "tokens_per_s": n / r.p50 * 1e3,
                     "vs_eager": eager.p50 / r.p50, "same_tokens": same.get(r.name.removeprefix("archfit ")),
                     "error": r.error})
    out = {"model": args.model, "source_len": args.source_len, "new_tokens": n, "machine": platform.processor(),
           "threads": torch.get_num_threads(), "rows": rows}
    dest = ROOT / "benchmarks" / "results" / "generation.json"
    dest.write_text(json.dumps(out, indent=1))
    print(f"\n{args.model}, source {args.source_len} tokens, {n} new tokens per sequence, batch 1, 2 threads\n")
    print("| arm | p50 ms / sequence | p90 ms | tokens/s | vs eager | same tokens as eager |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        same_txt = "-" if row["same_tokens"] is None else ("yes" if row["same_tokens"] else "NO")
        print(f"| {row['arm']} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['tokens_per_s']:.1f} | "
              f"{row['vs_eager']:.2f}x | {same_txt} |")


if __name__ == "__main__":
    main()
