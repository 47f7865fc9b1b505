"""The fp32 linear edits of a target against the same target without them (the program as the
model writes it, which is what the backend's own converter hands it too), with the direct peers
beside on whole models.

- openvino (default): OpenVINO's FullyConnected kernels by rows (targets/lowering.gemv_relu_apart
  and gemm_clamped);
- onnxruntime: rows padded where they alias in MLAS's kernel (lowering.linear_rows_unaliased).

    .venv/bin/python benchmarks/fc_kernels.py [--target openvino] [--rounds 6] [--seconds 1.0] [MODEL ...]

Part one, single linears (a ReLU after some): the time of a call both ways (and for openvino the
kernel each FullyConnected ran on). Part two, whole models from the zoo (default: openvino
bert-base, distilbert-base, vgg16; onnxruntime bert-base, distilbert-base) at batch 1, fp32. Arms
interleaved over rounds in one process; the ratio is the paired median of the rounds' ratios.
Writes benchmarks/results/fc_kernels.json (openvino) or fc_kernels-onnxruntime.json.

    .venv/bin/python benchmarks/fc_kernels.py --dynamic [--rounds 8] [--seconds 3]

instead times openvino's engine for a range of lengths (BERT-base, `Packing(strategy="dynamic")`,
lengths 2..384 in one engine, OpenVINO's bounded dynamic shapes), whose linears take the edits
by the most rows of the range, on eight requests of SQuAD-like lengths a call; writes
fc_kernels-dynamic.json."""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# per target: rows, in features, out features, ReLU after
SHAPES = {"openvino": [(1, 25088, 4096, True), (1, 4096, 4096, True), (8, 4096, 4096, True), (16, 4096, 4096, True),
                       (128, 768, 768, False), (128, 3072, 768, False), (128, 768, 3072, False)],
          # 11 rows and 768 in features: left as written, timed as the control
          "onnxruntime": [(11, 1024, 1024, False), (12, 1024, 1024, False), (128, 1024, 1024, False),
                          (128, 3072, 768, False), (128, 4096, 1024, False), (384, 1024, 4096, False),
                          (128, 2048, 512, False), (128, 768, 768, False)]}
MODELS = {"openvino": ["bert-base", "distilbert-base", "vgg16"], "onnxruntime": ["bert-base", "distilbert-base"]}


class _Linear(torch.nn.Module):
    def __init__(self, k: int, n: int, relu: bool):
        super().__init__()
        self.fc, self.relu = torch.nn.Linear(k, n), relu

    def forward(self, x):
        y = self.fc(x)
        return torch.relu(y) if self.relu else y


@contextlib.contextmanager
def _edits(target: str, on: bool):
    """The target with or without its fp32 linear edits."""
    import importlib

    module = importlib.import_module(f"archfit.targets.{target}")
    keep = module.linear_edits
    module.linear_edits = keep if on else (lambda: False)  # the target's own switch (AVX2-only CPUs)
    try:
        yield
    finally:
        module.linear_edits = keep


def _compiled(model, inputs, target: str, on: bool):
    import archfit

    with _edits(target, on):
        # min_partition_size: a lone linear is a partition too
        return archfit.trace(model, inputs, target, precision="fp32", check_payoff=False, cache=False,
                             min_partition_size=1)


def _kernels(module) -> list[str]:
    from archfit.core.engines import EngineModule

    return [kernel for m in module.modules() if isinstance(m, EngineModule) and hasattr(m.engine, "layers")
            for kind, kernel in m.engine.layers() if kind == "FullyConnected"]


def _timed(arms: dict, base: str, rounds: int, seconds: float) -> dict:
    from archfit.core.timing import interleaved_rounds

    with torch.no_grad():
        looks = interleaved_rounds(arms, seconds, rounds)
    return {k: {"p50_ms": 1e3 * statistics.median(t for look in looks for t in look[k]),
                "time_vs_" + base: statistics.median(statistics.median(look[k]) / statistics.median(look[base])
                                                     for look in looks)} for k in arms}


def shapes(target: str, rounds: int, seconds: float) -> list[dict]:
    out = []
    for rows, k, n, relu in SHAPES[target]:
        model, x = _Linear(k, n, relu).eval(), torch.randn(rows, k)
        without, with_ = _compiled(model, (x,), target, False), _compiled(model, (x,), target, True)
        arms = {"without": lambda: without(x), "with": lambda: with_(x)}
        out.append({"rows": rows, "in": k, "out": n, "relu": relu, "kernel_without": _kernels(without),
                    "kernel_with": _kernels(with_), **_timed(arms, "without", rounds, seconds)})
    return out


