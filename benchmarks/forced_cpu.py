"""Cost of one op forced to the CPU mid-graph, and what running the host part on one PyTorch
thread saves (core/threads.py): per model, arms interleaved in one process, OpenVINO fp32, batch 1.

    .venv/bin/python benchmarks/forced_cpu.py [MODEL ...]      # default: the peers table's models but DLRM

Arms: the model fully compiled; the same model with one op half-way through forced to the CPU
(the peers benchmark's choice of node), its host part on one torch thread; and that module with
the host part on PyTorch's threads (what archfit did before). The last column is what archfit's
compile-time measurement chose for the module (core/threads.py). Writes benchmarks/results/forced_cpu.json and prints a Markdown table."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import THREADS, _mid_graph_node  # noqa: E402 - the node the peers table forces

from archfit.cli import bench  # noqa: E402
from archfit.core.timing import interleaved_ms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("bert-base", "distilbert-base", "resnet50", "vgg16", "dlrm")


def one(name: str, rounds: int = 3, seconds: float = 2.0) -> dict:
    import archfit
    from archfit import zoo
    from archfit.core.capture import normalize_inputs

    torch.set_num_threads(THREADS)
    model, inputs = zoo.build(name)
    node = _mid_graph_node(model, inputs)
    full = archfit.trace(model, inputs, "openvino", precision="fp32", check_payoff=False)
    # the payoff check on (the default): it also times the host part both ways and records the faster
    forced = archfit.trace(model, inputs, "openvino", precision="fp32", force_cpu=(node,))
    args, kwargs = normalize_inputs(inputs)
    chosen = forced.one_thread is True

    def run_forced(one: bool):
        def call():
            forced.one_thread = one  # switched per call for the comparison
            forced(*args, **kwargs)
        return call

    calls = {"fully compiled": lambda: full(*args, **kwargs),
             "1 op on the CPU, host on one torch thread": run_forced(True),
             "1 op on the CPU, host on PyTorch's threads": run_forced(False)}
    ms = {k: [] for k in calls}
    for _ in range(rounds):
        for k, v in interleaved_ms(calls, seconds).items():
            ms[k].append(v)
    med = {k: sorted(v)[len(v) // 2] for k, v in ms.items()}
    base = med["fully compiled"]
    return {"model": name, "node": node, "chosen_one_thread": chosen, "ms": med,
            "cost": {k: v / base - 1 for k, v in med.items() if k != "fully compiled"}}


def main() -> None:
    names = sys.argv[1:] or list(MODELS)
    out = ROOT / "benchmarks/results/forced_cpu.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in names:
        results[name] = one(name)
        print(name, results[name], flush=True)
        out.write_text(json.dumps(results, indent=1))
    cpu = bench.cpu_model()
    print(f"\nHost: {cpu}, {os.cpu_count()} cores, {THREADS} threads; torch {torch.__version__}\n")
    print("| model | forced node | fully compiled ms | 1 op on CPU, host on one torch thread | "
          "1 op on CPU, host on PyTorch's threads | archfit's choice at compile time |")
    print("|---|---|---|---|---|---|")
    for r in (results[n] for n in names):
        m, c = r["ms"], r["cost"]
        a, b = "1 op on the CPU, host on one torch thread", "1 op on the CPU, host on PyTorch's threads"
        choice = "one thread" if r["chosen_one_thread"] else "PyTorch's threads"
        print(f"| {r['model']} | `{r['node']}` | {m['fully compiled']:.2f} | {m[a]:.2f} ({c[a]:+.1%}) | "
              f"{m[b]:.2f} ({c[b]:+.1%}) | {choice} |")


if __name__ == "__main__":
    main()
