"""A model nothing of which fits the target: the compiled module against eager PyTorch.

    .venv/bin/python benchmarks/no_engine.py [--rounds 7]

A GRU text classifier (embedding 10,000 x 128, GRU 128 -> 256, linear to 4 classes; random
weights: speed only), 64 token ids, batch 1, traced for openvino: the GRU stays in PyTorch and
the embedding and head are too small to pay for an engine of their own, so the module holds no
engine and runs its host program. Arms interleaved in one process (archfit.cli.bench.run_arms),
after a tiny BERT was compiled in the same process first (the issue saw a 2x loss only then),
and the ratio taken round by round. Writes benchmarks/results/no-engine.json."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archfit  # noqa: E402
from archfit import zoo  # noqa: E402
from archfit.cli.bench import cpu_model, run_arms  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


class GRUText(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10000, 128)
        self.gru = torch.nn.GRU(128, 256, batch_first=True)
        self.fc = torch.nn.Linear(256, 4)

    def forward(self, ids):
        _, h = self.gru(self.emb(ids))
        return self.fc(h[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    bert, inputs = zoo.build("bert-base", tiny=True)
    archfit.trace(bert, inputs, "openvino")  # another model compiled first, as in the process
    torch.manual_seed(0)
    model = GRUText().eval()
    ids = torch.randint(0, 10000, (1, 64))
    compiled = archfit.trace(model, (ids,), "openvino")
    engines = len(compiled.report.partitions)
    arms = {"eager PyTorch": ("fp32", lambda: lambda: model(ids)),
            "archfit openvino (no engine)": ("fp32", lambda: lambda: compiled(ids))}
    results = run_arms(arms, rounds=args.rounds, seconds_per_round=1.0)
    eager, mine = results
    ratio = statistics.median(a / e for a, e in zip(mine.rounds_ms, eager.rounds_ms))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "no-engine.json").write_text(json.dumps(
        {"cpu": cpu_model(), "engines": engines, "ratio": ratio,
         "rows": [{"arm": r.name, "p50_ms": r.p50, "rounds_ms": r.rounds_ms} for r in results]}, indent=1))
    print(f"GRU text classifier, batch 1, 64 ids, {cpu_model()}, {torch.get_num_threads()} threads; "
          f"engines in the compiled module: {engines}; verdict: {compiled.report.verdict}\n")
    print("| arm | p50 ms |\n|---|---|")
    for r in results:
        print(f"| {r.name} | {r.p50:.3f} |")
    print(f"\narchfit / eager, median of the per-round ratios: {ratio:.3f}")


if __name__ == "__main__":
    main()
