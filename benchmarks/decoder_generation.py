"""Decoder-only generation benchmark (issue #45): GPT-2 (124M) and a Llama-architecture model of
about 100M parameters, random weights, prompt 128 tokens, 128 new tokens, greedy, batch 1 and 8.
One process, arms interleaved round by round on the same prompts.

Arms: transformers' eager `generate` (dynamic cache, and its static cache), optimum-intel's
OVModelForCausalLM (stateful OpenVINO, the path Intel recommends; its default precision, and
--weight-format int8), archfit's trace_generate on openvino at fp32, bf16 (where the CPU has
bf16 units) and int8w (int8 weights). Random weights have no meaningful next-token margins, so a
lossy arm's tokens gate is set to agreement >= 0 here (Llama-100m's int8w agreed on 3 of 4
validation prompts): these arms are timed, not judged; int8w's gate is tested on a trained model.

Every call makes exactly the asked tokens (min_new_tokens = max_new_tokens). Per arm and round:
one call generating 1 token (prefill) and one generating 1 + N; decode tokens/s = N * batch /
(t(1 + N) - t(1)); end to end tokens/s = (1 + N) * batch / t(1 + N).

optimum-intel pins transformers < 5.6, so this runs in a second environment holding both
(benchmarks/peer_env.sh makes it: .venv-peers, archfit installed from this checkout):

    bash benchmarks/peer_env.sh && .venv-peers/bin/python benchmarks/decoder_generation.py --rounds 3
writes benchmarks/results/decoder_generation.json and prints the table for BENCHMARKS.md."""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

import archfit
from archfit import zoo
from archfit.cli.bench import cpu_model
from archfit.targets.base import LOSSY

ROOT = Path(__file__).resolve().parents[1]


def _optimum(model, folder: Path, int8: bool):
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    model.save_pretrained(folder)
    quant = OVWeightQuantizationConfig(bits=8) if int8 else None
    return OVModelForCausalLM.from_pretrained(folder, export=True, quantization_config=quant, compile=True,
                                              ov_config={"INFERENCE_NUM_THREADS": "2", "PERFORMANCE_HINT": "LATENCY"})


def _arms(name: str, batch: int, new: int, precisions: list[str], peers: bool, tmp: Path) -> dict:
    model = zoo.build(name)[0].model.eval()
    model.generation_config.pad_token_id = model.config.eos_token_id
    arms = {"eager transformers fp32": model.generate,
            "eager transformers fp32, static cache":
                lambda ids, **kw: model.generate(ids, cache_implementation="static", **kw)}
    if peers:
        for int8 in (False, True):
            label = "optimum-intel OpenVINO " + ("int8 weights" if int8 else "default")
            try:
                arms[label] = _optimum(model, tmp / f"{name}-{int8}", int8).generate
            except Exception as e:  # noqa: BLE001 - a peer that cannot run is a result
                print(f"{label}: {type(e).__name__}: {e}", flush=True)
    g = torch.Generator().manual_seed(1)
    validation = [torch.randint(3, model.config.vocab_size, (n,), generator=g) for n in (17, 64, 100, 128)]
    for precision in precisions:
        t0 = time.perf_counter()
        compiled = archfit.trace_generate(model, "openvino", prompt_buckets=(128,), max_new_tokens=new + 1,
                                          batch_size=batch, precision=precision, validation=validation,
                                          accuracy="tokens:agreement=0" if precision in LOSSY else None,
                                          progress=lambda m: print("  " + m, flush=True))
        print(f"{name}: archfit {precision} compiled in {time.perf_counter() - t0:.0f} s", flush=True)
        arms[f"archfit openvino {precision}"] = compiled.generate
    return model, arms


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="gpt2,llama-100m")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--precisions", default="fp32,bf16,int8w")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-peers", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    n, rows = args.new_tokens, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                model, arms = _arms(name, batch, n, args.precisions.split(","), not args.no_peers, Path(tmp))
                ids = torch.randint(3, model.config.vocab_size, (batch, args.prompt),
                                    generator=torch.Generator().manual_seed(0))
                mask = torch.ones_like(ids)
                with torch.no_grad():
                    want = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n)
                    same = {a: bool(torch.equal(f(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n), want))
                            for a, f in arms.items()}  # also the untimed first call of each arm
                times = {a: ([], []) for a in arms}
                for r in range(args.rounds):
                    order = list(arms)[r % len(arms):] + list(arms)[:r % len(arms)]
                    for a in order:
                        for k, count in enumerate((1, 1 + n)):
                            t0 = time.perf_counter()
                            with torch.no_grad():
                                arms[a](ids, attention_mask=mask, max_new_tokens=count, min_new_tokens=count)
                            times[a][k].append(time.perf_counter() - t0)
                    print(f"{name} batch {batch}: round {r + 1}/{args.rounds} done", flush=True)
                eager = None
                for a, (first, whole) in times.items():
                    t1, tn = statistics.median(first), statistics.median(whole)
                    row = {"model": name, "batch": batch, "arm": a, "prefill_ms": t1 * 1e3, "generate_s": tn,
                           "decode_tokens_per_s": n * batch / (tn - t1), "tokens_per_s": (1 + n) * batch / tn,
                           "same_tokens": same[a]}
                    eager = eager or row
                    row["decode_vs_eager"] = row["decode_tokens_per_s"] / eager["decode_tokens_per_s"]
                    rows.append(row)
                    print(row, flush=True)
    dest = ROOT / "benchmarks" / "results" / "decoder_generation.json"
    earlier = json.loads(dest.read_text())["rows"] if dest.exists() else []  # other models' rows kept
    rows = [r for r in earlier if r["model"] not in args.models.split(",")] + rows
    out = {"machine": cpu_model(), "threads": 2, "prompt": args.prompt, "new_tokens": n,
           "transformers": transformers.__version__, "rows": rows}
    dest.write_text(json.dumps(out, indent=1))
    print(f"\n{cpu_model()}, 2 threads; prompt {args.prompt} tokens, {n} new tokens, greedy\n")
    print("| model | batch | arm | prefill (1 token) ms | decode tokens/s | vs eager | end-to-end tokens/s | "
          "same tokens as eager |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['arm']} | {r['prefill_ms']:.0f} | {r['decode_tokens_per_s']:.1f} | "
              f"{r['decode_vs_eager']:.2f}x | {r['tokens_per_s']:.1f} | {'yes' if r['same_tokens'] else 'no'} |")


if __name__ == "__main__":
    main()
