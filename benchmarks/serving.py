"""Serving load test: full-size BERT-base behind HTTP, requests with SQuAD v1.1 lengths, a load
generator in a second process on loopback, arms interleaved.

Arms (every one answers the same Open Inference Protocol requests with last_hidden_state as
binary data, so protocol work is alike):
  archfit serve, buckets   `archfit serve` on a file with 4 buckets chosen from the SQuAD
                           histogram, batch 1 (one process, both cores)
  ..., --streams 2         the same file served with two engine streams: two batches at once,
                           one core each (OpenVINO NUM_STREAMS 2)
  archfit serve, packed    `archfit serve` on a packed file, 4 row lengths chosen from the
                           histogram: queued requests are packed together, one engine call's
                           row at a time (each request answered when its row is)
  ..., packed, --streams 2 the packed file with two engine streams: two rows at once
  Ray Serve peers          2 replicas x 1 thread (OpenVINO unpinned: pinned, both replicas
                           share one core), @serve.batch(max_batch_size=4, 5 ms), as a
                           user would write them: eager PyTorch padded to 384 (the TorchServe-
                           style handler), eager PyTorch at the batch's longest length, OpenVINO
                           direct (ov.convert_model) padded to 384, OpenVINO direct with a bounded
                           dynamic length (the batch padded to its longest)

Rounds: for each round, for 1, 8 and 32 concurrent clients, each arm in rotated order runs for
--seconds; a cell's figures pool its rounds. Then a soak of --soak-seconds against the archfit
arm with the most throughput at 32 clients, at 80% of that throughput (Poisson arrivals): the
server's resident memory sampled every 10 s, errors, p50/p99.

    .venv/bin/python benchmarks/serving.py                 # full size, ~35 min
    .venv/bin/python benchmarks/serving.py --tiny --seconds 3 --soak-seconds 10   # smoke run

--scenario mlperf measures instead as MLPerf Inference's scenarios do, every arm alike: offline
throughput (a closed loop of the most clients, --seconds), then the server scenario, the highest
Poisson arrival rate whose p99 latency stays within --p99-ms, found by bisection between 0 and the
offline rate (--search-steps points of --point-seconds each, 60 s as MLPerf's minimum), and its
p50/p99; the soak runs at 90% of the best archfit arm's server rate.

    .venv/bin/python benchmarks/serving.py --scenario mlperf --precision bf16 --soak-seconds 600   # ~60 min
    .venv/bin/python benchmarks/serving.py --scenario mlperf --tiny --seconds 3 --point-seconds 4 \
        --search-steps 2 --soak-seconds 5                    # smoke run

writes benchmarks/results/serving.json and prints the Markdown tables for BENCHMARKS.md."""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from fresh import scratch_dir  # noqa: E402 - benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
MAX = 384
VOCAB = 30000  # token ids drawn below this (the tiny model's vocabulary is smaller: --tiny lowers it)
BUCKETS, PACKED = "archfit serve, 4 buckets", "archfit serve, packed, 4 row lengths"
BUCKETS_2 = "archfit serve, 4 buckets, --streams 2"
PACKED_2 = "archfit serve, packed, --streams 2"
OUTPUT = [{"name": "last_hidden_state", "parameters": {"binary_data": True}}]


