"""Packing benchmark: full-size BERT-base on SQuAD v1.1 lengths (max 384), one process.

Arms, on the same requests (lengths drawn with a fixed seed from the SQuAD histogram shipped with
archfit), interleaved chunk by chunk (every arm runs chunk 1, then every arm chunk 2, ...), all
archfit arms on one target:
  pad to 384            archfit, one bucket, one request per call
  8 buckets             archfit, 8 buckets chosen from the histogram, one request per call
  packed 384            archfit packing, one compiled row shape [1, 384]
  packed rows           archfit packing into row lengths chosen from the histogram
  strategy auto         what Packing/Buckets `strategy="auto"` picks by measurement (openvino)
  OpenVINO direct dynamic   ov.convert_model with a bounded dynamic sequence dim, each request at
                        its exact length (the best peer on this benchmark)
  eager, exact lengths  PyTorch, each request at its exact length
Packed arms pack each chunk as it comes (look-ahead = chunk size). Reported: sequences/s, ratio
to pad-to-384, share of the FLOP bound (FLOPs of every request at 384 over FLOPs at exact
lengths, counted by torch's FlopCounterMode), packing rows and fill, and the resident memory
(after loading and one run, and peak) of a fresh process that loads each saved file and runs it.
Every archfit arm runs its saved file, loaded again; each chunk starts with the next arm.

    .venv/bin/python benchmarks/packing.py --target openvino --requests 1000
writes benchmarks/results/packing-TARGET.json and prints a Markdown table for BENCHMARKS.md."""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import archfit
from archfit import Buckets, Packing, zoo
from archfit.shapes.packing import pack, packing_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bucketing import MAX, SEQ, requests, squad  # noqa: E402 - same requests as the bucketing benchmark
from fresh import load_and_run, scratch_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def flop_bound(model, lengths: list[int]) -> float:
    """FLOPs of every request padded to 384 over FLOPs at exact lengths; FLOPs per length fitted
    exactly by a quadratic through three counted lengths (linear layers grow with L, attention with L^2)."""
    from torch.utils.flop_counter import FlopCounterMode

    sizes, flops = [96, 192, 384], []
    for n in sizes:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(input_ids=torch.ones(1, n, dtype=torch.long), attention_mask=torch.ones(1, n, dtype=torch.long))
        flops.append(counter.get_total_flops())
    coef = np.polyfit(sizes, flops, 2)
    return float(len(lengths) * np.polyval(coef, MAX) / np.polyval(coef, np.asarray(lengths)).sum())


