"""Loading a saved openvino file: engines stored as OpenVINO IR (compiled for the CPU at load, what
archfit saves) against the same engines stored as OpenVINO's compiled blob (imported; what it
saved before, which loads only on the kind of CPU that wrote it). Full-size BERT-base (random
weights: speed and memory only), one bucket, fp32. Each file loaded and run once in a fresh
interpreter (fresh.load_and_run), the two alternating over --rounds rounds.

    .venv/bin/python benchmarks/ir_load.py --rounds 3
writes benchmarks/results/ir_load.json and prints the table for BENCHMARKS.md."""
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
from archfit.cli.bench import cpu_model  # noqa: E402
from archfit.artifact import container  # noqa: E402
from archfit.targets.openvino_engine import as_blob  # noqa: E402
from fresh import load_and_run, scratch_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def as_blobs(path: Path, out: Path) -> Path:
    """`path` with each OpenVINO engine stored as its compiled blob."""
    manifest, files = container.read(path)
    manifest.pop("files")
    return container.write(out, manifest, {n: as_blob(d) if n.endswith(".bin") else d for n, d in files.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tmp = scratch_dir("archfit-ir-load-")
    model, inputs = zoo.build("bert-base")
    module = archfit.trace(model, inputs, "openvino", precision="fp32", check_payoff=False, cache=False)
    files = {"IR (compiled at load)": archfit.save(module, tmp / "ir.archfit")}
    files["compiled blob (imported)"] = as_blobs(files["IR (compiled at load)"], tmp / "blob.archfit")
    torch.save(inputs, tmp / "inputs.pt")
    run = f"inputs = torch.load({str(tmp / 'inputs.pt')!r}, weights_only=True)\nm(**inputs) if isinstance(inputs, dict) else m(*inputs)"
    runs: dict[str, list[dict]] = {k: [] for k in files}
    for r in range(args.rounds):
        for arm in (list(files) if r % 2 == 0 else list(files)[::-1]):
            runs[arm].append(load_and_run(files[arm], run))
            print(arm, runs[arm][-1], flush=True)
    rows = [{"arm": arm, "file_mib": files[arm].stat().st_size / 2**20,
             **{k: statistics.median(x[k] for x in got) for k in got[0]}, "rounds": got} for arm, got in runs.items()]
    (ROOT / "benchmarks" / "results" / "ir_load.json").write_text(
        json.dumps({"cpu": cpu_model(), "model": "bert-base", "rows": rows}, indent=1))
    print(f"\n{cpu_model()}, BERT-base openvino fp32, medians of {args.rounds} fresh processes each\n")
    print("| engines stored as | file MiB | load s | RSS MiB after one call | peak RSS MiB |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['arm']} | {row['file_mib']:.0f} | {row['load_s']:.2f} | {row['rss_mib']:.0f} | "
              f"{row['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
