"""Detectors end to end, full size, one process per model, arms interleaved over rounds:
torchvision SSD300-VGG16 and YOLOv5s (v6.0, 640x640), each with its NMS post-processing.

Arms: eager PyTorch, torch.compile with Inductor, OpenVINO's own torch.compile backend (fp32 and
bf16, precision given explicitly), ONNX Runtime and OpenVINO whole-model conversion (they have
to hold the NMS too), and archfit (network compiled, post-processing on the host) per target
and precision. Batch 1, images/s = 1000 / p50 ms.

    .venv/bin/python benchmarks/detection.py --rounds 3
    .venv/bin/python benchmarks/detection.py --weights shapes --rounds 3

writes benchmarks/results/detection-MODEL[-shapes].json and prints a Markdown table for
BENCHMARKS.md. `--weights random` (the zoo's) scores every box about alike, so bf16 fails the
detection gate there, and the last arm shows the speed bf16 offers ungated; `--weights shapes`
uses weights trained here on synthetic scenes, and a scene as the image (benchmarks/shapes.py;
the first run trains them: ~13 min YOLOv5s, ~36 min SSD300)."""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("ssd300_vgg16", "yolov5s")


def _result_path(name: str, weights: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"detection-{name}{'-shapes' if weights == 'shapes' else ''}.json"


def one(name: str, rounds: int, seconds: float, weights: str, accuracy: str | None) -> dict:
    from archfit import zoo
    from archfit.cli.bench import arms, run_arms

    torch.set_num_threads(2)
    if weights == "shapes":
        from shapes import trained  # noqa: E402 - benchmarks/ is on sys.path when run as a script

        model, inputs = trained(name)
    else:
        model, inputs = zoo.build(name)
    # archfit's arms validate with the detector's task gate (boxes, labels, recall, precision)
    accuracy = accuracy or zoo.get(name).accuracy
    builders = arms(model, inputs, targets=("openvino", "onnxruntime"), precisions=("fp32", "bf16"),
                    accuracy=accuracy)
    builders.pop("eager PyTorch bf16 autocast", None)
    if "archfit openvino bf16" in builders and weights == "random":  # the speed bf16 offers, whatever the gate says of these weights
        from archfit.cli.bench import _archfit

        builders["archfit openvino bf16, not validated (speed only)"] = (
            "bf16", lambda: _archfit(model, inputs, "openvino", "bf16", validate=False)[0])
    results = run_arms(builders, rounds=rounds, seconds_per_round=seconds, log=lambda m: print(m, flush=True))
    eager = next(r for r in results if r.name == "eager PyTorch")
    rows = [{"arm": r.name, "precision": r.precision, "p50_ms": r.p50, "p90_ms": r.p90,
             "images_per_s": 1e3 / r.p50 if r.samples_ms else None,
             "vs_eager": eager.p50 / r.p50 if r.samples_ms else None, "build_s": r.build_seconds, "error": r.error,
             **r.extra}
            for r in results]
    return {"model": name, "weights": weights, "gate": accuracy, "machine": platform.processor(), "threads": 2,
            "rows": rows, "split": split(model, inputs, accuracy)}


def split(model, inputs, accuracy: str | None, calls: int = 7) -> dict:
    """Median ms inside the compiled regions (or the same submodules in eager PyTorch) and in
    the whole call: the rest is the model's host Python (pre-processing, score filter, NMS)."""
    import time

    import archfit

    compiled = archfit.trace(model, inputs, "openvino", precision="fp32", accuracy=accuracy)
    out: dict = {"regions": list(compiled.regions)}
    for label, whole, parts in (("eager", model, [model.get_submodule(p) for p in compiled.regions]),
                                ("archfit openvino fp32", compiled, list(compiled.regions.values()))):
        inside, total = [], []
        spans: list[float] = []
        hooks = [m.register_forward_pre_hook(lambda m, a: spans.append(-time.perf_counter())) for m in parts]
        hooks += [m.register_forward_hook(lambda m, a, o: spans.__setitem__(-1, spans[-1] + time.perf_counter()))
                  for m in parts]
        with torch.no_grad():
            whole(*inputs)
            for _ in range(calls):
                spans.clear()
                t0 = time.perf_counter()
                whole(*inputs)
                total.append((time.perf_counter() - t0) * 1e3)
                inside.append(sum(spans) * 1e3)
        for h in hooks:
            h.remove()
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        out[label] = {"regions_ms": med(inside), "total_ms": med(total), "host_ms": med(total) - med(inside)}
    return out


def table(result: dict) -> str:
    weights = {"random": "random weights", "shapes": "weights trained on synthetic shapes, a shapes scene"}
    lines = [f"\n{result['model']}, {weights[result.get('weights', 'random')]}, gate {result.get('gate')!r}, "
             "batch 1, 2 threads\n", "| arm | precision | p50 ms | p90 ms | images/s | vs eager |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["error"]:
            error = re.sub(r"\x1b\[[0-9;]*m|\[[0-9]+m", "", r["error"])  # torch.onnx colours its messages
            lines.append(f"| {r['arm']} | {r['precision']} | failed: {error[:90]} | | | |")
        else:
            lines.append(f"| {r['arm']} | {r['precision']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                         f"{r['images_per_s']:.1f} | {r['vs_eager']:.2f}x |")
    lines.append("")
    for r in result["rows"]:
        if r.get("gate"):
            lines.append(f"- {r['arm']}: {r['gate']}")
        if r.get("chosen"):
            lines.append(f"- {r['arm']} chose {r['chosen']} (engines on {r['engines_on']}) over: {r['alternatives']}")
    sp = result["split"]
    e, a = sp["eager"], sp["archfit openvino fp32"]
    lines.append(f"\nInside the compiled regions ({', '.join(sp['regions'])}): eager {e['regions_ms']:.1f} ms, "
                 f"archfit openvino fp32 {a['regions_ms']:.1f} ms ({e['regions_ms'] / a['regions_ms']:.2f}x); host "
                 f"Python (pre-processing, score filter, NMS): {e['host_ms']:.1f} ms eager, {a['host_ms']:.1f} ms "
                 f"with archfit.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--weights", choices=("random", "shapes"), default="random")
    p.add_argument("--accuracy", help="the gate archfit validates with (default: the zoo entry's, 'detection')")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child process: one model
    args = p.parse_args()
    if args.one:
        out = one(args.one, args.rounds, args.seconds, args.weights, args.accuracy)
        _result_path(args.one, args.weights).write_text(json.dumps(out, indent=1))
        return
    for name in args.models.split(","):  # a fresh process per model: no arm inherits another's memory
        subprocess.run([sys.executable, __file__, "--one", name, "--rounds", str(args.rounds),
                        "--seconds", str(args.seconds), "--weights", args.weights]
                       + (["--accuracy", args.accuracy] if args.accuracy else []), check=True)
        print(table(json.loads(_result_path(name, args.weights).read_text())))


if __name__ == "__main__":
    main()
