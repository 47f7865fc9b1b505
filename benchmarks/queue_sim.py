"""What p99/p50 a FIFO queue gives at 80% utilization with Poisson arrivals, whatever the server:
the floor 'p99 <= 3x p50 at 80% load' of the serving benchmark, checked against queueing alone.

    .venv/bin/python benchmarks/queue_sim.py

Service time per request: constant, or the request's SQuAD length (+20 tokens of fixed cost);
one or two servers; and a batch server whose call takes every waiting request up to a capacity
at a constant cost (a packed row). A simulation, not a measurement."""
from __future__ import annotations

import heapq
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src/archfit/zoo/data/squad_v1_bert_lengths.json"


def fifo(service: list[float], rho: float, servers: int) -> float:
    lam = rho * servers / (sum(service) / len(service))
    t, free, resp = 0.0, [0.0] * servers, []
    for s in service:
        t += random.expovariate(lam)
        start = max(t, heapq.heappop(free))
        heapq.heappush(free, start + s)
        resp.append(start + s - t)
    resp.sort()
    return resp[int(len(resp) * 0.99)] / resp[len(resp) // 2]


def batches(capacity: int, rho: float, n: int = 200_000) -> float:
    lam, t, arrivals = rho * capacity, 0.0, []
    for _ in range(n):
        t += random.expovariate(lam)
        arrivals.append(t)
    i, now, resp = 0, 0.0, []
    while i < n:
        now = max(now, arrivals[i])
        j = i
        while j < n and j - i < capacity and arrivals[j] <= now:
            j += 1
        now += 1.0
        resp += [now - a for a in arrivals[i:j]]
        i = j
    resp.sort()
    return resp[int(len(resp) * 0.99)] / resp[len(resp) // 2]


def main() -> None:
    random.seed(0)
    d = json.loads(DATA.read_text())
    lengths = random.choices(range(d["lengths_start_at"], d["lengths_start_at"] + len(d["counts"])),
                             weights=d["counts"], k=200_000)
    print("p99/p50 at 80% utilization, Poisson arrivals")
    for servers in (1, 2):
        print(f"  FIFO, {servers} server(s): constant service {fifo([1.0] * len(lengths), 0.8, servers):.2f}, "
              f"SQuAD-length service {fifo([n + 20.0 for n in lengths], 0.8, servers):.2f}")
    for cap in (1, 2, 3, 4, 8):
        print(f"  batch server, up to {cap} requests per call at a constant cost: {batches(cap, 0.8):.2f}")


if __name__ == "__main__":
    main()