def ov_dynamic(model, example):
    """The peer: OpenVINO's own conversion with a bounded dynamic sequence dim, exact lengths."""
    import warnings

    import openvino as ov

    shape = ov.PartialShape([1, ov.Dimension(1, MAX)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=example,
                                     input=[("input_ids", shape, ov.Type.i64), ("attention_mask", shape, ov.Type.i64)])
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                            "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(chunk):
        for r in chunk:
            request.infer([r["input_ids"].numpy(), r["attention_mask"].numpy()], share_inputs=True)
    return run


def rss_mib(path: Path) -> tuple[float, float]:
    """(resident MiB after loading the file and running one full row, peak) in a fresh process."""
    m = load_and_run(path, "ids = torch.ones(1, 384, dtype=torch.long)\n"
                           "m.run([ids[0]]) if m.kind == 'packed' else m(input_ids=ids, attention_mask=torch.ones_like(ids))")
    return m["rss_mib"], m["peak_rss_mib"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="openvino")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=250, help="requests per interleaved chunk (= packing look-ahead)")
    ap.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the target-independent arms (OpenVINO direct dynamic, eager)")
    ap.add_argument("--buckets", action=argparse.BooleanOptionalAction, default=True, help="also the 8-bucket arm")
    ap.add_argument("--auto", action=argparse.BooleanOptionalAction, default=True, help="also the strategy-auto arm")
    ap.add_argument("--rows", action=argparse.BooleanOptionalAction, default=True, help="also the packed-rows arm")
    args = ap.parse_args()
    model, _ = zoo.build("bert-base")
    example = {"input_ids": torch.randint(1000, 30000, (1, MAX)), "attention_mask": torch.ones(1, MAX, dtype=torch.long)}
    hist, _ = squad()
    reqs = requests(args.requests)
    lengths = [int(r["input_ids"].shape[1]) for r in reqs]
    tmp = scratch_dir("archfit-bench-")
    keep = ("last_hidden_state",)
    builds = {"pad to 384": dict(buckets=Buckets(SEQ, sizes=(MAX,)))}
    if args.buckets:
        builds["8 buckets"] = dict(buckets=Buckets(SEQ, histogram=tuple(hist), max_buckets=8))
    builds["packed 384"] = dict(packing=Packing(MAX, outputs=keep, lookahead=args.chunk))
    if args.rows:
        builds["packed rows"] = dict(packing=Packing(MAX, outputs=keep, lookahead=args.chunk,
                                                     histogram=tuple(hist)))
    if args.auto:
        builds["strategy auto"] = dict(packing=Packing(MAX, outputs=keep, lookahead=args.chunk, histogram=tuple(hist),
                                                       strategy="auto"))
    arms, info = {}, {}
    for label, options in builds.items():
        t0 = time.perf_counter()
        module = archfit.trace(model, example, args.target, check_payoff=False, **options)
        seconds = time.perf_counter() - t0
        path = archfit.save(module, tmp / f"{label.replace(' ', '_')}.archfit")
        # the arms run what users deploy: the saved file loaded (the traced module and what
        # compiling left behind are dropped)
        del module
        gc.collect()
        module = archfit.load(path)
        sizes = module.spec.sizes if module.kind == "packed" else module.sizes
        rss, peak = rss_mib(path)
        info[label] = {"sizes": list(sizes), "compile_s": seconds, "rss_mib": rss, "peak_rss_mib": peak,
                       "file_mib": path.stat().st_size / 2**20}
        if module.kind == "packed":
            info[label]["strategy"] = module.spec.strategy
            info[label]["measured"] = module.spec.measured
            arms[label] = lambda chunk, m=module: m.run([{"input_ids": r["input_ids"]} for r in chunk])
            packs = [p for i in range(0, len(lengths), args.chunk)
                     for p in pack(lengths[i:i + args.chunk], MAX, module.spec.max_per_row, module.spec.method)]
            stats = packing_stats(lengths, MAX, packs)
            info[label] |= {"rows": stats.rows, "fill_384": stats.fill, "row_speedup": stats.speedup,
                            "row_bound": stats.bound}
        else:
            arms[label] = lambda chunk, m=module: [m(**r) for r in chunk]
        print(label, info[label], flush=True)
    if args.peers:
        arms["OpenVINO direct dynamic"] = ov_dynamic(model, example)

        def eager(chunk):
            with torch.no_grad():
                for r in chunk:
                    model(**r)
        arms["eager, exact lengths"] = eager
    # correctness: packed outputs per sequence against eager on that sequence alone
    errors = {}
    with torch.no_grad():
        want = [model(**r).last_hidden_state for r in reqs[:16]]
    for label in [k for k in ("packed 384", "packed rows") if k in arms]:
        got = arms[label](reqs[:16])
        errors[label] = max(float((g["last_hidden_state"] - w).abs().max()) for g, w in zip(got, want))
    print("max abs error vs eager, 16 sequences:", errors, flush=True)
    for run in arms.values():  # warm up
        run(reqs[:8])
    seconds = {k: 0.0 for k in arms}
    order = list(arms)
    for start in range(0, len(reqs), args.chunk):
        chunk = reqs[start:start + args.chunk]
        order = order[1:] + order[:1]  # each chunk starts with another arm: no arm always runs first
        for label in order:
            run = arms[label]
            t0 = time.perf_counter()
            run(chunk)
            seconds[label] += time.perf_counter() - t0
        print(f"chunk {start // args.chunk + 1}: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()), flush=True)
    bound = flop_bound(model, lengths)
    pad = seconds["pad to 384"]
    rows = [{"arm": label, "seq_per_s": len(reqs) / s, "vs_pad": pad / s, "share_of_flop_bound": pad / s / bound,
             "max_abs_error": errors.get(label), **info.get(label, {})} for label, s in seconds.items()]
    result = {"target": args.target, "requests": len(reqs), "chunk": args.chunk, "threads": torch.get_num_threads(),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
              "flop_bound": bound, "rows": rows}
    out = ROOT / "benchmarks" / "results" / f"packing-{args.target}.json"
    out.write_text(json.dumps(result, indent=1))
    one, one_peak = info["pad to 384"]["rss_mib"], info["pad to 384"]["peak_rss_mib"]
    print(f"\n| arm ({args.target}) | row / bucket sizes | seq/s | vs pad-to-384 | share of FLOP bound ({bound:.2f}x) "
          f"| rows: speedup (fill) | RSS MiB loaded (x pad) | peak RSS MiB (x pad) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sizes = ", ".join(map(str, r.get("sizes", []))) or "exact"
        fill = f"{r['row_speedup']:.3f}x ({r['fill_384']:.1%})" if "rows" in r else "-"
        rss = f"{r['rss_mib']:.0f} ({r['rss_mib'] / one:.2f}x)" if "rss_mib" in r else "-"
        peak = f"{r['peak_rss_mib']:.0f} ({r['peak_rss_mib'] / one_peak:.2f}x)" if "rss_mib" in r else "-"
        print(f"| {r['arm']} | {sizes} | {r['seq_per_s']:.2f} | {r['vs_pad']:.2f}x | {r['share_of_flop_bound']:.2f} "
              f"| {fill} | {rss} | {peak} |")


if __name__ == "__main__":
    main()
