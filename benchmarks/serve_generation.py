"""Served generation (issue #45): `archfit serve` on a GPT-2 (124M, random weights) generation
file, 32 requests with prompt and output lengths drawn from a fixed distribution, 8 concurrent
clients over HTTP (KServe v2 generate_stream), the same server and file run two ways in one process:

- continuous batching: 8 cache rows, a request joins the running batch at the next step; the
  running requests step on the smallest decode step compiled that holds them (1 or 8 rows; more
  with --step-rows 2 4);
- one generation at a time: 1 cache row (the same file's 1-row decode step), requests queue.

Reports total generated tokens/s, and time to first token (TTFT: request sent to first streamed
token) p50/p90, per arm; arms alternate over rounds.

    .venv/bin/python benchmarks/serve_generation.py --rounds 2
writes benchmarks/results/serve_generation.json (serve_generation-PRECISION.json for another
--precision; -HOST_TAG appended with --host-tag) and prints the table for BENCHMARKS.md."""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import torch

import archfit
from archfit import zoo
from archfit.cli.bench import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def _workload(n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt ids, new tokens) pairs: prompts 16-128 tokens, outputs 16-128 tokens, uniform."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(16, 129, (1,), generator=g))
        new = int(torch.randint(16, 129, (1,), generator=g))
        out.append((torch.randint(3, vocab, (p,), generator=g).tolist(), new))
    return out


def _client(url: str, work: list, results: list, lock: threading.Lock) -> None:
    while True:
        with lock:
            if not work:
                return
            prompt, new = work.pop(0)
        t0 = time.perf_counter()
        first, count = None, 0
        with requests.post(f"http://{url}/v2/models/gpt/generate_stream", stream=True, timeout=600,
                           json={"input_ids": prompt, "max_tokens": new, "min_new_tokens": new}) as r:
            r.raise_for_status()
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("data: "):
                    ids = json.loads(line[6:])["output_ids"]
                    if ids and first is None:
                        first = time.perf_counter() - t0
                    count += len(ids)
        results.append((first, count, time.perf_counter() - t0))


def _run(url: str, workload: list, clients: int) -> dict:
    work, results, lock = list(workload), [], threading.Lock()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_client, args=(url, work, results, lock)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    return {"tokens_per_s": sum(r[1] for r in results) / wall, "wall_s": wall,
            "ttft_p50_ms": statistics.median(ttft) * 1e3, "ttft_p90_ms": ttft[int(0.9 * (len(ttft) - 1))] * 1e3,
            "tokens": sum(r[1] for r in results)}


def _serve(path: Path, slots: int, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "archfit", "serve", f"gpt={path}", "--port", str(port),
                             "--slots", str(slots)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start: {proc.stderr.read() if proc.poll() is not None else 'timeout'}")
        time.sleep(0.2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="gpt2")
    p.add_argument("--precision", default="int8w")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--port", type=int, default=8931)
    p.add_argument("--step-rows", type=int, nargs="*", default=[],
                   help="decode steps compiled beside 1 and --clients rows (the server steps on the smallest "
                        "that holds its running requests)")
    p.add_argument("--host-tag", default="", help="appended to the results file's name (a host kind's beside another's)")
    args = p.parse_args()
    torch.set_num_threads(2)
    model = zoo.build(args.model)[0].model.eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    validation = [torch.randint(3, model.config.vocab_size, (n,), generator=g) for n in (17, 64, 100, 128)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpt.archfit"
        t0 = time.perf_counter()
        module = archfit.trace_generate(model, "openvino", prompt_buckets=(32, 64, 128), max_new_tokens=128,
                                        batch_size=1, slots=args.clients, step_rows=tuple(args.step_rows),
                                        precision=args.precision,
                                        validation=validation, progress=lambda m: print("  " + m, flush=True))
        archfit.save(module, path)
        print(f"compiled in {time.perf_counter() - t0:.0f} s: {module.summary()}", flush=True)
        del module, model
        workload = _workload(args.requests, vocab)
        arms = {f"continuous batching, {args.clients} rows": args.clients, "one generation at a time": 1}
        runs: dict[str, list[dict]] = {a: [] for a in arms}
        for r in range(args.rounds):
            for arm in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                proc = _serve(path, arms[arm], args.port)
                try:
                    runs[arm].append(_run(f"127.0.0.1:{args.port}", workload, args.clients))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
                print(arm, runs[arm][-1], flush=True)
    rows = []
    for arm, results in runs.items():
        rows.append({"arm": arm, **{k: statistics.median(x[k] for x in results) for k in results[0]},
                     "rounds_tokens_per_s": [x["tokens_per_s"] for x in results]})
    base = rows[-1]["tokens_per_s"]
    out = {"machine": cpu_model(), "model": args.model, "precision": args.precision, "requests": args.requests,
           "clients": args.clients, "rows": rows}
    name = ("serve_generation" + ("" if args.precision == "int8w" else f"-{args.precision}")
            + (f"-{args.host_tag}" if args.host_tag else ""))
    (ROOT / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(out, indent=1))
    print(f"\n{cpu_model()}, 2 cores; {args.model} {args.precision}, {args.requests} requests (prompts 16-128 "
          f"tokens, outputs 16-128), {args.clients} concurrent clients, generate_stream\n")
    print("| arm | tokens/s | vs one at a time | TTFT p50 ms | TTFT p90 ms | wall s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['arm']} | {row['tokens_per_s']:.1f} | {row['tokens_per_s'] / base:.2f}x | "
              f"{row['ttft_p50_ms']:.0f} | {row['ttft_p90_ms']:.0f} | {row['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
