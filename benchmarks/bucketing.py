"""Bucketing benchmark: full-size BERT-base on SQuAD v1.1 lengths (max 384), one process.

Arms, interleaved over rounds on the same requests (batch 1, lengths drawn with a fixed seed from
the SQuAD histogram): archfit with 8 and 4 buckets chosen from the histogram, archfit padding to
384 (one bucket), all on the same backend, and eager PyTorch at each request's exact length.
Also measured: artifact size and peak memory of a loaded artifact (fresh process) per bucket count.

    .venv/bin/python benchmarks/bucketing.py --target onnxruntime --requests 100 --rounds 2
writes benchmarks/results/bucketing-TARGET.json and prints a Markdown table for BENCHMARKS.md."""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import archfit
from archfit import Buckets, zoo
from fresh import load_and_run, scratch_dir  # noqa: E402 - benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
SEQ = {"input_ids": 1, "attention_mask": 1}
MAX = 384


def squad() -> tuple[np.ndarray, list[int]]:
    counts, start = zoo.squad_lengths()  # shipped with archfit (DATA.md)
    counts = np.asarray(counts, dtype=np.float64)
    return np.concatenate([np.zeros(start - 1), counts]), list(range(1, start + len(counts)))


def requests(n: int, seed: int = 0) -> list[dict]:
    hist, lengths = squad()
    rng = np.random.default_rng(seed)
    picked = rng.choice(lengths, size=n, p=hist / hist.sum())
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1000, 30000, (1, int(L)), generator=g),
             "attention_mask": torch.ones(1, int(L), dtype=torch.long)} for L in picked]


def loaded_peak_rss_mib(path: Path, lengths: list[int]) -> float:
    """Peak resident memory of a fresh process that loads the file and runs every bucket once."""
    return load_and_run(path, f"for L in {lengths}:\n"
                              "    m(input_ids=torch.ones(1, L, dtype=torch.long), "
                              "attention_mask=torch.ones(1, L, dtype=torch.long))")["peak_rss_mib"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="onnxruntime")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    model, _ = zoo.build("bert-base")
    model.eval()
    example = {"input_ids": torch.randint(1000, 30000, (1, MAX)), "attention_mask": torch.ones(1, MAX, dtype=torch.long)}
    hist, _ = squad()
    arms: dict[str, torch.nn.Module] = {}
    info: dict[str, dict] = {}
    tmp = scratch_dir("archfit-bench-")
    for label, spec in (("pad to 384", Buckets(SEQ, sizes=(MAX,))),
                        ("4 buckets", Buckets(SEQ, histogram=tuple(hist), max_buckets=4)),
                        ("8 buckets", Buckets(SEQ, histogram=tuple(hist), max_buckets=8))):
        t0 = time.perf_counter()
        module = archfit.trace(model, example, args.target, buckets=spec, check_payoff=False)
        seconds = time.perf_counter() - t0
        path = archfit.save(module, tmp / f"{label.replace(' ', '_')}.archfit")
        arms[label] = module
        info[label] = {"buckets": list(module.sizes), "compile_s": seconds, "file_mib": path.stat().st_size / 2**20,
                       "peak_rss_mib": loaded_peak_rss_mib(path, list(module.sizes)),
                       "expected_speedup_flops": module.choice.speedup if module.choice else 1.0,
                       "ideal_speedup_flops": module.choice.ideal_speedup if module.choice else None,
                       "padding_waste": module.choice.padding_waste if module.choice else None}
        print(label, info[label], flush=True)
    arms["eager, exact lengths"] = model
    reqs = requests(args.requests)
    for module in arms.values():  # warm up every bucket
        with torch.no_grad():
            for r in reqs[:10]:
                module(**r)
    seconds = {k: [] for k in arms}
    for _ in range(args.rounds):
        for label, module in arms.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                for r in reqs:
                    module(**r)
            seconds[label].append(time.perf_counter() - t0)
    pad = min(seconds["pad to 384"])
    ideal = info["8 buckets"]["ideal_speedup_flops"]
    rows = []
    for label in arms:
        best = min(seconds[label])
        i = info.get(label, {})
        rows.append({"arm": label, "seq_per_s": len(reqs) / best, "speedup_vs_pad": pad / best,
                     "share_of_ideal": (pad / best) / ideal, **i})
    result = {"target": args.target, "requests": len(reqs), "rounds": args.rounds, "threads": torch.get_num_threads(),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
              "ideal_speedup_flops": ideal, "rows": rows}
    out = ROOT / "benchmarks" / "results" / f"bucketing-{args.target}.json"
    out.write_text(json.dumps(result, indent=1))
    one = info["pad to 384"]
    print(f"\n| arm ({args.target}) | buckets | seq/s | vs pad-to-384 | share of ideal ({ideal:.2f}x) "
          f"| file MiB (x one bucket) | peak RSS MiB (x one bucket) | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = ", ".join(map(str, r.get("buckets", []))) or "exact"
        size = f"{r['file_mib']:.0f} ({r['file_mib'] / one['file_mib']:.2f}x)" if "file_mib" in r else "-"
        rss = f"{r['peak_rss_mib']:.0f} ({r['peak_rss_mib'] / one['peak_rss_mib']:.2f}x)" if "peak_rss_mib" in r else "-"
        comp = f"{r['compile_s']:.0f}" if "compile_s" in r else "-"
        print(f"| {r['arm']} | {b} | {r['seq_per_s']:.1f} | {r['speedup_vs_pad']:.2f}x | {r['share_of_ideal']:.2f} "
              f"| {size} | {rss} | {comp} |")


if __name__ == "__main__":
    main()