# -- the load generator (a second process: no torch, no models) -----------------------------------
def body(length: int, seed: int, vocab: int) -> bytes:
    rng = random.Random(seed)
    ids = [rng.randrange(vocab // 30, vocab) for _ in range(length)]
    return json.dumps({"inputs": [
        {"name": "input_ids", "shape": [1, length], "datatype": "INT64", "data": ids},
        {"name": "attention_mask", "shape": [1, length], "datatype": "INT64", "data": [1] * length}],
        "outputs": OUTPUT}).encode()


def closed_loop(port: int, path: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` threads, each sending the next request as soon as its last is answered."""
    lock, latencies, errors, nxt = threading.Lock(), [], [], [0]
    stop = time.perf_counter() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while time.perf_counter() < stop:
            with lock:
                b = bodies[nxt[0] % len(bodies)]
                nxt[0] += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, b, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException) as e:
                ok, r = False, e
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            with lock:
                (latencies if ok else errors).append(time.perf_counter() - t0 if ok else str(getattr(r, "status", r)))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"seconds": time.perf_counter() - t0, "latencies": latencies, "errors": errors}


def open_loop(port: int, path: str, bodies: list[bytes], rate: float, seconds: float, pid: int | None) -> dict:
    """Poisson arrivals at `rate`/s for `seconds`; the server's RSS sampled every 10 s (given its pid)."""
    from concurrent.futures import ThreadPoolExecutor

    latencies, errors, rss = [], [], []
    local = threading.local()

    def one(b):
        t0 = time.perf_counter()
        for attempt in (1, 2):
            fresh = not hasattr(local, "conn")
            if fresh:
                local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            try:
                local.conn.request("POST", path, b, {"Content-Type": "application/json"})
                r = local.conn.getresponse()
                r.read()
                (latencies.append(time.perf_counter() - t0) if r.status == 200 else errors.append(r.status))
                return
            except (OSError, http.client.HTTPException) as e:
                del local.conn
                # a kept-alive connection the server closed while this thread was idle (uvicorn
                # closes them after 5 s) fails before the request reaches it: retry once on a new one
                if fresh or not isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    errors.append(f"{type(e).__name__}: {e}")
                    return

    rng = np.random.default_rng(1)
    start = time.perf_counter()
    next_sample, i = start, 0
    with ThreadPoolExecutor(64) as pool:
        t = start
        while t - start < seconds:
            t += rng.exponential(1 / rate)
            while time.perf_counter() < t:
                now = time.perf_counter()
                if pid is not None and now >= next_sample:
                    rss.append((round(now - start, 1), rss_mib(pid)))
                    next_sample += 10
                time.sleep(min(0.01, max(0.0, t - time.perf_counter())))
            pool.submit(one, bodies[i % len(bodies)])
            i += 1
    if pid is not None:
        rss.append((round(time.perf_counter() - start, 1), rss_mib(pid)))
    return {"sent": i, "latencies": latencies, "errors": errors, "rss": rss}


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (a server's worker threads share it)."""
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * 4096 / 2**20
        except OSError:
            pass
    return total


def load_main(spec: dict) -> None:
    bodies = [body(n, i, spec["vocab"]) for i, n in enumerate(spec["lengths"])]
    if spec["mode"] == "closed":
        result = closed_loop(spec["port"], spec["path"], bodies, spec["clients"], spec["seconds"])
    else:
        result = open_loop(spec["port"], spec["path"], bodies, spec["rate"], spec["seconds"], spec.get("pid"))
    print(json.dumps(result))


def drive(spec: dict) -> dict:
    spec = {"vocab": VOCAB} | spec
    out = subprocess.run([sys.executable, __file__, "--load", json.dumps(spec)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the peers on Ray Serve ------------------------------------------------------------------
class Peer:
    """A Ray Serve replica as a user would write it: @serve.batch around an eager or OpenVINO model."""

    def __init__(self, kind: str, pad_to_max: bool, ir: str | None, tiny: bool, max_len: int, precision: str = "fp32"):
        import torch

        torch.set_num_threads(1)
        self.pad_to_max, self.kind, self.max_len, self.bf16 = pad_to_max, kind, max_len, precision == "bf16"
        if kind == "eager":
            from archfit import zoo

            torch.manual_seed(0)
            self.model = zoo.build("bert-base", tiny=tiny)[0].eval()
        else:
            import openvino as ov

            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(ir), "CPU", {
                "INFERENCE_PRECISION_HINT": "bf16" if self.bf16 else "f32", "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": 1,
                # unpinned: OpenVINO pins to cores by default, and two replicas would pin to the same one
                "ENABLE_CPU_PINNING": False})

    def compute(self, ids_list):
        import torch

        width = self.max_len if self.pad_to_max else max(t.shape[1] for t in ids_list)
        ids = torch.zeros(len(ids_list), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(ids_list):
            ids[i, :t.shape[1]] = t[0]
            mask[i, :t.shape[1]] = 1
        if self.kind == "eager":
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        else:
            out = torch.from_numpy(self.compiled([ids.numpy(), mask.numpy()])[0])
        return [out[i:i + 1, :t.shape[1]].contiguous() for i, t in enumerate(ids_list)]

    async def __call__(self, request):
        from starlette.responses import Response

        from archfit.serve.protocol import decode, encode

        req = decode(await request.body(), request.headers.get("inference-header-content-length"))
        out = await self.batch(req.inputs["input_ids"])
        content, headers = encode("bert", req, {"last_hidden_state": out})
        return Response(content, headers=headers)


def batched_peer():
    """The peer class with Ray's own batcher around compute (defined once Ray is imported)."""
    from ray import serve

    class BatchedPeer(Peer):
        @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)
        async def batch(self, ids_list):
            return self.compute(ids_list)

    return BatchedPeer


def start_peers(ir_pad: str, ir_dyn: str, tiny: bool, port: int, precision: str = "fp32") -> dict[str, str]:
    import ray
    from ray import serve

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             _temp_dir=str(scratch_dir("ray-")))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    peers = {"Ray Serve + eager, pad to 384 (TorchServe-style)": ("eager", True, None),
             "Ray Serve + eager, batch's longest": ("eager", False, None),
             "Ray Serve + OpenVINO direct, pad to 384": ("ov", True, ir_pad),
             "Ray Serve + OpenVINO direct dynamic": ("ov", False, ir_dyn)}
    paths = {}
    cls = batched_peer()
    for i, (label, args) in enumerate(peers.items()):
        dep = serve.deployment(cls, name=f"peer{i}", num_replicas=2, max_ongoing_requests=64,
                               ray_actor_options={"num_cpus": 1})
        serve.run(dep.bind(*args, tiny, MAX, precision), name=f"peer{i}", route_prefix=f"/peer{i}")
        paths[label] = f"/peer{i}/v2/models/bert/infer"
        print("started", label, flush=True)
    return paths


# -- the orchestrator --------------------------------------------------------------------------
def compile_files(tiny: bool, tmp: Path, precision: str = "fp32") -> tuple[dict[str, Path], str, str]:
    import warnings

    import openvino as ov
    import torch

    import archfit
    from archfit import Buckets, Packing, zoo

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bucketing import SEQ, squad

    torch.manual_seed(0)
    model, _ = zoo.build("bert-base", tiny=tiny)
    model.eval()
    hist, _ = squad()
    example = {"input_ids": torch.randint(VOCAB // 30, VOCAB, (2, MAX)),
               "attention_mask": torch.ones(2, MAX, dtype=torch.long)}
    files = {}
    t0 = time.perf_counter()
    one = {k: v[:1] for k, v in example.items()}
    spec = Buckets(SEQ, sizes=(64, MAX)) if tiny else Buckets(SEQ, histogram=tuple(hist), max_buckets=4)
    m = archfit.trace(model, one, "openvino", buckets=spec, check_payoff=False, precision=precision)
    files[BUCKETS] = archfit.save(m, tmp / "buckets.archfit")
    print("buckets", m.sizes, f"{time.perf_counter() - t0:.0f} s", flush=True)
    del m
    sizes = dict(sizes=(64, MAX)) if tiny else dict(histogram=tuple(hist), max_sizes=4)
    m = archfit.trace(model, one, "openvino", precision=precision,
                      packing=Packing(MAX, outputs=("last_hidden_state",), lookahead=64, **sizes))
    print("packed rows", m.spec.sizes, flush=True)
    files[PACKED] = archfit.save(m, tmp / "packed.archfit")
    del m
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, dims in (("pad", [-1, MAX]), ("dyn", [-1, ov.Dimension(1, MAX)])):
            shape = ov.PartialShape(dims)
            converted = ov.convert_model(model, example_input=example, input=[
                ("input_ids", shape, ov.Type.i64), ("attention_mask", shape, ov.Type.i64)])
            ov.save_model(converted, str(tmp / f"{name}.xml"))
    return files, str(tmp / "pad.xml"), str(tmp / "dyn.xml")


def start_archfit(path: Path, port: int, streams: int = 1) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "archfit", "serve", f"bert={path}", "--port", str(port),
                             "--max-queue", "512", "--streams", str(streams)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"archfit serve did not start: {proc.stderr.read()}")
        time.sleep(0.5)


def pct(values, q):
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def server_scenario(label: str, port: int, path: str, lengths: list[int], args) -> dict:
    """MLPerf's offline and server scenarios for one arm: the offline rate (a closed loop of the
    most clients), then the highest Poisson rate whose p99 is within args.p99_ms with no errors,
    by bisection over [0, offline]."""
    clients = max(int(c) for c in args.clients.split(","))
    res = drive({"mode": "closed", "port": port, "path": path, "lengths": lengths, "clients": clients,
                 "seconds": args.seconds})
    offline = len(res["latencies"]) / res["seconds"]
    print(f"{label}: offline {offline:.2f} req/s", flush=True)
    lo, hi, best, points = 0.0, offline, None, []
    for _ in range(args.search_steps):
        rate = (lo + hi) / 2
        res = drive({"mode": "open", "port": port, "path": path, "lengths": lengths, "rate": rate,
                     "seconds": args.point_seconds})  # no pid: a point samples no server's memory
        p50, p99 = pct(res["latencies"], 50), pct(res["latencies"], 99)
        ok = not res["errors"] and res["latencies"] and p99 <= args.p99_ms
        points.append({"rate": rate, "p50_ms": p50, "p99_ms": p99, "answered": len(res["latencies"]),
                       "errors": len(res["errors"]), "ok": bool(ok)})
        print(f"{label}: {rate:.2f} req/s -> p50 {p50:.0f} ms, p99 {p99:.0f} ms, {len(res['errors'])} errors: "
              f"{'within' if ok else 'over'} the bound", flush=True)
        if ok:
            lo, best = rate, points[-1]
        else:
            hi = rate
    return {"arm": label, "offline_req_per_s": offline, "server_req_per_s": best["rate"] if best else 0.0,
            "p50_ms": best["p50_ms"] if best else float("nan"), "p99_ms": best["p99_ms"] if best else float("nan"),
            "points": points}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help="tiny BERT: a smoke run of the harness")
    ap.add_argument("--seconds", type=float, default=25.0, help="per arm, concurrency and round")
    ap.add_argument("--rounds", type=int, default=2, help="0: no load table and no peers, the soak alone")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--bucket-streams", action="store_true",
                    help="serve the bucketed file with --streams 2 instead of the packed file")
    ap.add_argument("--soak-seconds", type=float, default=300.0)
    ap.add_argument("--requests", type=int, default=400, help="distinct requests (SQuAD lengths, fixed seed)")
    ap.add_argument("--scenario", choices=("closed", "mlperf"), default="closed",
                    help="closed: client counts (the table above); mlperf: offline and server scenarios")
    ap.add_argument("--p99-ms", type=float, default=1000.0, help="mlperf: the server scenario's latency bound")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="every arm's: archfit's files, OpenVINO's inference precision, eager's autocast")
    ap.add_argument("--point-seconds", type=float, default=60.0, help="mlperf: each rate tried")
    ap.add_argument("--search-steps", type=int, default=4, help="mlperf: rates tried per arm (bisection)")
    args = ap.parse_args()
    if args.load:
        return load_main(json.loads(args.load))
    global VOCAB, MAX
    if args.tiny:  # the tiny model has 500 ids and 130 positions
        VOCAB, MAX = 500, 128
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bucketing import squad

    hist, lengths_axis = squad()
    lengths = [min(MAX, int(n)) for n in np.random.default_rng(0).choice(lengths_axis, size=args.requests,
                                                                         p=hist / hist.sum())]
    tmp = scratch_dir("archfit-serving-")
    files, ir_pad, ir_dyn = compile_files(args.tiny, tmp, args.precision)
    procs, paths, ports = {}, {}, {}
    # four archfit servers beside the eight Ray replicas exceed 24 GiB: --bucket-streams swaps the
    # packed file's two-stream arm for the bucketed file's
    servers = [(BUCKETS, files[BUCKETS], 1), (PACKED, files[PACKED], 1),
               (BUCKETS_2, files[BUCKETS], 2) if args.bucket_streams else (PACKED_2, files[PACKED], 2)]
    for i, (label, path, streams) in enumerate(servers):
        ports[label] = 18100 + i
        procs[label] = start_archfit(path, ports[label], streams)
        paths[label] = "/v2/models/bert/infer"
        print("started", label, flush=True)
    ray_port = 18200
    if args.rounds > 0:  # --rounds 0: the soak alone, no peers
        for label, path in start_peers(ir_pad, ir_dyn, args.tiny, ray_port, args.precision).items():
            ports[label], paths[label] = ray_port, path
    arms = list(paths)
    for label in arms:  # warm-up: every engine shape compiled lazily is touched before timing
        drive({"mode": "closed", "port": ports[label], "path": paths[label], "lengths": lengths[:16], "clients": 4,
               "seconds": 3 if not args.tiny else 1})
    if args.scenario == "mlperf":
        return mlperf(args, arms, ports, paths, procs, lengths)
    levels = [int(c) for c in args.clients.split(",")]
    cells: dict = {(a, c): {"latencies": [], "errors": [], "seconds": 0.0, "answered": 0} for a in arms for c in levels}
    order = list(arms)
    for rnd in range(args.rounds):
        for c in levels:
            order = order[1:] + order[:1]
            for label in order:
                res = drive({"mode": "closed", "port": ports[label], "path": paths[label], "lengths": lengths,
                             "clients": c, "seconds": args.seconds})
                cell = cells[(label, c)]
                cell["latencies"] += res["latencies"]
                cell["errors"] += res["errors"]
                cell["seconds"] += res["seconds"]
                print(f"round {rnd + 1} clients {c:2d} {label}: {len(res['latencies']) / res['seconds']:.2f} req/s, "
                      f"{len(res['errors'])} errors", flush=True)
    rows = []
    for (label, c), cell in cells.items():
        if not cell["seconds"]:
            continue
        rows.append({"arm": label, "clients": c, "req_per_s": len(cell["latencies"]) / cell["seconds"],
                     "p50_ms": pct(cell["latencies"], 50), "p99_ms": pct(cell["latencies"], 99),
                     "answered": len(cell["latencies"]), "errors": len(cell["errors"]),
                     "error_kinds": sorted(set(map(str, cell["errors"])))[:5]})
    soak = None
    if args.soak_seconds > 0:
        # the archfit arm with the most throughput at the most clients, at 80% of the rate it sustains there
        top = sorted((r for r in rows if r["arm"].startswith("archfit") and r["clients"] == max(levels)),
                     key=lambda r: -r["req_per_s"])
        label = top[0]["arm"] if top else BUCKETS
        if top:
            best = top[0]["req_per_s"]
        else:
            res = drive({"mode": "closed", "port": ports[label], "path": paths[label], "lengths": lengths,
                         "clients": max(levels), "seconds": 60})
            best = len(res["latencies"]) / res["seconds"]
        soak = run_soak(label, ports[label], paths[label], procs[label].pid, lengths, best, 0.8, args.soak_seconds)
    stop(procs)
    result = machine() | {"tiny": args.tiny, "seconds": args.seconds, "rounds": args.rounds,
                          "requests": args.requests, "rows": rows, "soak": soak}
    name = "serving-tiny" if args.tiny else "serving" if args.rounds else "serving-soak"
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\n{result['machine']}\n")
    print("| arm | clients | req/s | p50 ms | p99 ms | answered | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["clients"], -r["req_per_s"])):
        print(f"| {r['arm']} | {r['clients']} | {r['req_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
              f"| {r['answered']} | {r['errors']} |")
    if soak:
        print_soak(soak, args.soak_seconds)


def run_soak(label: str, port: int, path: str, pid: int, lengths: list[int], rate: float, share: float,
             seconds: float) -> dict:
    """Poisson arrivals at share x rate for `seconds` against one arm: errors, p50/p99, the server's
    resident memory in the first and the last fifth of the run."""
    res = drive({"mode": "open", "port": port, "path": path, "lengths": lengths, "rate": share * rate,
                 "seconds": seconds, "pid": pid})
    rss = [m for _, m in res["rss"]]
    minute = max(1, len(rss) // 5)
    soak = {"arm": label, "saturated_req_per_s": rate, "rate": share * rate, "sent": res["sent"],
            "answered": len(res["latencies"]), "errors": len(res["errors"]),
            "error_kinds": sorted(set(map(str, res["errors"])))[:5], "p50_ms": pct(res["latencies"], 50),
            "p99_ms": pct(res["latencies"], 99), "rss": res["rss"], "rss_first_mib": float(np.mean(rss[:minute])),
            "rss_last_mib": float(np.mean(rss[-minute:]))}
    print("soak", {k: v for k, v in soak.items() if k != "rss"}, flush=True)
    return soak


def print_soak(soak: dict, seconds: float) -> None:
    print(f"\nsoak: {soak['rate']:.2f} req/s for {seconds:.0f} s: {soak['answered']}/{soak['sent']} "
          f"answered, {soak['errors']} errors, p50 {soak['p50_ms']:.0f} ms, p99 {soak['p99_ms']:.0f} ms, RSS first "
          f"minute {soak['rss_first_mib']:.0f} MiB, last minute {soak['rss_last_mib']:.0f} MiB "
          f"({soak['rss_last_mib'] / soak['rss_first_mib'] - 1:+.1%})")


def stop(procs: dict) -> None:
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
        p.wait(60)
    import ray

    ray.shutdown()


def machine() -> dict:
    import torch

    from archfit.cli.bench import cpu_model

    return {"machine": f"{cpu_model()}, {os.cpu_count()} cores", "platform": platform.platform(),
            "torch": torch.__version__}


def mlperf(args, arms: list[str], ports: dict, paths: dict, procs: dict, lengths: list[int]) -> None:
    """Every arm's offline and server scenario (server_scenario), arms in turn; the soak at 90% of the
    best archfit arm's server rate; results/serving-mlperf.json and the table."""
    rows = [server_scenario(label, ports[label], paths[label], lengths, args) for label in arms]
    soak = None
    served = sorted((r for r in rows if r["arm"].startswith("archfit")), key=lambda r: -r["server_req_per_s"])
    if args.soak_seconds > 0 and served and served[0]["server_req_per_s"] > 0:
        label = served[0]["arm"]
        soak = run_soak(label, ports[label], paths[label], procs[label].pid, lengths, served[0]["server_req_per_s"],
                        0.9, args.soak_seconds)
    stop(procs)
    result = machine() | {"tiny": args.tiny, "scenario": "mlperf", "precision": args.precision, "p99_bound_ms": args.p99_ms,
                          "point_seconds": args.point_seconds, "offline_seconds": args.seconds,
                          "requests": args.requests, "rows": rows, "soak": soak}
    name = f"serving-mlperf-{args.precision}" + ("-tiny" if args.tiny else "")
    (ROOT / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(f"\n{result['machine']}; server scenario: p99 <= {args.p99_ms:.0f} ms, points of "
          f"{args.point_seconds:.0f} s\n")
    print("| arm | offline req/s | server req/s (p99 bound) | p50 ms | p99 ms | rates tried |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["server_req_per_s"]):
        tried = ", ".join(f"{p['rate']:.2f}{'' if p['ok'] else ' over'}" for p in r["points"])
        print(f"| {r['arm']} | {r['offline_req_per_s']:.2f} | {r['server_req_per_s']:.2f} | {r['p50_ms']:.0f} "
              f"| {r['p99_ms']:.0f} | {tried} |")
    if soak:
        print_soak(soak, args.soak_seconds)


if __name__ == "__main__":
    main()
