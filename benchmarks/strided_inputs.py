"""Inputs as users make them: a compiled module called with a strided (channels-last) image, the
way `torch.from_numpy(hwc).permute(2, 0, 1)[None]` makes one, against the same values contiguous.

    .venv/bin/python benchmarks/strided_inputs.py [--rounds 5]

MobileNetV2 (torchvision, random weights: speed only), batch 1, 224x224, archfit openvino fp32
and OpenVINO direct, arms interleaved in one process (archfit.cli.bench.run_arms). The strided
arms build their input inside the call, as a user's code does per image; "torch copy first" is the
user making it contiguous with torch themselves. archfit copies a strided input with numpy
(targets/base.to_numpy): torch's copy runs on its OpenMP threads, which then spin on the cores the
engine needs. Writes benchmarks/results/strided-inputs.json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archfit  # noqa: E402
from archfit.cli.bench import cpu_model, run_arms  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    import openvino as ov
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    hwc = np.random.default_rng(0).random((224, 224, 3), dtype=np.float32)
    strided = lambda: torch.from_numpy(hwc).permute(2, 0, 1)[None]  # noqa: E731 - as users make an image tensor
    contiguous = strided().contiguous()
    compiled = archfit.trace(model, (contiguous,), "openvino", precision="fp32")
    direct = ov.Core().compile_model(ov.convert_model(model, example_input=contiguous), "CPU",
                                     {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = direct.create_infer_request()
    arms = {
        "archfit openvino fp32, contiguous input": ("fp32", lambda: lambda: compiled(contiguous)),
        "archfit openvino fp32, strided input": ("fp32", lambda: lambda: compiled(strided())),
        "archfit openvino fp32, strided input, torch copy first": (
            "fp32", lambda: lambda: compiled(strided().contiguous())),
        "OpenVINO direct, contiguous input": ("fp32", lambda: lambda: request.infer([contiguous.numpy()])),
        "OpenVINO direct, strided input": ("fp32", lambda: lambda: request.infer([strided().numpy()])),
    }
    results = run_arms(arms, rounds=args.rounds, seconds_per_round=1.0)
    base = next(r for r in results if r.name.endswith("fp32, contiguous input"))
    rows = [{"arm": r.name, "p50_ms": r.p50, "vs_contiguous": r.p50 / base.p50, "rounds_ms": r.rounds_ms,
             "error": r.error} for r in results]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "strided-inputs.json").write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))
    print(f"MobileNetV2, batch 1, 224x224, {cpu_model()}, {torch.get_num_threads()} threads\n")
    print("| arm | p50 ms | time vs archfit contiguous |\n|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['p50_ms']:.2f} | {r['vs_contiguous']:.3f}x |")


if __name__ == "__main__":
    main()