def whole(target: str, name: str, rounds: int, seconds: float) -> dict:
    from archfit import zoo
    from archfit.cli.bench import _call, _onnxruntime_direct, _openvino_direct

    model, inputs = zoo.build(name)
    model.eval()
    arms = {"without": _call(_compiled(model, inputs, target, False), inputs),  # key "without": _timed's base
            f"archfit {target} fp32": _call(_compiled(model, inputs, target, True), inputs),
            "OpenVINO direct fp32": _openvino_direct(model, inputs, "fp32")}
    if target == "onnxruntime":
        arms["ONNX Runtime direct"] = _onnxruntime_direct(model, inputs)
    return {"model": name, "arms": _timed(arms, "without", rounds, seconds)}


def dynamic_lengths(rounds: int, seconds: float) -> dict:
    import archfit
    from archfit import zoo
    from archfit.shapes.packed import Packing

    model, _ = zoo.build("bert-base")
    model.eval()
    example = {"input_ids": torch.randint(1000, 30000, (1, 384)), "attention_mask": torch.ones(1, 384, dtype=torch.long)}
    g = torch.Generator().manual_seed(0)
    lengths = (40, 90, 150, 250, 120, 180, 64, 300)
    requests = [{"input_ids": torch.randint(1000, 30000, (1, n), generator=g)} for n in lengths]
    modules = {}
    for key, on in (("without", False), ("with", True)):
        with _edits("openvino", on):
            modules[key] = archfit.trace(model, example, "openvino", precision="fp32", check_payoff=False, cache=False,
                                         packing=Packing(384, outputs=("last_hidden_state",), strategy="dynamic"))
    with torch.no_grad():
        want = [model(**r).last_hidden_state for r in requests]
        error = max(float((o["last_hidden_state"] - w).abs().max())
                    for o, w in zip(modules["with"].run(requests), want))
    arms = {k: (lambda m=m: m.run(requests)) for k, m in modules.items()}
    return {"model": "bert-base", "lengths": lengths, "max_abs_error_vs_eager": error,
            "arms": _timed(arms, "without", rounds, seconds)}


def main() -> None:
    from archfit.cli.bench import cpu_model, matmul_peak_gflops

    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--target", choices=sorted(SHAPES), default="openvino")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--dynamic", action="store_true", help="openvino's engine for a range of lengths instead")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.dynamic:
        result = {"cpu": cpu_model(), **dynamic_lengths(args.rounds, args.seconds)}
        (ROOT / "benchmarks" / "results" / "fc_kernels-dynamic.json").write_text(json.dumps(result, indent=1))
        print(f"{result['cpu']}; BERT-base, one engine for lengths 2..384, 8 requests a call "
              f"(lengths {', '.join(map(str, result['lengths']))}); max abs error vs eager "
              f"{result['max_abs_error_vs_eager']:.2e}\n")
        print("| arm | p50 ms per call of 8 requests | time vs without the edits (paired) |\n|---|---|---|")
        for k, a in result["arms"].items():
            print(f"| archfit openvino fp32, {k} the edits | {a['p50_ms']:.1f} | {a['time_vs_without']:.3f}x |")
        return
    result = {"cpu": cpu_model(), "fp32_matmul_peak_gflops": matmul_peak_gflops(torch.float32),
              "target": args.target, "shapes": shapes(args.target, args.rounds, args.seconds / 2),
              "models": [whole(args.target, m, args.rounds, args.seconds) for m in args.models or MODELS[args.target]]}
    name = "fc_kernels.json" if args.target == "openvino" else f"fc_kernels-{args.target}.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(result, indent=1))
    print(f"{result['cpu']}, fp32 matmul peak {result['fp32_matmul_peak_gflops']:.0f} GFLOP/s\n")
    print("| rows x in -> out | ReLU | kernel without -> with | p50 ms without | p50 ms with | with / without |")
    print("|---|---|---|---|---|---|")
    for s in result["shapes"]:
        kernels = f"{'/'.join(sorted(set(s['kernel_without'])))} -> {'/'.join(sorted(set(s['kernel_with'])))}"
        kernels = kernels if kernels != " -> " else "(MLAS)"
        print(f"| {s['rows']} x {s['in']} -> {s['out']} | {'yes' if s['relu'] else 'no'} | {kernels} | "
              f"{s['without']['p50_ms']:.3f} | {s['with']['p50_ms']:.3f} | {s['with']['time_vs_without']:.2f}x |")
    print("\n| model | arm | p50 ms | time vs without the edits (paired) |\n|---|---|---|---|")
    for m in result["models"]:
        for k, a in m["arms"].items():
            label = f"archfit {args.target} fp32, without the edits" if k == "without" else k
            print(f"| {m['model']} | {label} | {a['p50_ms']:.2f} | {a['time_vs_without']:.3f}x |")


if __name__ == "__main__":
    main()
